"""WebhookRepository: a workspace's webhook endpoints and their delivery log, for its
managers (members:write), under migration 0017's policies.

The caller role cannot read an endpoint's nonces (column grants), so every query here names
its columns. Rotating, replaying and sending a test event are database functions (the
caller role inserts no delivery and reads no nonce). Flushes, never commits."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Integer,
    Uuid,
    bindparam,
    delete,
    func,
    insert,
    literal,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from taskmanager.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from taskmanager.security.roles import Action
from taskmanager.security.scope import Scope

_ENDPOINT_COLUMNS = (
    WebhookEndpoint.id,
    WebhookEndpoint.workspace_id,
    WebhookEndpoint.url,
    WebhookEndpoint.description,
    WebhookEndpoint.events,
    WebhookEndpoint.enabled,
    WebhookEndpoint.disabled_reason,
    WebhookEndpoint.disabled_at,
    WebhookEndpoint.failing_since,
    WebhookEndpoint.previous_valid_until,
    WebhookEndpoint.version,
    WebhookEndpoint.created_at,
    WebhookEndpoint.updated_at,
)
_DELIVERY_COLUMNS = (
    WebhookDelivery.id,
    WebhookDelivery.endpoint_id,
    WebhookDelivery.message_id,
    WebhookDelivery.event_type,
    WebhookDelivery.status,
    WebhookDelivery.attempts,
    WebhookDelivery.next_attempt_at,
    WebhookDelivery.replay_of,
    WebhookDelivery.created_at,
    WebhookDelivery.finished_at,
    WebhookDelivery.last_status_code,
    WebhookDelivery.last_error,
    WebhookDelivery.payload,
)
_LOCK_WORKSPACE = text("SELECT id FROM workspaces WHERE id = :id FOR NO KEY UPDATE").bindparams(
    bindparam("id", type_=Integer)
)
_ROTATE = text("SELECT taskmanager_rotate_webhook_secret(:id, :overlap)").bindparams(
    bindparam("id", type_=Uuid), bindparam("overlap", type_=Integer)
)
# What migration 0017's replay and test functions refuse with.
_OVER_CAP = "54000"
_DISABLED = "55000"
# Test events and replays an endpoint may have waiting (0017's MAX_PENDING_MANUAL).
MAX_PENDING_MANUAL = 100


class ManualDeliveryLimitError(Exception):
    """The endpoint has as many test events and replays waiting as it may."""

    def __init__(self) -> None:
        super().__init__(
            f"this endpoint has {MAX_PENDING_MANUAL} test events and replays waiting to be "
            "sent, as many as it may: wait until they are sent (its delivery log shows them)"
        )


class EndpointDisabledError(Exception):
    """A replay to a disabled endpoint (it would not be sent)."""


def _sqlstate(error: DBAPIError) -> str | None:
    state = getattr(error.orig, "sqlstate", None)
    return state if isinstance(state, str) else None


def _refused(error: DBAPIError) -> Exception | None:
    """The exception of ours a replay or test function's refusal stands for."""
    state = _sqlstate(error)
    if state == _OVER_CAP:
        return ManualDeliveryLimitError()
    if state == _DISABLED:
        return EndpointDisabledError("the endpoint is disabled: enable it first")
    return None


_REPLAY = text("SELECT taskmanager_replay_webhook_delivery(:id)").bindparams(
    bindparam("id", type_=Uuid)
)
_TEST = text("SELECT taskmanager_send_webhook_test(:id)").bindparams(bindparam("id", type_=Uuid))


@dataclass(frozen=True, slots=True)
class EndpointView:
    id: uuid.UUID
    workspace_id: int
    url: str
    description: str
    events: list[str]
    enabled: bool
    disabled_reason: str | None
    disabled_at: datetime | None
    failing_since: datetime | None
    previous_secret_valid_until: datetime | None
    version: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class AttemptView:
    attempted_at: datetime
    status_code: int | None
    latency_ms: int
    response_excerpt: str | None
    error: str | None


@dataclass(frozen=True, slots=True)
class DeliveryView:
    id: uuid.UUID
    endpoint_id: uuid.UUID
    message_id: str
    event_type: str
    status: str
    attempts_made: int
    next_attempt_at: datetime | None
    replay_of: uuid.UUID | None
    created_at: datetime
    finished_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    payload: dict[str, Any]
    attempts: list[AttemptView]


