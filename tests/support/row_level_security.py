"""Row-level security in the tests: a transaction entered as an account the way every
request enters it, left again, and PostgreSQL's refusals told apart from other errors."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import Executable

from taskmanager.repositories.user_repository import UserRepository
from tests.support.accounts import Account, request_entry

INSUFFICIENT_PRIVILEGE = "42501"
# Back to the session's own role with no caller: the transaction as it was before it entered.
LEAVE_REQUEST_SCOPE = text(
    "SELECT set_config('role', 'none', true), set_config('taskmanager.caller', '', true)"
)


async def enter_scope(session: AsyncSession, account: Account) -> None:
    """What every request does first: from here on, this transaction runs as `account`
    under row-level security."""
    assert await UserRepository(session).enter(request_entry(account)) is not None


async def leave_scope(session: AsyncSession) -> None:
    await session.execute(LEAVE_REQUEST_SCOPE)


async def rows(session: AsyncSession, statement: Executable) -> list[Any]:
    return list((await session.execute(statement)).all())


def sqlstate(error: DBAPIError) -> str | None:
    """The SQLSTATE PostgreSQL answered with (on asyncpg's error, or the one behind
    SQLAlchemy's adapter)."""
    orig: Any = error.orig
    return getattr(orig, "sqlstate", None) or getattr(orig.__cause__, "sqlstate", None)


def is_policy_violation(error: DBAPIError) -> bool:
    """A row-level-security policy refused the statement."""
    return sqlstate(error) == INSUFFICIENT_PRIVILEGE and "row-level security" in str(error.orig)


async def assert_refused_by_the_policies(
    session: AsyncSession, statements: Mapping[str, Executable]
) -> None:
    """Each statement (named by what it tries), run in a savepoint of its own, is refused by
    a policy."""
    for what, statement in statements.items():
        with pytest.raises(DBAPIError) as raised:
            async with session.begin_nested():
                await session.execute(statement)
        assert is_policy_violation(raised.value), (what, raised.value)


async def assert_nothing_matches(session: AsyncSession, statements: Iterable[Executable]) -> None:
    """Each UPDATE or DELETE finds no row: the policies hide every row it aims at."""
    for statement in statements:
        result = await session.execute(statement)
        assert getattr(result, "rowcount", None) == 0, statement
