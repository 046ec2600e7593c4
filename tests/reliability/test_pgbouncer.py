"""Behind a connection pooler: the API through a real PgBouncer in transaction pooling mode.

PgBouncer (the Debian package, started here as a subprocess) sits between `taskmanager
serve --workers 2` and the embedded PostgreSQL with only POOL_SIZE server connections, so
the two workers' many client connections take turns on a few server connections, one
transaction at a time. With TASKMANAGER_PGBOUNCER=true a representative part of the API
contract and a burst of concurrent mixed requests are all answered correctly, and the
database holds exactly what the API acknowledged. The CLI (migrate, COPY seed, purge)
works through it too.

Without the setting the same engine and server fail through the same PgBouncer, which is
what makes these tests able to fail: PgBouncer refuses the statement_timeout startup
parameter (the engine cannot connect at all), and without that parameter asyncpg's cached
named prepared statements end up on server connections other than the one that prepared
them (500s: prepared statement "__asyncpg_stmt_N__" does not exist / already exists).
"""

from __future__ import annotations

import asyncio
import random
import re
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from taskmanager.config import Settings, normalize_database_url
from taskmanager.database import check_database, create_engine
from tests.support.accounts import TEST_SECRET, ServedLogin, register_over_http
from tests.support.databases import owner_url, superuser_url
from tests.support.pgbouncer import PgBouncer, pgbouncer_binary, run_pgbouncer
from tests.support.problems import assert_problem
from tests.support.processes import READY_WITHIN, ServeProcess, clean_env, serve
from tests.support.reliability import ReliabilityRecorder

pytestmark = [pytest.mark.server, pytest.mark.reliability]

AREA = "Behind a connection pooler"
POOL_SIZE = 4  # PgBouncer's server connections for the database: far fewer than clients
CONCURRENCY = 20
UNKNOWN_ID = 2_000_000_000
PROBLEM_JSON = "application/problem+json"


@dataclass(frozen=True)
class Pooled:
    bouncer: PgBouncer
    direct_url: str  # the same database, straight through the Unix socket (for checks)


@pytest.fixture(scope="module")
def pooled(make_database: Callable[[str], str]) -> Iterator[Pooled]:
    """A migrated database of its own behind a PgBouncer in transaction mode."""
    if pgbouncer_binary() is None:
        pytest.skip(
            "pgbouncer is not installed (Debian package `pgbouncer`; "
            "scripts/install-system-deps.sh installs it)"
        )
    direct_url = make_database("behind_pgbouncer")
    with run_pgbouncer(direct_url, pool_size=POOL_SIZE) as bouncer:
        yield Pooled(bouncer, direct_url)


def pooled_env(pooled: Pooled, **overrides: str | None) -> dict[str, str]:
    return clean_env(
        DATABASE_URL=pooled.bouncer.url(),
        # Migrations straight to PostgreSQL, as the owner: PgBouncer pools the service's login.
        OWNER_DATABASE_URL=owner_url(pooled.direct_url),
        TASKMANAGER_LOG_LEVEL="WARNING",
        TASKMANAGER_JWT_SECRET=TEST_SECRET,
        **overrides,
    )