def _endpoint(row: Any) -> EndpointView:
    return EndpointView(*row)


class WebhookRepository:
    """Encapsulates all database operations on a workspace's webhooks."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    @staticmethod
    def _check(scope: Scope, workspace_id: int) -> None:
        # The route refused already (404/403); a repository never serves a workspace its
        # caller may not manage, whatever calls it.
        if not scope.may(workspace_id, Action.MEMBERS_WRITE):
            raise PermissionError("not a manager of this workspace")

    async def count_locked(self, scope: Scope, workspace_id: int) -> int:
        """How many endpoints the workspace has, its row locked until the transaction ends
        (two creations at once queue there, so the cap holds)."""
        self._check(scope, workspace_id)
        await self.session.execute(_LOCK_WORKSPACE, {"id": workspace_id})
        found = await self.session.scalar(
            select(func.count())
            .select_from(WebhookEndpoint)
            .where(WebhookEndpoint.workspace_id == workspace_id)
        )
        return int(found or 0)

    async def create(
        self,
        scope: Scope,
        workspace_id: int,
        endpoint_id: uuid.UUID,
        url: str,
        description: str,
        events: list[str],
        nonce: bytes,
    ) -> EndpointView:
        self._check(scope, workspace_id)
        row = (
            await self.session.execute(
                insert(WebhookEndpoint)
                .values(
                    id=endpoint_id,
                    workspace_id=workspace_id,
                    url=url,
                    description=description,
                    events=events,
                    secret_nonce=nonce,
                    created_by=scope.user_id,
                )
                .returning(*_ENDPOINT_COLUMNS)
            )
        ).one()
        return _endpoint(row)

    async def list_all(self, scope: Scope, workspace_id: int) -> list[EndpointView]:
        self._check(scope, workspace_id)
        rows = await self.session.execute(
            select(*_ENDPOINT_COLUMNS)
            .where(WebhookEndpoint.workspace_id == workspace_id)
            .order_by(WebhookEndpoint.created_at, WebhookEndpoint.id)
        )
        return [_endpoint(row) for row in rows]

    async def get(
        self, scope: Scope, workspace_id: int, endpoint_id: uuid.UUID
    ) -> EndpointView | None:
        self._check(scope, workspace_id)
        row = (
            await self.session.execute(
                select(*_ENDPOINT_COLUMNS).where(
                    WebhookEndpoint.workspace_id == workspace_id,
                    WebhookEndpoint.id == endpoint_id,
                )
            )
        ).one_or_none()
        return None if row is None else _endpoint(row)

    async def update(
        self,
        scope: Scope,
        workspace_id: int,
        endpoint_id: uuid.UUID,
        changes: dict[str, Any],
    ) -> EndpointView | None:
        """Apply `changes` (url, description, events, enabled); enabling clears why it was
        disabled and since when it failed."""
        self._check(scope, workspace_id)
        values = dict(changes)
        if values.get("enabled") is True:
            values |= {"disabled_reason": None, "disabled_at": None, "failing_since": None}
        elif values.get("enabled") is False:
            values |= {"disabled_reason": "disabled by a manager", "disabled_at": func.now()}
        row = (
            await self.session.execute(
                update(WebhookEndpoint)
                .where(
                    WebhookEndpoint.workspace_id == workspace_id,
                    WebhookEndpoint.id == endpoint_id,
                )
                .values(
                    **values,
                    version=WebhookEndpoint.version + literal(1),
                    updated_at=func.now(),
                )
                .returning(*_ENDPOINT_COLUMNS)
            )
        ).one_or_none()
        return None if row is None else _endpoint(row)

    async def delete(self, scope: Scope, workspace_id: int, endpoint_id: uuid.UUID) -> bool:
        self._check(scope, workspace_id)
        result = await self.session.execute(
            delete(WebhookEndpoint)
            .where(WebhookEndpoint.workspace_id == workspace_id, WebhookEndpoint.id == endpoint_id)
            .returning(WebhookEndpoint.id)
        )
        return result.one_or_none() is not None

    async def rotate(
        self, scope: Scope, workspace_id: int, endpoint_id: uuid.UUID, overlap: int
    ) -> bytes | None:
        """The endpoint signs with a new nonce's secret from now on (PostgreSQL makes the
        nonce), and with the old one too for `overlap` seconds (48 h at most); the new
        nonce, or None: it was not there to rotate."""
        self._check(scope, workspace_id)
        made = (
            await self.session.execute(_ROTATE, {"id": endpoint_id, "overlap": overlap})
        ).scalar()
        return None if made is None else bytes(made)

    async def deliveries(
        self,
        scope: Scope,
        workspace_id: int,
        endpoint_id: uuid.UUID,
        limit: int,
        before: uuid.UUID | None = None,
    ) -> list[DeliveryView]:
        """The endpoint's deliveries, newest first, each with its attempts (oldest first);
        `before`: the page after that delivery (found by key, not by skipping rows)."""
        self._check(scope, workspace_id)
        query = (
            select(*_DELIVERY_COLUMNS)
            .where(
                WebhookDelivery.workspace_id == workspace_id,
                WebhookDelivery.endpoint_id == endpoint_id,
            )
            .order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id.desc())
            .limit(limit)
        )
        if before is not None:
            last = (
                select(WebhookDelivery.created_at, WebhookDelivery.id)
                .where(
                    WebhookDelivery.id == before,
                    WebhookDelivery.endpoint_id == endpoint_id,
                )
                .subquery()
            )
            # Joined, not compared with a subquery's row: an unknown `before` is an
            # empty page, and PostgreSQL compares the two columns as a row.
            query = query.join(
                last,
                tuple_(WebhookDelivery.created_at, WebhookDelivery.id)
                < tuple_(last.c.created_at, last.c.id),
            )
        rows = list(await self.session.execute(query))
        attempts: dict[uuid.UUID, list[AttemptView]] = {row.id: [] for row in rows}
        if attempts:
            found = await self.session.execute(
                select(
                    WebhookAttempt.delivery_id,
                    WebhookAttempt.attempted_at,
                    WebhookAttempt.status_code,
                    WebhookAttempt.latency_ms,
                    WebhookAttempt.response_excerpt,
                    WebhookAttempt.error,
                )
                .where(WebhookAttempt.delivery_id.in_(list(attempts)))
                .order_by(WebhookAttempt.delivery_id, WebhookAttempt.id)
            )
            for attempt in found:
                attempts[attempt.delivery_id].append(AttemptView(*attempt[1:]))
        return [
            DeliveryView(
                id=row.id,
                endpoint_id=row.endpoint_id,
                message_id=row.message_id,
                event_type=row.event_type,
                status=row.status,
                attempts_made=row.attempts,
                next_attempt_at=row.next_attempt_at if row.status == "pending" else None,
                replay_of=row.replay_of,
                created_at=row.created_at,
                finished_at=row.finished_at,
                last_status_code=row.last_status_code,
                last_error=row.last_error,
                payload=dict(row.payload),
                attempts=attempts[row.id],
            )
            for row in rows
        ]

    async def delivery_exists(
        self, scope: Scope, workspace_id: int, endpoint_id: uuid.UUID, delivery_id: uuid.UUID
    ) -> bool:
        self._check(scope, workspace_id)
        found = await self.session.scalar(
            select(WebhookDelivery.id).where(
                WebhookDelivery.workspace_id == workspace_id,
                WebhookDelivery.endpoint_id == endpoint_id,
                WebhookDelivery.id == delivery_id,
            )
        )
        return found is not None

    async def replay(
        self, scope: Scope, workspace_id: int, delivery_id: uuid.UUID
    ) -> uuid.UUID | None:
        """A new delivery of the same event (same payload, same webhook-id);
        EndpointDisabledError for a disabled endpoint, ManualDeliveryLimitError past the
        cap."""
        self._check(scope, workspace_id)
        try:
            made = (await self.session.execute(_REPLAY, {"id": delivery_id})).scalar()
        except DBAPIError as error:
            refusal = _refused(error)
            if refusal is None:
                raise
            raise refusal from None
        return None if made is None else uuid.UUID(str(made))

    async def send_test(
        self, scope: Scope, workspace_id: int, endpoint_id: uuid.UUID
    ) -> uuid.UUID | None:
        """A `webhook.test` delivery to the endpoint (tried once); ManualDeliveryLimitError
        past the cap."""
        self._check(scope, workspace_id)
        try:
            made = (await self.session.execute(_TEST, {"id": endpoint_id})).scalar()
        except DBAPIError as error:
            refusal = _refused(error)
            if refusal is None:
                raise
            raise refusal from None
        return None if made is None else uuid.UUID(str(made))
