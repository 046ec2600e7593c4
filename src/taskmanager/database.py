"""Engine, session factory and the session-per-request dependency.

One AsyncSession per request (one visit, one library card). Routes and repositories
flush; only `get_async_session` commits, and it does so BEFORE the response is sent:
`SessionDep` declares the dependency with `scope="function"`, so the code after `yield`
runs when the route function (and its response serialization) has finished, not after
the response went out. With FastAPI's default scope a failed commit would still have
shown the client a 2xx.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import text
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from taskmanager.config import Settings


def create_engine(settings: Settings, database_url: str) -> AsyncEngine:
    """The async engine (asyncpg driver) with the pool and timeouts from settings."""
    server_settings = {"application_name": "taskmanager"}
    if settings.statement_timeout_ms:
        server_settings["statement_timeout"] = str(settings.statement_timeout_ms)
    return create_async_engine(
        database_url,
        echo=settings.sql_echo,
        pool_size=settings.pool_size,
        max_overflow=settings.max_overflow,
        pool_timeout=settings.pool_timeout,
        pool_pre_ping=False,  # a dead connection surfaces as 503 once, then is replaced
        connect_args={
            "timeout": settings.connect_timeout,
            "server_settings": server_settings,
        },
    )


def create_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """The lecture's async_session_factory; expire_on_commit=False so loaded objects stay
    readable after commit instead of triggering a lazy load (MissingGreenlet)."""
    return async_sessionmaker(bind=engine, class_=AsyncSession, expire_on_commit=False)


def create_read_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions for requests that only read: the connection runs in autocommit, so a read
    costs one round trip (the query) instead of three (BEGIN, the query, COMMIT)."""
    return async_sessionmaker(
        bind=engine.execution_options(isolation_level="AUTOCOMMIT"),
        class_=AsyncSession,
        expire_on_commit=False,
    )


# HTTP's safe methods never write (RFC 9110 9.2.1), so they need no transaction.
READ_ONLY_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


async def get_async_session(request: Request) -> AsyncIterator[AsyncSession]:
    """One session per request: commit when the route succeeded, roll back on any error."""
    if request.method in READ_ONLY_METHODS:
        # Autocommit: there is nothing to commit or roll back; closing returns the connection.
        async with request.app.state.read_session_factory() as read_session:
            yield read_session
        return
    async_session_factory: async_sessionmaker[AsyncSession] = (
        request.app.state.async_session_factory
    )
    async with async_session_factory() as session:
        try:
            yield session
            await session.commit()
        except Exception:
            await session.rollback()
            raise
        # session.close() is called by `async with`: the connection goes back to the pool.


# The one way to ask for a session. scope="function" makes the commit finish before the
# response is sent; using this alias everywhere keeps one session (one transaction) per
# request, since dependencies declared with different scopes would not be shared.
SessionDep = Annotated[AsyncSession, Depends(get_async_session, scope="function")]


async def check_database(engine: AsyncEngine, within_seconds: float) -> None:
    """Raise if the database cannot answer `SELECT 1` within `within_seconds`."""
    async with asyncio.timeout(within_seconds), engine.connect() as connection:
        await connection.execute(text("SELECT 1"))
