"""What `taskmanager demo sync-trap` prints, and writes to report.md and results.json.

The lecture's timeline diagram (1.2), drawn with measured timestamps: one row per request,
"·" while it is queued (the lecture's "😴 waiting..."), "▒" while its route waits for a
pooled connection, "█" while the route runs (pg_sleep + the list query), "─" while the
finished response is still on its way. Every variant uses the same scale, so the trap's
staircase and the async variant's short column of bars can be compared at a glance.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from taskmanager.demo.sync_trap.measure import (
    FIGURES,
    TIMES,
    VARIANT_BY_NAME,
    VARIANTS,
    Burst,
    RequestTiming,
    RunContext,
    SweepPoint,
    rounded_figures,
)
from taskmanager.demo.sync_trap.plot import PING

MAX_TERMINAL_ROWS = 20
QUEUED_CHAR, POOL_CHAR, ROUTE_CHAR, RESPONSE_CHAR = "·", "▒", "█", "─"
LEGEND = (
    f"{QUEUED_CHAR} queued (route not started) · {POOL_CHAR} waiting for a pooled connection · "
    f"{ROUTE_CHAR} route running (pg_sleep + list query) · {RESPONSE_CHAR} response on its way"
)


@dataclass(frozen=True, slots=True)
class VariantSummary:
    """One variant over all repeats: each figure is the median over the repeats."""

    variant: str
    fastest_ms: float
    median_ms: float
    slowest_ms: float
    wall_ms: float
    ping_ms: float
    slowest_range: tuple[float, float]
    repeats: int
    shown: Burst  # the repeat drawn in the timelines: the median one by slowest request
    shown_repeat: int

    def as_dict(self) -> dict[str, Any]:
        return {
            **rounded_figures(self),
            "slowest_range_ms": [round(value, 2) for value in self.slowest_range],
            "repeats": self.repeats,
            "timeline_repeat": self.shown_repeat,
            "statistic": "median over repeats",
        }


def summarize(variant: str, runs: Sequence[Burst]) -> VariantSummary:
    by_slowest = sorted(runs, key=lambda burst: burst.slowest_ms)
    shown = by_slowest[(len(by_slowest) - 1) // 2]
    return VariantSummary(
        variant=variant,
        **{name: statistics.median(getattr(burst, name) for burst in runs) for name in FIGURES},
        slowest_range=(by_slowest[0].slowest_ms, by_slowest[-1].slowest_ms),
        repeats=len(runs),
        shown=shown,
        shown_repeat=shown.repeat if shown.repeat is not None else 0,
    )


def pool_line(context: RunContext) -> str:
    return (
        f"pool: {context.pool_total} connections per engine (pool_size {context.pool_size} + "
        f"max_overflow {context.max_overflow}) · threadpool: {context.thread_tokens} tokens"
    )


# -- the timeline diagram ------------------------------------------------------------------


def _row_cells(request: RequestTiming, ms_per_column: float, width: int) -> list[str]:
    """Which character each column of one request's bar gets."""
    cells = [" "] * width

    def paint(start: float, end: float, char: str, at_least_one: bool = False) -> None:
        first = math.floor(start / ms_per_column + 0.5)
        last = math.floor(end / ms_per_column + 0.5)
        if at_least_one and last <= first:
            first = min(first, width - 1)  # an instant at the right edge stays visible
            last = first + 1
        for column in range(max(first, 0), min(last, width)):
            cells[column] = char

    server = request.server
    if server is None:
        paint(request.sent_ms, request.end_ms, ROUTE_CHAR, at_least_one=True)
        return cells
    paint(request.sent_ms, server.started_ms, QUEUED_CHAR)
    if server.connected_ms - server.started_ms >= ms_per_column:  # no rounding specks
        paint(server.started_ms, server.connected_ms, POOL_CHAR)
    paint(server.connected_ms, server.finished_ms, ROUTE_CHAR, at_least_one=True)
    if request.end_ms - server.finished_ms >= ms_per_column:
        paint(server.finished_ms, request.end_ms, RESPONSE_CHAR)
    return cells


def _pick_rows(ordered: list[RequestTiming]) -> list[tuple[int, RequestTiming]]:
    """All rows, or MAX_TERMINAL_ROWS of them spread evenly (first and last included)."""
    if len(ordered) <= MAX_TERMINAL_ROWS:
        return list(enumerate(ordered))
    step = (len(ordered) - 1) / (MAX_TERMINAL_ROWS - 1)
    picks = sorted({round(i * step) for i in range(MAX_TERMINAL_ROWS)})
    return [(i, ordered[i]) for i in picks]


