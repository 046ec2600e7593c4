"""What the activity log costs a write request: the same POST /tasks and PATCH /tasks/{id}
with the log's trigger and without it, side by side in one run.

    .venv/bin/python bench/activity_cost.py                        # ~1.5 minutes
    .venv/bin/python bench/activity_cost.py --rounds 5 --duration 5

One throwaway embedded PostgreSQL, seeded as bench/run.py seeds it (10,000 tasks in the
demo account's workspace), one uvicorn server with the real app. Each round runs every
scenario twice: once with migration 0011's trigger enabled on every logged table (each
write also inserts its activity row: the diff as jsonb, the sealed caller checked, five
index entries), and once with the owner having disabled it (`ALTER TABLE ... DISABLE
TRIGGER taskmanager_activity`); which goes first alternates between rounds, so drift on a
noisy machine hits both alike. After each run the tasks and activity rows it added are
deleted and the tables vacuumed (bench/run.py does the same for its write scenarios).

Printed per scenario (medians over the rounds): requests per second, the wall time per
request they imply (1e6 / req/s at wrk's concurrency: the server's capacity, in µs), the
server's and PostgreSQL's CPU time per request, and the difference the trigger makes in
µs per request, with the ratio (with / without). Only 127.0.0.1; bounded in time (wrk -d).
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from harness import (
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
MODES = ("with the log", "without")
LOGGED_TABLES = ("workspaces", "memberships", "tasks", "categories", "labels", "task_labels")


def set_trigger(owner_url: str, enabled: bool) -> None:
    """Enable (or disable) the log's trigger on every logged table, as the tables' owner."""
    verb = "ENABLE" if enabled else "DISABLE"
    autocommit(
        owner_url,
        *(f"ALTER TABLE {table} {verb} TRIGGER taskmanager_activity" for table in LOGGED_TABLES),
    )


def restore(admin_url: str, last_task_id: int) -> None:
    """The seeded tasks only, and an empty log (as the superuser: past every policy)."""
    restore_seeded_tasks(admin_url, last_task_id)
    autocommit(admin_url, "TRUNCATE activity", "VACUUM (ANALYZE) activity")


@dataclass
class Runs:
    rps: list[float] = field(default_factory=list)
    server_us: list[float] = field(default_factory=list)
    postgres_us: list[float] = field(default_factory=list)
    activity_rows: list[float] = field(default_factory=list)

    @property
    def wall_us(self) -> float:
        return 1e6 / statistics.median(self.rps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=8, help="wrk's -c")
    parser.add_argument("--tasks", type=int, default=10_000)
    args = parser.parse_args()
    wrk = ensure_wrk()
    secret = secrets.token_urlsafe(48)
    runs = {(s.name, mode): Runs() for s in SCENARIOS for mode in MODES}
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
                for enabled in (True, False):
                    set_trigger(database.owner_url, enabled)
                    run_wrk(wrk, base, scripts[scenario.name], args.connections, 1)
            restore(database.admin_url, ids.last_id)
            for round_number in range(1, args.rounds + 1):
                modes = MODES if round_number % 2 else tuple(reversed(MODES))
                for mode in modes:
                    set_trigger(database.owner_url, mode == MODES[0])
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
                        (logged,) = autocommit(database.admin_url, "SELECT count(*) FROM activity")
                        run = runs[(scenario.name, mode)]
                        run.rps.append(rps)
                        run.server_us.append(1e6 * server_cpu / max(requests, 1))
                        run.postgres_us.append(1e6 * pg_cpu / max(requests, 1))
                        run.activity_rows.append(int(logged[0]) / max(requests, 1))
                        restore(database.admin_url, ids.last_id)
                        print(
                            f"round {round_number}  {scenario.name:<18} {mode:<13} "
                            f"{rps:>7,.0f} req/s  CPU/request: server "
                            f"{run.server_us[-1]:5.0f} us, PostgreSQL {run.postgres_us[-1]:5.0f} us"
                            f"  activity rows/request {run.activity_rows[-1]:.2f}",
                            file=sys.stderr,
                        )
            set_trigger(database.owner_url, True)
    print(report(runs, args))


def report(runs: dict[tuple[str, str], Runs], args: argparse.Namespace) -> str:
    lines = [
        f"activity log cost: wrk -t1 -c{args.connections} -d{args.duration}s x {args.rounds} "
        "rounds, medians; embedded PostgreSQL, one uvicorn worker",
        "",
        "| scenario | activity rows/req | req/s with / without | µs/req with / without "
        "| difference µs/req | ratio | PostgreSQL CPU µs/req with / without (difference) "
        "| server CPU µs/req with / without |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for scenario in SCENARIOS:
        on, off = runs[(scenario.name, MODES[0])], runs[(scenario.name, MODES[1])]
        pg_on, pg_off = statistics.median(on.postgres_us), statistics.median(off.postgres_us)
        lines.append(
            f"| `{scenario.name}` | {statistics.median(on.activity_rows):.2f} "
            f"| {statistics.median(on.rps):,.0f} / {statistics.median(off.rps):,.0f} "
            f"| {on.wall_us:,.0f} / {off.wall_us:,.0f} "
            f"| {on.wall_us - off.wall_us:+,.0f} | {on.wall_us / off.wall_us:.2f}x "
            f"| {pg_on:,.0f} / {pg_off:,.0f} ({pg_on - pg_off:+,.0f}) "
            f"| {statistics.median(on.server_us):,.0f} / {statistics.median(off.server_us):,.0f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
