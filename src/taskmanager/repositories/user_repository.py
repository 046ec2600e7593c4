"""UserRepository: accounts, and entering a request's row-level-security scope.

Flushes, never commits."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import bindparam, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import undefer

from taskmanager.models import CALLER_SETTING, REQUEST_ROLE, User


@dataclass(frozen=True, slots=True)
class CallerRow:
    """What the database says about a token's user at the start of a request."""

    user_id: int
    personal_workspace_id: int | None
    workspace_ids: Sequence[int]
    owned_workspace_ids: Sequence[int]


# One round trip per request: checks that the user is active and the login session alive,
# reads the user's memberships, and only then switches this transaction to the request role
# with the caller set (both undone at COMMIT or ROLLBACK, so they hold behind PgBouncer's
# transaction pooling and never leak to the next user of the connection). The memberships
# are read as the connecting role, before the switch: the table's owner, whom the policy on
# memberships does not restrict.
# What a scope is made of: the personal workspace and the memberships of user `u`.
_CALLER_COLUMNS = """
    u.personal_workspace_id,
    ARRAY(SELECT m.workspace_id FROM memberships m
          WHERE m.user_id = u.id ORDER BY m.workspace_id) AS workspace_ids,
    ARRAY(SELECT m.workspace_id FROM memberships m
          WHERE m.user_id = u.id AND m.role = 'owner') AS owned_workspace_ids
"""
_ENTER_REQUEST_SCOPE = text(
    f"""
    SELECT {_CALLER_COLUMNS},
           set_config('{CALLER_SETTING}', u.id::text, true) AS caller,
           set_config('role', '{REQUEST_ROLE}', true) AS role
    FROM users u JOIN auth_sessions s ON s.user_id = u.id
    WHERE u.id = :user_id AND u.is_active
      AND s.id = :session_id AND s.revoked_at IS NULL AND s.expires_at > now()
    """
).bindparams(bindparam("user_id"), bindparam("session_id"))
_MEMBERSHIPS_OF = text(f"SELECT {_CALLER_COLUMNS} FROM users u WHERE u.id = :user_id")

_ACT_AS = text(
    f"SELECT set_config('{CALLER_SETTING}', CAST(CAST(:user_id AS integer) AS text), true), "
    f"set_config('role', '{REQUEST_ROLE}', true)"
)

# For login (as the service, before any caller is known): the one read of a stored hash.
_BY_EMAIL = (
    select(User)
    .options(undefer(User.password_hash))
    .where(func.lower(User.email) == func.lower(bindparam("email")))
)
# The caller's own hash, for a password change: the request role may not read the column,
# so a SECURITY DEFINER function hands over this one value.
_OWN_PASSWORD_HASH = text("SELECT taskmanager_own_password_hash()")


class UserRepository:
    """Encapsulates all database operations for users."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def enter_request_scope(self, user_id: int, session_id: uuid.UUID) -> CallerRow | None:
        """Start the request as `user_id` (see _ENTER_REQUEST_SCOPE); None if that user is
        gone or inactive, or the login session has ended."""
        result = await self.session.execute(
            _ENTER_REQUEST_SCOPE, {"user_id": user_id, "session_id": session_id}
        )
        row = result.first()
        return None if row is None else _caller(user_id, row)

    async def memberships_of(self, user_id: int) -> CallerRow:
        """`user_id`'s memberships, read as the connecting role (for the CLI)."""
        row = (await self.session.execute(_MEMBERSHIPS_OF, {"user_id": user_id})).one()
        return _caller(user_id, row)

    async def act_as(self, user_id: int) -> None:
        """Run the rest of this transaction as `user_id` under row-level security (for
        registration and the CLI, which have no access token)."""
        await self.session.execute(_ACT_AS, {"user_id": user_id})

    async def get_by_email(self, email: str) -> User | None:
        result = await self.session.execute(_BY_EMAIL, {"email": email})
        return result.scalar_one_or_none()

    async def own_password_hash(self) -> str | None:
        """The hash of the caller's password (the request scope must have been entered)."""
        value = (await self.session.execute(_OWN_PASSWORD_HASH)).scalar_one()
        return None if value is None else str(value)

    async def get_by_id(self, user_id: int) -> User | None:
        return await self.session.get(User, user_id)

    async def create(self, email: str, display_name: str, password_hash: str) -> User:
        """A new account; an email in use (any case) fails the unique index (409)."""
        user = User(email=email, display_name=display_name, password_hash=password_hash)
        self.session.add(user)
        await self.session.flush()
        return user

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


def _caller(user_id: int, row: Any) -> CallerRow:
    return CallerRow(
        user_id=user_id,
        personal_workspace_id=row.personal_workspace_id,
        workspace_ids=row.workspace_ids,
        owned_workspace_ids=row.owned_workspace_ids,
    )