def timeline_text(burst: Burst, scale_ms: float, width: int, *, styled: bool) -> Text:
    """The lecture's diagram for one burst: `Req N: ····█████  112 ms` per request."""
    variant = VARIANT_BY_NAME[burst.variant]
    ms_per_column = max(scale_ms, 1.0) / width
    styles = {QUEUED_CHAR: "grey50", POOL_CHAR: "yellow", RESPONSE_CHAR: "grey50", " ": ""}
    text = Text()

    def add_row(label: str, request: RequestTiming, route_style: str) -> None:
        text.append(f"{label:>7} ")
        for char in _row_cells(request, ms_per_column, width):
            style = route_style if char == ROUTE_CHAR else styles[char]
            text.append(char, style=style if styled else "")
        text.append(f" {request.latency_ms:6.0f} ms\n")

    previous = -1
    for rank, request in _pick_rows(burst.service_order()):
        if rank != previous + 1:
            text.append(f"{'⋮':>7}\n", style="grey50" if styled else "")
        add_row(f"Req {rank + 1}", request, variant.color)
        previous = rank
    add_row("/ping", burst.ping, PING)
    axis_right = f"{scale_ms:.0f} ms"
    text.append(f"{'':>7} 0 ms{axis_right:>{width - 4}}\n", style="grey50" if styled else "")
    return text


def shared_scale(summaries: Sequence[VariantSummary]) -> float:
    """The latest moment of any drawn burst: every timeline uses it."""
    return max(max(r.end_ms for r in [*s.shown.requests, s.shown.ping]) for s in summaries)


def print_timelines(console: Console, summaries: Sequence[VariantSummary]) -> None:
    """One panel per variant, all on the scale of the slowest request of any of them."""
    scale = shared_scale(summaries)
    width = max(20, min(100, console.width - 22))
    for summary in summaries:
        variant = VARIANT_BY_NAME[summary.variant]
        burst = summary.shown
        body = Group(
            timeline_text(burst, scale, width, styled=True),
            Text(
                f"slowest {burst.slowest_ms:.0f} ms · /ping sent "
                f"{burst.ping.sent_ms:.0f} ms into the burst waited {burst.ping_ms:.0f} ms"
                f" · routes ran on: {', '.join(burst.threads) or '?'}",
                style="grey70",
            ),
        )
        title = f"[bold {variant.color}]{variant.name}[/]: {variant.route} — {variant.effect}"
        subtitle = f"repeat {summary.shown_repeat + 1} of {summary.repeats} (median)"
        console.print(Panel(body, title=title, title_align="left", subtitle=subtitle))
    console.print(f"[grey50]{LEGEND}   (one shared scale)[/]")


# -- what the numbers say ------------------------------------------------------------------


def explain_run(summaries: Sequence[VariantSummary], context: RunContext) -> list[str]:
    """What the burst showed, in the lecture's words and with the measured numbers."""
    by_name = {summary.variant: summary for summary in summaries}
    lines: list[str] = []
    n, delay = context.concurrency, context.delay_ms
    if trap := by_name.get("trap"):
        lines.append(
            f"trap: the slowest of {n} requests took {trap.slowest_ms:.0f} ms, about "
            f"{n} {TIMES} {delay} ms. The route is `async def`, so the synchronous "
            "`session.execute()` runs ON the event loop thread: the server answers one "
            "request at a time and every other request queues behind it. A /ping sent during "
            f"the burst waited {trap.ping_ms:.0f} ms: a blocked event loop delays even "
            "health checks."
        )
    if threadpool := by_name.get("threadpool"):
        lines.append(
            f"threadpool: slowest {threadpool.slowest_ms:.0f} ms. The same sync code in a "
            "plain `def` route: FastAPI runs it in anyio's threadpool "
            f"({context.thread_tokens} tokens), so the calls wait side by side in worker "
            f"threads and /ping answered in {threadpool.ping_ms:.1f} ms."
        )
    if async_ := by_name.get("async"):
        lines.append(
            f"async: slowest {async_.slowest_ms:.0f} ms. Each `await` hands the event loop "
            "back while PostgreSQL works: one thread, one pooled connection per request, "
            f"/ping answered in {async_.ping_ms:.1f} ms."
        )
        if trap:
            lines.append(
                f"The trap's slowest request took {trap.slowest_ms / async_.slowest_ms:.1f}{TIMES} "
                "as long as the async variant's, with the same query on the same database."
            )
    return lines


