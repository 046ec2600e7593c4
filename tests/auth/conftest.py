"""More accounts for the authentication and authorization tests, committed once per test
run like `account` (alice) and `other_account` (mallory), and clients from chosen client
addresses."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest_asyncio
from fastapi import FastAPI
from httpx import AsyncClient
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from taskmanager.config import Settings
from taskmanager.main import create_app
from tests.support.accounts import Account, create_account
from tests.support.rolled_back import DEFAULT_CLIENT_ADDRESS, rolled_back_client


@pytest_asyncio.fixture(scope="session")
async def member_account(engine: AsyncEngine) -> Account:
    """Made a member (not an owner) of alice's workspace by the tests that need one."""
    return await create_account(engine, "carol.member@example.com")


@pytest_asyncio.fixture(scope="session")
async def neighbour_account(engine: AsyncEngine) -> Account:
    """Shares some workspace with alice, never the one a test's resource lives in."""
    return await create_account(engine, "dan.neighbour@example.com")


@pytest_asyncio.fixture(scope="session")
async def target_account(engine: AsyncEngine) -> Account:
    """A second member of alice's workspace: the one a matrix call tries to remove."""
    return await create_account(engine, "erin.target@example.com")


@pytest_asyncio.fixture(scope="session")
async def admin_account(engine: AsyncEngine) -> Account:
    """Made an admin of alice's workspace by the tests that need one."""
    return await create_account(engine, "adam.admin@example.com")


@pytest_asyncio.fixture(scope="session")
async def viewer_account(engine: AsyncEngine) -> Account:
    """Made a viewer of alice's workspace by the tests that need one."""
    return await create_account(engine, "vic.viewer@example.com")


ClientAt = Callable[..., AsyncClient]


@pytest_asyncio.fixture
async def client_at(
    app: FastAPI, settings: Settings, engine: AsyncEngine, db_session: AsyncSession
) -> AsyncIterator[ClientAt]:
    """`client_at(address, **settings)`: a client without a token, on the test's rolled-back
    session, connecting from `address`, of the app with the test settings changed by
    `settings` (one app per distinct change)."""
    apps: dict[tuple[tuple[str, Any], ...], FastAPI] = {(): app}
    clients: list[AsyncClient] = []

    def client(address: str = DEFAULT_CLIENT_ADDRESS, **overrides: Any) -> AsyncClient:
        changed = tuple(sorted(overrides.items()))
        if changed not in apps:
            apps[changed] = create_app(settings.model_copy(update=overrides))
        clients.append(rolled_back_client(apps[changed], engine, db_session, address))
        return clients[-1]

    yield client
    for opened in clients:
        await opened.aclose()
    for used in apps.values():
        used.dependency_overrides.clear()
