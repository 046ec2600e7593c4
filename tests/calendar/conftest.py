"""Accounts for the calendar feed tests, committed once per test run like `account`."""

from __future__ import annotations

import pytest_asyncio
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support.accounts import Account, create_account


@pytest_asyncio.fixture(scope="session")
async def colleague_account(engine: AsyncEngine) -> Account:
    """Made a member of one of alice's workspaces by the tests that need one."""
    return await create_account(engine, "colin.calendar@example.com")
