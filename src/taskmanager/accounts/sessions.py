"""Login sessions: logging in with a password, trading a refresh token, changing a password.

Each flow enters its transaction as one caller after another (the service counting an
attempt, the service reading a password hash, the account itself) and answers an outcome
that the route turns into a response: a login session opened (its tokens are the route's),
`TooManyAttempts` (429), or a `Refused` (401). A wrong current password is bad input
(BadInputError, 422). Failures that must be remembered (an attempt counted, a reused
refresh token's session revoked) are returned, not raised: what was recorded is committed
with the request's transaction instead of being rolled back."""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from taskmanager.accounts.callers import enter_as_user
from taskmanager.accounts.login_limits import (
    count_password_attempt,
    password_limits,
    remember_login,
)
from taskmanager.bad_input import BadInputError
from taskmanager.config import Settings
from taskmanager.models import User
from taskmanager.repositories.auth_session_repository import AuthSessionRepository, Rotation
from taskmanager.repositories.user_repository import UserRepository
from taskmanager.security.caller_key import CallerKey, attempt_subject
from taskmanager.security.passwords import hash_password, verify_password
from taskmanager.security.scope import Scope


@dataclass(frozen=True, slots=True)
class Opened:
    """A login session opened or refreshed: what its access token is made for, and its new
    refresh token (shown once)."""

    user_id: int
    session_id: uuid.UUID
    refresh_token: str = field(repr=False)  # a credential: never in a repr


@dataclass(frozen=True, slots=True)
class TooManyAttempts:
    """Too many password attempts at this account or from this network: wait `wait` seconds."""

    wait: int


class Refused(enum.Enum):
    """Why a flow did not go ahead (each one a 401)."""

    # The email or the password is wrong, or the account is disabled (the same answer).
    BAD_CREDENTIALS = enum.auto()
    # The refresh token is unknown or spent, or its login session ended or expired.
    REFRESH_TOKEN_NOT_VALID = enum.auto()
    # A spent refresh token was presented again: its login session is now ended.
    REFRESH_TOKEN_REUSED = enum.auto()
    # The caller's login session ended during the request.
    LOGIN_ENDED = enum.auto()


async def log_in(
    session: AsyncSession,
    key: CallerKey,
    settings: Settings,
    network: str,
    username: str,
    password: str,
) -> Opened | TooManyAttempts | Refused:
    """Open a login session for the account `username` (an email) names, if `password` is
    its password. The attempt is counted (and committed) first; an unknown email is checked
    against a decoy hash, so it costs the same work as a wrong password. A password hashed
    with older parameters is hashed again with today's."""
    attempt = await count_password_attempt(
        session, key, password_limits(settings), network, username
    )
    if attempt.wait is not None:
        return TooManyAttempts(attempt.wait)
    users = UserRepository(session)
    await users.enter(key.entry("login"))
    account = await users.password_hash_of(username, key)
    matches, new_hash = await verify_password(
        password, account.password_hash if account is not None else None
    )
    if account is None or not matches or not account.is_active:
        return Refused.BAD_CREDENTIALS
    # From here on as the account whose password this is: what follows is its own (and
    # the attempt counts of this login's subject).
    subject = attempt_subject(attempt.network, attempt.username)
    await users.enter(key.entry("login", account.user_id, subject=subject))
    if new_hash is not None:  # hashed with older parameters: store today's
        await users.change_password_hash(account.user_id, new_hash)
    await remember_login(session, attempt)
    expires_at = datetime.now(UTC) + timedelta(days=settings.session_days)
    session_id, refresh_token = await AuthSessionRepository(session).open(
        account.user_id, expires_at
    )
    return Opened(account.user_id, session_id, refresh_token)


async def refresh(session: AsyncSession, key: CallerKey, refresh_token: str) -> Opened | Refused:
    """Rotate `refresh_token`: its login session gets a new refresh token. A spent one
    presented again ends its whole login session (REFRESH_TOKEN_REUSED)."""
    users = UserRepository(session)
    sessions = AuthSessionRepository(session)
    await users.enter(key.entry("refresh"))
    owner = await sessions.owner_of(refresh_token)
    # From here on as the user whose login session the token belongs to.
    if owner is None or await users.enter(key.entry("refresh", *owner)) is None:
        return Refused.REFRESH_TOKEN_NOT_VALID
    result = await sessions.rotate(refresh_token)
    if result.outcome is Rotation.REUSED:
        return Refused.REFRESH_TOKEN_REUSED
    if result.outcome is not Rotation.ROTATED:
        return Refused.REFRESH_TOKEN_NOT_VALID
    assert result.user_id is not None
    assert result.refresh_token is not None
    assert result.session_id is not None
    return Opened(result.user_id, result.session_id, result.refresh_token)


async def change_password(
    session: AsyncSession,
    key: CallerKey,
    settings: Settings,
    network: str,
    caller: Scope,
    me: User,
    current_password: str,
    new_password: str,
) -> TooManyAttempts | Refused | None:
    """Change the password of `me`, the caller's account, if `current_password` is theirs
    (else BadInputError naming body.current_password), and end every other login session
    of the account. None when changed.

    A wrong current password counts like a failed login, and the count must be COMMITTED
    before the password is checked (see login_limits): the 422 that follows a wrong one
    rolls back the request's transaction, and the count's row locks must not be held for
    the hashing. The count cannot share that transaction, so this flow ends the request's
    transaction (entered as the caller, nothing written yet), counts in one of its own, and
    then enters the caller again for the change, with the access token's expiry
    (`caller.valid_until`): LOGIN_ENDED if their login session ended meanwhile."""
    await session.commit()
    attempt = await count_password_attempt(
        session, key, password_limits(settings), network, me.email
    )
    if attempt.wait is not None:
        return TooManyAttempts(attempt.wait)
    again = await enter_as_user(session, key, caller.user_id, caller.session_id, caller.valid_until)
    if again is None:
        return Refused.LOGIN_ENDED
    users = UserRepository(session)
    account = await users.password_hash_of(me.email, key)
    matches, _ = await verify_password(
        current_password, account.password_hash if account is not None else None
    )
    if not matches:
        raise BadInputError("body.current_password", "is not your password")
    await users.record_password_change(me, await hash_password(new_password))
    await AuthSessionRepository(session).revoke_all(
        caller.user_id, "password_changed", keep=caller.session_id
    )
    return None
