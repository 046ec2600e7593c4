"""More accounts for the API tests, committed once per test run like `account` (alice) and
`other_account` (mallory): bob, carol and vera share nothing with anyone until a test makes
them members of one of alice's workspaces (rolled back with it)."""

from __future__ import annotations

import pytest_asyncio
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support.accounts import Account, create_account


@pytest_asyncio.fixture(scope="session")
async def bob(engine: AsyncEngine) -> Account:
    return await create_account(engine, "bob@example.com")


@pytest_asyncio.fixture(scope="session")
async def carol(engine: AsyncEngine) -> Account:
    return await create_account(engine, "carol@example.com")


@pytest_asyncio.fixture(scope="session")
async def vera(engine: AsyncEngine) -> Account:
    """A third account for the roles' tests (a viewer where one is needed)."""
    return await create_account(engine, "vera@example.com")
