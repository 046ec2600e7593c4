"""Spent and expired mailed tokens and closed invitations leave the database by the purge
alone (`taskmanager db purge-mail-tokens`): account tokens a day after they were spent or
expired, invitations the retention after they were answered, revoked or expired, whichever
came first; everything younger, and every usable token or pending invitation, stays. Only a
transaction entered for maintenance purges, and the purge writes no activity."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from httpx import AsyncClient
from sqlalchemy import Integer, bindparam, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from taskmanager.repositories.account_token_repository import AccountTokenRepository
from taskmanager.repositories.invitation_repository import InvitationRepository
from taskmanager.repositories.user_repository import UserRepository
from tests.support.accounts import Account
from tests.support.databases import TEST_KEY
from tests.support.processes import clean_env
from tests.support.row_level_security import (
    INSUFFICIENT_PRIVILEGE,
    enter_scope,
    leave_scope,
    sqlstate,
)

# Each token row: (used_at, expires_at), as intervals from now; and whether the purge takes it.
TOKENS: dict[str, tuple[str | None, str, bool]] = {
    "spent two days ago": ("-2 days", "+5 days", True),
    "expired two days ago, never spent": (None, "-2 days", True),
    "spent three days ago, expired two days ago": ("-3 days", "-2 days", True),
    "spent an hour ago": ("-1 hour", "+1 day", False),
    "expired an hour ago, never spent": (None, "-1 hour", False),
    "usable": (None, "+1 hour", False),
}
# Each invitation row: (the answer column, when it was set, expires_at); whether it goes with
# a retention of 30 days.
INVITATIONS: dict[str, tuple[str | None, str | None, str, bool]] = {
    "accepted 31 days ago": ("accepted_at", "-31 days", "-24 days", True),
    "declined 31 days ago": ("declined_at", "-31 days", "-24 days", True),
    "revoked 31 days ago": ("revoked_at", "-31 days", "-24 days", True),
    "expired 31 days ago, never answered": (None, None, "-31 days", True),
    "expired 40 days ago, revoked an hour ago": ("revoked_at", "-1 hour", "-40 days", True),
    "accepted 29 days ago": ("accepted_at", "-29 days", "-22 days", False),
    "revoked an hour ago": ("revoked_at", "-1 hour", "+6 days", False),
    "expired 29 days ago, never answered": (None, None, "-29 days", False),
    "pending": (None, None, "+7 days", False),
}
RETENTION_DAYS = 30

# (Intervals are bound as text: asyncpg wants a timedelta for an interval parameter.)
_INSERT_TOKEN = text(
    "INSERT INTO account_tokens (id, user_id, purpose, token_hash, email, expires_at, used_at) "
    "VALUES (:id, :user_id, 'password_reset', :token_hash, :email, "
    "now() + CAST(CAST(:expires AS text) AS interval), "
    "now() + CAST(CAST(:used AS text) AS interval))"
)
_INSERT_INVITATION = text(
    "INSERT INTO invitations (id, workspace_id, email, role, token_hash, created_at, expires_at) "
    "VALUES (:id, :workspace_id, :email, 'member', :token_hash, now() - interval '60 days', "
    "now() + CAST(CAST(:expires AS text) AS interval))"
)


async def _tokens(connection: AsyncSession | AsyncConnection, account: Account) -> dict[str, bool]:
    """Make a token row of each kind for `account`: its id -> whether the purge takes it."""
    made = {}
    for used, expires, purged in TOKENS.values():
        token_id = uuid.uuid4()
        await connection.execute(
            _INSERT_TOKEN,
            {
                "id": token_id,
                "user_id": account.user_id,
                "token_hash": hashlib.sha256(token_id.bytes).hexdigest(),
                "email": account.email,
                "expires": expires,
                "used": used,
            },
        )
        made[str(token_id)] = purged
    return made


async def _invitations(
    connection: AsyncSession | AsyncConnection, workspace_id: int
) -> dict[str, bool]:
    """Make an invitation of each kind in `workspace_id`: its id -> whether it goes."""
    made = {}
    for n, (column, answered, expires, purged) in enumerate(INVITATIONS.values()):
        invitation_id = uuid.uuid4()
        await connection.execute(
            _INSERT_INVITATION,
            {
                "id": invitation_id,
                "workspace_id": workspace_id,
                "token_hash": hashlib.sha256(invitation_id.bytes).hexdigest(),
                "email": f"invitee{n}.purge@example.com",
                "expires": expires,
            },
        )
        if column is not None:
            await connection.execute(
                text(
                    f"UPDATE invitations SET {column} = "
                    "now() + CAST(CAST(:answered AS text) AS interval) WHERE id = :id"
                ),
                {"answered": answered, "id": invitation_id},
            )
        made[str(invitation_id)] = purged
    return made


async def _ids(connection: AsyncSession | AsyncConnection, table: str) -> set[str]:
    return {str(row[0]) for row in (await connection.execute(text(f"SELECT id FROM {table}")))}


_DUE_TOKENS = text(
    "SELECT count(*) FROM account_tokens WHERE least(used_at, expires_at) < now() - interval "
    "'1 day'"
)
_DUE_INVITATIONS = text(
    "SELECT count(*) FROM invitations WHERE least(accepted_at, declined_at, revoked_at, "
    "expires_at) < now() - make_interval(days => :days)"
).bindparams(bindparam("days", RETENTION_DAYS, type_=Integer))


async def _refused(session: AsyncSession, sql: str) -> str | None:
    """Run `sql` in a savepoint: the SQLSTATE PostgreSQL refused it with (None: it ran)."""
    try:
        async with session.begin_nested():
            await session.execute(text(sql))
    except DBAPIError as error:
        return sqlstate(error)
    return None


# ─────────────────────────────── what goes and what stays


async def test_maintenance_purges_tokens_spent_or_expired_more_than_a_day_ago_only(
    db_session: AsyncSession, account: Account
) -> None:
    made = await _tokens(db_session, account)
    due = (await db_session.execute(_DUE_TOKENS)).scalar_one()
    before = await _ids(db_session, "account_tokens")

    await UserRepository(db_session).enter(TEST_KEY.entry("maintenance"))
    purged = await AccountTokenRepository(db_session).purge_spent()
    await leave_scope(db_session)

    left = await _ids(db_session, "account_tokens")
    assert {token for token, gone in made.items() if gone}.isdisjoint(left)
    assert {token for token, gone in made.items() if not gone} <= left
    assert purged == due == len(before - left) >= 3


async def test_maintenance_purges_invitations_closed_or_expired_before_the_retention_only(
    db_session: AsyncSession, account: Account
) -> None:
    made = await _invitations(db_session, account.personal_workspace_id)
    due = (await db_session.execute(_DUE_INVITATIONS)).scalar_one()
    before = await _ids(db_session, "invitations")
    last_activity = text("SELECT coalesce(max(id), 0) FROM activity")
    logged = (await db_session.execute(last_activity)).scalar_one()

    await UserRepository(db_session).enter(TEST_KEY.entry("maintenance"))
    purged = await InvitationRepository(db_session).purge_closed(RETENTION_DAYS)
    await leave_scope(db_session)

    left = await _ids(db_session, "invitations")
    assert {one for one, gone in made.items() if gone}.isdisjoint(left)
    assert {one for one, gone in made.items() if not gone} <= left
    assert purged == due == len(before - left) >= 5
    # Housekeeping, not a change of anyone's: nothing logged (the history stays as it was).
    assert (await db_session.execute(last_activity)).scalar_one() == logged


@pytest.mark.parametrize(
    "sql",
    ["SELECT taskmanager_purge_account_tokens()", "SELECT taskmanager_purge_invitations(1)"],
)
@pytest.mark.parametrize("purpose", ["request", "operator", "login"])
async def test_nothing_but_maintenance_may_purge(
    db_session: AsyncSession, account: Account, purpose: str, sql: str
) -> None:
    await _tokens(db_session, account)
    await _invitations(db_session, account.personal_workspace_id)
    tokens = await _ids(db_session, "account_tokens")
    invitations = await _ids(db_session, "invitations")
    if purpose == "request":
        await enter_scope(db_session, account)
    else:
        await UserRepository(db_session).enter(TEST_KEY.entry(purpose, account.user_id))

    refused = await _refused(db_session, sql)

    await leave_scope(db_session)
    assert refused == INSUFFICIENT_PRIVILEGE
    assert await _ids(db_session, "account_tokens") == tokens
    assert await _ids(db_session, "invitations") == invitations


@pytest.mark.parametrize("days", ["0", "-1", "NULL"])
async def test_the_invitation_purge_keeps_at_least_a_day(
    db_session: AsyncSession, account: Account, days: str
) -> None:
    await _invitations(db_session, account.personal_workspace_id)
    await UserRepository(db_session).enter(TEST_KEY.entry("maintenance"))
    refused = await _refused(db_session, f"SELECT taskmanager_purge_invitations({days})")
    await leave_scope(db_session)
    assert refused == "22023"


# ─────────────────────────────── the command


async def test_db_purge_mail_tokens_purges_and_says_how_many(
    own_database_url: str, live: AsyncClient, observer: AsyncEngine, tmp_path: Path
) -> None:
    me = await live.get("/users/me")
    assert me.status_code == 200, me.text
    user: dict[str, Any] = me.json()
    account = Account(
        user_id=user["id"],
        email=user["email"],
        personal_workspace_id=user["personal_workspace_id"],
        session_id=uuid.uuid4(),
        access_token="",
        refresh_token="",
    )
    async with observer.begin() as connection:
        tokens = await _tokens(connection, account)
        invitations = await _invitations(connection, account.personal_workspace_id)
        due_tokens = (await connection.execute(_DUE_TOKENS)).scalar_one()
        due_invitations = (await connection.execute(_DUE_INVITATIONS)).scalar_one()
    assert due_tokens >= sum(tokens.values())
    assert due_invitations >= sum(invitations.values())

    completed = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "taskmanager", "db", "purge-mail-tokens"],
        env=clean_env(
            DATABASE_URL=own_database_url,
            TASKMANAGER_INVITATION_RETENTION_DAYS=str(RETENTION_DAYS),
        ),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )

    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output
    assert (
        f"purged {due_tokens} account tokens spent or expired more than a day ago and "
        f"{due_invitations} invitations closed or expired more than {RETENTION_DAYS} days ago"
    ) in " ".join(output.split())
    async with observer.connect() as connection:
        assert (await connection.execute(_DUE_TOKENS)).scalar_one() == 0
        assert (await connection.execute(_DUE_INVITATIONS)).scalar_one() == 0
        left_tokens = await _ids(connection, "account_tokens")
        left_invitations = await _ids(connection, "invitations")
    assert {token for token, gone in tokens.items() if not gone} <= left_tokens
    assert {one for one, gone in invitations.items() if not gone} <= left_invitations
    # The registration's own verification token, usable, stays too.
    registered = text(
        "SELECT count(*) FROM account_tokens WHERE user_id = :user AND purpose = 'verify_email'"
    )
    async with observer.connect() as connection:
        assert (await connection.execute(registered, {"user": account.user_id})).scalar_one() == 1


async def test_db_purge_mail_tokens_takes_the_retention_from_its_option(
    own_database_url: str, live: AsyncClient, observer: AsyncEngine, tmp_path: Path
) -> None:
    """--invitation-days overrides the setting for one run: kept 30 days by the setting,
    the invitations closed 29 days ago go with --invitation-days 28."""
    me = await live.get("/users/me")
    assert me.status_code == 200, me.text
    async with observer.begin() as connection:
        invitations = await _invitations(connection, me.json()["personal_workspace_id"])
        due = (
            await connection.execute(
                _DUE_INVITATIONS.bindparams(bindparam("days", 28, type_=Integer))
            )
        ).scalar_one()

    completed = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "taskmanager", "db", "purge-mail-tokens", "--invitation-days", "28"],
        env=clean_env(DATABASE_URL=own_database_url, TASKMANAGER_INVITATION_RETENTION_DAYS="30"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )

    output = " ".join((completed.stdout + completed.stderr).split())
    assert completed.returncode == 0, output
    # Of these: the five closed or expired over 30 days ago, and the two 29 days ago.
    assert due >= 7
    assert f"and {due} invitations closed or expired more than 28 days ago" in output
    async with observer.connect() as connection:
        left = await _ids(connection, "invitations")
    kept_by_option = {"revoked an hour ago", "pending"}
    expected = {
        one for one, name in zip(invitations, INVITATIONS, strict=True) if name in kept_by_option
    }
    assert set(invitations) & left == expected
