"""The real app, lifespan and all, on a database of its own: for tests that need real
commits and real concurrent transactions (the rolled-back `client` fixture has one
connection, so it can show neither).

Requests go through httpx's ASGITransport in this event loop; each one gets its own
session and its own pooled connection, so `asyncio.gather` of N requests is N concurrent
PostgreSQL transactions.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any
from weakref import WeakKeyDictionary

from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from taskmanager.config import Settings
from taskmanager.main import create_app
from tests.support.accounts import TEST_SECRET
from tests.support.databases import superuser_url

# The app behind each live client, for clients of it from other addresses.
_APPS: WeakKeyDictionary[AsyncClient, FastAPI] = WeakKeyDictionary()


@asynccontextmanager
async def live_client(database_url: str, **settings: Any) -> AsyncIterator[AsyncClient]:
    """A client of `create_app(...)` with its lifespan running (engine built, then disposed).

    The pool holds 30 connections by default, more than any test sends at once, so
    concurrent requests meet in PostgreSQL, not in the pool's queue.
    """
    # gc_threshold=0: the lifespan leaves this (shared) test process's collector alone.
    options: dict[str, Any] = {
        "pool_size": 30,
        "max_overflow": 0,
        "log_level": "WARNING",
        "gc_threshold": 0,
        "jwt_secret": TEST_SECRET,
    }
    app = create_app(Settings(database_url=database_url, **(options | settings)))
    async with (
        app.router.lifespan_context(app),
        AsyncClient(transport=ASGITransport(app=app), base_url="http://test") as client,
    ):
        _APPS[client] = app
        yield client


def cached_live_client(
    database_url: str, redis_url: str
) -> AbstractAsyncContextManager[AsyncClient]:
    """`live_client` with the cache on Redis at `redis_url`, for tests that open many
    accounts from one address (the registration limits raised)."""
    return live_client(
        database_url, redis_url=redis_url, registrations_per_address=1000, registrations_total=1000
    )


def app_of(client: AsyncClient) -> FastAPI:
    """The live app behind `client`."""
    return _APPS[client]


def from_address(client: AsyncClient, address: str) -> AsyncClient:
    """A client of the same live app as `client` (sharing its engine), connecting from
    `address`, without `client`'s headers; the caller closes it."""
    transport = ASGITransport(app=_APPS[client], client=(address, 123))
    return AsyncClient(transport=transport, base_url="http://test")


@asynccontextmanager
async def observer_engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """Connections of the test's own: what PostgreSQL really holds, not what the app says
    (as the superuser, past every policy)."""
    engine = create_async_engine(superuser_url(database_url), pool_size=2)
    try:
        yield engine
    finally:
        await engine.dispose()
