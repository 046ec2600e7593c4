"""The pictures of `taskmanager demo sync-trap`: timeline.png and sweep.png.

matplotlib's object API with the Agg canvas (no pyplot, no display, no global state):
the lecture's timeline diagram (1.2), redrawn from measured timestamps.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from taskmanager.demo.sync_trap.measure import (
    TIMES,
    VARIANT_BY_NAME,
    VARIANTS,
    Burst,
    RequestTiming,
    RunContext,
    SweepPoint,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes

QUEUED = "#d4d4d4"  # sent, but the route has not started: the lecture's "😴 waiting..."
POOL_WAIT = "#f5b041"  # the route runs, but waits for a pooled connection
RESPONSE = "#7f7f7f"  # route finished, response on its way
PING = "#8e44ad"
PING_QUEUED = "#dcc6e6"
MAX_LABELLED_ROWS = 30  # above this, per-bar labels would overlap


def _bar(axes: Axes, y: float, start: float, end: float, color: str, height: float) -> None:
    if end > start:
        axes.broken_barh([(start, end - start)], (y - height / 2, height), facecolors=color)


def _draw_request(axes: Axes, y: float, request: RequestTiming, color: str, queued: str) -> None:
    height = 0.72
    server = request.server
    if server is None:  # no server readings: draw the latency as one bar
        _bar(axes, y, request.sent_ms, request.end_ms, color, height)
        return
    started = max(server.started_ms, request.sent_ms)
    connected = max(server.connected_ms, started)
    finished = min(max(server.finished_ms, connected), request.end_ms)
    _bar(axes, y, request.sent_ms, started, queued, height)
    _bar(axes, y, started, connected, POOL_WAIT, height)
    _bar(axes, y, connected, finished, color, height)
    _bar(axes, y, finished, request.end_ms, RESPONSE, height)


def _lesson(burst: Burst, context: RunContext) -> str:
    """One line per panel on what the bars show, in the lecture's words."""
    if burst.variant == "trap":
        return (
            "The blocking call runs ON the event loop thread: one route at a time,\n"
            f"request N waits for the N-1 before it (about N {TIMES} {context.delay_ms} ms), "
            "and so does /ping."
        )
    if burst.variant == "threadpool":
        return (
            "The same sync code in a def route runs in worker threads "
            f"(up to {context.thread_tokens} at once):\n"
            "the event loop stays free and /ping answers at once."
        )
    return (
        "Every await hands the event loop back: the requests wait on PostgreSQL together,\n"
        f"on one thread, each with its own pooled connection ({context.pool_total} in the pool)."
    )


