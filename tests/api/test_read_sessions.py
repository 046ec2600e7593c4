"""Routes that only read say so: they take an AsyncReadSession (autocommit, one round trip
per query), and every route that can change data takes the request's transaction."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.routing import BaseRoute

from taskmanager.database import (
    AsyncReadSession,
    create_read_session_factory,
    get_async_session,
    get_read_session,
)

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
        for method in route.methods:
            found[(method, route.path)] = sessions
    return found


def test_reading_routes_take_a_read_session_and_writing_routes_a_transaction(
    app: FastAPI,
) -> None:
    found = _session_dependencies(app)
    reading = {key: sessions for key, sessions in found.items() if key[0] in READ_METHODS}
    writing = {key: sessions for key, sessions in found.items() if key[0] not in READ_METHODS}

    assert writing, "no route changes data?"
    for key, sessions in writing.items():
        assert sessions == {"write"}, key
    for key, sessions in reading.items():
        assert sessions <= {"read"}, key  # /health/* needs no session at all
    assert ("GET", "/tasks") in reading
    assert reading[("GET", "/tasks/{task_id}")] == {"read"}
    assert reading[("GET", "/categories/{category_id}")] == {"read"}


async def test_a_read_session_runs_in_autocommit(engine: AsyncEngine) -> None:
    async with create_read_session_factory(engine)() as session:
        assert isinstance(session, AsyncReadSession)
        # now() is when the transaction began: the same for every statement of a transaction
        # block, a new time for each statement in autocommit.
        first = (await session.execute(text("SELECT now()"))).scalar_one()
        await session.execute(text("SELECT pg_sleep(0.01)"))
        second = (await session.execute(text("SELECT now()"))).scalar_one()
        assert second > first
