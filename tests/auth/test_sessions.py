"""Login sessions: refresh-token rotation and reuse detection (RFC 9700 4.14.2), logout,
logout everywhere, and a password change ending every other session. Checked through the
API and in the database."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from httpx import AsyncClient, Response
from sqlalchemy import func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from taskmanager.accounts.login_limits import purge_expired_counts
from taskmanager.config import Settings
from taskmanager.models import AuthSession, LoginFailure, RefreshToken, User
from taskmanager.repositories.auth_session_repository import AuthSessionRepository
from taskmanager.repositories.user_repository import UserRepository
from taskmanager.security.passwords import password_hash
from taskmanager.security.tokens import read_access_token, refresh_token_hash
from tests.support.accounts import PASSWORD, TEST_SECRET, Account
from tests.support.databases import TEST_KEY
from tests.support.problems import assert_problem, assert_validation_problem
from tests.support.row_level_security import leave_scope
from tests.support.tokens import assert_unauthorized, bearer

NEW_PASSWORD = "a completely new passphrase"
LIVE_EMAIL = "live@example.com"  # the `live` fixture's account


@dataclass
class Pair:
    access_token: str
    refresh_token: str

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self.access_token)

    @property
    def session_id(self) -> uuid.UUID:
        return read_access_token(TEST_SECRET, self.access_token).session_id


async def log_in(client: AsyncClient, email: str, password: str) -> Pair:
    response = await client.post("/auth/token", data={"username": email, "password": password})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "bearer"
    return Pair(body["access_token"], body["refresh_token"])


async def refresh(client: AsyncClient, pair: Pair) -> Pair:
    response = await client.post("/auth/refresh", json={"refresh_token": pair.refresh_token})
    assert response.status_code == 200, response.text
    body = response.json()
    return Pair(body["access_token"], body["refresh_token"])


async def works(client: AsyncClient, pair: Pair) -> bool:
    """Whether the pair's access token is accepted (200) or refused (401, checked)."""
    response = await client.get("/users/me", headers=pair.headers)
    if response.status_code == 200:
        return True
    assert_unauthorized(response, token_given=True)
    return False


async def refresh_refused(client: AsyncClient, refresh_token: str) -> bool:
    response = await client.post("/auth/refresh", json={"refresh_token": refresh_token})
    if response.status_code == 200:
        return False
    assert_unauthorized(response, token_given=False)
    return True


async def revoked_reason(db_session: AsyncSession, session_id: uuid.UUID) -> str | None:
    row = (
        await db_session.execute(
            select(AuthSession.revoked_at, AuthSession.revoked_reason).where(
                AuthSession.id == session_id
            )
        )
    ).one()
    assert (row.revoked_at is None) == (row.revoked_reason is None), row
    reason: str | None = row.revoked_reason
    return reason


# ─────────────────────────────── rotation


async def test_each_refresh_gives_a_new_pair_in_the_same_session(
    client: AsyncClient, account: Account
) -> None:
    first = await log_in(client, account.email, account.password)
    second = await refresh(client, first)
    third = await refresh(client, second)

    tokens = [first.access_token, second.access_token, third.access_token]
    refresh_tokens = [first.refresh_token, second.refresh_token, third.refresh_token]
    assert len(set(tokens)) == 3
    assert len(set(refresh_tokens)) == 3
    assert first.session_id == second.session_id == third.session_id
    assert await works(client, third)
    # 256 random bits, URL-safe base64: at least 43 characters.
    assert all(len(token) >= 43 for token in refresh_tokens)


async def test_a_refresh_token_works_once(client: AsyncClient, account: Account) -> None:
    first = await log_in(client, account.email, account.password)
    await refresh(client, first)
    assert await refresh_refused(client, first.refresh_token)


