"""What a search costs an account with no tasks and the demo account, before and after the
search read only the caller's workspaces' index entries (migration 0009), side by side.

    .venv/bin/python bench/search_scope.py                    # 1,000,000 tasks (~10 min)
    .venv/bin/python bench/search_scope.py --tasks 200000     # a quicker look
    .venv/bin/python bench/search_scope.py --before REF       # "before" = the code at REF

Two throwaway embedded servers, each seeded with the same `--tasks` tasks in the demo
account's workspace (`db seed`'s code) and an account without tasks registered beside it:
one migrated to 0007 and served by the code of `--before` (by default the commit before the
one that added the migration; `git archive` of its src/, run with PYTHONPATH in front), one
at head served by this checkout. Every request goes to both in turn (p50/p99 of up to
`--samples` requests, at most 20 s a scenario), so the two versions meet the same noise.
Then the search function itself, in SQL as each account (EXPLAIN (ANALYZE, BUFFERS): the
blocks it asked for, including what it read inside), the sizes of the table and of the
search's index, and last the migration itself: the 0007 database upgraded to head, timed.
Writes bench/results/search-scope.md and .json.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from figures import percentile
from harness import (
    BENCH_DIR,
    RESULTS_DIR,
    bench_database,
    bench_server,
    log_in,
    measure_interleaved,
)

from taskmanager.security.caller_key import CallerKey

ROOT = BENCH_DIR.parent
SECRET = "search-scope-bench-" + "x" * 40
BEFORE_REVISION = "0007"
MIGRATION = "src/taskmanager/migrations/versions/*_search_within_workspaces.py"
EMPTY_EMAIL = "nobody@example.com"
EMPTY_PASSWORD = "a password of an account with no tasks"
PAGE = 50
# A one-letter prefix (half the seeded tasks: "Seeded task n" descriptions, and more) and a
# whole word in one seeded title in twelve.
QUERIES = ("s", "dentist")
BUDGET_S = 20.0


@dataclass
class Side:
    """One version of the service: its database and the server on it."""

    name: str  # "before" | "after"
    admin_url: str
    base: str = ""
    clients: dict[str, httpx.Client] = field(default_factory=dict)  # by account
    seed_seconds: float = 0.0


def before_commit(explicit: str | None) -> str:
    """`explicit`, or the parent of the commit that added the search-within-workspaces
    migration."""
    if explicit:
        ref = explicit
    else:
        added = subprocess.run(
            ["git", "log", "--diff-filter=A", "--format=%H", "-1", "--", MIGRATION],
            cwd=ROOT, capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        if not added:
            sys.exit("no commit adds the migration yet: say which code is before (--before)")
        ref = f"{added}^"
    return subprocess.run(
        ["git", "rev-parse", "--short", ref], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()


@contextmanager
def exported_source(commit: str) -> Iterator[Path]:
    """src/ of `commit` in a temporary directory (read from git's objects; nothing in the
    checkout changes)."""
    with tempfile.TemporaryDirectory(prefix="taskmanager-before-") as directory:
        archive = subprocess.run(
            ["git", "archive", "--format=tar", commit, "src"], cwd=ROOT, capture_output=True,
            check=True,
        ).stdout  # fmt: skip
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(directory, filter="data")
        yield Path(directory) / "src"


def seed(database: Any, old_src: Path | None, secret: str, tasks: int) -> float:
    """Migrate and seed `tasks` tasks; the seconds the seed took. The code before seeds with
    its own `taskmanager db seed` (as the superuser, as it served on the embedded server);
    this checkout, through the deployment's logins (harness.seed_database)."""
    from harness import seed_database

    if old_src is None:
        return seed_database(database, secret, tasks, 50)["seconds"]
    env = {**os.environ, "DATABASE_URL": database.admin_url, "PYTHONPATH": str(old_src)}
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "taskmanager", "db", "seed", "--tasks", str(tasks),
         "--categories", "50"],
        env=env, check=True, capture_output=True, cwd=tempfile.gettempdir(),
    )  # fmt: skip
    return time.perf_counter() - started


def empty_account_token(base: str) -> str:
    """Register the account without tasks through the API and log it in."""
    registered = httpx.post(
        f"{base}/auth/register", json={"email": EMPTY_EMAIL, "password": EMPTY_PASSWORD},
        timeout=30,
    )  # fmt: skip
    registered.raise_for_status()
    return log_in(base, EMPTY_EMAIL, EMPTY_PASSWORD)