def explain_sweep(points: Sequence[SweepPoint], context: RunContext) -> list[str]:
    """The steps of the sweep, named: the event loop first, then threads, then connections."""

    def series(variant: str) -> str:
        return ", ".join(
            f"{p.concurrency} → {p.bursts[variant].slowest_ms:,.0f} ms" for p in points
        )

    limit = min(context.thread_tokens, context.pool_total)
    thread_cause = (
        f"anyio's default limiter has {context.thread_tokens} tokens: at most "
        f"{context.thread_tokens} sync routes run at once, the rest wait for a free thread"
        if context.thread_tokens <= context.pool_total
        else f"each worker thread holds a connection and the pool has only {context.pool_total}"
    )
    lines = [
        f"trap grows linearly ({series('trap')}): about concurrency {TIMES} {context.delay_ms} ms. "
        "The event loop is serialised: it runs one blocking route at a time.",
        f"threadpool needs one wave of DB calls while at most {limit} requests arrive at once, "
        f"then more ({series('threadpool')}): {thread_cause}. Requests run in waves of {limit}.",
        f"async needs one wave while the burst fits in the connection pool "
        f"({context.pool_total} = pool_size {context.pool_size} + max_overflow "
        f"{context.max_overflow}), then more ({series('async')}): request "
        f"{context.pool_total + 1} waits in the pool's queue until a connection is returned "
        "(up to pool_timeout).",
        "Threads (for sync code) and pooled connections (for async code) are the next "
        "bottlenecks after the event loop. Raise them with care: every pooled connection is "
        "a PostgreSQL backend process, and max_connections is shared by every worker.",
    ]
    top = points[-1]
    excess = top.bursts["async"].slowest_ms - context.model_ms("async", top.concurrency)
    if excess > 0.2 * context.delay_ms:
        lines.append(
            "Where a measurement exceeds the model, the rest is CPU: every request also costs "
            "the server Python work (HTTP parsing, building ORM rows, JSON), done on the one "
            f"event loop thread, on {context.cpu_count} CPUs shared with PostgreSQL and this "
            f"load driver. At {top.concurrency} concurrent requests the async variant took "
            f"{excess:,.0f} ms more than the model: about {excess / top.concurrency:.1f} ms "
            "per request."
        )
    worst = max(
        (p.bursts[name].ping_ms, name, p.concurrency)
        for p in points
        for name in ("threadpool", "async")
    )
    if worst[0] > 10:
        lines.append(
            f"That CPU work delays /ping too (at most {worst[0]:,.0f} ms, {worst[1]} at "
            f"{worst[2]} concurrent; sync code in threads also competes for the GIL), but "
            "by milliseconds per request, not by whole DB calls as in the trap."
        )
    return lines


# -- the tables (terminal and report.md) ----------------------------------------------------

SUMMARY_HEADER = ("variant", "fastest", "median", "slowest", "burst wall", "/ping in burst")


def summary_rows(summaries: Sequence[VariantSummary]) -> list[list[str]]:
    baseline = next((s.slowest_ms for s in summaries if s.variant == "async"), None)
    return [
        [
            s.variant,
            *(f"{getattr(s, name):.0f} ms" for name in FIGURES[:4]),
            f"{s.ping_ms:.1f} ms",
            f"{s.slowest_ms / baseline:.1f}{TIMES}" if baseline else "-",
        ]
        for s in summaries
    ]


def sweep_header() -> list[str]:
    return [
        "concurrency",
        *(f"{v.name} (model)" for v in VARIANTS),
        *(f"/ping {v.name}" for v in VARIANTS),
    ]


def sweep_rows(points: Sequence[SweepPoint], context: RunContext) -> list[list[str]]:
    return [
        [
            str(point.concurrency),
            *(
                f"{point.bursts[v.name].slowest_ms:,.0f} ms "
                f"({context.model_ms(v.name, point.concurrency):,.0f})"
                for v in VARIANTS
            ),
            *(f"{point.bursts[v.name].ping_ms:,.1f} ms" for v in VARIANTS),
        ]
        for point in points
    ]


def terminal_table(title: str, caption: str, header: Sequence[str], rows: list[list[str]]) -> Table:
    table = Table(title=title, caption=caption)
    for index, name in enumerate(header):
        table.add_column(name, justify="left" if index == 0 else "right")
    for row in rows:
        color = VARIANT_BY_NAME[row[0]].color if row[0] in VARIANT_BY_NAME else ""
        table.add_row(f"[bold {color}]{row[0]}[/]" if color else row[0], *row[1:])
    return table


