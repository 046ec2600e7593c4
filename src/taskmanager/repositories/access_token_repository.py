"""AccessTokenRepository: a user's personal access tokens. Flushes only.

Listing, making and revoking them is a login session's (the policies of migration 0013
refuse a token's caller); stamping a use is the token's own caller's, through
taskmanager_token_used() (it writes only last_used_at, and only when a minute old)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, func, insert, or_, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from taskmanager.models import AccessToken, User

_STAMP_USE = text("SELECT taskmanager_token_used()")


class AccessTokenRepository:
    """Encapsulates all database operations for personal access tokens."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def count_live(self, user_id: int) -> int:
        """How many of the user's tokens still work (not expired), with the user's row
        locked until the transaction ends: two requests making tokens at once queue here,
        and the second counts what the first made."""
        await self.session.execute(
            select(User.id).where(User.id == user_id).with_for_update(key_share=True)
        )
        count = await self.session.scalar(
            select(func.count())
            .select_from(AccessToken)
            .where(
                AccessToken.user_id == user_id,
                or_(AccessToken.expires_at.is_(None), AccessToken.expires_at > func.now()),
            )
        )
        return int(count or 0)

    async def create(
        self,
        *,
        user_id: int,
        name: str,
        token_hash: str,
        prefix: str,
        scopes: Sequence[str],
        workspace_id: int | None,
        expires_at: datetime | None,
    ) -> AccessToken:
        token_id = uuid.uuid4()
        await self.session.execute(
            insert(AccessToken).values(
                id=token_id,
                user_id=user_id,
                name=name,
                token_hash=token_hash,
                prefix=prefix,
                scopes=list(scopes),
                workspace_id=workspace_id,
                expires_at=expires_at,
            )
        )
        token = await self.session.get(AccessToken, token_id)
        if token is None:
            raise LookupError(f"the access token {token_id} just inserted is not visible")
        return token

    async def list_mine(self, user_id: int) -> Sequence[AccessToken]:
        """The user's tokens, newest first (expired ones too, until revoked)."""
        result = await self.session.scalars(
            select(AccessToken)
            .where(AccessToken.user_id == user_id)
            .order_by(AccessToken.created_at.desc(), AccessToken.id)
        )
        return result.all()

    async def revoke(self, user_id: int, token_id: uuid.UUID) -> bool:
        """Delete one of the user's tokens; False if they have none with this id."""
        result = await self.session.execute(
            delete(AccessToken).where(AccessToken.user_id == user_id, AccessToken.id == token_id)
        )
        return bool(getattr(result, "rowcount", 0))

    async def revoke_all(self, user_id: int) -> int:
        """Delete every token of the user; returns how many."""
        result = await self.session.execute(
            delete(AccessToken).where(AccessToken.user_id == user_id)
        )
        return int(getattr(result, "rowcount", 0) or 0)

    async def stamp_use(self) -> bool:
        """Stamp the entered token's last_used_at, unless it was stamped within the last
        minute; whether it wrote."""
        return bool(await self.session.scalar(_STAMP_USE))
