"""OutboxRepository: claiming the outbox's due rows and recording how their delivery went.

For a transaction entered for 'maintenance' (the outbox worker): the only caller the
policy on `outbox` shows rows to (migration 0012). Rows are recorded by the database
functions of the change that causes them, never here. Flushes, never commits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

# Due rows, soonest first, that no other worker holds (SKIP LOCKED): each claimed row is
# leased (due again only after `lease` seconds) and its attempt counted, in the claiming
# transaction. Once that commits, no other worker claims the row while this one sends it;
# a worker that dies mid-send leaves it to be claimed again when the lease runs out.
_CLAIM = text(
    """
    WITH due AS (
        SELECT id FROM outbox
        WHERE sent_at IS NULL AND next_attempt_at <= now() AND attempts < :max_attempts
        ORDER BY next_attempt_at, id
        LIMIT :batch
        FOR UPDATE SKIP LOCKED
    )
    UPDATE outbox o
    SET attempts = o.attempts + 1,
        next_attempt_at = now() + make_interval(secs => CAST(:lease AS double precision))
    FROM due WHERE o.id = due.id
    RETURNING o.id, o.kind, o.payload, o.attempts
    """
)
_SENT = text("UPDATE outbox SET sent_at = now(), last_error = NULL WHERE id = :id")
_FAILED = text(
    """
    UPDATE outbox SET last_error = :error,
        next_attempt_at = now() + make_interval(secs => CAST(:retry_in AS double precision))
    WHERE id = :id
    """
)
_PURGE_SENT = text(
    "DELETE FROM outbox WHERE sent_at < now() - make_interval(secs => CAST(:kept AS integer))"
)
# Longest error text kept (an SMTP server's reply, an exception's message).
ERROR_MAX_LENGTH = 1000


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """A claimed row: what to do (`kind`, `payload`), and which attempt this is."""

    id: int
    kind: str
    payload: dict[str, Any]
    attempt: int


class OutboxRepository:
    """Encapsulates all database operations of the outbox worker."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def claim(self, batch: int, lease_seconds: float, max_attempts: int) -> list[OutboxItem]:
        """Up to `batch` due rows, leased to this worker for `lease_seconds`."""
        result = await self.session.execute(
            _CLAIM, {"batch": batch, "lease": lease_seconds, "max_attempts": max_attempts}
        )
        return [OutboxItem(row.id, row.kind, dict(row.payload), row.attempts) for row in result]

    async def mark_sent(self, item_id: int) -> None:
        await self.session.execute(_SENT, {"id": item_id})

    async def mark_failed(self, item_id: int, error: str, retry_in_seconds: float) -> None:
        """The attempt failed: keep why, and make the row due again in `retry_in_seconds`."""
        await self.session.execute(
            _FAILED,
            {"id": item_id, "error": error[:ERROR_MAX_LENGTH], "retry_in": retry_in_seconds},
        )

    async def purge_sent(self, kept_seconds: int) -> int:
        """Delete rows sent more than `kept_seconds` ago; how many went."""
        result = await self.session.execute(_PURGE_SENT, {"kept": kept_seconds})
        return int(getattr(result, "rowcount", 0) or 0)