def scenarios() -> list[tuple[str, str, str]]:
    """(name, account, path): each query for the account without tasks, and for the demo
    account as clients send it (counted) and as a cursor walk reads it (count=false)."""
    found = []
    for q in QUERIES:
        found.append((f"no tasks, q={q}", "empty", f"/tasks?limit={PAGE}&q={q}"))
    for q in QUERIES:
        found.append((f"demo, q={q}", "demo", f"/tasks?limit={PAGE}&q={q}"))
        found.append(
            (f"demo, q={q}, count=false", "demo", f"/tasks?limit={PAGE}&q={q}&count=false")
        )
    return found


def function_reads(side: Side) -> list[dict[str, Any]]:
    """The search function as each account runs it (as the request role): the caller's
    matches, and the blocks the function asked for (EXPLAIN (ANALYZE, BUFFERS): a SQL
    function's own reads count on the node that calls it), median ms of 5."""
    import asyncpg

    from taskmanager.config import normalize_database_url
    from taskmanager.seed import DEMO_EMAIL

    dsn = normalize_database_url(side.admin_url).replace("postgresql+asyncpg", "postgresql")
    if side.name == "before":
        call = "taskmanager_matching_tasks(to_tsquery('simple', $1 || ':*'))"
    else:
        call = "taskmanager_matching_tasks(ARRAY[$1], to_tsquery('simple', $1 || ':*'))"
    statement = f"SELECT count(*) FROM {call}"

    async def run() -> list[dict[str, Any]]:
        connection = await asyncpg.connect(dsn)
        rows = []
        try:
            for account, email in (("empty", EMPTY_EMAIL), ("demo", DEMO_EMAIL)):
                user_id = await connection.fetchval("SELECT id FROM users WHERE email = $1", email)
                for q in QUERIES:
                    async with connection.transaction():
                        if side.name == "before":  # the caller as the code before set it
                            await connection.execute(
                                "SELECT set_config('taskmanager.user_id', $1, true), "
                                "set_config('role', 'taskmanager_request', true)",
                                str(user_id),
                            )
                        else:  # entered, as a request is now
                            entry = CallerKey(SECRET).entry("operator", user_id)
                            await connection.execute(
                                "SELECT set_config('role', e.caller_role, true) FROM "
                                "taskmanager_enter($1, NULL, 'operator', $2, $3) e",
                                user_id, entry.valid_until, entry.proof,
                            )  # fmt: skip
                        matches = await connection.fetchval(statement, q)
                        runs = []
                        for _ in range(5):
                            plan = json.loads(
                                await connection.fetchval(
                                    f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {statement}", q
                                )
                            )[0]
                            runs.append(plan)
                    top = plan["Plan"]
                    rows.append({
                        "side": side.name, "account": account, "q": q, "matches": matches,
                        "blocks": top["Shared Hit Blocks"] + top["Shared Read Blocks"],
                        "ms": statistics.median(run["Execution Time"] for run in runs),
                    })  # fmt: skip
        finally:
            await connection.close()
        return rows

    return asyncio.run(run())


def sizes(side: Side, index: str) -> dict[str, int]:
    from harness import autocommit

    table, search_index = autocommit(
        side.admin_url,
        "SELECT pg_table_size('tasks')",
        f"SELECT pg_relation_size('{index}')",
    )
    return {"table": int(table[0]), "index": int(search_index[0])}


