"""Login sessions: changing a password.

Each flow enters its transaction as one caller after another (the service counting an
attempt, the account itself) and answers an outcome that the route turns into a response:
`TooManyAttempts` (429), or a `Refused` (401). A wrong current password is bad input
(BadInputError, 422)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from taskmanager.accounts.callers import enter_as_user
from taskmanager.accounts.login_limits import count_password_attempt, password_limits
from taskmanager.bad_input import BadInputError
from taskmanager.config import Settings
from taskmanager.models import User
from taskmanager.repositories.auth_session_repository import AuthSessionRepository
from taskmanager.repositories.user_repository import UserRepository
from taskmanager.security.caller_key import CallerKey
from taskmanager.security.passwords import hash_password, verify_password
from taskmanager.security.scope import Scope


@dataclass(frozen=True, slots=True)
class TooManyAttempts:
    """Too many password attempts at this account or from this network: wait `wait` seconds."""

    wait: int


class Refused(enum.Enum):
    """Why a flow did not go ahead (each one a 401)."""

    # The caller's login session ended during the request.
    LOGIN_ENDED = enum.auto()


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
