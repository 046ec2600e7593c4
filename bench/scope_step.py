"""The scope step before and after sealed callers (migration 0008), side by side in one run.

    .venv/bin/python bench/scope_step.py                # ~1 minute
    .venv/bin/python bench/scope_step.py --rounds 6 --transactions 3000

One throwaway PostgreSQL over TCP with passwords (tests/support/clusters.py), two databases
with the same rows (an account, its live login session, one task with a category):

- **before**: migrated to 0007, the design of before: the service logs in as the tables'
  owner, and a request's first statement checks the user and the login session, reads the
  memberships, sets the caller (`set_config('taskmanager.user_id', ...)`) and switches to
  the shared request role, all in plain SQL; the policies read the setting as it is.
- **after**: migrated to head: the service logs in as a login that owns nothing; the first
  statement is `taskmanager_enter(user, session, 'request', valid_until, proof)` (the
  service's HMAC made in Python for each transaction, checked in the database, the caller
  sealed), and every policy checks the seal (`taskmanager_caller()`).

Each transaction is a request's database work for GET /tasks/{id}: BEGIN READ ONLY, the
scope step, the repository's own view statement (task, category, labels, under the
policies), COMMIT; and, apart, the scope step alone. Measured from one asyncpg connection
each (statements prepared once, as the app's are), alternating the order every round, as
microseconds per transaction: wall time at the client, and the backend's CPU time (from
/proc, so PostgreSQL's side alone). Only 127.0.0.1; bounded in count.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(1, str(BENCH_DIR.parent))  # tests.support.clusters, as run.py

from driver_sql import ENTER_SQL  # noqa: E402
from sqlalchemy.dialects.postgresql import asyncpg as postgresql_asyncpg  # noqa: E402
from tests.support.clusters import Cluster, tcp_cluster  # noqa: E402

from taskmanager.postgres.deployment import DatabaseLogins  # noqa: E402
from taskmanager.postgres.migrate import upgrade, upgrade_deployment  # noqa: E402
from taskmanager.repositories.task_queries.views import VIEW_BY_ID  # noqa: E402
from taskmanager.security.caller_key import CallerKey  # noqa: E402

SECRET = "bench-signing-key-that-is-long-enough-0123456789"
LEGACY_ROLE = "taskmanager_request"
# Revision 0007's first statement of a request (UserRepository._ENTER_REQUEST_SCOPE then).
BEFORE_SCOPE = f"""
    SELECT u.personal_workspace_id,
           ARRAY(SELECT m.workspace_id FROM memberships m
                 WHERE m.user_id = u.id ORDER BY m.workspace_id) AS workspace_ids,
           ARRAY(SELECT m.workspace_id FROM memberships m
                 WHERE m.user_id = u.id AND m.role = 'owner') AS owned_workspace_ids,
           set_config('taskmanager.user_id', u.id::text, true) AS caller,
           set_config('role', '{LEGACY_ROLE}', true) AS role
    FROM users u JOIN auth_sessions s ON s.user_id = u.id
    WHERE u.id = $1 AND u.is_active
      AND s.id = $2 AND s.revoked_at IS NULL AND s.expires_at > now()
"""
AFTER_SCOPE = ENTER_SQL
_VIEW = VIEW_BY_ID.compile(dialect=postgresql_asyncpg.dialect())  # type: ignore[no-untyped-call]
VIEW = str(_VIEW)


def view_arguments(workspace_ids: list[int]) -> list[Any]:
    """The view statement's parameters in its order (its literals bound as parameters)."""
    values = _VIEW.construct_params({"task_id": 1, "workspace_ids": workspace_ids})
    return [values[name] for name in _VIEW.positiontup or ()]


SESSION = uuid.UUID("5e55105e-0000-4000-8000-000000000001")
ROWS = [
    "INSERT INTO users (id, email, display_name, password_hash) "
    "VALUES (1, 'bench@example.com', 'bench', 'not a hash')",
    "INSERT INTO workspaces (id, name, created_by, personal) VALUES (1, 'Personal', 1, true)",
    "INSERT INTO memberships (workspace_id, user_id, role) VALUES (1, 1, 'owner')",
    "UPDATE users SET personal_workspace_id = 1",
    f"INSERT INTO auth_sessions (id, user_id, expires_at) "
    f"VALUES ('{SESSION}', 1, now() + interval '1 day')",
    "INSERT INTO categories (id, workspace_id, name) VALUES (1, 1, 'Work')",
    "INSERT INTO tasks (id, workspace_id, title, category_id) VALUES (1, 1, 'Write report', 1)",
    "INSERT INTO labels (id, workspace_id, name) VALUES (1, 1, 'urgent')",
    "INSERT INTO task_labels (task_id, label_id, workspace_id) VALUES (1, 1, 1)",
    "SELECT setval(s, 100) FROM unnest(ARRAY['users_id_seq', 'workspaces_id_seq', "
    "'categories_id_seq', 'tasks_id_seq', 'labels_id_seq']) s",
    "ANALYZE",
]