def markdown_table(header: Sequence[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|---|" + "---:|" * (len(header) - 1),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def print_summary(
    console: Console, summaries: Sequence[VariantSummary], context: RunContext
) -> None:
    console.print(
        terminal_table(
            f"{context.concurrency} concurrent requests {TIMES} {context.delay_ms} ms DB call, "
            f"median over {context.repeat} repeat{'s' if context.repeat != 1 else ''}",
            f"{pool_line(context)} · event loop: {context.event_loop} · {context.cpu_count} CPUs",
            [*SUMMARY_HEADER, "slowest ÷ async"],
            summary_rows(summaries),
        )
    )


def print_sweep(console: Console, points: Sequence[SweepPoint], context: RunContext) -> None:
    console.print(
        terminal_table(
            f"Sweep: slowest request (model: waves {TIMES} {context.delay_ms} ms), and the "
            "/ping sent during each burst",
            f"{pool_line(context)} · one burst per point after a warm-up",
            sweep_header(),
            sweep_rows(points, context),
        )
    )


# -- results.json and report.md --------------------------------------------------------------


def results_dict(
    summaries: Sequence[VariantSummary],
    runs: dict[str, list[Burst]],
    points: Sequence[SweepPoint],
    context: RunContext,
) -> dict[str, Any]:
    """What results.json says about the variants (and the sweep): every raw timing."""
    results: dict[str, Any] = {
        "variants": {
            summary.variant: {
                "path": VARIANT_BY_NAME[summary.variant].path,
                "route": VARIANT_BY_NAME[summary.variant].route,
                "effect": VARIANT_BY_NAME[summary.variant].effect,
                "summary": summary.as_dict(),
                "runs": [burst_dict(b) for b in runs[summary.variant]],
            }
            for summary in summaries
        },
        "explanation": explain_run(summaries, context),
    }
    if points:
        results["sweep"] = {
            **sweep_dict(points, context),
            "explanation": explain_sweep(points, context),
        }
    return results


def sweep_dict(points: Sequence[SweepPoint], context: RunContext) -> dict[str, Any]:
    return {
        "pool_total": context.pool_total,
        "thread_tokens": context.thread_tokens,
        "points": [
            {
                "concurrency": point.concurrency,
                "variants": {
                    name: {
                        "model_ms": context.model_ms(name, point.concurrency),
                        **burst_dict(burst),
                    }
                    for name, burst in point.bursts.items()
                },
            }
            for point in points
        ],
    }


def burst_dict(burst: Burst) -> dict[str, Any]:
    return {
        "repeat": burst.repeat,
        "position": burst.position,
        "concurrency": burst.concurrency,
        "delay_ms": burst.delay_ms,
        **burst.summary(),
        "clock_shared": burst.clock_shared,
        "threads": burst.threads,
        "requests": [asdict(request) for request in burst.requests],
        "ping": asdict(burst.ping),
    }


def report_markdown(
    summaries: Sequence[VariantSummary],
    points: Sequence[SweepPoint],
    context: RunContext,
    *,
    database: str,
    files: Sequence[str],
) -> str:
    out: list[str] = [
        "# The sync trap, measured",
        "",
        f"`taskmanager demo sync-trap`: {context.concurrency} concurrent requests per burst, "
        f"each `SELECT pg_sleep({context.delay_ms / 1000:g})` followed by the task-list query "
        f"(newest 50 tasks), {context.repeat} repeat(s) per variant with the variant order "
        f"alternating; database: {database}.",
        "",
        f"- {pool_line(context)} (the same for psycopg and asyncpg)",
        f"- event loop: {context.event_loop}; {context.cpu_count} CPUs",
        "",
        *markdown_table([*SUMMARY_HEADER, "slowest ÷ async"], summary_rows(summaries)),
        "",
        "(medians over the repeats; every raw timing is in results.json)",
        "",
        *(line + "\n" for line in explain_run(summaries, context)),
        "## Timeline (median repeat, one shared scale)",
        "",
        "![timeline](timeline.png)",
        "",
    ]
    scale = shared_scale(summaries)
    for s in summaries:
        variant = VARIANT_BY_NAME[s.variant]
        timeline = timeline_text(s.shown, scale, 64, styled=False).plain.rstrip()
        out += [f"{variant.name}: {variant.route}", "```", timeline, "```", ""]
    out.append(LEGEND)
    if points:
        out += ["", "## Sweep: slowest request against concurrency", "", "![sweep](sweep.png)", ""]
        out += markdown_table(sweep_header(), sweep_rows(points, context))
        out += ["", *(line + "\n" for line in explain_sweep(points, context))]
    out += ["## Files", "", *(f"- `{name}`" for name in files), ""]
    return "\n".join(out)
