"""The demo app of `taskmanager demo sync-trap`: the same task-list route written three ways.

    trap        async def + sync Session (psycopg)   the lecture's 1.1: blocks the event loop
    threadpool  def       + sync Session (psycopg)   FastAPI runs it in anyio's threadpool
    async       async def + AsyncSession (asyncpg)   every await hands the loop back

Each runs `SELECT pg_sleep(delay)` (a stand-in for a slow query, so the effect does not
depend on the data) and then the real list query, and answers with its own timestamps:
when the route started, when it had its database connection and when it finished.
`/ping` answers at once: how long it takes during a burst shows whether the event loop
is free.

Run by the demo in its own uvicorn process (a separate process from the load driver, as a
real server would be): `python -m uvicorn taskmanager.demo.sync_trap_app:create_app
--factory`, configured through the environment:

    SYNC_TRAP_DATABASE_URL   asyncpg URL of a migrated database (required)
    SYNC_TRAP_POOL_SIZE      pool_size of both engines (default 10)
    SYNC_TRAP_MAX_OVERFLOW   max_overflow of both engines (default 0)
    SYNC_TRAP_POOL_TIMEOUT   seconds a request may wait for a pooled connection (default 30)
"""

from __future__ import annotations

import asyncio
import os
import platform
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import anyio.to_thread
from fastapi import FastAPI, Query
from sqlalchemy import Engine, Select, create_engine, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import joinedload, sessionmaker

from taskmanager.config import ASYNC_DRIVER
from taskmanager.demo.sync_trap_measure import INFO_PATH, PING_PATH, VARIANT_BY_NAME
from taskmanager.models import Task

SYNC_DRIVER = "postgresql+psycopg"
LIST_LIMIT = 50
MAX_DELAY_MS = 10_000

DelayMs = Query(default=50, ge=0, le=MAX_DELAY_MS, description="pg_sleep before the list query")


def sync_database_url(async_url: str) -> str:
    """The same database for psycopg 3: the driver name changes, and asyncpg's `ssl`
    query parameter goes back to libpq's `sslmode`. A Unix-socket URL
    (`postgresql+psycopg://user@/db?host=/socket/dir`, the embedded server's) works as is:
    libpq reads `host` as a socket directory when it starts with a slash."""
    url = make_url(async_url)
    if url.drivername != ASYNC_DRIVER:
        raise ValueError(f"expected a {ASYNC_DRIVER} URL, got {url.drivername}")
    url = url.set(drivername=SYNC_DRIVER)
    if "ssl" in url.query:
        query = dict(url.query)
        query["sslmode"] = query.pop("ssl")
        url = url.set(query=query)
    return url.render_as_string(hide_password=False)


def list_tasks_statement() -> Select[Task]:
    """The list endpoint's query (TaskRepository.get_all's): newest first, with categories.
    Built once for all three variants, so only HOW it runs differs between them."""
    return (
        select(Task)
        .options(joinedload(Task.category))
        .order_by(Task.created_at.desc(), Task.id.desc())
        .limit(LIST_LIMIT)
    )


def _now() -> float:
    # CLOCK_MONOTONIC on Linux and macOS: the load driver reads the same clock.
    return time.monotonic()


def _timing(started: float, connected: float, rows: int) -> dict[str, Any]:
    return {
        "started": started,
        "connected": connected,
        "finished": _now(),
        "rows": rows,
        "thread": threading.current_thread().name,
    }


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    return default if raw is None or not raw.strip() else int(raw)