@pytest.fixture(scope="module")
def server(pooled: Pooled, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """`taskmanager serve --workers 2` in pgbouncer mode, through PgBouncer."""
    env = pooled_env(pooled, TASKMANAGER_PGBOUNCER="true")
    with serve(env, tmp_path_factory.mktemp("serve-cwd"), "--workers", "2") as process:
        yield process


@pytest.fixture(scope="module")
def user(server: ServeProcess) -> ServedLogin:
    """The account the requests below are made as, registered through PgBouncer."""
    return register_over_http(server.base_url, "pooled@example.com")


async def query(url: str, sql: str, **params: Any) -> list[Any]:
    """Rows of `sql` on a connection of its own to `url`, as the login it names (the
    superuser's, straight to PostgreSQL, for the database's own view)."""
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            return list((await connection.execute(text(sql), params)).all())
    finally:
        await engine.dispose()


# ─────────────────────────────────────────────
# The API contract, one request at a time
# ─────────────────────────────────────────────


async def test_api_contract_through_pgbouncer(
    server: ServeProcess, user: ServedLogin, pooled: Pooled, reliability: ReliabilityRecorder
) -> None:
    m = f"seq-{uuid.uuid4().hex[:8]}"
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10, headers=user.headers) as api:
        r = await api.post("/categories", json={"name": f"{m} Work"})
        assert r.status_code == 201, r.text
        assert r.headers["ETag"] == '"1"'
        assert r.headers["Location"].endswith(f"/{r.json()['id']}")
        category_id = r.json()["id"]

        duplicate = await api.post("/categories", json={"name": f"{m} WORK"})
        assert_problem(duplicate, 409)

        r = await api.post("/tasks", json={"title": f"{m} one", "category_id": category_id})
        assert r.status_code == 201, r.text
        assert r.json()["category"] == {"id": category_id, "name": f"{m} Work"}
        one = r.json()["id"]
        r = await api.post("/tasks", json={"title": f"{m} two", "completed": True})
        assert r.status_code == 201, r.text
        two = r.json()["id"]

        missing = await api.post("/tasks", json={"title": f"{m} x", "category_id": UNKNOWN_ID})
        assert_problem(missing, 422)
        assert missing.json()["errors"][0]["field"] == "body.category_id"

        r = await api.get(f"/tasks/{one}")
        assert r.status_code == 200, r.text
        assert r.headers["ETag"].startswith('"1-'), r.text  # its version, and its category
        r = await api.get("/tasks", params={"q": m})
        assert r.headers["X-Total-Count"] == "2", r.text
        assert {t["id"] for t in r.json()} == {one, two}
        r = await api.get("/tasks", params={"q": m, "completed": True})
        assert r.headers["X-Total-Count"] == "1"
        assert [t["id"] for t in r.json()] == [two]
        r = await api.get("/tasks", params={"q": m, "category_id": category_id, "limit": 1})
        assert r.headers["X-Total-Count"] == "1"
        assert [t["id"] for t in r.json()] == [one]

        r = await api.patch(f"/tasks/{one}", json={"completed": True}, headers={"If-Match": '"1"'})
        assert r.status_code == 200, r.text
        assert r.headers["ETag"].startswith('"2-'), r.text
        stale = await api.patch(
            f"/tasks/{one}", json={"title": "lost"}, headers={"If-Match": '"1"'}
        )
        assert_problem(stale, 412)
        assert stale.headers["ETag"] == '"2"', stale.text
        r = await api.patch(f"/tasks/{one}", json={"description": "no If-Match"})
        assert r.status_code == 200, r.text
        assert r.json()["version"] == 3, r.text
        r = await api.put(f"/tasks/{one}", json={"title": f"{m} one renamed"})
        assert r.status_code == 200, r.text
        assert r.json()["version"] == 4, r.text

        for method in ("GET", "PATCH", "DELETE"):
            body = {"completed": True} if method == "PATCH" else None
            r = await api.request(method, f"/tasks/{UNKNOWN_ID}", json=body)
            assert_problem(r, 404)
        assert_problem(await api.get(f"/categories/{UNKNOWN_ID}"), 404)

        key = {"Idempotency-Key": f"{m}-key"}
        first = await api.post("/tasks", json={"title": f"{m} once"}, headers=key)
        again = await api.post("/tasks", json={"title": f"{m} once"}, headers=key)
        assert first.status_code == again.status_code == 201, (first.text, again.text)
        assert again.json() == first.json()
        assert again.headers["Idempotent-Replayed"] == "true"
        reused = await api.post("/tasks", json={"title": f"{m} other"}, headers=key)
        assert_problem(reused, 422)

        assert (await api.delete(f"/tasks/{two}")).status_code == 204
        assert_problem(await api.get(f"/tasks/{two}"), 404)
        names = [c["name"] for c in (await api.get("/categories")).json()]
        assert f"{m} Work" in names

    rows = await query(
        superuser_url(pooled.direct_url),
        "SELECT id, title, description, completed, category_id, version FROM tasks "
        "WHERE title LIKE :prefix ORDER BY id",
        prefix=f"{m} %",
    )
    assert [tuple(row) for row in rows] == [
        (one, f"{m} one renamed", "no If-Match", True, category_id, 4),
        (first.json()["id"], f"{m} once", None, False, None, 1),
    ]
    assert "Traceback" not in server.output(), server.output()
    reliability.record(
        AREA,
        "CRUD, filters + X-Total-Count, If-Match, 409/422/404, Idempotency-Key replay "
        "through PgBouncer (transaction mode, 2 workers, pgbouncer mode on)",
        "every answer as without PgBouncer; the database holds exactly the acknowledged rows",
        lost=False,
    )


