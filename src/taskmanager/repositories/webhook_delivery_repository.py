"""WebhookDeliveryRepository: the delivery worker's queries, for a transaction entered for
'maintenance' (the only caller migration 0017's policies let claim, update and log
deliveries). Deliveries are recorded by PostgreSQL (the fan-out trigger, replay and test
functions), never here. Flushes, never commits."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Float, Integer, Text, Uuid, bindparam, text
from sqlalchemy.ext.asyncio import AsyncSession

_CLAIM = text(
    "SELECT id, workspace_id, endpoint_id, message_id, event_type, payload, attempts, "
    "created_at, url, enabled, secret_nonce, previous_nonce "
    "FROM taskmanager_claim_webhook_deliveries(:batch, :lease, :max_attempts)"
).bindparams(
    bindparam("batch", type_=Integer),
    bindparam("lease", type_=Float),
    bindparam("max_attempts", type_=Integer),
)
# Only while the delivery is there (its endpoint may have been deleted while it was in
# flight: then there is nothing to log, not a foreign key violation). FOR KEY SHARE waits
# for a deletion under way and then finds no row.
_ATTEMPT = text(
    "WITH delivery AS (SELECT id, workspace_id FROM webhook_deliveries "
    "WHERE id = :delivery_id AND workspace_id = :workspace_id FOR KEY SHARE) "
    "INSERT INTO webhook_attempts (workspace_id, delivery_id, status_code, latency_ms, "
    "response_excerpt, error) SELECT workspace_id, id, :status_code, :latency_ms, "
    ":excerpt, :error FROM delivery"
).bindparams(
    bindparam("workspace_id", type_=Integer),
    bindparam("delivery_id", type_=Uuid),
    bindparam("status_code", type_=Integer),
    bindparam("latency_ms", type_=Integer),
    bindparam("excerpt", type_=Text),
    bindparam("error", type_=Text),
)
_DELIVERED = text(
    "UPDATE webhook_deliveries SET status = 'delivered', finished_at = now(), "
    "last_status_code = :status_code, last_error = NULL WHERE id = :id"
).bindparams(bindparam("id", type_=Uuid), bindparam("status_code", type_=Integer))
# Failed for good (retry_in NULL) or due again in `retry_in` seconds.
_FAILED = text(
    """
    UPDATE webhook_deliveries SET last_status_code = :status_code, last_error = :error,
        status = CASE WHEN CAST(:retry_in AS double precision) IS NULL THEN 'failed'
                      ELSE 'pending' END,
        finished_at = CASE WHEN CAST(:retry_in AS double precision) IS NULL THEN now() END,
        next_attempt_at = now() + make_interval(
            secs => coalesce(CAST(:retry_in AS double precision), 0))
    WHERE id = :id
    """
).bindparams(
    bindparam("id", type_=Uuid),
    bindparam("status_code", type_=Integer),
    bindparam("error", type_=Text),
    bindparam("retry_in", type_=Float),
)
_ENDPOINT_OK = text(
    "UPDATE webhook_endpoints SET failing_since = NULL WHERE id = :id AND failing_since IS NOT NULL"
).bindparams(bindparam("id", type_=Uuid))
# Failing since when, and whether that is `seconds` ago. The streak starts at a failure
# after a success, or after a day without any failure (the retry schedule's longest wait
# is 10 h, so a receiver that stays down fails more often than that): one delivery that
# failed for good, then days of silence, then one failure is a new streak, not days of it.
_ENDPOINT_FAILING = text(
    """
    UPDATE webhook_endpoints SET
        failing_since = CASE
            WHEN failing_since IS NULL OR last_failed_at IS NULL
                 OR last_failed_at < now() - interval '1 day' THEN now()
            ELSE failing_since END,
        last_failed_at = now()
    WHERE id = :id
    RETURNING failing_since <= now() - make_interval(secs => CAST(:seconds AS double precision))
    """
).bindparams(bindparam("id", type_=Uuid), bindparam("seconds", type_=Float))
_DISABLE = text("SELECT taskmanager_disable_webhook_endpoint(:id, :reason)").bindparams(
    bindparam("id", type_=Uuid), bindparam("reason", type_=Text)
)
_PURGE = text(
    "DELETE FROM webhook_deliveries WHERE status <> 'pending' "
    "AND finished_at < now() - make_interval(secs => CAST(:kept AS double precision))"
).bindparams(bindparam("kept", type_=Float))


@dataclass(frozen=True, slots=True)
class ClaimedDelivery:
    """A delivery this worker holds for its lease, with what sending it needs."""

    id: uuid.UUID
    workspace_id: int
    endpoint_id: uuid.UUID
    message_id: str
    event_type: str
    payload: dict[str, Any]
    attempt: int
    created_at: datetime
    url: str
    enabled: bool
    secret_nonce: bytes
    previous_nonce: bytes | None


class WebhookDeliveryRepository:
    """Encapsulates the delivery worker's database operations."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def claim(
        self, batch: int, lease_seconds: float, max_attempts: int
    ) -> list[ClaimedDelivery]:
        """Due deliveries, leased; one claimed `max_attempts` times already (a test event:
        once) is failed instead (its outcomes never got recorded)."""
        result = await self.session.execute(
            _CLAIM, {"batch": batch, "lease": lease_seconds, "max_attempts": max_attempts}
        )
        return [
            ClaimedDelivery(
                id=row.id,
                workspace_id=row.workspace_id,
                endpoint_id=row.endpoint_id,
                message_id=row.message_id,
                event_type=row.event_type,
                payload=dict(row.payload),
                attempt=row.attempts,
                created_at=row.created_at,
                url=row.url,
                enabled=row.enabled,
                secret_nonce=bytes(row.secret_nonce),
                previous_nonce=None if row.previous_nonce is None else bytes(row.previous_nonce),
            )
            for row in result
        ]

    async def log_attempt(
        self,
        delivery: ClaimedDelivery,
        status_code: int | None,
        latency_ms: int,
        excerpt: str | None,
        error: str | None,
    ) -> None:
        await self.session.execute(
            _ATTEMPT,
            {
                "workspace_id": delivery.workspace_id,
                "delivery_id": delivery.id,
                "status_code": status_code,
                "latency_ms": latency_ms,
                "excerpt": excerpt,
                "error": error,
            },
        )

    async def delivered(self, delivery: ClaimedDelivery, status_code: int) -> None:
        await self.session.execute(_DELIVERED, {"id": delivery.id, "status_code": status_code})
        await self.session.execute(_ENDPOINT_OK, {"id": delivery.endpoint_id})

    async def failed(
        self,
        delivery: ClaimedDelivery,
        status_code: int | None,
        error: str,
        retry_in: float | None,
    ) -> None:
        """The attempt failed: due again in `retry_in` seconds, or (None) failed for good."""
        await self.session.execute(
            _FAILED,
            {
                "id": delivery.id,
                "status_code": status_code,
                "error": error[:1000],
                "retry_in": retry_in,
            },
        )

    async def endpoint_failing(self, endpoint_id: uuid.UUID, for_seconds: float) -> bool:
        """Note that the endpoint failed now; whether it has failed for `for_seconds`."""
        result = await self.session.execute(
            _ENDPOINT_FAILING, {"id": endpoint_id, "seconds": for_seconds}
        )
        return bool(result.scalar())

    async def disable_endpoint(self, endpoint_id: uuid.UUID, reason: str) -> bool:
        """Disable it and record a mail to its workspace's owners and admins; whether it
        was enabled until now."""
        result = await self.session.execute(_DISABLE, {"id": endpoint_id, "reason": reason})
        return bool(result.scalar())

    async def purge_finished(self, kept_seconds: float) -> int:
        result = await self.session.execute(_PURGE, {"kept": kept_seconds})
        return int(getattr(result, "rowcount", 0) or 0)
