"""Opening an account: the user, their personal workspace, and whatever nobody owns yet.

Two ways in. `register_account` makes the account directly: `taskmanager users create` and
the demo user of `taskmanager db seed` (an operator's, their addresses taken as verified),
and the tests. `register_by_mail` is POST /auth/register, which tells a stranger nothing
about whether an address is taken: a new address gets its account and a verification
mail, a taken one a mail to its owner, and the client the same answer after the same
work either way. Both flush in the caller's transaction, never commit."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from taskmanager.config import Settings
from taskmanager.models import User
from taskmanager.repositories.account_token_repository import AccountTokenRepository
from taskmanager.repositories.user_repository import UserRepository
from taskmanager.repositories.workspace_repository import WorkspaceRepository
from taskmanager.security.caller_key import VOUCHED_SUBJECT, CallerKey
from taskmanager.security.mail_tokens import MailTokenKey
from taskmanager.security.passwords import hash_password

PERSONAL_WORKSPACE_NAME = "Personal"


@dataclass(frozen=True, slots=True)
class MailLifetimes:
    """How long mailed links work, in seconds."""

    verification_seconds: int
    reset_seconds: int


def mail_lifetimes(settings: Settings) -> MailLifetimes:
    return MailLifetimes(
        verification_seconds=round(settings.email_verification_hours * 3600),
        reset_seconds=round(settings.password_reset_minutes * 60),
    )


async def register_account(
    session: AsyncSession,
    key: CallerKey,
    email: str,
    password: str,
    display_name: str | None = None,
    *,
    claim_unowned: bool = False,
    request_id: str | None = None,
    verified: bool = False,
) -> User:
    """Create the account (an email in use fails the unique index: 409) with its personal
    workspace. With `claim_unowned` (only `taskmanager users create`, an operator's
    command), it also takes over the workspaces nobody owns: the tasks and categories from
    before accounts existed. Never through the public registration, where the first
    stranger to register would get them. With `verified`, its address counts as proven
    (the operator vouches for it: the transaction enters with VOUCHED_SUBJECT, which the
    database requires of an account inserted verified).

    The transaction must not have entered a caller yet: it enters as the account about to
    be made (the database allocates its id), under row-level security from the start.
    `request_id`: the request it serves (the activity log names it), if any."""
    password_hash = await hash_password(password)
    users = UserRepository(session)
    user_id = await _enter_to_register(users, key, request_id, vouched=verified)
    user = await users.create(
        user_id,
        email=email,
        display_name=display_name or _local_part(email),
        password_hash=password_hash,
        verified=verified,
    )
    await _personal_workspace(session, users, user)
    if claim_unowned:
        # Only an operator's caller may take over the workspaces nobody owns.
        await users.enter(key.entry("operator", user.id), request_id)
        await WorkspaceRepository(session).claim_unclaimed(user.id)
    return user


async def register_by_mail(
    session: AsyncSession,
    key: CallerKey,
    tokens: MailTokenKey,
    lifetimes: MailLifetimes,
    email: str,
    password: str,
    display_name: str | None = None,
    request_id: str | None = None,
) -> None:
    """POST /auth/register. A new address: the account, its personal workspace, and a mail
    with a link that verifies the address. A taken one (any case, also when taken by a
    registration running at the same moment): no account, and a mail to the address's
    owner saying someone tried, with a link to reset the password. The password is hashed
    either way, and either way one mail is recorded, so the two take the same time; the
    caller learns nothing of which it was (the transaction must not have entered yet)."""
    password_hash = await hash_password(password)
    users = UserRepository(session)
    mails = AccountTokenRepository(session)
    user_id = await _enter_to_register(users, key, request_id)
    if await mails.record_mail("registration_attempt", email, lifetimes.reset_seconds, key, tokens):
        return
    user = await users.create_unless_taken(
        user_id, email, display_name or _local_part(email), password_hash
    )
    if user is None:  # taken meanwhile: tell its owner, as above
        await mails.record_mail("registration_attempt", email, lifetimes.reset_seconds, key, tokens)
        return
    await _personal_workspace(session, users, user)
    await mails.record_mail("verify_email", None, lifetimes.verification_seconds, key, tokens)


async def _enter_to_register(
    users: UserRepository, key: CallerKey, request_id: str | None, *, vouched: bool = False
) -> int:
    """Enter to register an account (the database allocates its id). `vouched`: the
    operator vouches for its address, the only registration the database lets insert an
    account that is already verified (migration 0012)."""
    entry = key.entry("register", subject=VOUCHED_SUBJECT if vouched else None)
    entered = await users.enter(entry, request_id)
    if entered is None or entered.user_id is None:
        raise RuntimeError("the database allocated no id for a registration")
    return entered.user_id


async def _personal_workspace(session: AsyncSession, users: UserRepository, user: User) -> None:
    # The policies let a caller create a workspace only as its creator, and become the
    # first owner of a workspace it created.
    personal = await WorkspaceRepository(session).create_personal(user.id, PERSONAL_WORKSPACE_NAME)
    await users.set_personal_workspace(user, personal)


def _local_part(email: str) -> str:
    return email.split("@", 1)[0]