# ─────────────────────────────────────────────
# A burst of concurrent mixed requests
# ─────────────────────────────────────────────


@dataclass(frozen=True)
class TaskState:
    title: str
    completed: bool
    category_id: int | None


@dataclass
class Burst:
    """What a burst sent, what came back, and what the API acknowledged."""

    marker: str
    statuses: Counter[int] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)
    acknowledged: dict[int, TaskState] = field(default_factory=dict)
    deleted: set[int] = field(default_factory=set)
    uncertain: set[int] = field(default_factory=set)  # a write to it was not acknowledged
    replay_ids: dict[str, set[int]] = field(default_factory=dict)

    @property
    def server_errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status >= 500 or status == 0)

    def summary(self) -> str:
        return ", ".join(f"{n}x {s or 'no answer'}" for s, n in sorted(self.statuses.items()))


async def run_burst(base_url: str, headers: dict[str, str], *, seed: int) -> Burst:
    """40 tasks created concurrently, then 100 mixed requests, CONCURRENCY at a time."""
    burst = Burst(marker=f"burst-{uuid.uuid4().hex[:8]}")
    m = burst.marker
    limit = asyncio.Semaphore(CONCURRENCY)
    # No keep-alive: every request is a new connection, accepted by whichever worker is free.
    # Kept-alive connections would all be opened at once and one worker may accept them all.
    no_keep_alive = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=0)
    async with httpx.AsyncClient(
        base_url=base_url, timeout=30, limits=no_keep_alive, headers=headers
    ) as api:

        async def send(method: str, url: str, expected: int, **kw: Any) -> httpx.Response | None:
            async with limit:
                try:
                    r = await api.request(method, url, **kw)
                except httpx.HTTPError as exc:
                    burst.statuses[0] += 1
                    burst.unexpected.append(f"{method} {url}: {exc!r}")
                    return None
            burst.statuses[r.status_code] += 1
            if r.status_code != expected:
                burst.unexpected.append(f"{method} {url} -> {r.status_code} {r.text[:300]}")
                return None
            return r

        async def create(title: str, category_id: int | None, key: str | None = None) -> None:
            headers = {"Idempotency-Key": key} if key else {}
            body = {"title": title, "category_id": category_id}
            r = await send("POST", "/tasks", 201, json=body, headers=headers)
            if r is not None:
                burst.acknowledged[r.json()["id"]] = TaskState(title, False, category_id)
                if key:
                    burst.replay_ids.setdefault(key, set()).add(r.json()["id"])

        async def patch(task_id: int, i: int) -> None:
            title = f"{m} patched {i}"
            body = {"title": title, "completed": True}
            r = await send(
                "PATCH", f"/tasks/{task_id}", 200, json=body, headers={"If-Match": '"1"'}
            )
            if r is None:
                burst.uncertain.add(task_id)
            elif r.json()["version"] != 2:
                burst.unexpected.append(f"PATCH {task_id}: version {r.json()['version']}")
            else:
                burst.acknowledged[task_id] = TaskState(
                    title, True, burst.acknowledged[task_id].category_id
                )

        async def delete(task_id: int) -> None:
            if await send("DELETE", f"/tasks/{task_id}", 204) is None:
                burst.uncertain.add(task_id)
            else:
                burst.acknowledged.pop(task_id)
                burst.deleted.add(task_id)

        async def list_page(i: int) -> None:
            params: dict[str, Any] = {"q": m, "limit": 5, "offset": i % 3}
            if i % 2:
                params["completed"] = False
            r = await send("GET", "/tasks", 200, params=params)
            if r is not None:
                items = r.json()
                total = int(r.headers["X-Total-Count"])
                ok = len(items) <= 5 and total >= len(items)
                ok = ok and all(m in t["title"] for t in items)
                ok = ok and not (i % 2 and any(t["completed"] for t in items))
                if not ok:
                    burst.unexpected.append(f"GET /tasks {params}: {total} {items}")

        r = await send("POST", "/categories", 201, json={"name": m})
        category_id: int | None = r.json()["id"] if r is not None else None
        await asyncio.gather(
            *(create(f"{m} setup {i}", category_id if i % 2 else None) for i in range(40))
        )
        ids = sorted(burst.acknowledged)
        read_ids, patch_ids, delete_ids = ids[:5], ids[5:25], ids[25:40]

        ops: list[Coroutine[Any, Any, Any]] = []
        ops += [create(f"{m} new {i}", category_id if i % 2 else None) for i in range(20)]
        for i in range(5):  # the same key twice at once: one creates, the other replays
            key = f"{m}-key-{i}"
            ops += [create(f"{m} keyed {i}", None, key), create(f"{m} keyed {i}", None, key)]
        ops += [patch(task_id, i) for i, task_id in enumerate(patch_ids)]
        ops += [delete(task_id) for task_id in delete_ids]
        if read_ids:
            ops += [send("GET", f"/tasks/{read_ids[i % len(read_ids)]}", 200) for i in range(15)]
        ops += [list_page(i) for i in range(10)]
        if category_id is not None:
            ops += [send("GET", f"/categories/{category_id}", 200) for _ in range(10)]
        random.Random(seed).shuffle(ops)
        await asyncio.gather(*ops)
    return burst


