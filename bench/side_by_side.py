"""POST /tasks and PATCH /tasks/{id} on one database in two modes, side by side in one run:
what one piece of the write path costs a request (activity_cost.py, role_check_cost.py).

One throwaway embedded PostgreSQL, seeded as bench/run.py seeds it (the demo account's
workspace), one uvicorn server with the real app. The caller says how the owner switches the
database between its two modes (`set_mode`); each round runs every scenario in both, which
goes first alternating between rounds, so drift on a noisy machine hits both alike. After
each run the tasks and activity rows it added are deleted and the tables vacuumed (as the
superuser: past every policy), as bench/run.py does after its write scenarios.

Per scenario and mode (medians over the rounds): requests per second, the wall time per
request they imply (1e6 / req/s at wrk's concurrency: the server's capacity, in µs), and the
server's and PostgreSQL's CPU time per request. Only 127.0.0.1; bounded in time (wrk -d).
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from harness import (
    Database,
    autocommit,
    bench_database,
    bench_server,
    cpu_seconds,
    ensure_wrk,
    log_in,
    lua_script,
    parse_wrk,
    postgres_cpu_seconds,
    restore_seeded_tasks,
    run_wrk,
    seed_database,
    seeded,
)
from scenarios import PATCH_ONE, POST_ONE

SCENARIOS = (POST_ONE, PATCH_ONE)


@dataclass(frozen=True)
class Comparison:
    """Two modes of the database, `modes[0]` the one measured against `modes[1]`."""

    modes: tuple[str, str]
    # Put the database in a mode, as its owner (database, mode).
    set_mode: Callable[[Database, str], None]
    # Read after each run, before the rows are deleted: a count the report shows per
    # request (activity_cost.py: the activity rows a run wrote).
    count: Callable[[Database], int] | None = None
    count_name: str = "rows/req"  # its column's head


@dataclass
class Runs:
    rps: list[float] = field(default_factory=list)
    server_us: list[float] = field(default_factory=list)
    postgres_us: list[float] = field(default_factory=list)
    counted: list[float] = field(default_factory=list)  # Comparison.count per request

    @property
    def wall_us(self) -> float:
        return 1e6 / statistics.median(self.rps)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=8, help="wrk's -c")
    parser.add_argument("--tasks", type=int, default=10_000)


def restore(admin_url: str, last_task_id: int) -> None:
    """The seeded tasks only, and an empty activity log (as the superuser: past every
    policy)."""
    restore_seeded_tasks(admin_url, last_task_id)
    autocommit(admin_url, "TRUNCATE activity", "VACUUM (ANALYZE) activity")


def run_side_by_side(
    comparison: Comparison, args: argparse.Namespace
) -> dict[tuple[str, str], Runs]:
    """Every scenario in both modes, round after round; left in `modes[0]` (as shipped)."""
    wrk = ensure_wrk()
    secret = secrets.token_urlsafe(48)
    runs = {(s.name, mode): Runs() for s in SCENARIOS for mode in comparison.modes}
    with bench_database("embedded") as database:
        print(f"seeding {args.tasks:,} tasks ...", file=sys.stderr)
        seed_database(database, secret, args.tasks, 20)
        ids = seeded(database.admin_url)
        env = {
            "TASKMANAGER_JWT_SECRET": secret,
            "BENCH_WORKSPACE_ID": str(ids.workspace_id),
            "BENCH_FLOOR_DATABASE_URL": database.admin_url,
        }
        with (
            bench_server(database.app_url, 1, env) as (base, process),
            tempfile.TemporaryDirectory() as scripts_dir,
        ):
            token = log_in(base)
            scripts = {
                s.name: lua_script(s, ids.first_id, ids.last_id, token, Path(scripts_dir))
                for s in SCENARIOS
            }
            for scenario in SCENARIOS:  # warm-up: pools, prepared statements, both plans
                for mode in comparison.modes:
                    comparison.set_mode(database, mode)
                    run_wrk(wrk, base, scripts[scenario.name], args.connections, 1)
            restore(database.admin_url, ids.last_id)
            for round_number in range(1, args.rounds + 1):
                modes = comparison.modes[:: 1 if round_number % 2 else -1]
                for mode in modes:
                    comparison.set_mode(database, mode)
                    for scenario in SCENARIOS:
                        server_before = cpu_seconds(process)
                        pg_before = postgres_cpu_seconds(database.postmaster_pid)
                        output = run_wrk(
                            wrk, base, scripts[scenario.name], args.connections, args.duration
                        )
                        server_cpu = cpu_seconds(process) - server_before
                        pg_cpu = postgres_cpu_seconds(database.postmaster_pid) - pg_before
                        rps, _, _, requests, errors = parse_wrk(output)
                        if errors:
                            sys.exit(f"{scenario.name} ({mode}): {errors} failed requests")
                        run = runs[(scenario.name, mode)]
                        run.rps.append(rps)
                        run.server_us.append(1e6 * server_cpu / max(requests, 1))
                        run.postgres_us.append(1e6 * pg_cpu / max(requests, 1))
                        counted = ""
                        if comparison.count is not None:
                            run.counted.append(comparison.count(database) / max(requests, 1))
                            counted = f"  {comparison.count_name} {run.counted[-1]:.2f}"
                        restore(database.admin_url, ids.last_id)
                        print(
                            f"round {round_number}  {scenario.name:<18} {mode:<16} "
                            f"{rps:>7,.0f} req/s  CPU/request: server "
                            f"{run.server_us[-1]:5.0f} us, PostgreSQL {run.postgres_us[-1]:5.0f} us"
                            f"{counted}",
                            file=sys.stderr,
                        )
            comparison.set_mode(database, comparison.modes[0])
    return runs


def table(runs: dict[tuple[str, str], Runs], comparison: Comparison) -> list[str]:
    """The markdown table: `modes[0]` against `modes[1]` ("with / without"), with a column
    of Comparison.count per request if it counts."""
    counted = comparison.count is not None
    counted_head = f"{comparison.count_name} | " if counted else ""
    lines = [
        f"| scenario | {counted_head}req/s with / without | µs/req with / without "
        "| difference µs/req | ratio | PostgreSQL CPU µs/req with / without (difference) "
        "| server CPU µs/req with / without |",
        "|---|" + ("---:|" * (7 if counted else 6)),
    ]
    for scenario in SCENARIOS:
        on, off = (runs[(scenario.name, mode)] for mode in comparison.modes)
        pg_on, pg_off = statistics.median(on.postgres_us), statistics.median(off.postgres_us)
        counted_cell = f"{statistics.median(on.counted):.2f} | " if counted else ""
        lines.append(
            f"| `{scenario.name}` | {counted_cell}"
            f"{statistics.median(on.rps):,.0f} / {statistics.median(off.rps):,.0f} "
            f"| {on.wall_us:,.0f} / {off.wall_us:,.0f} "
            f"| {on.wall_us - off.wall_us:+,.0f} | {on.wall_us / off.wall_us:.2f}x "
            f"| {pg_on:,.0f} / {pg_off:,.0f} ({pg_on - pg_off:+,.0f}) "
            f"| {statistics.median(on.server_us):,.0f} / {statistics.median(off.server_us):,.0f} |"
        )
    return lines
