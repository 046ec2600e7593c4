"""The sync-trap app's plumbing: its engines from the environment, start-up checks, /ping
and /info. Run as `python -m uvicorn taskmanager.demo.sync_trap.wiring:create_app --factory`.
"""

import asyncio
import os
import platform
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import anyio.to_thread
from fastapi import FastAPI
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from taskmanager.config import ASYNC_DRIVER
from taskmanager.demo.sync_trap.app import Clock, SessionLocal, async_session_factory, router
from taskmanager.demo.sync_trap.measure import INFO_PATH, PING_PATH

SYNC_DRIVER = "postgresql+psycopg"


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


def create_app() -> FastAPI:
    """The app, configured through the environment (uvicorn --factory):

    SYNC_TRAP_DATABASE_URL   asyncpg URL of a migrated database (required)
    SYNC_TRAP_POOL_SIZE      pool_size of both engines (default 10)
    SYNC_TRAP_MAX_OVERFLOW   max_overflow of both engines (default 0)
    SYNC_TRAP_POOL_TIMEOUT   seconds a request may wait for a pooled connection (default 30)
    """
    try:
        async_url = os.environ["SYNC_TRAP_DATABASE_URL"]
    except KeyError:
        raise RuntimeError("SYNC_TRAP_DATABASE_URL is not set") from None
    pool = {
        "pool_size": int(os.environ.get("SYNC_TRAP_POOL_SIZE") or 10),
        "max_overflow": int(os.environ.get("SYNC_TRAP_MAX_OVERFLOW") or 0),
        "pool_timeout": float(os.environ.get("SYNC_TRAP_POOL_TIMEOUT") or 30),
    }
    # The same pool for both drivers, so the variants differ only in how the route runs.
    sync_engine = create_engine(
        sync_database_url(async_url),
        **pool,
        connect_args={"application_name": "sync-trap demo (psycopg)", "connect_timeout": 5},
    )
    async_engine = create_async_engine(
        async_url,
        **pool,
        connect_args={
            "timeout": 5,
            "server_settings": {"application_name": "sync-trap demo (asyncpg)"},
        },
    )
    SessionLocal.configure(bind=sync_engine)
    async_session_factory.configure(bind=async_engine)
    info: dict[str, Any] = {}

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
            pid=os.getpid(),
            **pool,
            pool_total=pool["pool_size"] + pool["max_overflow"],
            thread_tokens=int(anyio.to_thread.current_default_thread_limiter().total_tokens),
            event_loop=f"{type(loop).__module__}.{type(loop).__qualname__}",
            postgresql=server_version,
            python=platform.python_version(),
            packages={name: _version(name) for name in PACKAGES},
        )
        try:
            yield
        finally:
            await async_engine.dispose()
            sync_engine.dispose()

    app = FastAPI(title="taskmanager sync-trap demo", lifespan=lifespan, docs_url=None)
    app.include_router(router)

    @app.get(PING_PATH)
    async def ping() -> dict[str, Any]:
        return Clock().stop(rows=0)

    @app.get(INFO_PATH)
    async def server_info() -> dict[str, Any]:
        return info

    return app


PACKAGES = ("fastapi", "starlette", "anyio", "uvicorn", "sqlalchemy", "psycopg", "asyncpg")


def _version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"
