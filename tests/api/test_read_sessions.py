"""Routes that only read say so: they take an AsyncReadSession (one READ ONLY transaction,
which PostgreSQL refuses any write in), and every route that can change data takes the
request's writing transaction.

The rolled-back `client` fixture hands every route the test's one writable session, so the
routes' own sessions are checked here on an app of their own, without that override."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any

import pytest
import pytest_asyncio
from fastapi import APIRouter, FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from httpx import ASGITransport, AsyncClient
from sqlalchemy import exc as sa_exc
from sqlalchemy import func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from starlette.routing import BaseRoute

from taskmanager.cache.task_reads import TaskReads
from taskmanager.config import Settings
from taskmanager.database import (
    AsyncReadSession,
    ReadSessionDep,
    SessionDep,
    create_read_session_factory,
    get_async_session,
    get_read_session,
)
from taskmanager.dependencies import (
    CurrentReaderDep,
    CurrentUserDep,
    get_task_reads,
    get_task_repository,
)
from taskmanager.models import Task
from taskmanager.repositories.task_repository import TaskRepository
from tests.support.accounts import Account
from tests.support.real_sessions import app_with_real_sessions
from tests.support.row_level_security import sqlstate

READ_ONLY_TRANSACTION = "25006"  # SQLSTATE read_only_sql_transaction

READ_METHODS = {"GET", "HEAD", "OPTIONS"}


def _calls(dependant: Dependant) -> Iterator[Callable[..., Any] | None]:
    for dependency in dependant.dependencies:
        yield dependency.call
        yield from _calls(dependency)


def _api_routes(routes: Iterable[BaseRoute]) -> Iterator[APIRoute]:
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        elif isinstance(original := getattr(route, "original_router", None), APIRouter):
            yield from _api_routes(original.routes)  # an included router (FastAPI >= 0.137)


def _session_dependencies(app: FastAPI) -> dict[tuple[str, str], set[str]]:
    """(method, path) -> the session dependencies its dependency tree reaches."""
    found = {}
    for route in _api_routes(app.routes):
        calls = set(_calls(route.dependant))
        sessions = {
            name
            for name, call in (("write", get_async_session), ("read", get_read_session))
            if call in calls
        }
        for method in route.methods or ():
            found[(method, route.path)] = sessions
    return found


# Posted, but the request itself changes no row: a calendar's refresh waits on the network,
# and the fetcher records the outcome in a transaction of its own ('maintenance'); the
# request's read session ends before the fetch, so no connection is held meanwhile.
POSTED_BUT_READ_ONLY = {("POST", "/workspaces/{workspace_id}/calendars/{calendar_id}/refresh")}


def test_reading_routes_take_a_read_session_and_writing_routes_a_transaction(
    app: FastAPI,
) -> None:
    found = _session_dependencies(app)
    reading = {key: sessions for key, sessions in found.items() if key[0] in READ_METHODS}
    writing = {
        key: sessions
        for key, sessions in found.items()
        if key[0] not in READ_METHODS and key not in POSTED_BUT_READ_ONLY
    }

    assert writing, "no route changes data?"
    for key in POSTED_BUT_READ_ONLY:
        assert found[key] == {"read"}, key
    for key, sessions in writing.items():
        assert sessions == {"write"}, key
    for key, sessions in reading.items():
        assert sessions <= {"read"}, key  # /health/* needs no session at all
    assert ("GET", "/tasks") in reading
    assert reading[("GET", "/tasks/{task_id}")] == {"read"}
    assert reading[("GET", "/categories/{category_id}")] == {"read"}


async def _write_attempt(session: AsyncSession, workspace_id: int | None) -> str | None:
    """Try to insert a task through `session` (in a savepoint, so the transaction goes on):
    the SQLSTATE it failed with, or None if the write went through."""
    try:
        async with session.begin_nested():
            await session.execute(
                insert(Task).values(title="written by a reader", workspace_id=workspace_id)
            )
    except sa_exc.DBAPIError as refused:
        return sqlstate(refused)
    return None


async def test_a_read_session_is_one_read_only_transaction(engine: AsyncEngine) -> None:
    async with create_read_session_factory(engine)() as session:
        assert isinstance(session, AsyncReadSession)
        assert (await session.execute(text("SHOW transaction_read_only"))).scalar_one() == "on"
        # One transaction, not autocommit: now() (the transaction's start) stays the same
        # across statements, and so does a transaction-local setting like the caller's
        # (set_config(..., true)), which row-level security reads in every statement.
        first = (await session.execute(text("SELECT now()"))).scalar_one()
        await session.execute(text("SELECT pg_sleep(0.01)"))
        await session.execute(text("SELECT set_config('taskmanager.probe', '42', true)"))
        second = (await session.execute(text("SELECT now()"))).scalar_one()
        assert second == first
        setting = await session.execute(text("SELECT current_setting('taskmanager.probe')"))
        assert setting.scalar_one() == "42"
        # Any write is refused by PostgreSQL itself.
        with pytest.raises(sa_exc.DBAPIError) as refused:
            await session.execute(text("CREATE TEMPORARY TABLE written_by_a_reader (x int)"))
        assert sqlstate(refused.value) == READ_ONLY_TRANSACTION


@pytest_asyncio.fixture
async def real_sessions_app(settings: Settings, engine: AsyncEngine) -> AsyncIterator[FastAPI]:
    app = app_with_real_sessions(settings, engine)
    yield app
    app.dependency_overrides.clear()


async def test_a_route_that_only_reads_runs_in_a_read_only_transaction(
    real_sessions_app: FastAPI, account: Account, engine: AsyncEngine
) -> None:
    """GET /tasks with its real read session: the session its repository gets (after the
    caller's scope was entered in it) is READ ONLY, so a write through it fails with 25006
    and nothing is stored."""
    seen: dict[str, Any] = {}

    async def probing_reader(session: ReadSessionDep, user: CurrentReaderDep) -> TaskReads:
        seen["read_only"] = (await session.execute(text("SHOW transaction_read_only"))).scalar()
        seen["write"] = await _write_attempt(session, user.personal_workspace_id)
        return TaskReads.of(TaskRepository(session, user))

    real_sessions_app.dependency_overrides[get_task_reads] = probing_reader
    transport = ASGITransport(app=real_sessions_app)
    async with AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/tasks", headers=account.headers)

    assert response.status_code == 200, response.text
    assert seen == {"read_only": "on", "write": READ_ONLY_TRANSACTION}
    async with engine.connect() as connection:
        stored = select(func.count()).select_from(Task).where(Task.title == "written by a reader")
        assert (await connection.execute(stored)).scalar_one() == 0


async def test_a_route_that_writes_runs_in_the_writing_transaction(
    real_sessions_app: FastAPI, account: Account
) -> None:
    """PATCH /tasks/{id} with its real session: a read-write transaction (the request then
    answers 404 for a task that does not exist, and rolls back)."""
    seen: dict[str, Any] = {}

    async def probing_repository(session: SessionDep, user: CurrentUserDep) -> TaskRepository:
        seen["read_session"] = isinstance(session, AsyncReadSession)
        seen["read_only"] = (await session.execute(text("SHOW transaction_read_only"))).scalar()
        return TaskRepository(session, user)

    real_sessions_app.dependency_overrides[get_task_repository] = probing_repository
    transport = ASGITransport(app=real_sessions_app)
    async with AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.patch(
            "/tasks/2147483647", json={"title": "x"}, headers=account.headers
        )

    assert response.status_code == 404, response.text
    assert seen == {"read_session": False, "read_only": "off"}
