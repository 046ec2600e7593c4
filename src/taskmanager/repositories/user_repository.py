"""UserRepository: accounts, and entering a transaction's caller (row-level security).

Flushes, never commits."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Integer,
    Text,
    Uuid,
    bindparam,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from taskmanager.models import UQ_USERS_EMAIL, User
from taskmanager.repositories.precompiled import precompiled
from taskmanager.security.caller_key import CallerKey, Entry


@dataclass(frozen=True, slots=True)
class TokenRow:
    """What the database says about the personal access token a transaction entered with."""

    token_id: uuid.UUID
    scopes: Sequence[str]
    workspace_id: int | None
    # Its last_used_at is older than a minute (or unset): this use should stamp it.
    stale: bool


@dataclass(frozen=True, slots=True)
class CallerRow:
    """What the database says about a transaction's caller as it enters (no user for the
    service's own purposes: a login before the password is checked, maintenance)."""

    user_id: int | None
    personal_workspace_id: int | None
    workspace_ids: Sequence[int]
    # workspace id -> the caller's role there.
    workspace_roles: Mapping[int, str]
    # For a caller entered with a personal access token (purpose 'token').
    token: TokenRow | None = None


# The first statement of every transaction: taskmanager_enter (migration 0008) checks the
# entry's proof, seals the caller for this transaction, and answers the caller's personal
# workspace and memberships (read as the tables' owner, before any policy applies); the
# same statement then reads the caller's role in each of those workspaces (through
# taskmanager_workspace_roles, migration 0010: taskmanager_enter's own answer stays as it
# was) and switches to the deployment's caller role. Both end at COMMIT or
# ROLLBACK, so they hold behind PgBouncer's transaction pooling and never leak to the next
# user of the connection. A request whose login session has ended gets no row.
# The request's id goes along, transaction-local too: the activity log (migration 0011)
# writes it beside each change. Unlike the caller it is not sealed: SQL in a request may
# change it, and it only labels the rows that request writes.
_ENTER_PARAMETERS = (
    bindparam("user_id", type_=Integer),
    bindparam("session_id", type_=Uuid),
    bindparam("purpose", type_=Text),
    bindparam("valid_until", type_=BigInteger),
    bindparam("proof", type_=Text),
    bindparam("subject", type_=Text),
    bindparam("request_id", type_=Text),
)
_ENTER = text(
    """
    SELECT e.user_id, e.personal_workspace_id, e.workspace_ids,
           taskmanager_workspace_roles() AS workspace_roles,
           set_config('role', e.caller_role, true) AS role
    FROM taskmanager_enter(:user_id, :session_id, :purpose, :valid_until, :proof, :subject) e
    CROSS JOIN set_config('taskmanager.request_id', :request_id, true) AS request
    """
).bindparams(*_ENTER_PARAMETERS)
# As the app runs it: the roles arrive as JSON. Every request sends it: precompiled.
_ENTER_ROW = _ENTER.columns(workspace_roles=JSONB)
# The same for a personal access token (migration 0013), with what the token allows (read
# after taskmanager_enter sealed it as the caller, as the roles are).
_ENTER_WITH_TOKEN = (
    text(
        """
    SELECT e.user_id, e.personal_workspace_id, e.workspace_ids,
           taskmanager_workspace_roles() AS workspace_roles,
           taskmanager_caller_token() AS token,
           set_config('role', e.caller_role, true) AS role
    FROM taskmanager_enter(:user_id, :session_id, :purpose, :valid_until, :proof, :subject) e
    CROSS JOIN set_config('taskmanager.request_id', :request_id, true) AS request
    """
    )
    .bindparams(*_ENTER_PARAMETERS)
    .columns(workspace_roles=JSONB, token=JSONB)
)
# The one read of a stored hash (a login, a password change), with a proof of its own.
_PASSWORD_HASH = text(
    "SELECT user_id, password_hash, is_active "
    "FROM taskmanager_password_hash(:email, :valid_until, :proof)"
).bindparams(
    bindparam("email", type_=Text),
    bindparam("valid_until", type_=BigInteger),
    bindparam("proof", type_=Text),
)


@dataclass(frozen=True, slots=True)
class AccountSecret:
    """What a login checks: the account's id, its password hash, whether it is active."""

    user_id: int
    password_hash: str = field(repr=False)
    is_active: bool