async def missing_writes(direct_url: str, burst: Burst) -> tuple[list[str], set[int]]:
    """Acknowledged writes the database does not show, and rows nobody acknowledged."""
    rows = {
        row.id: TaskState(row.title, row.completed, row.category_id)
        for row in await query(
            superuser_url(direct_url),
            "SELECT id, title, completed, category_id FROM tasks WHERE title LIKE :prefix",
            prefix=f"{burst.marker} %",
        )
    }
    lost = [
        f"task {task_id}: acknowledged {state}, database {rows.get(task_id)}"
        for task_id, state in burst.acknowledged.items()
        if task_id not in burst.uncertain and rows.get(task_id) != state
    ]
    lost += [
        f"task {task_id} deleted (204) but still there" for task_id in burst.deleted & set(rows)
    ]
    unacknowledged = set(rows) - set(burst.acknowledged) - burst.uncertain
    return lost, unacknowledged


def worker_client_connections(server: ServeProcess, port: int) -> dict[int, int]:
    """Per process of the server: its TCP connections to PgBouncer's port."""
    counts = {}
    for process in [psutil.Process(server.pid), *psutil.Process(server.pid).children(True)]:
        connections = process.net_connections(kind="tcp")
        counts[process.pid] = sum(1 for c in connections if c.raddr and c.raddr.port == port)
    return counts


async def until_every_worker_connected(
    server: ServeProcess, port: int, headers: dict[str, str]
) -> dict[int, int]:
    """Client connections per process, after extra reads if one worker accepted every request.

    Which worker accepts a connection is the kernel's choice; a few bounded rounds of
    concurrent reads on fresh connections give the idle worker its turn.
    """
    no_keep_alive = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(
        base_url=server.base_url, timeout=10, limits=no_keep_alive, headers=headers
    ) as api:
        for _ in range(10):
            if sum(1 for n in worker_client_connections(server, port).values() if n) >= 2:
                break
            await asyncio.gather(*(api.get("/tasks", params={"limit": 1}) for _ in range(40)))
    return worker_client_connections(server, port)


