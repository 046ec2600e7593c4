"""Two more accounts for the API tests, committed once per test run like `account` (alice)
and `other_account` (mallory): bob and carol share nothing with anyone until a test makes
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