def prepare(cluster: Cluster) -> tuple[str, str]:
    """The two databases, their rows; the URLs the two designs' services log in with."""
    # Before 0008 the request role was one of the cluster's, granted to the owner.
    cluster.admin(f"CREATE ROLE {LEGACY_ROLE} NOLOGIN NOINHERIT")
    before = cluster.deployment("scope_before", caller_role=False)
    cluster.admin(f"GRANT {LEGACY_ROLE} TO scope_before_owner")
    upgrade(before.owner_url, "0007")
    after = cluster.deployment("scope_after")
    upgrade_deployment(DatabaseLogins(after.service_url, after.owner_url), CallerKey(SECRET))
    for deployment in (before, after):
        for statement in ROWS:  # FORCE row-level security binds the owner: the superuser
            cluster.admin(statement, database=deployment.database)
    return before.owner_url, after.service_url


def dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


Transaction = Callable[[asyncpg.Connection], Awaitable[None]]


def before_transaction(view: bool) -> Transaction:
    async def run(connection: asyncpg.Connection) -> None:
        async with connection.transaction(readonly=True):
            caller = await connection.fetchrow(BEFORE_SCOPE, 1, SESSION)
            if view:
                assert await connection.fetchrow(VIEW, *view_arguments(caller["workspace_ids"]))

    return run


def after_transaction(view: bool) -> Transaction:
    key = CallerKey(SECRET)
    valid_until = int(time.time()) + 3600

    async def run(connection: asyncpg.Connection) -> None:
        entry = key.entry("request", 1, SESSION, valid_until=valid_until)  # per request
        async with connection.transaction(readonly=True):
            caller = await connection.fetchrow(
                AFTER_SCOPE, 1, SESSION, "request", entry.valid_until, entry.proof, None, ""
            )
            if view:
                assert await connection.fetchrow(VIEW, *view_arguments(caller["workspace_ids"]))

    return run


def backend_cpu_seconds(pid: int) -> float:
    """The backend's user + system CPU time so far (Linux /proc)."""
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(url: str, transaction: Transaction, count: int) -> tuple[float, float]:
    """(wall µs, backend CPU µs) per transaction, over `count` after a warm-up."""
    connection = await asyncpg.connect(dsn(url))
    try:
        pid = connection.get_server_pid()
        for _ in range(200):
            await transaction(connection)
        cpu = backend_cpu_seconds(pid)
        started = time.perf_counter()
        for _ in range(count):
            await transaction(connection)
        wall = time.perf_counter() - started
        cpu = backend_cpu_seconds(pid) - cpu
    finally:
        await connection.close()
    return wall / count * 1e6, cpu / count * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--transactions", type=int, default=2000)
    args = parser.parse_args()
    variants: dict[str, tuple[str, Transaction]] = {}
    with tcp_cluster() as cluster:
        before_url, after_url = prepare(cluster)
        variants = {
            "before: scope step": (before_url, before_transaction(view=False)),
            "after: scope step": (after_url, after_transaction(view=False)),
            "before: scope step + view": (before_url, before_transaction(view=True)),
            "after: scope step + view": (after_url, after_transaction(view=True)),
        }
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
        for round_number in range(args.rounds):
            order = list(variants) if round_number % 2 == 0 else list(reversed(variants))
            for name in order:
                url, transaction = variants[name]
                results[name].append(asyncio.run(measure(url, transaction, args.transactions)))
                print(f"round {round_number + 1}: {name} done", file=sys.stderr)
        version = cluster.version
    proof = _proof_cost()
    table = _table(results, args, version, proof)
    print(table)
    out = BENCH_DIR / "results"
    out.mkdir(exist_ok=True)
    (out / "scope-step.md").write_text(table + "\n")
    return 0


def _proof_cost() -> float:
    """µs of Python to make one request's proof (the HMAC), measured in this process."""
    key = CallerKey(SECRET)
    count = 20_000
    started = time.perf_counter()
    for _ in range(count):
        key.entry("request", 1, SESSION, valid_until=2_000_000_000)
    return (time.perf_counter() - started) / count * 1e6


def _table(
    results: dict[str, list[tuple[float, float]]],
    args: argparse.Namespace,
    version: str,
    proof_us: float,
) -> str:
    def med(name: str, index: int) -> float:
        return statistics.median(sample[index] for sample in results[name])

    lines = [
        f"Scope step before/after sealed callers — {datetime.now(UTC):%Y-%m-%d}, {version}, "
        f"TCP with passwords, {args.rounds} rounds x {args.transactions:,} transactions "
        "(medians of the rounds)",
        "",
        "| transaction | wall µs | PostgreSQL CPU µs |",
        "|---|---:|---:|",
    ]
    for name in results:
        lines.append(f"| {name} | {med(name, 0):,.0f} | {med(name, 1):,.0f} |")
    for what in ("scope step", "scope step + view"):
        before, after = f"before: {what}", f"after: {what}"
        lines.append(
            f"| **after - before, {what}** | {med(after, 0) - med(before, 0):+,.0f} | "
            f"{med(after, 1) - med(before, 1):+,.0f} |"
        )
    lines += ["", f"The service's proof (an HMAC-SHA256 in Python) per request: {proof_us:.1f} µs."]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
