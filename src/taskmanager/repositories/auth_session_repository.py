"""AuthSessionRepository: login sessions and their rotating refresh tokens. Flushes only."""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import bindparam, delete, func, insert, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from taskmanager.cache.invalidation import note_callers_changed
from taskmanager.models import AuthSession, RefreshToken, User
from taskmanager.security.tokens import new_refresh_token, refresh_token_hash


class Rotation(enum.Enum):
    ROTATED = "rotated"
    UNKNOWN = "unknown"  # no such token, or its session ended or expired
    REUSED = "reused"  # spent before: the whole session is now revoked


@dataclass(frozen=True, slots=True)
class RotationResult:
    outcome: Rotation
    user_id: int | None = None
    session_id: uuid.UUID | None = None
    refresh_token: str | None = None


# The token's row and its session's, locked: two requests presenting the same token queue
# here, and the second one finds it spent.
_TOKEN_FOR_UPDATE = (
    select(
        RefreshToken.session_id,
        RefreshToken.used_at,
        AuthSession.user_id,
        AuthSession.revoked_at,
        (AuthSession.expires_at > func.now()).label("session_current"),
        User.is_active,
    )
    .join(AuthSession, AuthSession.id == RefreshToken.session_id)
    .join(User, User.id == AuthSession.user_id)
    .where(RefreshToken.token_hash == bindparam("token_hash"))
    .with_for_update(of=(RefreshToken.__table__, AuthSession.__table__))
)


# Which login session a refresh token belongs to, found by the token's hash (the secret)
# through a database function: a transaction entered to refresh has no user yet.
_OWNER_OF = text("SELECT user_id, session_id FROM taskmanager_refresh_token_session(:token_hash)")


class AuthSessionRepository:
    """Encapsulates all database operations for login sessions and refresh tokens."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def open(self, user_id: int, expires_at: datetime) -> tuple[uuid.UUID, str]:
        """A new login session and its first refresh token (returned; only its hash is kept)."""
        session_id = uuid.uuid4()
        await self.session.execute(
            insert(AuthSession).values(id=session_id, user_id=user_id, expires_at=expires_at)
        )
        return session_id, await self._new_token(session_id)

    async def owner_of(self, refresh_token: str) -> tuple[int, uuid.UUID] | None:
        """(user id, login session id) of `refresh_token`, whatever its state; None if no
        such token exists."""
        row = (
            await self.session.execute(_OWNER_OF, {"token_hash": refresh_token_hash(refresh_token)})
        ).first()
        return None if row is None else (int(row.user_id), row.session_id)

    async def rotate(self, refresh_token: str) -> RotationResult:
        """Spend `refresh_token` and hand out its successor in the same session. A token
        spent before revokes its session (RFC 9700 4.14.2: one of the two holders is not
        the client)."""
        token_hash = refresh_token_hash(refresh_token)
        row = (await self.session.execute(_TOKEN_FOR_UPDATE, {"token_hash": token_hash})).first()
        if (
            row is None
            or row.revoked_at is not None
            or not row.session_current
            or not row.is_active
        ):
            return RotationResult(Rotation.UNKNOWN)
        if row.used_at is not None:
            await self.revoke(row.user_id, row.session_id, "refresh_token_reused")
            return RotationResult(Rotation.REUSED)
        await self.session.execute(
            update(RefreshToken)
            .where(RefreshToken.token_hash == token_hash)
            .values(used_at=func.now())
        )
        return RotationResult(
            Rotation.ROTATED,
            user_id=row.user_id,
            session_id=row.session_id,
            refresh_token=await self._new_token(row.session_id),
        )

    async def revoke(self, user_id: int, session_id: uuid.UUID, reason: str) -> None:
        """End `user_id`'s login session `session_id`."""
        await self.session.execute(
            update(AuthSession)
            .where(AuthSession.id == session_id, AuthSession.revoked_at.is_(None))
            .values(revoked_at=func.now(), revoked_reason=reason)
        )
        note_callers_changed(self.session, user_id)

    async def revoke_all(self, user_id: int, reason: str, *, keep: uuid.UUID | None = None) -> int:
        """End every live session of `user_id` (but `keep`); returns how many."""
        stmt = (
            update(AuthSession)
            .where(AuthSession.user_id == user_id, AuthSession.revoked_at.is_(None))
            .values(revoked_at=func.now(), revoked_reason=reason)
        )
        if keep is not None:
            stmt = stmt.where(AuthSession.id != keep)
        result = await self.session.execute(stmt)
        note_callers_changed(self.session, user_id)
        return int(getattr(result, "rowcount", 0) or 0)

    async def purge_ended(self, kept_for: timedelta) -> int:
        """Delete login sessions revoked or expired more than `kept_for` ago, with their
        refresh tokens (ON DELETE CASCADE); returns how many sessions."""
        cutoff = func.now() - kept_for
        result = await self.session.execute(
            delete(AuthSession).where(
                or_(AuthSession.revoked_at < cutoff, AuthSession.expires_at < cutoff)
            )
        )
        return int(getattr(result, "rowcount", 0) or 0)

    async def _new_token(self, session_id: uuid.UUID) -> str:
        token = new_refresh_token()
        await self.session.execute(
            insert(RefreshToken).values(token_hash=refresh_token_hash(token), session_id=session_id)
        )
        return token
