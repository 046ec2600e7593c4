"""Why PostgreSQL spends more CPU for the app's requests than for the separate floor's.

    .venv/bin/python bench/pg_wire.py                 # TCP with a password, GET /tasks/{id}, ~2 min
    .venv/bin/python bench/pg_wire.py --embedded      # the embedded server (Unix socket)
    .venv/bin/python bench/pg_wire.py --scenario "PATCH /tasks/{id}"   # any of the app's four

One throwaway PostgreSQL (the bench's own, bench/harness.py), 10,000 seeded tasks, the app
(bench_app.py) and the separate floor (floor_app.py) each in its own uvicorn process on the
same login, and the same requests (wrk, the same Lua script) sent to both in turn:

1. **CPU.** Alternating rounds of wrk -c32: PostgreSQL's CPU per request counted three ways:
   the side's own backends (found by application_name; /proc/<pid>/schedstat, nanoseconds),
   the whole server as run.py counts it (postmaster, every backend, the exited ones), and
   the difference, which is everything else the server did meanwhile (its background
   processes, the other side's idle pool). The server's idle rate is measured too: CPU per
   second that does not depend on the requests, so a slower side pays more of it per request.
2. **The wire.** With log_min_duration_statement = 0 (the embedded pgserver build ships no
   pg_stat_statements, so PostgreSQL's own log is read instead), wrk -c4 to each side: every
   Parse, Bind and Execute and every simple Query its backends received, per request, with
   the time PostgreSQL logged for it, by statement; and whether both sides sent the same
   statement texts.

Prints markdown and writes bench/results/pg-wire[-<mode>].md and .json. Every process it
starts (PostgreSQL, both servers, wrk) is stopped by its PID.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from contextlib import ExitStack, asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]
from fastapi import FastAPI, Request
from harness import (
    FLOOR_APP,
    RESULTS_DIR,
    autocommit,
    bench_database,
    bench_server,
    cpu_seconds,
    ensure_wrk,
    floor_env,
    log_in,
    lua_script,
    parse_wrk,
    postgres_cpu_seconds,
    restore_seeded_tasks,
    run_wrk,
    seed_database,
    seeded,
    server_env,
)
from scenarios import APP_SCENARIOS, Scenario

# Each side's backends, by the application_name its pool connects with. "burning floor": the
# separate floor that also burns, in Python, the CPU the app spends per request beyond it.
SIDES = {"app": "taskmanager", "floor": "taskmanager_floor", "burning floor": "taskmanager_burn"}

# A statement's first log line (log_line_prefix '%m [%p] %a '); the text may go on over the
# lines after it, each indented by a tab.
_LOGGED = re.compile(
    r"^\S+ \S+ \S+ \[(?P<pid>\d+)\] (?P<app>\S*) LOG:  duration: (?P<ms>[\d.]+) ms  "
    r"(?:(?P<kind>parse|bind|execute) (?P<name>[^:]*): |statement: )(?P<sql>.*)$"
)
KINDS = ("query", "parse", "bind", "execute")  # a simple Query; the extended protocol's
_NEW_LINE = re.compile(r"^\d{4}-\d\d-\d\d ")


_TOUCHED = list(range(256)) * 1024  # 256 Ki small ints (2 MiB of references): no allocation


def burn(microseconds: float) -> None:
    """Python work for `microseconds`, blocking the event loop as the app's own Python does
    and walking memory as it does (a list of 2 MiB), without allocating: nothing for the
    garbage collector, whose runs would not be bounded by the time given."""
    end = time.perf_counter() + microseconds / 1e6
    start = 0
    while time.perf_counter() < end:
        total = 0
        for item in _TOUCHED[start : start + 1024]:
            total += item
        start = (start + 1024) % len(_TOUCHED)


def create_burning_floor_app() -> FastAPI:
    """The separate floor that also burns BENCH_FLOOR_BURN_US of CPU per request in three
    parts, where the app's own Python runs: before the transaction (token, dependencies),
    inside it after the scope statement (the caller's scope, the repository), and after
    COMMIT (the answer). The same statements, the same pool; application_name
    taskmanager_burn, so its backends can be told apart."""
    import floor_app

    third = float(os.environ["BENCH_FLOOR_BURN_US"]) / 3
    entered = floor_app._entered

    @asynccontextmanager
    async def burning(request: Request, *, readonly: bool) -> AsyncIterator[tuple[Any, Any]]:
        burn(third)
        async with entered(request, readonly=readonly) as (connection, caller):
            burn(third)
            yield connection, caller
        burn(third)

    floor_app._entered = burning
    floor_app.APPLICATION_NAME = SIDES["burning floor"]
    return floor_app.create_floor_app()


def statement_names() -> dict[str, str]:
    """Known statement texts (whitespace folded) -> a short name."""
    from floor_app import STATEMENTS

    return {_fold(c.sql): name for name, c in STATEMENTS.items()}


def _fold(sql: str) -> str:
    return " ".join(sql.split())


def logged_messages(text: str) -> list[dict[str, Any]]:
    """The statements PostgreSQL logged: application, pid, message kind, ms, SQL."""
    messages: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    for line in text.splitlines():
        if line.startswith("\t") and current is not None:
            current["sql"] += "\n" + line[1:]
            continue
        current = None
        if not _NEW_LINE.match(line):
            continue
        match = _LOGGED.match(line)
        if match is None:
            continue
        current = {
            "app": match["app"],
            "pid": int(match["pid"]),
            "kind": match["kind"] or "query",
            "ms": float(match["ms"]),
            "sql": match["sql"],
        }
        messages.append(current)
    return messages


def backend_pids(admin_url: str) -> dict[str, list[int]]:
    """The client backends of each side, by application_name."""
    names = ", ".join(f"'{name}'" for name in SIDES.values())
    (row,) = autocommit(
        admin_url,
        "SELECT json_object_agg(application_name, pids)::text FROM (SELECT application_name, "
        "array_agg(pid) AS pids FROM pg_stat_activity WHERE backend_type = 'client backend' "
        f"AND application_name IN ({names}) GROUP BY application_name) s",
    )
    found: dict[str, list[int]] = json.loads(row[0] or "{}")
    return {side: found.get(name, []) for side, name in SIDES.items()}


def scheduler(pids: list[int]) -> Counter[str]:
    """What the scheduler counted for these processes so far: ns on a CPU, ns waiting for
    one (runnable, not running), and context switches (voluntary: it waited for the next
    message; involuntary: preempted)."""
    total: Counter[str] = Counter()
    for pid in pids:
        with suppress(OSError, ValueError, IndexError):  # a backend that has exited: 0
            on_cpu, waiting, _slices = Path(f"/proc/{pid}/schedstat").read_text().split()
            total["cpu_ns"] += int(on_cpu)
            total["wait_ns"] += int(waiting)
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                name, _, value = line.partition(":")
                if name in ("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches"):
                    total[name] += int(value)
    return total


def cpu_rounds(
    wrk: str,
    bases: dict[str, str],
    servers: dict[str, psutil.Process],
    script: Path,
    database: Any,
    seeded_last_id: int,
    scenario: Scenario,
    rounds: int,
    duration: int,
) -> list[dict[str, Any]]:
    runs = []
    for round_number in range(1, rounds + 1):
        order = list(bases) if round_number % 2 else list(reversed(bases))
        for side in order:
            pids = backend_pids(database.admin_url)[side]
            own_before = scheduler(pids)
            whole_before = postgres_cpu_seconds(database.postmaster_pid)
            server_before = cpu_seconds(servers[side])
            output = run_wrk(wrk, bases[side], script, 32, duration)
            own = scheduler(pids) - own_before
            whole = postgres_cpu_seconds(database.postmaster_pid) - whole_before
            server = cpu_seconds(servers[side]) - server_before
            rps, _p50, _p99, requests, errors = parse_wrk(output)
            if scenario.method != "GET":
                restore_seeded_tasks(database.admin_url, seeded_last_id)
            run = {
                "side": side,
                "round": round_number,
                "rps": rps,
                "requests": requests,
                "errors": errors,
                "backends": len(pids),
                "own_us": own["cpu_ns"] / 1000 / max(requests, 1),
                "whole_us": 1e6 * whole / max(requests, 1),
                "server_us": 1e6 * server / max(requests, 1),
                "wait_us": own["wait_ns"] / 1000 / max(requests, 1),
                "voluntary": own["voluntary_ctxt_switches"] / max(requests, 1),
                "involuntary": own["nonvoluntary_ctxt_switches"] / max(requests, 1),
            }
            runs.append(run)
            print(
                f"round {round_number} {side:<5} {rps:7,.0f} req/s  CPU/request: server "
                f"{run['server_us']:5.0f} us, PostgreSQL: own backends {run['own_us']:5.0f} us, "
                f"whole server {run['whole_us']:5.0f} us"
                + (f"  {errors} errors" if errors else ""),
                file=sys.stderr,
            )
    return runs


def idle_rate(database: Any, seconds: float) -> float:
    """The whole server's CPU µs per second with both sides connected and no request."""
    before = postgres_cpu_seconds(database.postmaster_pid)
    time.sleep(seconds)
    return 1e6 * (postgres_cpu_seconds(database.postmaster_pid) - before) / seconds


def wire(
    wrk: str,
    bases: dict[str, str],
    script: Path,
    database: Any,
    seeded_last_id: int,
    scenario: Scenario,
    duration: int,
) -> dict[str, Any]:
    """Each side's statements as PostgreSQL logged them, under wrk -c4."""
    assert database.postgres_log is not None, "pg_wire.py needs the server's log"
    autocommit(
        database.admin_url,
        "ALTER SYSTEM SET log_min_duration_statement = 0",
        "ALTER SYSTEM SET log_line_prefix = '%m [%p] %a '",
        "SELECT pg_reload_conf()",
    )
    time.sleep(1)
    captured: dict[str, Any] = {}
    try:
        for side, base in bases.items():
            start = database.postgres_log.stat().st_size
            output = run_wrk(wrk, base, script, 4, duration)
            time.sleep(0.5)  # the last lines
            with database.postgres_log.open(errors="replace") as log:
                log.seek(start)
                text = log.read()
            requests = parse_wrk(output)[3]
            messages = [m for m in logged_messages(text) if m["app"] == SIDES[side]]
            captured[side] = {"requests": requests, "messages": messages}
            if scenario.method != "GET":
                restore_seeded_tasks(database.admin_url, seeded_last_id)
    finally:
        autocommit(
            database.admin_url,
            "ALTER SYSTEM RESET log_min_duration_statement",
            "ALTER SYSTEM RESET log_line_prefix",
            "SELECT pg_reload_conf()",
        )
    return captured


def _label(sql: str, names: dict[str, str]) -> str:
    folded = _fold(sql)
    return names.get(folded) or (folded if len(folded) <= 60 else folded[:57] + "...")


def wire_table(captured: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    names = statement_names()
    per: dict[str, dict[tuple[str, str], list[float]]] = {}
    texts: dict[str, set[str]] = {}
    for side, c in captured.items():
        grouped: dict[tuple[str, str], list[float]] = defaultdict(list)
        for m in c["messages"]:
            grouped[(_label(m["sql"], names), m["kind"])].append(m["ms"])
        per[side] = grouped
        # what every request sends (not the app's outbox worker, polling now and then)
        sent = Counter(_fold(m["sql"]) for m in c["messages"] if m["kind"] != "parse")
        texts[side] = {sql for sql, n in sent.items() if n >= 0.5 * c["requests"]}
    keys = sorted(
        {key for grouped in per.values() for key in grouped},
        key=lambda k: -max(len(per[s].get(k, [])) for s in per),
    )
    sides = list(captured)
    lines = [
        "| statement | message | "
        + " | ".join(f"{side}: per request | {side}: µs each (median)" for side in sides)
        + " |",
        "|---|---|" + "---:|---:|" * len(sides),
    ]
    figures: dict[str, Any] = {side: {} for side in sides}
    for key in keys:
        cells = []
        for side in sides:
            values = per[side].get(key, [])
            requests = max(captured[side]["requests"], 1)
            count = len(values) / requests
            median = 1000 * statistics.median(values) if values else 0.0
            figures[side][f"{key[0]} / {key[1]}"] = {"per_request": count, "median_us": median}
            cells.append(f"{count:.2f} | {median:,.0f}" if values else "0 | ")
        lines.append(f"| {key[0]} | {key[1]} | " + " | ".join(cells) + " |")
    totals = []
    for side in sides:
        requests = max(captured[side]["requests"], 1)
        messages = captured[side]["messages"]
        kinds = Counter(m["kind"] for m in messages)
        logged_ms = sum(m["ms"] for m in messages)
        counts = ", ".join(f"{kinds[k] / requests:.2f} {k}" for k in KINDS)
        totals.append(
            f"- {side}: {captured[side]['requests']:,} requests; per request {counts}; "
            f"PostgreSQL's logged time {1000 * logged_ms / requests:,.0f} µs"
        )
        figures[side]["requests"] = captured[side]["requests"]
        figures[side]["logged_us_per_request"] = 1000 * logged_ms / requests
    same = texts.get("app") == texts.get("floor")
    totals.append(
        "- statement texts: "
        + (
            "the same on both sides"
            if same
            else "DIFFERENT: app only: "
            + "; ".join(sorted(_label(t, names) for t in texts["app"] - texts["floor"]))
            + "; floor only: "
            + "; ".join(sorted(_label(t, names) for t in texts["floor"] - texts["app"]))
        )
    )
    return "\n".join([*totals, "", *lines]) + "\n", figures


def cpu_table(runs: list[dict[str, Any]], idle_us_per_s: float) -> tuple[str, dict[str, Any]]:
    lines = [
        "| side | req/s | server CPU µs/req | PostgreSQL CPU µs/req: its own backends "
        "| whole server (run.py's) | the idle rate's share at this req/s | its backends: "
        "waiting for a CPU µs/req | context switches/req: voluntary, involuntary |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    figures: dict[str, Any] = {}
    for side in SIDES:
        mine = [r for r in runs if r["side"] == side]
        if not mine:
            continue
        f = {
            key: statistics.median(r[key] for r in mine)
            for key in ("rps", "server_us", "own_us", "whole_us", "wait_us", "voluntary",
                        "involuntary")
        }  # fmt: skip
        figures[side] = f
        lines.append(
            f"| {side} | {f['rps']:,.0f} | {f['server_us']:,.0f} | {f['own_us']:,.0f} | "
            f"{f['whole_us']:,.0f} | {idle_us_per_s / f['rps']:,.0f} | {f['wait_us']:,.0f} | "
            f"{f['voluntary']:.1f}, {f['involuntary']:.2f} |"
        )
    if "app" in figures and "floor" in figures:
        a, f = figures["app"], figures["floor"]
        lines.append(
            f"| app / floor | {a['rps'] / f['rps']:.2f}x | {a['server_us'] / f['server_us']:.2f}x "
            f"| {a['own_us'] / f['own_us']:.2f}x | {a['whole_us'] / f['whole_us']:.2f}x | | | |"
        )
    return "\n".join(lines) + "\n", figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--embedded", action="store_true", help="the embedded server (default TCP)")
    parser.add_argument(
        "--scenario",
        default="GET /tasks/{id}",
        choices=[s.name for s in APP_SCENARIOS],
        help="which request (default GET /tasks/{id})",
    )
    parser.add_argument("--rounds", type=int, default=4, help="CPU rounds (order alternates)")
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--wire-duration", type=int, default=3, help="seconds of logged wrk -c4")
    parser.add_argument("--tasks", type=int, default=10_000)
    args = parser.parse_args()
    mode = "embedded" if args.embedded else "tcp"
    scenario = next(s for s in APP_SCENARIOS if s.name == args.scenario)
    wrk = ensure_wrk()
    with bench_database(mode) as database, ExitStack() as stack:
        secret = secrets.token_urlsafe(48)
        print(f"[{mode}] seeding {args.tasks:,} tasks ...", file=sys.stderr)
        seed_database(database, secret, args.tasks, 20)
        ids = seeded(database.admin_url)
        env = server_env(database, secret, ids)
        servers: dict[str, psutil.Process] = {}
        bases: dict[str, str] = {}
        for side, factory, extra in (
            ("app", "bench_app:create_bench_app", env),
            ("floor", FLOOR_APP, floor_env(env)),
        ):
            bases[side], servers[side] = stack.enter_context(
                bench_server(database.app_url, 1, extra, app=factory)
            )
        token = log_in(bases["app"])
        directory = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        script = lua_script(scenario, ids.first_id, ids.last_id, token, directory)
        python_us = {}
        for side in list(bases):  # warm-up: every pooled connection prepares and plans
            before = cpu_seconds(servers[side])
            requests = parse_wrk(run_wrk(wrk, bases[side], script, 32, 3))[3]
            python_us[side] = 1e6 * (cpu_seconds(servers[side]) - before) / max(requests, 1)
        # What the app's process spends per request beyond the floor's, burnt by a third side
        burnt = max(python_us["app"] - python_us["floor"], 0.0)
        burning_env = {**floor_env(env), "BENCH_FLOOR_BURN_US": f"{burnt:.0f}"}
        side = "burning floor"
        bases[side], servers[side] = stack.enter_context(
            bench_server(database.app_url, 1, burning_env, app="pg_wire:create_burning_floor_app")
        )
        run_wrk(wrk, bases[side], script, 32, 3)
        restore_seeded_tasks(database.admin_url, ids.last_id)
        idle = idle_rate(database, 3.0)
        runs = cpu_rounds(
            wrk, bases, servers, script, database, ids.last_id, scenario, args.rounds,
            args.duration,
        )  # fmt: skip
        captured = wire(wrk, bases, script, database, ids.last_id, scenario, args.wire_duration)
    cpu_md, cpu_figures = cpu_table(runs, idle)
    wire_md, wire_figures = wire_table(captured)
    report = (
        f"`bench/pg_wire.py{' --embedded' if args.embedded else ''} --scenario "
        f'"{scenario.name}"`, {time.strftime("%Y-%m-%d %H:%M")}, {mode}: wrk -t1 -c32 '
        f"-d{args.duration}s x {args.rounds} rounds per side (alternating), then wrk -c4 "
        f"-d{args.wire_duration}s per side with every statement logged. Idle server: "
        f"{idle:,.0f} µs of CPU per second. The burning floor burns {burnt:,.0f} µs of "
        "Python per request (the app's server CPU per request beyond the floor's, measured "
        f"in the warm-up).\n\n{cpu_md}\n{wire_md}"
    )
    print(report)
    RESULTS_DIR.mkdir(exist_ok=True)
    name = "pg-wire" + ("-embedded" if args.embedded else "")
    (RESULTS_DIR / f"{name}.md").write_text(report)
    payload = {"scenario": scenario.name, "mode": mode, "idle_us_per_s": idle, "runs": runs,
               "burnt_us": burnt, "cpu": cpu_figures, "wire": wire_figures}  # fmt: skip
    (RESULTS_DIR / f"{name}.json").write_text(json.dumps(payload, indent=2))
    print(f"wrote {RESULTS_DIR / name}.md and .json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