async def test_concurrent_burst_through_pgbouncer(
    server: ServeProcess, user: ServedLogin, pooled: Pooled, reliability: ReliabilityRecorder
) -> None:
    burst = await run_burst(server.base_url, user.headers, seed=1)

    assert burst.unexpected == [], "\n".join(burst.unexpected[:20])
    assert burst.server_errors == 0
    assert all(len(ids) == 1 for ids in burst.replay_ids.values()), burst.replay_ids
    lost, unacknowledged = await missing_writes(pooled.direct_url, burst)
    assert lost == [], lost
    assert unacknowledged == set(), unacknowledged
    assert len(burst.acknowledged) == 5 + 20 + 20 + 5  # read, patched, new, keyed
    assert "Traceback" not in server.output(), server.output()

    # Both workers talked to PgBouncer, over more client connections than PostgreSQL had
    # server connections: transactions really took turns on shared server connections.
    clients = await until_every_worker_connected(server, pooled.bouncer.port, user.headers)
    workers = [pid for pid, n in clients.items() if n]
    (backends,) = await query(
        superuser_url(pooled.direct_url),
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND backend_type = 'client backend' AND pid <> pg_backend_pid()",
    )
    assert len(workers) == 2, clients
    assert 1 <= backends[0] <= POOL_SIZE < sum(clients.values()), (backends, clients)
    reliability.record(
        AREA,
        f"{sum(burst.statuses.values())} concurrent mixed requests ({CONCURRENCY} at a time) "
        f"from 2 workers over {sum(clients.values())} client connections sharing "
        f"{backends[0]} PostgreSQL connections (pgbouncer mode on)",
        f"{burst.summary()}, all as expected; every acknowledged create, change and delete "
        "is in the database, nothing else",
        lost=False,
    )


def test_cli_through_pgbouncer(
    pooled: Pooled, tmp_path: Path, reliability: ReliabilityRecorder
) -> None:
    """Migrate, COPY-seed, inspect and purge through PgBouncer in pgbouncer mode."""
    env = pooled_env(pooled, TASKMANAGER_PGBOUNCER="true")
    tasks = "SELECT count(*) FROM tasks"
    before = asyncio.run(query(superuser_url(pooled.direct_url), tasks))[0][0]
    # At once: seed (migrate, COPY, VACUUM) interleaves with the others' transactions.
    commands = [
        ["db", "seed", "--tasks", "3000", "--categories", "3"],
        ["db", "current"],
        ["db", "purge-keys"],
    ]
    logs = [tmp_path / f"{command[1]}.log" for command in commands]
    processes = []
    try:
        for command, log in zip(commands, logs, strict=True):
            with log.open("wb") as out:
                processes.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "taskmanager", *command],
                        env=env,
                        cwd=tmp_path,
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    )
                )
        codes = [process.wait(60) for process in processes]
    finally:
        for process in processes:  # only if a wait timed out
            if process.poll() is None:
                process.kill()
                process.wait(5)
    outputs = [log.read_text(errors="replace") for log in logs]
    assert codes == [0, 0, 0], outputs
    assert "(at head)" in outputs[1]
    after = asyncio.run(query(superuser_url(pooled.direct_url), tasks))[0][0]
    assert after - before == 3000
    reliability.record(
        AREA,
        "taskmanager db seed (migrate, COPY, VACUUM), db current and db purge-keys at once "
        "through PgBouncer",
        "all succeed; the 3,000 seeded tasks are in the database",
        lost=False,
    )


# ─────────────────────────────────────────────
# Without pgbouncer mode it breaks: these tests can fail
# ─────────────────────────────────────────────