async def test_reusing_a_spent_refresh_token_revokes_its_whole_session(
    client: AsyncClient, db_session: AsyncSession, account: Account
) -> None:
    first = await log_in(client, account.email, account.password)
    second = await refresh(client, first)
    newest = await refresh(client, second)
    elsewhere = await log_in(client, account.email, account.password)  # another session
    assert await works(client, newest)

    # An attacker (or the client) presents a token spent before.
    response = await client.post("/auth/refresh", json={"refresh_token": first.refresh_token})

    body = assert_unauthorized(response, token_given=False)
    assert "already used" in body["detail"]
    assert await revoked_reason(db_session, first.session_id) == "refresh_token_reused"
    # The whole family is gone: the session's access token and its newest refresh token.
    assert not await works(client, newest)
    assert await refresh_refused(client, newest.refresh_token)
    # Only that family: the account's other session goes on.
    assert await works(client, elsewhere)
    assert await revoked_reason(db_session, elsewhere.session_id) is None
    await refresh(client, elsewhere)


async def test_an_unknown_refresh_token_is_401(client: AsyncClient) -> None:
    assert await refresh_refused(client, "x" * 43)


async def test_an_expired_session_ends_both_tokens(
    client: AsyncClient, db_session: AsyncSession, account: Account
) -> None:
    pair = await log_in(client, account.email, account.password)
    await db_session.execute(
        update(AuthSession)
        .where(AuthSession.id == pair.session_id)
        .values(expires_at=func.now() - timedelta(seconds=1))
    )
    await db_session.commit()  # into the test's transaction: a refused request rolls back

    assert not await works(client, pair)
    assert await refresh_refused(client, pair.refresh_token)


async def test_a_deactivated_account_cannot_refresh(
    client: AsyncClient, db_session: AsyncSession, account: Account
) -> None:
    pair = await log_in(client, account.email, account.password)
    await db_session.execute(update(User).where(User.id == account.user_id).values(is_active=False))
    await db_session.commit()

    assert await refresh_refused(client, pair.refresh_token)
    assert not await works(client, pair)


async def test_uses_of_one_refresh_token_at_once_end_the_session(live: AsyncClient) -> None:
    """With real commits and concurrent transactions: of three requests presenting the same
    refresh token at once, one rotates it and the others find it spent, which ends the
    session, so no new pair outlives the race. Several rounds, since a race without the
    row lock would not lose every time."""
    for _ in range(4):
        pair = await log_in(live, LIVE_EMAIL, PASSWORD)

        answers = await asyncio.gather(
            *(
                live.post("/auth/refresh", json={"refresh_token": pair.refresh_token})
                for _ in range(3)
            )
        )

        assert sorted(answer.status_code for answer in answers) == [200, 401, 401], [
            answer.text for answer in answers
        ]
        winner = next(answer for answer in answers if answer.status_code == 200).json()
        rotated = Pair(winner["access_token"], winner["refresh_token"])
        assert not await works(live, rotated)
        assert await refresh_refused(live, rotated.refresh_token)


async def test_refresh_tokens_are_stored_only_as_hashes(
    client: AsyncClient, db_session: AsyncSession, account: Account
) -> None:
    first = await log_in(client, account.email, account.password)
    second = await refresh(client, first)

    for pair in (first, second):
        for table in ("refresh_tokens", "auth_sessions"):
            stored = (
                await db_session.execute(
                    text(f"SELECT count(*) FROM {table} t WHERE t::text LIKE :token"),
                    {"token": f"%{pair.refresh_token}%"},
                )
            ).scalar_one()
            assert stored == 0, f"a refresh token is stored in {table} as it was sent"
        hashes = (
            await db_session.execute(
                text("SELECT count(*) FROM refresh_tokens WHERE token_hash = :hash"),
                {"hash": refresh_token_hash(pair.refresh_token)},
            )
        ).scalar_one()
        assert hashes == 1
    spent = (
        await db_session.execute(
            text("SELECT used_at IS NOT NULL FROM refresh_tokens WHERE token_hash = :hash"),
            {"hash": refresh_token_hash(first.refresh_token)},
        )
    ).scalar_one()
    assert spent


# ─────────────────────────────── logout


