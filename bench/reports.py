"""The markdown tables the benchmarks print and write to bench/results/."""

from __future__ import annotations

import statistics
from typing import Any

from figures import Summary
from harness import MODE_NOTES
from scenarios import (
    CACHE_HITS,
    COST_STEPS,
    FLOOR_ROWS,
    GET_ONE,
    LAYER_NOTES,
    LIST_50,
    MISS_NAME,
    NAIVE_NOTES,
    OLD,
    SEPARATE_LIST,
    SEPARATE_ONE,
    TARGETS,
    Scenario,
)


def _ratio(s: Summary) -> str:
    return f"{s.ratio_to_baseline:.2f}x" if s.ratio_to_baseline is not None else "1.00x"


def _verdict(s: Summary) -> str:
    target = TARGETS.get(s.scenario)
    if target is None or s.ratio_to_baseline is None:
        return ""
    return f"≥ {target}x {'✅' if s.ratio_to_baseline >= target else '❌'}"


def _redis(s: Summary) -> str:
    """Redis's CPU per request, for a scenario of the cached server only."""
    return f"{s.redis_cpu_us:,.0f}" if s.cache_hits is not None else ""


def _connections(s: Summary) -> str:
    return f"{s.connections_per_1000:,.1f}"


def mode_markdown(mode: str, summaries: list[Summary], meta: dict[str, Any]) -> str:
    """One mode's tables: every scenario; what auth and RLS cost; the pools compared."""
    lines = [
        f"### {mode}: {MODE_NOTES[mode]}",
        "",
        f"Server peak RSS {meta['peak_rss_mib']:.0f} MiB; app pool: pool_size "
        f"{meta['pool_size']}, max_overflow {meta['max_overflow']} (the defaults); floors "
        f"(separate and in-app): an asyncpg pool of {meta['pool_size'] + meta['max_overflow']}. "
        "Server CPU: the process that served the scenario (the app's, or the separate "
        "floor's).",
        "",
        "| scenario | req/s | p50 ms | p99 ms | server CPU µs/req | PostgreSQL CPU µs/req "
        "| Redis CPU µs/req | new conns / 1k req | ratio | CPU ratio | vs | target |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    cpu = {s.scenario: s.server_cpu_us + s.postgres_cpu_us + s.redis_cpu_us for s in summaries}
    for s in summaries:
        if s.scenario.startswith("login:"):
            continue
        cpu_ratio = f"{cpu[s.baseline] / cpu[s.scenario]:.2f}x" if s.baseline else "1.00x"
        errors = f" ({s.errors} errors)" if s.errors else ""
        lines.append(
            f"| {s.scenario}{errors} | {s.requests_per_second:,.0f} | {s.p50_ms:.2f} | "
            f"{s.p99_ms:.2f} | {s.server_cpu_us:,.0f} | {s.postgres_cpu_us:,.0f} | "
            f"{_redis(s)} | {_connections(s)} | {_ratio(s)} | {cpu_ratio} | "
            f"{s.baseline or 'itself'} | "
            f"{_verdict(s)} |"
        )
    by_name = {s.scenario: s for s in summaries}
    steps = [step for step in COST_STEPS if step[2] in by_name and step[3] in by_name]
    if steps:
        lines += [
            "",
            "What each step costs per request (differences between the rows above; CPU µs "
            "per request, and 1/throughput: µs of the whole machine's capacity):",
            "",
            "| request | step | server CPU µs | PostgreSQL CPU µs | CPU µs in all "
            "| 1/throughput µs |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for request, step, name, before in steps:
            a, b = by_name[name], by_name[before]
            server = a.server_cpu_us - b.server_cpu_us
            postgres = a.postgres_cpu_us - b.postgres_cpu_us
            wall = 1e6 / a.requests_per_second - 1e6 / b.requests_per_second
            lines.append(
                f"| {request} | {step} | {server:+,.0f} | {postgres:+,.0f} | "
                f"{server + postgres:+,.0f} | {wall:+,.0f} |"
            )
    pairs = [
        (by_name[s.scenario.removesuffix(OLD)], s)
        for s in summaries
        if s.scenario.endswith(OLD) and s.scenario.removesuffix(OLD) in by_name
    ]
    if pairs:
        lines += [
            "",
            f"Pool defaults compared, {meta['connections']} clients: today's (pool_size "
            f"{meta['pool_size']}, max_overflow {meta['max_overflow']}) against the old ones "
            "(10 + 10 overflow), each on a server of its own, alternating in the same rounds. "
            "New connections counted by the app's pool (and, in brackets, the logins "
            "PostgreSQL's log recorded):",
            "",
            "| scenario | pool | req/s | ratio to floor | new conns / 1k req "
            "| new conns per 5 s run | p99 ms |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for new, old in pairs:
            for label, s in (("today's", new), ("old 10+10", old)):
                recorded: list[int | None] = [*s.server_logins_per_run] or [None] * len(
                    s.connections_per_run
                )
                runs = ", ".join(
                    f"{c:,}" + (f" ({g:,})" if g is not None else "")
                    for c, g in zip(s.connections_per_run, recorded, strict=True)
                )
                lines.append(
                    f"| {new.scenario} | {label} | {s.requests_per_second:,.0f} | {_ratio(s)} | "
                    f"{_connections(s)} | {runs} | {s.p99_ms:.2f} |"
                )
    logins = [s for s in summaries if s.scenario.startswith("login:")]
    if logins:
        lines += [
            "",
            "Login (`POST /auth/token`: limits checked, user read, argon2id verified in a "
            "worker thread, session and refresh token stored, JWT signed):",
            "",
            "| scenario | req/s | p50 ms | p99 ms | server CPU ms/login | PostgreSQL CPU "
            "µs/login | logins/s per core (server) |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for s in logins:
            errors = f" ({s.errors} errors)" if s.errors else ""
            lines.append(
                f"| {s.scenario}{errors} | {s.requests_per_second:,.1f} | {s.p50_ms:.1f} | "
                f"{s.p99_ms:.1f} | {s.server_cpu_us / 1000:.1f} | {s.postgres_cpu_us:,.0f} | "
                f"{1e6 / max(s.server_cpu_us, 1):.1f} |"
            )
    return "\n".join(lines) + "\n"


def argon2_markdown(figures: dict[str, dict[str, float]]) -> str:
    lines = [
        "argon2id alone, in one process (the bench's), one verification at a time: CPU time "
        "of the whole process (argon2 runs its lanes in threads of its own), median of "
        f"{next(iter(figures.values()))['samples']:.0f}, the two parameter sets alternating:",
        "",
        "| parameters | verify ms (wall) | verify ms (CPU) | verifications/s per core |",
        "|---|---:|---:|---:|",
    ]
    for name, f in figures.items():
        lines.append(
            f"| {name} | {f['wall_ms']:.1f} | {f['cpu_ms']:.1f} | {1000 / f['cpu_ms']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def layers_markdown(summaries: list[Summary], meta: dict[str, Any]) -> str:
    lines = [
        f"Measured {meta['date']} on {meta['machine']}, {meta['mode']} "
        f"(1 worker, wrk -t1 -c{meta['connections']} -d{meta['duration']}s x "
        f"{meta['rounds']} rounds, order alternating). Each row adds one layer to the row "
        "above it.",
        "",
        "| GET one task | req/s | ratio | server CPU µs/req | this layer µs/req "
        "| new conns / 1k req | what it is |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    previous: float | None = None
    for s in summaries:
        step = "" if previous is None else f"{s.server_cpu_us - previous:+,.0f}"
        errors = f" ({s.errors} errors)" if s.errors else ""
        lines.append(
            f"| {s.scenario}{errors} | {s.requests_per_second:,.0f} | {_ratio(s)} | "
            f"{s.server_cpu_us:,.0f} | {step} | {_connections(s)} | "
            f"{LAYER_NOTES.get(s.scenario, '')} |"
        )
        previous = s.server_cpu_us
    return "\n".join(lines) + "\n"


def naive_markdown(
    summaries: list[Summary],
    runs: list[dict[str, Any]],
    waits: dict[str, dict[str, Any]],
    scenarios: list[Scenario],
    meta: dict[str, Any],
) -> str:
    connections = {s.name: s.connections or meta["connections"] for s in scenarios}
    per_run: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        per_run.setdefault(run["scenario"], []).append(run)

    def median(name: str, key: str) -> float:
        return float(statistics.median(run[key] for run in per_run[name]))

    def each(name: str, key: str) -> str:
        return ", ".join(f"{run[key]:,.0f}" for run in per_run[name])

    lines = [
        f"Measured {meta['date']} on {meta['machine']}: 1 uvicorn worker, "
        f"wrk -t1 -d{meta['duration']}s x {meta['rounds']} rounds (order alternating), "
        f"pool_size {meta['pool_size']}, max_overflow {meta['max_overflow']} unless the row "
        "says otherwise. Medians over the rounds unless a cell lists each round.",
        "",
        "Latency: wrk's figures, then each request's own time in the app, and the same "
        "corrected for coordinated omission as wrk 4.1 corrects its own:",
        "",
        "| scenario | wrk -c | req/s | wrk p50 ms | wrk p99 ms | wrk max ms | own p50 ms "
        "| own p99 ms | own max ms | requests > 1 s | own p99 corrected like wrk |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summaries:
        name = s.scenario
        errors = f" ({s.errors} errors)" if s.errors else ""
        lines.append(
            f"| {name}{errors} | {connections[name]} | {s.requests_per_second:,.0f} | "
            f"{s.p50_ms:.2f} | {s.p99_ms:.2f} | {each(name, 'wrk_max_ms')} | "
            f"{median(name, 'own_p50_ms'):.2f} | {median(name, 'own_p99_ms'):.2f} | "
            f"{each(name, 'own_max_ms')} | {each(name, 'own_over_1s')} | "
            f"{median(name, 'own_corrected_p99_ms'):.2f} |"
        )
    lines += [
        "",
        "The pool (every checkout of all rounds, timed inside the pool's queue). A steal is a "
        "checkout that took at once a connection just put back for a waiter that had been "
        "woken but had not run yet; that waiter then goes to the back of the line:",
        "",
        "| scenario | checkouts that waited | wait p99 ms | wait max ms | waits > 1 s "
        "| re-queued checkouts | most re-queues | steals (by the client that put it back) "
        "| asked while the same client held one | starved wrk connections |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summaries:
        w = waits[s.scenario]
        lines.append(
            f"| {s.scenario} | {w['waited_share']:.1%} | {w['wait_p99_ms']:.2f} | "
            f"{w['wait_max_ms']:,.0f} | {w['waits_over_1s']} | "
            f"{w['requeued']} of {w['checkouts']:,} | {w['most_requeues']} | "
            f"{w['steals']:,} ({w['steals_by_releasing_client']:,}) | "
            f"{w['overlap_share']:.0%} | {each(s.scenario, 'starved_clients')} |"
        )
    lines += [
        "",
        "Pool waits by how many times the checkout joined the waiters' line "
        "(checkouts, median / max ms):",
        "",
        "| scenario | waited once | re-queued 1-4 times | re-queued 5+ times |",
        "|---|---:|---:|---:|",
    ]

    def cell(b: dict[str, Any]) -> str:
        if not b["checkouts"]:
            return "0"
        return f"{b['checkouts']:,} ({b['median_ms']:.1f} / {b['max_ms']:,.0f})"

    for s in summaries:
        w = waits[s.scenario]
        lines.append(
            f"| {s.scenario} | {cell(w['in_line_once'])} | {cell(w['requeued_1_to_4'])} | "
            f"{cell(w['requeued_5_plus'])} |"
        )
    lines += ["", "| scenario | what it is |", "|---|---|"]
    lines += [f"| {s.scenario} | {NAIVE_NOTES.get(s.scenario, '')} |" for s in summaries]
    return "\n".join(lines) + "\n"


def _vs_floor_cells(by_name: dict[str, Summary], name: str) -> str | None:
    """One run's cells for an app scenario against its separate floor, or None if the run
    has not both. A cached scenario's PostgreSQL cell adds its Redis's CPU."""
    app = by_name.get(name)
    if app is None or app.baseline is None or app.baseline not in by_name:
        return None
    floor = by_name[app.baseline]
    errors = app.errors + floor.errors
    redis = f" + Redis {app.redis_cpu_us:,.0f}" if app.cache_hits is not None else ""
    return (
        f"{app.requests_per_second:,.0f} / {floor.requests_per_second:,.0f} | "
        f"**{_ratio(app)}**{f' ({errors} errors)' if errors else ''} | "
        f"{app.server_cpu_us:,.0f} / {floor.server_cpu_us:,.0f} "
        f"({app.server_cpu_us / floor.server_cpu_us:.2f}x) | "
        f"{app.postgres_cpu_us:,.0f}{redis} / {floor.postgres_cpu_us:,.0f} "
        f"({(app.postgres_cpu_us + app.redis_cpu_us) / floor.postgres_cpu_us:.2f}x)"
    )


def _target(by_name: dict[str, Summary], name: str) -> str:
    s = by_name.get(name)
    return "" if s is None else _verdict(s)


def floor_table(runs: list[tuple[Any, dict[str, Any]]]) -> str:
    """Every scenario of the app against the separate floor of the same request, per mode,
    from saved runs (run.py's JSON: `--vs-floor` or a main run): before, or before and
    after side by side; the target (the issue's, where it has one) of the last run.
    Ratio: app req/s over floor req/s; CPU: µs per request, app / floor (app over floor),
    the server's own process and the bench's PostgreSQL (and the cache's Redis)."""
    labels = ["before", "after"][: len(runs)]
    lines = [
        f"- {label}: `{saved['meta']['command']}`, {saved['meta']['date']} ({path}), "
        f"wrk -t1 -c{saved['meta']['connections']} -d{saved['meta']['duration']}s x "
        f"{saved['meta']['rounds']} rounds"
        for label, (path, saved) in zip(labels, runs, strict=True)
    ]
    header = "| scenario | mode |"
    rule = "|---|---|"
    for label in labels:
        header += (
            f" {label}: req/s app / floor | {label}: ratio | {label}: server CPU µs/req "
            f"app / floor | {label}: PostgreSQL CPU µs/req app / floor |"
        )
        rule += "---:|---:|---:|---:|"
    lines += ["", header + " target |", rule + "---|"]
    modes = list(dict.fromkeys(mode for _, saved in runs for mode in saved["modes"]))
    for scenario in FLOOR_ROWS:
        for mode in modes:
            cells = []
            by_name: dict[str, Summary] = {}
            for _, saved in runs:
                summaries = saved["modes"].get(mode, {}).get("summary", [])
                by_name = {s["scenario"]: Summary(**s) for s in summaries}
                cells.append(_vs_floor_cells(by_name, scenario.name) or " | | | ")
            if any(cell.strip(" |") for cell in cells):
                lines.append(
                    f"| `{scenario.name}` | {mode} | "
                    + " | ".join(cells)
                    + f" | {_target(by_name, scenario.name)} |"
                )
    return "\n".join(lines) + "\n"


def vs_floor_markdown(results: dict[str, dict[str, Any]]) -> str:
    """This run's table of the app against its separate floor (both modes)."""
    rows = []
    for scenario in FLOOR_ROWS:
        for mode, r in results.items():
            by_name = {s.scenario: s for s in r["summaries"]}
            cells = _vs_floor_cells(by_name, scenario.name)
            if cells is not None:
                rows.append(
                    f"| `{scenario.name}` | {mode} | {cells} | {_target(by_name, scenario.name)} |"
                )
    if not rows:
        return ""
    return (
        "The app against its separate floor (floor_app.py: a process of its own, the app's "
        "statements on asyncpg, the same body and headers, no middleware, no cache); CPU per "
        "request of each server's own process and of the bench's PostgreSQL (and Redis, for "
        "the app with the cache on):\n\n"
        "| scenario | mode | req/s app / floor | ratio | server CPU µs/req app / floor "
        "| PostgreSQL CPU µs/req app / floor | target |\n"
        "|---|---|---:|---:|---:|---:|---|\n" + "\n".join(rows) + "\n\n"
    )


def _hits(s: Summary) -> str:
    if s.cache_hits is None or s.cache_misses is None:
        return ""
    return f"{s.cache_hits:,} / {s.cache_misses:,} / {s.cache_errors or 0:,}"


def _change(after: float, before: float, unit: str = "µs") -> str:
    return f"{after - before:+,.0f} {unit} ({(after - before) / before:+.0%})"


def cache_markdown(results: dict[str, dict[str, Any]]) -> str:
    """The cache's figures of this run: hits (latency, CPU, against the uncached separate
    floor and the uncached app) and misses (against the same requests without a cache)."""
    hit_rows, miss_rows = [], []
    shown = [SEPARATE_ONE, GET_ONE.name, *(s.name for s in CACHE_HITS[:2]), SEPARATE_LIST,
             LIST_50.name, CACHE_HITS[2].name]  # fmt: skip
    for mode, r in results.items():
        by_name = {s.scenario: s for s in r["summaries"]}
        for name in shown:
            s = by_name.get(name)
            if s is None:
                continue
            hit_rows.append(
                f"| {name} | {mode} | {s.requests_per_second:,.0f} | {_ratio(s)} | "
                f"{_verdict(s)} | {s.p50_ms:.2f} | {s.p99_ms:.2f} | {s.server_cpu_us:,.0f} | "
                f"{s.postgres_cpu_us:,.0f} | {_redis(s)} | {_hits(s)} |"
            )
        miss = by_name.get(MISS_NAME)
        if miss is not None and miss.baseline in by_name:
            none = by_name[miss.baseline]
            cpu_none = none.server_cpu_us + none.postgres_cpu_us
            cpu_miss = miss.server_cpu_us + miss.postgres_cpu_us + miss.redis_cpu_us
            miss_rows.append(
                f"| {mode} | {none.requests_per_second:,.0f} / {miss.requests_per_second:,.0f} "
                f"| {none.p50_ms:.2f} / {miss.p50_ms:.2f} | {none.p99_ms:.2f} / "
                f"{miss.p99_ms:.2f} | {cpu_none:,.0f} / {cpu_miss:,.0f} | "
                f"{_change(miss.p50_ms * 1000, none.p50_ms * 1000)} | "
                f"{_change(1e6 / miss.requests_per_second, 1e6 / none.requests_per_second)} | "
                f"{_change(cpu_miss, cpu_none)} | {_hits(miss)} |"
            )
    if not hit_rows and not miss_rows:
        return ""
    lines = [
        "The cache: the app with the cache on (the bench's own Redis on a Unix socket; a "
        "server of its own beside the uncached app), every request a hit (the cache emptied "
        "and warmed before each run, the same task or page every request; the 304 with "
        "If-None-Match: its ETag), against the uncached separate floor of the same read. "
        "Hits / misses / errors: the cached server's counters for the run's kind of entry "
        "(errors: cache commands of any kind that failed or took longer than "
        "TASKMANAGER_CACHE_TIMEOUT_MS: each is a miss, and the server then leaves the "
        "cache alone for a second), all rounds:",
        "",
        "| scenario | mode | req/s | vs its uncached separate floor | target | p50 ms "
        "| p99 ms | server CPU µs/req | PostgreSQL CPU µs/req | Redis CPU µs/req "
        "| hits / misses / errors |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---|",
        *hit_rows,
    ]
    if miss_rows:
        lines += [
            "",
            "Every request a miss (the cache emptied before each run; each request the next "
            "seeded task, none asked twice in a run: the cache looked up, the database read "
            "as without a cache, the answer stored) against the same requests on the app "
            "without a cache. CPU: server + PostgreSQL (+ Redis) per request:",
            "",
            "| mode | req/s no cache / miss | p50 ms no cache / miss | p99 ms no cache / miss "
            "| CPU µs/req no cache / miss | a miss over no cache: p50 | 1/throughput "
            "| CPU per request | hits / misses / errors |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|",
            *miss_rows,
        ]
    return "\n".join(lines) + "\n\n"


def main_tables(
    meta: dict[str, Any],
    results: dict[str, dict[str, Any]],
    argon2: dict[str, dict[str, float]] | None,
) -> str:
    """The main run's markdown: every mode's tables, then argon2's."""
    return (
        f"Measured {meta['date']} on {meta['machine']} with `{meta['command']}`: "
        f"1 uvicorn worker (uvloop, httptools), wrk -t1 -c{meta['connections']} "
        f"-d{meta['duration']}s x {meta['rounds']} rounds (order alternating), "
        f"{meta['tasks']:,} seeded tasks in the demo account's workspace, every request "
        "with its access token (login: wrk -c1 and -c4, no token). Ratios: of req/s, and of "
        "CPU per request (server + PostgreSQL, the steadier figure on a shared machine).\n\n"
        + vs_floor_markdown(results)
        + cache_markdown(results)
        + "\n".join(
            mode_markdown(mode, r["summaries"], {**meta, **r["meta"]})
            for mode, r in results.items()
        )
        + ("\n" + argon2_markdown(argon2) if argon2 else "")
    )