def _package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def create_app() -> FastAPI:
    """Build the demo app from the SYNC_TRAP_* environment variables."""
    try:
        async_url = os.environ["SYNC_TRAP_DATABASE_URL"]
    except KeyError:
        raise RuntimeError("SYNC_TRAP_DATABASE_URL is not set") from None
    pool_size = _env_int("SYNC_TRAP_POOL_SIZE", 10)
    max_overflow = _env_int("SYNC_TRAP_MAX_OVERFLOW", 0)
    pool_timeout = float(os.environ.get("SYNC_TRAP_POOL_TIMEOUT") or 30)
    pool = {"pool_size": pool_size, "max_overflow": max_overflow, "pool_timeout": pool_timeout}

    # The same pool for both drivers, so the variants differ only in how the route runs.
    sync_engine: Engine = create_engine(
        sync_database_url(async_url),
        **pool,
        connect_args={"application_name": "sync-trap demo (psycopg)", "connect_timeout": 5},
    )
    async_engine: AsyncEngine = create_async_engine(
        async_url,
        **pool,
        connect_args={
            "timeout": 5,
            "server_settings": {"application_name": "sync-trap demo (asyncpg)"},
        },
    )
    SessionLocal = sessionmaker(bind=sync_engine, expire_on_commit=False)  # noqa: N806
    async_session_factory = async_sessionmaker(bind=async_engine, expire_on_commit=False)
    statement = list_tasks_statement()
    info: dict[str, Any] = {}

    def list_tasks_sync(delay_ms: int) -> dict[str, Any]:
        """What both sync variants run, line for line: the lecture's `session.scalars(...)`.
        Whether it freezes the server depends only on WHERE it runs."""
        started = _now()
        with SessionLocal() as session:
            session.connection()  # check out a pooled connection now: pool waits show apart
            connected = _now()
            session.execute(text("SELECT pg_sleep(:seconds)"), {"seconds": delay_ms / 1000})
            rows = len(session.scalars(statement).all())
        return _timing(started, connected, rows)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Fail at start-up, with the reason on stderr, rather than on the first burst.
        def check_sync() -> str:
            with sync_engine.connect() as connection:
                return str(connection.execute(text("SHOW server_version")).scalar_one())

        server_version = await asyncio.to_thread(check_sync)
        async with async_engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
        loop = asyncio.get_running_loop()
        info.update(
            {
                "pid": os.getpid(),
                **pool,
                "pool_total": pool_size + max_overflow,
                "thread_tokens": int(anyio.to_thread.current_default_thread_limiter().total_tokens),
                "event_loop": f"{type(loop).__module__}.{type(loop).__qualname__}",
                "postgresql": server_version,
                "python": platform.python_version(),
                "packages": {
                    name: _package_version(name)
                    for name in (
                        "fastapi",
                        "starlette",
                        "anyio",
                        "uvicorn",
                        "sqlalchemy",
                        "psycopg",
                        "asyncpg",
                    )
                },
            }
        )
        try:
            yield
        finally:
            await async_engine.dispose()
            sync_engine.dispose()

    app = FastAPI(title="taskmanager sync-trap demo", lifespan=lifespan, docs_url=None)

    @app.get(VARIANT_BY_NAME["trap"].path)
    async def list_tasks_trap(delay_ms: int = DelayMs) -> dict[str, Any]:
        # THE TRAP: an `async def` route runs on the event loop thread, so this synchronous
        # call freezes the whole server until PostgreSQL answers.
        return list_tasks_sync(delay_ms)

    @app.get(VARIANT_BY_NAME["threadpool"].path)
    def list_tasks_threadpool(delay_ms: int = DelayMs) -> dict[str, Any]:
        # A plain `def` route: FastAPI runs it in anyio's threadpool, the loop stays free.
        return list_tasks_sync(delay_ms)

    @app.get(VARIANT_BY_NAME["async"].path)
    async def list_tasks_async(delay_ms: int = DelayMs) -> dict[str, Any]:
        started = _now()
        async with async_session_factory() as session:
            await session.connection()
            connected = _now()
            await session.execute(text("SELECT pg_sleep(:seconds)"), {"seconds": delay_ms / 1000})
            rows = len((await session.scalars(statement)).all())
        return _timing(started, connected, rows)

    @app.get(PING_PATH)
    async def ping() -> dict[str, Any]:
        started = _now()
        return _timing(started, started, 0)

    @app.get(INFO_PATH)
    async def server_info() -> dict[str, Any]:
        return info

    return app