async def test_logout_ends_this_session_only(
    client: AsyncClient, db_session: AsyncSession, account: Account
) -> None:
    mine = await log_in(client, account.email, account.password)
    other = await log_in(client, account.email, account.password)

    response = await client.post("/auth/logout", headers=mine.headers)

    assert response.status_code == 204, response.text
    assert not await works(client, mine)
    assert await refresh_refused(client, mine.refresh_token)
    assert await revoked_reason(db_session, mine.session_id) == "logout"
    assert await works(client, other)
    await refresh(client, other)


async def test_logout_with_a_bad_token_is_401(client: AsyncClient) -> None:
    response = await client.post("/auth/logout", headers={"Authorization": "Bearer nope"})
    assert_unauthorized(response, token_given=True)


async def test_logout_all_ends_every_session(
    client: AsyncClient, db_session: AsyncSession, account: Account, other_account: Account
) -> None:
    one = await log_in(client, account.email, account.password)
    two = await log_in(client, account.email, account.password)
    mallory = await log_in(client, other_account.email, other_account.password)

    response = await client.post("/auth/logout-all", headers=one.headers)

    assert response.status_code == 204, response.text
    for pair in (one, two):
        assert not await works(client, pair)
        assert await refresh_refused(client, pair.refresh_token)
        assert await revoked_reason(db_session, pair.session_id) == "logout_all"
    assert not await works(client, Pair(account.access_token, account.refresh_token))
    # Someone else's sessions are not touched.
    assert await works(client, mallory)


# ─────────────────────────────── password change


async def test_a_password_change_ends_every_other_session_but_not_this_one(
    client: AsyncClient, db_session: AsyncSession, account: Account
) -> None:
    current = await log_in(client, account.email, account.password)
    other = await log_in(client, account.email, account.password)

    response = await client.patch(
        "/users/me",
        json={"password": NEW_PASSWORD, "current_password": account.password},
        headers=current.headers,
    )

    assert response.status_code == 200, response.text
    assert await works(client, current)
    await refresh(client, current)
    assert not await works(client, other)
    assert await refresh_refused(client, other.refresh_token)
    assert await revoked_reason(db_session, other.session_id) == "password_changed"
    assert await revoked_reason(db_session, current.session_id) is None
    # The new password logs in; the old one no longer does.
    await log_in(client, account.email, NEW_PASSWORD)
    old = await client.post(
        "/auth/token", data={"username": account.email, "password": account.password}
    )
    assert_unauthorized(old, token_given=False)


async def test_a_wrong_current_password_changes_nothing(
    client: AsyncClient, db_session: AsyncSession, account: Account
) -> None:
    current = await log_in(client, account.email, account.password)
    other = await log_in(client, account.email, account.password)
    stored_before = (
        await db_session.execute(select(User.password_hash).where(User.id == account.user_id))
    ).scalar_one()

    response = await client.patch(
        "/users/me",
        json={"password": NEW_PASSWORD, "current_password": "not my password"},
        headers=current.headers,
    )

    assert_validation_problem(response, "body.current_password")
    assert account.password not in response.text
    stored_after = (
        await db_session.execute(select(User.password_hash).where(User.id == account.user_id))
    ).scalar_one()
    assert stored_after == stored_before
    assert password_hash().verify(account.password, stored_after)
    assert await works(client, other)
    await log_in(client, account.email, account.password)


async def test_a_new_password_needs_the_current_one(client: AsyncClient) -> None:
    response = await client.patch("/users/me", json={"password": NEW_PASSWORD})
    body = assert_validation_problem(response, "body")
    assert "current_password" in body["detail"]


