"""More accounts for the authentication and authorization tests, committed once per test
run like `account` (alice) and `other_account` (mallory)."""

from __future__ import annotations

import pytest_asyncio
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support.accounts import Account, create_account


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