class UserRepository:
    """Encapsulates all database operations for users."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def enter(self, entry: Entry, request_id: str | None = None) -> CallerRow | None:
        """Run the rest of this transaction as the caller `entry` names, under row-level
        security (see _ENTER), for the request `request_id` (X-Request-ID; None outside a
        request). None if that user is gone (or, for a request, inactive, or its login
        session ended); a proof that does not verify is an error (42501)."""
        row = (
            await precompiled(
                _ENTER_WITH_TOKEN if entry.purpose == "token" else _ENTER_ROW
            ).execute(
                self.session,
                {
                    "user_id": entry.user_id,
                    "session_id": entry.session_id,
                    "purpose": entry.purpose,
                    "valid_until": entry.valid_until,
                    "proof": entry.proof,
                    "subject": entry.subject,
                    "request_id": request_id or "",
                },
            )
        ).first()
        return None if row is None else _caller(row)

    async def password_hash_of(self, email: str, key: CallerKey) -> AccountSecret | None:
        """The account with `email` (any case) and its password hash, or None."""
        valid_until, proof = key.password_hash_proof(email)
        row = (
            await self.session.execute(
                _PASSWORD_HASH, {"email": email, "valid_until": valid_until, "proof": proof}
            )
        ).first()
        return None if row is None else AccountSecret(*row)

    async def get_by_id(self, user_id: int) -> User | None:
        return await self.session.get(User, user_id)

    async def get_caller(self, user_id: int) -> User:
        """The caller's own account, which the session check at the start of the request
        found: gone meanwhile is an error (500), not a 404."""
        user = await self.get_by_id(user_id)
        if user is None:
            raise LookupError(f"user {user_id} vanished during the request")
        return user

    async def email_verified(self, user_id: int) -> bool:
        """Whether the account's owner proved its address (what an invitation requires)."""
        verified_at = (
            await self.session.execute(select(User.email_verified_at).where(User.id == user_id))
        ).scalar_one_or_none()
        return verified_at is not None

    async def create(
        self,
        user_id: int,
        email: str,
        display_name: str,
        password_hash: str,
        *,
        verified: bool = False,
    ) -> User:
        """A new account with the id its registration was entered with; an email in use
        (any case) fails the unique index (409). Only these columns are written (all the
        caller role may write at registration); the database's defaults do the rest.
        `verified`: its address counts as proven (an operator's account)."""
        values: dict[str, Any] = {
            "id": user_id,
            "email": email,
            "display_name": display_name,
            "password_hash": password_hash,
        }
        if verified:
            values["email_verified_at"] = func.now()
        await self.session.execute(insert(User).values(**values))
        user = await self.session.get(User, user_id)
        if user is None:
            raise LookupError(f"the account {user_id} just inserted is not visible")
        return user

    async def create_unless_taken(
        self, user_id: int, email: str, display_name: str, password_hash: str
    ) -> User | None:
        """`create`, or None when the address is taken (in any case): registered by someone
        else since the caller looked. The rest of the transaction goes on either way."""
        try:
            async with self.session.begin_nested():
                return await self.create(user_id, email, display_name, password_hash)
        except IntegrityError as error:
            constraint = getattr(getattr(error.orig, "__cause__", None), "constraint_name", None)
            if constraint != UQ_USERS_EMAIL:
                raise
            return None

    async def set_personal_workspace(self, user: User, workspace_id: int) -> None:
        user.personal_workspace_id = workspace_id
        await self.session.flush()

    async def change_password_hash(self, user_id: int, password_hash: str) -> None:
        """Store a new hash: after a password change, or the same password re-hashed with
        today's parameters."""
        await self.session.execute(
            update(User).where(User.id == user_id).values(password_hash=password_hash)
        )

    async def rename(self, user: User, display_name: str) -> None:
        user.display_name = display_name
        await self.session.flush()

    async def record_password_change(self, user: User, password_hash: str) -> None:
        user.password_hash = password_hash
        user.password_changed_at = datetime.now(UTC)
        await self.session.flush()


def _caller(row: Any) -> CallerRow:
    return CallerRow(
        user_id=row.user_id,
        personal_workspace_id=row.personal_workspace_id,
        workspace_ids=row.workspace_ids,
        workspace_roles={int(workspace): role for workspace, role in row.workspace_roles.items()},
        token=_token(getattr(row, "token", None)),
    )


def _token(answer: Mapping[str, Any] | None) -> TokenRow | None:
    if answer is None:
        return None
    return TokenRow(
        token_id=uuid.UUID(answer["id"]),
        scopes=tuple(answer["scopes"]),
        workspace_id=answer["workspace_id"],
        stale=bool(answer["stale"]),
    )
