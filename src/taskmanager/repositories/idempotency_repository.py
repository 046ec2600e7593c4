"""IdempotencyRepository: claim a key, remember the response, purge expired keys."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from taskmanager.models import IdempotencyKey


class IdempotencyRepository:
    """Encapsulates all database operations for idempotency keys."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def claim(
        self, user_id: int, scope: str, key: str, request_hash: str, expires_at: datetime
    ) -> IdempotencyKey | None:
        """Claim `key` for this request: None if it is ours now (new, or its earlier use
        expired), else the live record of the request that used it first.

        A concurrent request with the same key waits here (on the unique key) until the
        first one's transaction ends, then sees its stored response, or claims the key if
        the first one rolled back.
        """
        insert_key = insert(IdempotencyKey).values(
            user_id=user_id,
            scope=scope,
            key=key,
            request_hash=request_hash,
            expires_at=expires_at,
        )
        stmt = insert_key.on_conflict_do_update(
            index_elements=[IdempotencyKey.user_id, IdempotencyKey.scope, IdempotencyKey.key],
            set_={
                "request_hash": insert_key.excluded.request_hash,
                "expires_at": insert_key.excluded.expires_at,
                "created_at": func.now(),
                "status_code": None,
                "response_body": None,
                "response_headers": None,
            },
            where=IdempotencyKey.expires_at <= func.now(),
        ).returning(IdempotencyKey.key)
        if (await self.session.execute(stmt)).first() is not None:
            return None
        existing = await self.session.execute(
            select(IdempotencyKey)
            .where(
                IdempotencyKey.user_id == user_id,
                IdempotencyKey.scope == scope,
                IdempotencyKey.key == key,
            )
            .execution_options(populate_existing=True)
        )
        return existing.scalar_one()

    async def remember(
        self,
        user_id: int,
        scope: str,
        key: str,
        status_code: int,
        body: dict[str, Any],
        headers: dict[str, str],
    ) -> None:
        """Store the response for `key`; it commits with the request's own changes."""
        record = await self.session.get(IdempotencyKey, (user_id, scope, key))
        if record is None:  # claimed in this transaction, so it exists
            raise LookupError(f"idempotency key {key!r} was not claimed")
        record.status_code = status_code
        record.response_body = body
        record.response_headers = headers
        await self.session.flush()

    async def purge_expired(self) -> int:
        """Delete expired keys; returns how many."""
        result = await self.session.execute(
            delete(IdempotencyKey).where(IdempotencyKey.expires_at <= func.now())
        )
        return int(getattr(result, "rowcount", 0) or 0)
