"""WebhookDeliveryRepository: the delivery worker's queries, for a transaction entered for
'maintenance' (the only caller migration 0017's policies let claim, update and log
deliveries). Deliveries are recorded by PostgreSQL (the fan-out trigger, replay and test
functions), never here. Flushes, never commits.

The outcomes of a claimed batch are written together: one statement per kind of change
(the endpoints' health, attempts logged, deliveries delivered, deliveries failed), each over
arrays (`unnest`), whatever the batch's size. A statement per
delivery made recording cost more than sending (bench/webhooks.py)."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Float, Integer, Text, Uuid, bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
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
# One attempt row per outcome; a delivery deleted meanwhile (its endpoint was deleted while
# the request was in flight) has nothing left to log against, and is skipped rather than
# failing the whole batch's transaction on the foreign key.
_ATTEMPTS = text(
    """
    INSERT INTO webhook_attempts (workspace_id, delivery_id, status_code, latency_ms,
        response_excerpt, error)
    SELECT a.workspace_id, a.delivery_id, a.status_code, a.latency_ms, a.excerpt, a.error
    FROM unnest(CAST(:workspace_ids AS integer[]), CAST(:delivery_ids AS uuid[]),
                CAST(:status_codes AS integer[]), CAST(:latencies AS integer[]),
                CAST(:excerpts AS text[]), CAST(:errors AS text[]))
         AS a(workspace_id, delivery_id, status_code, latency_ms, excerpt, error)
    WHERE EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.id = a.delivery_id)
    """
).bindparams(
    bindparam("workspace_ids", type_=ARRAY(Integer)),
    bindparam("delivery_ids", type_=ARRAY(Uuid)),
    bindparam("status_codes", type_=ARRAY(Integer)),
    bindparam("latencies", type_=ARRAY(Integer)),
    bindparam("excerpts", type_=ARRAY(Text)),
    bindparam("errors", type_=ARRAY(Text)),
)
_DELIVERED = text(
    """
    UPDATE webhook_deliveries d SET status = 'delivered', finished_at = now(),
        last_status_code = o.status_code, last_error = NULL
    FROM unnest(CAST(:ids AS uuid[]), CAST(:status_codes AS integer[])) AS o(id, status_code)
    WHERE d.id = o.id
    """
).bindparams(bindparam("ids", type_=ARRAY(Uuid)), bindparam("status_codes", type_=ARRAY(Integer)))
# Failed for good (retry_in NULL) or due again in `retry_in` seconds.
_FAILED = text(
    """
    UPDATE webhook_deliveries d SET last_status_code = o.status_code, last_error = o.error,
        status = CASE WHEN o.retry_in IS NULL THEN 'failed' ELSE 'pending' END,
        finished_at = CASE WHEN o.retry_in IS NULL THEN now() END,
        next_attempt_at = now() + make_interval(secs => coalesce(o.retry_in, 0))
    FROM unnest(CAST(:ids AS uuid[]), CAST(:status_codes AS integer[]),
                CAST(:errors AS text[]), CAST(:retry_ins AS double precision[]))
         AS o(id, status_code, error, retry_in)
    WHERE d.id = o.id
    """
).bindparams(
    bindparam("ids", type_=ARRAY(Uuid)),
    bindparam("status_codes", type_=ARRAY(Integer)),
    bindparam("errors", type_=ARRAY(Text)),
    bindparam("retry_ins", type_=ARRAY(Float)),
)
# Each endpoint's health after a batch: one that took a delivery is not failing (any more);
# one that only failed is failing since the first failure of its streak (failures no more
# than a day apart), and reported when that is `seconds` ago; one that answered 410 is
# only locked (the worker disables it next).
# Every endpoint the batch changes is locked here, first in the batch's transaction and in
# the order of the ids: two workers recording batches to the same endpoints, or a worker
# and a manager deleting an endpoint (endpoint, then its deliveries by the cascade), take
# their locks in the same order and never wait for each other in a circle. A row with
# nothing to change (an endpoint answering that was not failing) is not locked at all.
_ENDPOINT_HEALTH = text(
    """
    WITH o AS (
        SELECT * FROM unnest(CAST(:ids AS uuid[]), CAST(:states AS text[])) AS o(id, state)
    ), locked AS (
        SELECT e.id, o.state FROM webhook_endpoints e JOIN o ON o.id = e.id
        WHERE o.state <> 'answering' OR e.failing_since IS NOT NULL
        ORDER BY e.id
        FOR NO KEY UPDATE OF e
    )
    UPDATE webhook_endpoints e
    SET failing_since = CASE
            WHEN l.state = 'answering' THEN NULL
            WHEN l.state <> 'failing' THEN e.failing_since
            -- A streak: failures no more than a day apart (the schedule's longest wait is
            -- 10 h). After a day without any, a failure starts a new one.
            WHEN e.failing_since IS NULL OR e.last_failed_at IS NULL
                 OR e.last_failed_at < now() - interval '1 day' THEN now()
            ELSE e.failing_since END,
        last_failed_at = CASE l.state WHEN 'failing' THEN now() ELSE e.last_failed_at END
    FROM locked l WHERE e.id = l.id
    RETURNING e.id, l.state = 'failing' AND e.failing_since
        <= now() - make_interval(secs => CAST(:seconds AS double precision)) AS for_long
    """
).bindparams(
    bindparam("ids", type_=ARRAY(Uuid)),
    bindparam("states", type_=ARRAY(Text)),
    bindparam("seconds", type_=Float),
)
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


@dataclass(frozen=True, slots=True)
class AttemptOutcome:
    """What became of one claimed delivery, as it is to be recorded."""

    delivery: ClaimedDelivery
    status_code: int | None  # None: no answer at all
    latency_ms: int
    excerpt: str | None
    error: str | None
    delivered: bool
    # Not delivered: due again in this many seconds, or (None) failed for good.
    retry_in: float | None
    # Whether the attempt goes into the delivery log (not for one never sent: the endpoint
    # was disabled after the event was recorded).
    logged: bool = True


class WebhookDeliveryRepository:
    """Encapsulates the delivery worker's database operations."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def claim(
        self, batch: int, lease_seconds: float, max_attempts: int
    ) -> list[ClaimedDelivery]:
        """Up to `batch` due deliveries, leased; one claimed `max_attempts` times already
        (its outcome never recorded) is failed instead (migration 0017)."""
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

    async def record(self, outcomes: Sequence[AttemptOutcome]) -> None:
        """Log the attempts and move each delivery on: delivered, due again, or failed for
        good. Four statements at most, however many outcomes."""
        logged = [outcome for outcome in outcomes if outcome.logged]
        if logged:
            await self.session.execute(
                _ATTEMPTS,
                {
                    "workspace_ids": [o.delivery.workspace_id for o in logged],
                    "delivery_ids": [o.delivery.id for o in logged],
                    "status_codes": [o.status_code for o in logged],
                    "latencies": [o.latency_ms for o in logged],
                    "excerpts": [o.excerpt for o in logged],
                    "errors": [o.error for o in logged],
                },
            )
        delivered = [outcome for outcome in outcomes if outcome.delivered]
        if delivered:
            await self.session.execute(
                _DELIVERED,
                {
                    "ids": [o.delivery.id for o in delivered],
                    "status_codes": [o.status_code for o in delivered],
                },
            )
        failed = [outcome for outcome in outcomes if not outcome.delivered]
        if failed:
            await self.session.execute(
                _FAILED,
                {
                    "ids": [o.delivery.id for o in failed],
                    "status_codes": [o.status_code for o in failed],
                    "errors": [(o.error or "failed")[:1000] for o in failed],
                    "retry_ins": [o.retry_in for o in failed],
                },
            )

    async def endpoint_health(
        self,
        answering: Collection[uuid.UUID],
        failing: Collection[uuid.UUID],
        gone: Collection[uuid.UUID],
        for_seconds: float,
    ) -> set[uuid.UUID]:
        """Lock the endpoints a batch changes (in the order of their ids) and note which
        took a delivery and which only failed (each in one of the three at most); the
        failing ones that have failed for `for_seconds` already."""
        states = dict.fromkeys(answering, "answering")
        states |= dict.fromkeys(failing, "failing") | dict.fromkeys(gone, "gone")
        ids = sorted(states)
        if not ids:
            return set()
        result = await self.session.execute(
            _ENDPOINT_HEALTH,
            {"ids": ids, "states": [states[endpoint] for endpoint in ids], "seconds": for_seconds},
        )
        return {row.id for row in result if row.for_long}

    async def disable_endpoint(self, endpoint_id: uuid.UUID, reason: str) -> bool:
        """Disable it and record a mail to its workspace's owners and admins; whether it
        was enabled until now."""
        result = await self.session.execute(_DISABLE, {"id": endpoint_id, "reason": reason})
        return bool(result.scalar())

    async def purge_finished(self, kept_seconds: float) -> int:
        result = await self.session.execute(_PURGE, {"kept": kept_seconds})
        return int(getattr(result, "rowcount", 0) or 0)