async def test_wrong_current_passwords_count_like_failed_logins(
    client: AsyncClient, db_session: AsyncSession, account: Account
) -> None:
    """Under the same keys as logins: a stolen access token is no way around the limits."""
    current = await log_in(client, account.email, account.password)  # 127.0.0.1 is known now
    for _ in range(2):
        wrong = {"username": account.email, "password": "not my password"}
        assert_unauthorized(await client.post("/auth/token", data=wrong), token_given=False)

    async def change(current_password: str) -> Response:
        body = {"password": NEW_PASSWORD, "current_password": current_password}
        return await client.patch("/users/me", json=body, headers=current.headers)

    for _ in range(3):  # login_failures_per_account_and_address: 5
        assert_validation_problem(await change("not my password"), "body.current_password")
    refused = await change(account.password)

    assert_problem(refused, 429, problem_type="/problems/too-many-login-attempts")
    assert 1 <= int(refused.headers["Retry-After"]) <= 900
    stored = (
        await db_session.execute(select(User.password_hash).where(User.id == account.user_id))
    ).scalar_one()
    assert password_hash().verify(account.password, stored)
    counts = dict((await db_session.execute(select(LoginFailure.key, LoginFailure.failures))).all())
    assert counts[f"account-address:127.0.0.1 {account.email}"] == 6
    # From an address the account logged in from: not counted against the account as a
    # whole (the one success there was counted, then not charged).
    assert counts[f"account:{account.email}"] == 0


async def test_ended_sessions_and_past_attempt_counts_are_purged(
    db_session: AsyncSession, account: Account, settings: Settings
) -> None:
    """`taskmanager db purge-logins`: sessions that ended long enough ago go, with their
    refresh tokens; live ones and recently ended ones stay. Attempt counts go once their
    windows have passed, remembered addresses after login_known_address_days."""
    sessions = AuthSessionRepository(db_session)
    later = datetime.now(UTC) + timedelta(days=1)
    live, _ = await sessions.open(account.user_id, later)
    logged_out_long_ago, _ = await sessions.open(account.user_id, later)
    logged_out_today, _ = await sessions.open(account.user_id, later)
    expired_long_ago, _ = await sessions.open(account.user_id, later)
    await db_session.execute(
        update(AuthSession)
        .where(AuthSession.id == logged_out_long_ago)
        .values(revoked_at=func.now() - timedelta(days=10), revoked_reason="logout")
    )
    await sessions.revoke(account.user_id, logged_out_today, "logout")
    await db_session.execute(
        update(AuthSession)
        .where(AuthSession.id == expired_long_ago)
        .values(expires_at=func.now() - timedelta(days=10))
    )
    counts = {  # key -> age; the 15-minute window unless the key says otherwise
        "account:old@example.com": timedelta(hours=1),
        "account:new@example.com": timedelta(minutes=1),
        "email:from-an-older-version@example.com": timedelta(hours=1),
        "account-day:old@example.com": timedelta(hours=1),  # a day's window
        "account-day:older@example.com": timedelta(hours=25),
        "known-address:192.0.2.1 old@example.com": timedelta(days=10),  # 30 days
        "known-address:192.0.2.1 older@example.com": timedelta(days=31),
        "registration-address:192.0.2.1": timedelta(minutes=30),  # an hour's window
        "registrations:all": timedelta(minutes=2),  # a minute's window
    }
    await db_session.execute(
        insert(LoginFailure).values(
            [
                {"key": key, "failures": 3, "window_started_at": func.now() - past}
                for key, past in counts.items()
            ]
        )
    )
    purged = {
        "account:old@example.com",
        "email:from-an-older-version@example.com",
        "account-day:older@example.com",
        "known-address:192.0.2.1 older@example.com",
        "registrations:all",
    }

    # As the command runs them: entered for maintenance, under the policies.
    await UserRepository(db_session).enter(TEST_KEY.entry("maintenance"))
    assert await sessions.purge_ended(timedelta(days=7)) == 2
    assert await purge_expired_counts(db_session, settings) == len(purged)
    await leave_scope(db_session)  # back to the superuser, no caller: every row in view

    remaining = set(
        (
            await db_session.execute(
                select(AuthSession.id).where(AuthSession.user_id == account.user_id)
            )
        ).scalars()
    )
    assert {live, logged_out_today} <= remaining
    assert not remaining & {logged_out_long_ago, expired_long_ago}
    orphans = await db_session.execute(
        select(RefreshToken.token_hash).where(
            RefreshToken.session_id.in_([logged_out_long_ago, expired_long_ago])
        )
    )
    assert orphans.first() is None
    keys = set((await db_session.execute(select(LoginFailure.key))).scalars())
    assert keys & set(counts) == set(counts) - purged