def wait_live(process: ServeProcess, within: float = READY_WITHIN) -> None:
    """Until the server answers /health/live (it needs no database)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        assert process.process.poll() is None, process.output()
        try:
            if httpx.get(f"{process.base_url}/health/live", timeout=2).status_code == 200:
                process.remember_children()
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"serve not live within {within}s:\n{process.output()}")


async def test_default_engine_is_refused_by_pgbouncer(
    pooled: Pooled, reliability: ReliabilityRecorder
) -> None:
    """The default engine sends statement_timeout at connect: PgBouncer says no."""
    url = normalize_database_url(pooled.bouncer.url())
    default = create_engine(
        Settings(database_url=url, pgbouncer=False, statement_timeout_ms=15_000), url
    )
    pooler = create_engine(Settings(database_url=url, pgbouncer=True), url)
    refusal = "unsupported startup parameter: statement_timeout"
    try:
        with pytest.raises(sa_exc.DBAPIError, match=refusal):
            await check_database(default, within_seconds=10)
        await check_database(pooler, within_seconds=10)  # the same URL in pgbouncer mode
    finally:
        await default.dispose()
        await pooler.dispose()
    assert refusal in pooled.bouncer.output()
    reliability.record(
        AREA,
        "the app's engine without TASKMANAGER_PGBOUNCER (statement_timeout sent at connect)",
        f"cannot connect: PgBouncer answers {refusal!r}; the same URL in pgbouncer mode connects",
        lost=None,
    )


def test_default_mode_breaks_on_prepared_statements(
    pooled: Pooled, user: ServedLogin, tmp_path: Path, reliability: ReliabilityRecorder
) -> None:
    """Without statement_timeout PgBouncer lets it in, and the statement cache breaks.

    PgBouncer 1.18 (Debian bookworm) cannot track protocol-level prepared statements; on
    1.21+ the helper sets max_prepared_statements = 0 to behave the same way.
    """
    env = pooled_env(pooled, TASKMANAGER_STATEMENT_TIMEOUT_MS="0")  # pgbouncer mode off
    with serve(env, tmp_path, "--workers", "2", ready=False) as process:
        wait_live(process)
        bursts = []
        for seed in range(3):  # a burst nearly always shows it; bounded if it does not
            # The account registered through the pgbouncer-mode server: same database, same
            # signing key, so its token works here too.
            bursts.append(asyncio.run(run_burst(process.base_url, user.headers, seed=seed)))
            if bursts[-1].server_errors:
                break
        log = process.output()
    failed = [b for b in bursts if b.server_errors]
    assert failed, "the default engine survived PgBouncer: " + "; ".join(
        b.summary() for b in bursts
    )
    found = re.findall(
        r'prepared statement "__asyncpg_stmt_\d+__" (does not exist|already exists)', log
    )
    assert found, log[-3000:]
    symptoms = sorted(set(found))
    lost = [asyncio.run(missing_writes(pooled.direct_url, b))[0] for b in bursts]
    assert not any(lost), lost
    reliability.record(
        AREA,
        "the same burst without TASKMANAGER_PGBOUNCER (and without statement_timeout, "
        "so PgBouncer lets it connect)",
        f'{failed[0].summary()}: prepared statement "__asyncpg_stmt_N__" '
        f"{' / '.join(symptoms)}; no acknowledged write lost",
        lost=False,
    )


# ─────────────────────────────────────────────
# Two users through one server connection: no foreign row in any answer
# ─────────────────────────────────────────────

INTERLEAVED = 1000
OWN_TASKS = 12


@dataclass
class Tenant:
    """A user, the tasks they own, and what came back to them."""

    login: ServedLogin
    prefix: str
    task_ids: set[int] = field(default_factory=set)
    statuses: Counter[str] = field(default_factory=Counter)
    foreign: list[str] = field(default_factory=list)  # answers holding a row not theirs


@pytest.fixture(scope="module")
def single_connection(make_database: Callable[[str], str]) -> Iterator[Pooled]:
    """A database of its own behind a PgBouncer in transaction mode with ONE server
    connection: every transaction of every request of every user takes turns on it."""
    if pgbouncer_binary() is None:
        pytest.skip("pgbouncer is not installed")
    direct_url = make_database("behind_pgbouncer_one")
    with run_pgbouncer(direct_url, pool_size=1) as bouncer:
        yield Pooled(bouncer, direct_url)


@pytest.mark.timeout(240)
async def test_two_users_interleaved_through_one_server_connection_see_only_their_rows(
    single_connection: Pooled, tmp_path: Path, reliability: ReliabilityRecorder
) -> None:
    """1,000 requests of two users, alternating, CONCURRENCY at a time, all through one
    PostgreSQL connection: each request's caller is set with set_config(..., true) inside
    its own transaction, so it ends with the transaction and never reaches the next one
    (the other user's) on that connection. Every list and every read shows only the
    caller's own tasks; the other user's ids are 404."""
    env = pooled_env(single_connection, TASKMANAGER_PGBOUNCER="true")
    with serve(env, tmp_path, "--workers", "2") as server:
        tenants = [
            Tenant(register_over_http(server.base_url, f"{name}@example.com"), f"{name} task")
            for name in ("alice", "bob")
        ]
        async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as api:
            for tenant in tenants:
                for i in range(OWN_TASKS):
                    r = await api.post(
                        "/tasks",
                        json={"title": f"{tenant.prefix} {i}"},
                        headers=tenant.login.headers,
                    )
                    assert r.status_code == 201, r.text
                    tenant.task_ids.add(r.json()["id"])
            started = time.monotonic()
            await interleave(api, tenants, seed=8)
            elapsed = time.monotonic() - started
        output = server.output()

    # The one server connection, after all of it, carries no caller and no role switch.
    (leftover,) = await query(
        normalize_database_url(single_connection.bouncer.url()),
        "SELECT current_user AS role, current_setting('taskmanager.caller', true) AS caller",
    )
    (backends,) = await query(
        superuser_url(single_connection.direct_url),
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND backend_type = 'client backend' AND pid <> pg_backend_pid()",
    )
    for tenant in tenants:
        assert tenant.foreign == [], tenant.foreign[:10]
    # And in the database: each user's tasks, the created ones too, in their own workspace.
    stored = await query(
        superuser_url(single_connection.direct_url), "SELECT id, workspace_id FROM tasks"
    )
    for tenant in tenants:
        workspace = tenant.login.personal_workspace_id
        assert {id_ for id_, ws in stored if ws == workspace} == tenant.task_ids
    statuses = sum((tenant.statuses for tenant in tenants), Counter[str]())
    assert sum(statuses.values()) == INTERLEAVED, statuses
    assert set(statuses) == {"GET /tasks 200", "GET own 200", "GET other's 404", "POST 201"}
    assert leftover.role == single_connection.bouncer.user
    assert leftover.caller in ("", None), leftover
    assert backends[0] <= 1, backends
    assert "Traceback" not in output, output
    reliability.record(
        AREA,
        f"{INTERLEAVED:,} requests of two users, alternating, {CONCURRENCY} at a time, from "
        "2 workers through PgBouncer with ONE server connection (transaction mode): lists, "
        "reads of their own and of the other's tasks, creates",
        f"{', '.join(f'{n}x {s}' for s, n in sorted(statuses.items()))} in {elapsed:.1f} s; "
        "no answer held a row of the other user; every task acknowledged is in its user's "
        "workspace; the server connection afterwards had no caller and its own role",
        lost=False,
    )


READ_LABELS = {"own": "own", "other": "other's"}


async def interleave(api: httpx.AsyncClient, tenants: list[Tenant], *, seed: int) -> None:
    """INTERLEAVED requests, alternating between the tenants, CONCURRENCY in flight."""
    rng = random.Random(seed)
    limit = asyncio.Semaphore(CONCURRENCY)

    async def one(i: int) -> None:
        me, other = tenants[i % 2], tenants[1 - i % 2]
        kind = rng.choice(["list", "own", "other", "list", "own", "create"])
        async with limit:
            if kind == "list":
                r = await api.get("/tasks", params={"limit": 100}, headers=me.login.headers)
                label = f"GET /tasks {r.status_code}"
                rows = r.json() if r.status_code == 200 else []
            elif kind == "create":
                body = {"title": f"{me.prefix} created {i}"}
                r = await api.post("/tasks", json=body, headers=me.login.headers)
                label = f"POST {r.status_code}"
                rows = [r.json()] if r.status_code == 201 else []
                if r.status_code == 201:
                    me.task_ids.add(r.json()["id"])
            else:
                ids = sorted(me.task_ids if kind == "own" else other.task_ids)
                task_id = rng.choice(ids)
                r = await api.get(f"/tasks/{task_id}", headers=me.login.headers)
                label = f"GET {READ_LABELS[kind]} {r.status_code}"
                rows = [r.json()] if r.status_code == 200 else []
        me.statuses[label] += 1
        if kind == "list" and rows and int(r.headers["X-Total-Count"]) < len(rows):
            me.foreign.append(f"#{i}: X-Total-Count {r.headers['X-Total-Count']} < rows")
        for row in rows:
            if not row["title"].startswith(me.prefix) or row["id"] in other.task_ids:
                me.foreign.append(f"#{i} {label}: {row}")

    await asyncio.gather(*(one(i) for i in range(INTERLEAVED)))
