"""The lecture's setup beside the app's, for the naive routes (bench_app.py, bench_naive.py).

Part 3.4's route reads with a plain session on a login that reads every table. The service's
own login reads nothing until a request's caller is entered, which that route does not do,
so the naive routes get an engine of their own: built as the app builds its engine (same
settings, same pool), logged in as the floors' superuser, no caller, no row-level security.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import joinedload, selectinload

from taskmanager.config import get_settings
from taskmanager.database import create_engine, create_session_factory
from taskmanager.models import Task


def lecture_session_dependency(
    factory_of: Callable[[Request], async_sessionmaker[AsyncSession]],
) -> Callable[[Request], AsyncIterator[AsyncSession]]:
    """The lecture's get_async_session (Part 3.4), on the session factory `factory_of`
    picks for the request; declared at FastAPI's default dependency scope by its users."""

    async def get_async_session(request: Request) -> AsyncIterator[AsyncSession]:
        async with factory_of(request)() as session:
            try:
                yield session
                await session.commit()
            except Exception:
                await session.rollback()
                raise

    return get_async_session


def floor_database_url() -> str:
    """BENCH_FLOOR_DATABASE_URL: a superuser's login where the app's is not one (--tcp)."""
    url = os.environ.get("BENCH_FLOOR_DATABASE_URL") or get_settings().database_url
    assert url is not None
    return url


def add_lecture_engine(app: FastAPI) -> None:
    """An engine as the app builds its own (settings, pool), on the lecture's setup: one
    login that reads every table, without callers or row-level security. The service's own
    login reads nothing until a request's caller is entered, which Part 3.4's route does not
    do; this is the login that route runs on (the floors' superuser)."""
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[Any]:
        async with inner(app) as state:
            engine = create_engine(get_settings(), floor_database_url())
            app.state.lecture_engine = engine
            app.state.lecture_session_factory = create_session_factory(engine)
            # Autocommit: no BEGIN and no COMMIT, so the teardown after the response has
            # nothing to await (bench/README.md, the naive route's point (c)).
            app.state.lecture_autocommit_session_factory = async_sessionmaker(
                bind=engine.execution_options(isolation_level="AUTOCOMMIT"),
                expire_on_commit=False,
            )
            try:
                yield state
            finally:
                await engine.dispose()

    app.router.lifespan_context = lifespan


def lecture_session_factory(request: Request) -> async_sessionmaker[AsyncSession]:
    """The lecture engine's session factory (add_lecture_engine)."""
    factory: async_sessionmaker[AsyncSession] = request.app.state.lecture_session_factory
    return factory


async def naive_read(session: AsyncSession, task_id: int) -> Task:
    """Part 3.4's read, with the labels today's response model carries too."""
    options = [joinedload(Task.category), selectinload(Task.labels)]
    task = await session.get(Task, task_id, options=options)
    if task is None:
        raise HTTPException(404, "Task not found")
    return task
