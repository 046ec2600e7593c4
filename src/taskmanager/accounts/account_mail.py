"""Proving a mailbox: verifying an address, and resetting a forgotten password.

The token of a mailed link is the proof: these flows need no login (but resending a
verification link, which is the account's own). Each enters its transaction as the
service (purpose 'login', no user: nobody is logged in yet) and calls the one database
function that does its narrow thing (AccountTokenRepository). Asking for a mail is
counted first and the count COMMITTED (login_limits), before any work, whatever follows:
a password reset is counted per client address and per account (known or not), so the
answer is the same either way."""

from __future__ import annotations

import enum

from sqlalchemy.ext.asyncio import AsyncSession

from taskmanager.accounts.callers import enter_as_user
from taskmanager.accounts.login_limits import count_mail_request, mail_limits
from taskmanager.accounts.registration import mail_lifetimes
from taskmanager.accounts.sessions import Refused, TooManyAttempts
from taskmanager.config import Settings
from taskmanager.models import User
from taskmanager.repositories.account_token_repository import AccountTokenRepository
from taskmanager.repositories.user_repository import UserRepository
from taskmanager.security.caller_key import CallerKey
from taskmanager.security.mail_tokens import MailTokenKey
from taskmanager.security.passwords import hash_password
from taskmanager.security.scope import Scope


class AlreadyVerified(enum.Enum):
    """Resending a verification link to an address that is verified already."""

    ALREADY_VERIFIED = enum.auto()


ALREADY_VERIFIED = AlreadyVerified.ALREADY_VERIFIED


async def verify_email(session: AsyncSession, key: CallerKey, token: str) -> bool:
    """Spend a verification token: whether it verified an address (False: unknown, used
    already or expired)."""
    await UserRepository(session).enter(key.entry("login"))
    return await AccountTokenRepository(session).verify_email(token) is not None


async def resend_verification(
    session: AsyncSession,
    key: CallerKey,
    tokens: MailTokenKey,
    settings: Settings,
    network: str,
    caller: Scope,
    me: User,
) -> TooManyAttempts | AlreadyVerified | Refused | None:
    """Mail the caller a new verification link (earlier ones keep working until they
    expire). Counted, like password-reset requests, per client address and per account; as
    change_password does, this ends the request's transaction (nothing written yet) to
    commit the count in one of its own, then enters the caller again (LOGIN_ENDED if their
    login ended meanwhile). None when recorded."""
    if me.email_verified_at is not None:
        return ALREADY_VERIFIED
    await session.commit()
    wait = await count_mail_request(session, key, mail_limits(settings), network, me.email)
    if wait is not None:
        return TooManyAttempts(wait)
    if (
        await enter_as_user(session, key, caller.user_id, caller.session_id, caller.valid_until)
        is None
    ):
        return Refused.LOGIN_ENDED
    lifetime = mail_lifetimes(settings).verification_seconds
    if not await AccountTokenRepository(session).record_mail(
        "verify_email", None, lifetime, key, tokens
    ):
        return ALREADY_VERIFIED  # verified meanwhile
    return None


async def request_password_reset(
    session: AsyncSession,
    key: CallerKey,
    tokens: MailTokenKey,
    settings: Settings,
    network: str,
    email: str,
) -> TooManyAttempts | None:
    """Mail a password-reset link to the account with `email` (any case), if there is an
    active one; nothing otherwise. The caller cannot tell which: both count the same keys
    and answer the same (None), and sending happens after commit, elsewhere."""
    wait = await count_mail_request(session, key, mail_limits(settings), network, email)
    if wait is not None:
        return TooManyAttempts(wait)
    await UserRepository(session).enter(key.entry("login"))
    lifetime = mail_lifetimes(settings).reset_seconds
    await AccountTokenRepository(session).record_mail(
        "password_reset", email, lifetime, key, tokens
    )
    return None


async def reset_password(
    session: AsyncSession, key: CallerKey, token: str, new_password: str
) -> bool:
    """Set the password of the account a reset token was mailed to, spending the token and
    ending every login session of the account. Whether it did (False: the token is
    unknown, used already or expired). The token is checked before the new password is
    hashed, so made-up tokens cost no hashing."""
    await UserRepository(session).enter(key.entry("login"))
    tokens = AccountTokenRepository(session)
    if not await tokens.password_reset_valid(token):
        return False
    new_hash = await hash_password(new_password)
    return await tokens.reset_password(token, new_hash) is not None