def upgrade_timed(url: str) -> float:
    from taskmanager.postgres.migrate import upgrade

    started = time.perf_counter()
    upgrade(url)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=1_000_000, help="seeded tasks (each side)")
    parser.add_argument("--samples", type=int, default=50, help="requests per scenario and side")
    parser.add_argument("--before", metavar="REF", help="the code before (a git ref)")
    args = parser.parse_args()
    commit = before_commit(args.before)
    results: dict[str, Any] = {"tasks": args.tasks, "before": commit, "requests": {}}
    with ExitStack() as stack:
        old_src = stack.enter_context(exported_source(commit))
        sides = []
        for name, revision in (("before", BEFORE_REVISION), ("after", "head")):
            database = stack.enter_context(bench_database("embedded"))
            side = Side(name, database.admin_url)
            print(f"{name}: seeding {args.tasks:,} tasks at {revision} ...", file=sys.stderr)
            secret = SECRET
            before = name == "before"
            side.seed_seconds = seed(database, old_src if before else None, secret, args.tasks)
            print(f"  {side.seed_seconds:.1f} s", file=sys.stderr)
            env = {"TASKMANAGER_JWT_SECRET": secret}
            if before:  # the code before, its own app, as the superuser it served as
                env["PYTHONPATH"] = os.pathsep.join((str(old_src), str(BENCH_DIR)))
                side.base, _ = stack.enter_context(
                    bench_server(database.admin_url, 1, env, app="taskmanager.main:create_app")
                )
            else:
                side.base, _ = stack.enter_context(bench_server(database.app_url, 1, env))
            for account, token in (
                ("demo", log_in(side.base)),
                ("empty", empty_account_token(side.base)),
            ):
                side.clients[account] = stack.enter_context(
                    httpx.Client(
                        base_url=side.base, timeout=120,
                        headers={"Authorization": f"Bearer {token}"},
                    )
                )  # fmt: skip
            sides.append(side)
        for name, account, path in scenarios():
            print(f"measuring {name} ...", file=sys.stderr)
            requests = [(side.clients[account], path) for side in sides]
            before, after = measure_interleaved(requests, args.samples, BUDGET_S)
            results["requests"][name] = {
                side.name: {"p50": statistics.median(ms), "p99": percentile(ms, 0.99),
                            "samples": len(ms)}
                for side, ms in zip(sides, (before, after), strict=True)
            }  # fmt: skip
        print("the search function in SQL ...", file=sys.stderr)
        results["function"] = [row for side in sides for row in function_reads(side)]
        results["seed_seconds"] = {side.name: side.seed_seconds for side in sides}
        results["sizes"] = {
            "before": sizes(sides[0], "ix_tasks_search_vector"),
            "after": sizes(sides[1], "ix_tasks_workspace_words"),
        }
        print("upgrading the 0007 database to head ...", file=sys.stderr)
        results["upgrade_seconds"] = upgrade_timed(sides[0].admin_url)
        results["sizes"]["upgraded"] = sizes(sides[0], "ix_tasks_workspace_words")
    table = markdown(results)
    print(table)
    RESULTS_DIR.mkdir(exist_ok=True)
    (RESULTS_DIR / "search-scope.md").write_text(table)
    (RESULTS_DIR / "search-scope.json").write_text(json.dumps(results, indent=2))
    return 0


def markdown(results: dict[str, Any]) -> str:
    tasks = results["tasks"]
    lines = [
        f"{tasks:,} tasks of the demo account; before = `{results['before']}` at 0007, after = "
        "this checkout at head.",
        "",
        f"| GET /tasks, limit {PAGE} | before p50 ms | p99 | after p50 ms | p99 "
        "| after / before (p50) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in results["requests"].items():
        before, after = r["before"], r["after"]
        lines.append(
            f"| {name} | {before['p50']:.1f} | {before['p99']:.1f} | {after['p50']:.1f} | "
            f"{after['p99']:.1f} | {after['p50'] / before['p50']:.2f}x |"
        )
    lines += [
        "",
        "The search function alone, in SQL as each account (the count of its matches; blocks "
        "= shared buffers asked for, hit or read; median ms of 5):",
        "",
        "| account | q | its matches | blocks before | blocks after | ms before | ms after |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    rows = {(r["side"], r["account"], r["q"]): r for r in results["function"]}
    for account in ("empty", "demo"):
        for q in QUERIES:
            before, after = rows["before", account, q], rows["after", account, q]
            assert before["matches"] == after["matches"], (before, after)
            lines.append(
                f"| {'no tasks' if account == 'empty' else 'demo'} | {q} | {after['matches']:,} | "
                f"{before['blocks']:,} | {after['blocks']:,} | {before['ms']:.2f} | "
                f"{after['ms']:.2f} |"
            )
    seeds, size = results["seed_seconds"], results["sizes"]
    mb = 1024 * 1024
    lines += [
        "",
        "| | before | after |",
        "|---|---:|---:|",
        f"| `db seed`, {tasks:,} tasks | {seeds['before']:.1f} s | {seeds['after']:.1f} s |",
        f"| tasks (table) | {size['before']['table'] / mb:,.0f} MB | "
        f"{size['after']['table'] / mb:,.0f} MB |",
        f"| the search's GIN index | {size['before']['index'] / mb:,.0f} MB | "
        f"{size['after']['index'] / mb:,.0f} MB |",
        "",
        f"Migration 0009 on the {tasks:,} tasks of the 0007 database: "
        f"{results['upgrade_seconds']:.1f} s; then the table is "
        f"{size['upgraded']['table'] / mb:,.0f} MB and the index it built "
        f"{size['upgraded']['index'] / mb:,.0f} MB.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