def _draw_panel(axes: Axes, burst: Burst, x_max: float, context: RunContext, rows: int) -> None:
    variant = VARIANT_BY_NAME[burst.variant]
    delay_ms = context.delay_ms
    ordered = burst.service_order()
    label_bars = len(ordered) <= MAX_LABELLED_ROWS
    for y, request in enumerate(ordered):
        _draw_request(axes, y, request, variant.color, QUEUED)
        if label_bars:
            axes.text(
                request.end_ms + x_max * 0.006,
                y,
                f"{request.latency_ms:.0f} ms",
                va="center",
                fontsize=7.5,
                color="#333333",
            )
    ping_y = rows + 0.4  # a small gap sets /ping apart from the burst
    _draw_request(axes, ping_y, burst.ping, PING, PING_QUEUED)
    axes.text(
        burst.ping.end_ms + x_max * 0.006,
        ping_y,
        f"/ping {burst.ping_ms:.0f} ms",
        va="center",
        fontsize=8,
        fontweight="bold",
        color=PING,
    )
    step = 1 if rows <= MAX_LABELLED_ROWS else max(1, rows // 20)
    ticks = [float(i) for i in range(0, len(ordered), step)]
    axes.set_yticks([*ticks, ping_y], [f"Req {int(i) + 1}" for i in ticks] + ["/ping"], fontsize=8)
    axes.set_ylim(ping_y + 0.8, -0.8)  # first served on top, like the lecture's diagram
    axes.axvline(delay_ms, color="#555555", linestyle=":", linewidth=1)
    axes.grid(axis="x", color="#e5e5e5", linewidth=0.8)
    axes.set_axisbelow(True)
    for side in ("top", "right"):
        axes.spines[side].set_visible(False)
    axes.set_title(
        f"{variant.name}: {variant.route} — {variant.effect}",
        loc="left",
        fontsize=10.5,
        fontweight="bold",
        color=variant.color,
    )
    axes.text(
        0.99,
        0.94,
        _lesson(burst, context),
        transform=axes.transAxes,
        ha="right",
        va="top",
        fontsize=9,
        color="#444444",
        linespacing=1.4,
    )
    axes.set_title(
        f"fastest {burst.fastest_ms:.0f} · median {burst.median_ms:.0f} · "
        f"slowest {burst.slowest_ms:.0f} ms",
        loc="right",
        fontsize=9,
        color="#333333",
    )


def write_timeline_png(path: Path, bursts: Sequence[Burst], context: RunContext) -> None:
    """One Gantt panel per variant: each request a bar from sent to answered, split into
    queued / waiting for a connection / in the route; the /ping sent during the burst last."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    rows = max(len(burst.requests) for burst in bursts)
    x_max = max(
        max(request.end_ms for request in [*burst.requests, burst.ping]) for burst in bursts
    )
    panel_height = 0.75 + 0.24 * (min(rows, 60) + 1.5)
    figure = Figure(figsize=(12, 1.5 + panel_height * len(bursts)), dpi=100, layout="constrained")
    axes_list = figure.subplots(len(bursts), 1, sharex=True, squeeze=False)[:, 0]
    for axes, burst in zip(axes_list, bursts, strict=True):
        _draw_panel(axes, burst, x_max, context, rows)
    axes_list[-1].set_xlim(0, x_max * 1.12)  # room for the labels right of the bars
    axes_list[-1].set_xlabel("ms since the burst started (client and server read one clock)")
    figure.suptitle(
        f"The sync trap, measured: {context.concurrency} concurrent GET requests, each "
        f"SELECT pg_sleep({context.delay_ms / 1000:g}) + the task-list query\n"
        f"{context.shown} · pool {context.pool_total} connections · "
        f"{context.thread_tokens} threadpool tokens · {context.cpu_count} CPUs · "
        f"dotted line: one {context.delay_ms} ms DB call",
        fontsize=11.5,
    )
    shown = {burst.variant for burst in bursts}
    handles = [
        Patch(facecolor=QUEUED, label="queued: route not started (event loop or threads busy)"),
        Patch(facecolor=POOL_WAIT, label="route waits for a pooled connection"),
        Patch(facecolor=RESPONSE, label="response on its way"),
        Patch(facecolor=PING_QUEUED, edgecolor=PING, label="/ping sent during the burst"),
        *(
            Patch(facecolor=variant.color, label=f"{variant.name}: route running")
            for variant in VARIANTS
            if variant.name in shown
        ),
    ]
    figure.legend(handles=handles, loc="outside lower center", ncol=4, fontsize=8.5, frameon=False)
    figure.savefig(path)


def write_sweep_png(path: Path, points: Sequence[SweepPoint], context: RunContext) -> None:
    """Slowest request against concurrency, measured (solid) and modelled (dashed steps): all
    three variants on the left, the two that keep the loop free zoomed in on the right."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    xs = [point.concurrency for point in points]
    slowest = {v.name: [p.bursts[v.name].slowest_ms for p in points] for v in VARIANTS}
    # The model at every concurrency from 1 up: its steps fall between the sweep's points.
    model_xs = list(range(1, xs[-1] + 1))
    figure = Figure(figsize=(13, 5.8), dpi=100, layout="constrained")
    left, right = figure.subplots(1, 2)
    panels = ((left, list(slowest), {"trap"}), (right, ["threadpool", "async"], None))
    for axes, shown, labelled in panels:
        for name in shown:
            color = VARIANT_BY_NAME[name].color
            axes.plot(
                model_xs,
                [context.model_ms(name, x) for x in model_xs],
                linestyle="--",
                color=color,
                alpha=0.5,
                linewidth=1.2,
                # The trap's model is a line (one wave per request); the others are steps.
                drawstyle="default" if name == "trap" else "steps-post",
            )
            axes.plot(xs, slowest[name], marker="o", color=color, linewidth=2)
            if labelled is not None and name not in labelled:
                continue
            for i, (x, y) in enumerate(zip(xs, slowest[name], strict=True)):
                # The lower of two points at one x gets its label below, so they never collide.
                below = any(y < slowest[other][i] for other in shown if other != name)
                axes.annotate(
                    f"{y:,.0f}",
                    (x, y),
                    textcoords="offset points",
                    xytext=(6, -13 if below else 6),
                    fontsize=8.5,
                    color=color,
                )
        axes.set_xlabel("concurrent requests in the burst")
        axes.set_ylabel("slowest request (ms)")
        axes.grid(color="#e5e5e5")
        axes.set_ylim(bottom=0)
        axes.set_xlim(left=0)
        for side in ("top", "right"):
            axes.spines[side].set_visible(False)
    largest = xs[-1]
    marks = sorted(
        (value, text)
        for value, text in {
            context.thread_tokens: f"{context.thread_tokens} threadpool tokens",
            context.pool_total: f"pool: {context.pool_total} connections",
        }.items()
        if value <= largest  # a limit the sweep never reached has no step to mark
    )
    for row, (value, text) in enumerate(marks):
        right.axvline(value, color="#888888", linestyle=":", linewidth=1)
        right.annotate(
            text,
            (value, 0),
            xycoords=("data", "axes fraction"),
            xytext=(4, 8 + 14 * row),  # stacked, so neighbouring marks never overlap
            textcoords="offset points",
            fontsize=8.5,
            color="#555555",
        )
    # One legend for both panels, below them: inside, it would cover data or the limit marks.
    handles = [
        Line2D([], [], color=v.color, marker="o", linewidth=2, label=f"{v.name}: {v.route}")
        for v in VARIANTS
    ]
    handles.append(
        Line2D(
            [],
            [],
            color="#777777",
            linestyle="--",
            linewidth=1.2,
            label=f"model: waves {TIMES} {context.delay_ms} ms",
        )
    )
    figure.legend(handles=handles, loc="outside lower center", ncol=2, fontsize=9, frameon=False)
    left.set_title("all three: the trap grows with every request", loc="left", fontsize=10.5)
    right.set_title(
        "zoomed: threadpool and async meet the next bottlenecks",
        loc="left",
        fontsize=10.5,
    )
    figure.suptitle(
        f"Slowest of N concurrent requests, each a {context.delay_ms} ms DB call · "
        f"pool {context.pool_total} connections · {context.thread_tokens} threadpool tokens · "
        f"{context.cpu_count} CPUs",
        fontsize=11.5,
    )
    figure.savefig(path)
