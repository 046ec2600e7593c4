"""WebhookWorker: sends the webhook deliveries PostgreSQL recorded, after their commit.

Like the mail outbox worker: deliveries are claimed in a short transaction of their own
(FOR UPDATE SKIP LOCKED, leased: migration 0017's taskmanager_claim_webhook_deliveries),
sent outside any transaction (a slow receiver holds no database connection), and the
outcome recorded in another. Several workers (in several processes) never send one
delivery at the same time; one that dies mid-send leaves its deliveries to be claimed
again when the lease ends, with the same webhook-id (at least once).

A claimed batch is sent concurrently: one slow endpoint does not hold up the others'.
The worker is woken by PostgreSQL (LISTEN taskmanager_webhooks: the fan-out NOTIFYs at
the commit of a change that recorded a delivery, from whichever process made it) and
looks every `poll_seconds` anyway (retries falling due, a lost notification, PgBouncer
in transaction mode, where LISTEN is not available).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import NullPool

from taskmanager.config import Settings
from taskmanager.integrations.outbound import OutboundClient
from taskmanager.integrations.webhook_events import TEST_EVENT
from taskmanager.integrations.webhooks import SendResult, WebhookMessage, WebhookSender
from taskmanager.repositories.user_repository import UserRepository
from taskmanager.repositories.webhook_delivery_repository import (
    ClaimedDelivery,
    WebhookDeliveryRepository,
)
from taskmanager.security.caller_key import CallerKey
from taskmanager.security.webhook_secrets import WebhookSecretKey

log = logging.getLogger(__name__)

CHANNEL = "taskmanager_webhooks"  # migration 0017's NOTIFY
BATCH = 50
# Finished deliveries (and their attempts) are kept this long for the delivery log.
KEEP_FINISHED_SECONDS = 30 * 24 * 3600
# Standard Webhooks' schedule: the waits before the 1st, 2nd, ... attempt.
STANDARD_SCHEDULE: tuple[float, ...] = (0, 5, 300, 1800, 7200, 18000, 36000, 36000)
GONE_REASON = "the endpoint answered 410 Gone"


@dataclass(frozen=True, slots=True)
class DeliveryPolicy:
    """When to look, when to try again, and when to give up on an endpoint."""

    # schedule[0]: before the first attempt (0: at once); schedule[n]: after the n-th
    # failed attempt. Its length is the number of attempts.
    schedule: tuple[float, ...]
    # Each wait is spread by up to this fraction either way, so the retries of many
    # deliveries failing together do not all come back at the same moment.
    jitter: float
    poll_seconds: float
    timeout_seconds: float
    # Longer than one send may take, so no other worker claims a delivery still in flight.
    lease_seconds: float
    # An endpoint every attempt to which failed for this long is disabled.
    disable_after_seconds: float

    def retry_in(self, attempt: int, rng: Callable[[float, float], float]) -> float | None:
        """The wait after failed attempt number `attempt` (1, 2, ...); None: no more."""
        if attempt >= len(self.schedule):
            return None
        wait = self.schedule[attempt]
        return wait * rng(1 - self.jitter, 1 + self.jitter)


def disabled_reason(days: float) -> str:
    return f"every delivery failed for {days:g} days"


class WebhookWorker:
    def __init__(
        self,
        session_factory: async_sessionmaker[AsyncSession],
        key: CallerKey,
        sender: WebhookSender,
        secrets: WebhookSecretKey,
        policy: DeliveryPolicy,
        *,
        mail_recorded: Callable[[], None] | None = None,
        rng: Callable[[float, float], float] = random.uniform,
    ) -> None:
        self.session_factory = session_factory
        self.key = key
        self.sender = sender
        self.secrets = secrets
        self.policy = policy
        self.mail_recorded = mail_recorded
        self.rng = rng
        self._woken = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._listening: tuple[AsyncEngine, AsyncConnection] | None = None

    def wake(self, *_: Any) -> None:
        """Look now (a commit recorded a delivery). Also asyncpg's listener callback."""
        self._woken.set()

    def start(self, listen_on: AsyncEngine | None = None) -> None:
        self._task = asyncio.create_task(self._run(listen_on), name="webhook worker")

    async def stop(self) -> None:
        """Stop looking; a delivery in flight is left to its lease."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _listen(self, engine: AsyncEngine) -> None:
        """LISTEN on a connection of its own, outside the engine's pool (a connection held
        for the worker's life must not take one from the requests), for as long as the
        worker runs."""
        listener = create_async_engine(engine.url, poolclass=NullPool)
        try:
            connection = await listener.connect()
            raw = await connection.get_raw_connection()
            await raw.driver_connection.add_listener(CHANNEL, self.wake)  # type: ignore[union-attr]
        except BaseException:
            await listener.dispose()
            raise
        self._listening = (listener, connection)

    async def _unlisten(self) -> None:
        if self._listening is not None:
            listener, connection = self._listening
            self._listening = None
            with contextlib.suppress(Exception):
                await connection.close()
            await listener.dispose()

    async def _run(self, listen_on: AsyncEngine | None) -> None:
        rounds = 0
        try:
            while True:
                self._woken.clear()
                try:
                    if listen_on is not None and self._listening is None:
                        await self._listen(listen_on)
                    await self.drain()
                    rounds += 1
                    if rounds % 1000 == 1:
                        await self._purge()
                except (SQLAlchemyError, OSError) as error:
                    log.warning(
                        "webhook deliveries could not be read: %s: %s",
                        type(error).__name__,
                        str(error).splitlines()[0] if str(error) else "",
                    )
                    await self._unlisten()
                except Exception:  # a bug: say so, keep the worker alive
                    log.exception("the webhook worker failed")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._woken.wait(), self.policy.poll_seconds)
        finally:
            await self._unlisten()

    async def drain(self) -> int:
        """Send every delivery that is due now; how many were delivered."""
        delivered = 0
        while items := await self._claim():
            outcomes = await asyncio.gather(*(self._handle(item) for item in items))
            delivered += sum(outcomes)
        return delivered

    async def _claim(self) -> list[ClaimedDelivery]:
        async with self.session_factory() as session, session.begin():
            await UserRepository(session).enter(self.key.entry("maintenance"))
            return await WebhookDeliveryRepository(session).claim(
                BATCH, self.policy.lease_seconds, len(self.policy.schedule)
            )

    def _message(self, item: ClaimedDelivery) -> WebhookMessage:
        secrets = [self.secrets.secret_bytes(item.endpoint_id, item.secret_nonce)]
        if item.previous_nonce is not None:  # a rotation's overlap: both sign
            secrets.append(self.secrets.secret_bytes(item.endpoint_id, item.previous_nonce))
        return WebhookMessage(item.url, item.message_id, item.payload, secrets)

    async def _handle(self, item: ClaimedDelivery) -> int:
        if not item.enabled and item.event_type != TEST_EVENT:
            result = SendResult(None, 0, None, "the endpoint is disabled")
            await self._record_isolated(item, result, retry=False)
            return 0
        try:
            result = await self.sender.send(self._message(item))
        except Exception as error:  # a bug in sending: the delivery waits for a retry
            log.exception("sending webhook delivery %s failed", item.id)
            result = SendResult(None, 0, None, f"{type(error).__name__}: {error}")
        # A test event is tried once: its outcome is for the manager who asked, now.
        retry = not result.gone and item.event_type != TEST_EVENT
        await self._record_isolated(item, result, retry=retry)
        return 1 if result.delivered else 0

    async def _record_isolated(
        self, item: ClaimedDelivery, result: SendResult, *, retry: bool
    ) -> None:
        """Record the outcome in a transaction of its own; if PostgreSQL refuses it, record
        what matters (the status, no text of the receiver's) instead. One delivery's
        record never aborts the others' in the batch; one never recorded stays leased,
        and the claim fails it once it has had its attempts."""
        try:
            await self._record(item, result, retry=retry)
            return
        except Exception:
            log.exception("the outcome of webhook delivery %s could not be recorded", item.id)
        error = None if result.delivered else "the outcome could not be recorded in full"
        minimal = SendResult(result.status_code, result.latency_ms, None, error)
        try:
            await self._record(item, minimal, retry=retry)
        except Exception:
            log.exception("webhook delivery %s: not even its status could be recorded", item.id)

    async def _record(self, item: ClaimedDelivery, result: SendResult, *, retry: bool) -> None:
        mailed = False
        async with self.session_factory() as session, session.begin():
            await UserRepository(session).enter(self.key.entry("maintenance"))
            deliveries = WebhookDeliveryRepository(session)
            if item.enabled or item.event_type == TEST_EVENT:
                await deliveries.log_attempt(
                    item, result.status_code, result.latency_ms, result.excerpt, result.error
                )
            if result.delivered:
                assert result.status_code is not None
                await deliveries.delivered(item, result.status_code)
                return
            error = result.error or "failed"
            retry_in = self.policy.retry_in(item.attempt, self.rng) if retry else None
            await deliveries.failed(item, result.status_code, error, retry_in)
            if not item.enabled:
                return
            if result.gone:
                mailed = await deliveries.disable_endpoint(item.endpoint_id, GONE_REASON)
            elif await deliveries.endpoint_failing(
                item.endpoint_id, self.policy.disable_after_seconds
            ):
                days = self.policy.disable_after_seconds / 86400
                mailed = await deliveries.disable_endpoint(item.endpoint_id, disabled_reason(days))
            if retry_in is None:
                log.warning(
                    "webhook delivery %s (%s) failed for good after %s attempts: %s",
                    item.id,
                    item.event_type,
                    item.attempt,
                    error,
                )
        if mailed:
            log.warning("webhook endpoint %s was disabled", item.endpoint_id)
            if self.mail_recorded is not None:
                self.mail_recorded()

    async def _purge(self) -> None:
        async with self.session_factory() as session, session.begin():
            await UserRepository(session).enter(self.key.entry("maintenance"))
            await WebhookDeliveryRepository(session).purge_finished(KEEP_FINISHED_SECONDS)


def webhook_worker(
    settings: Settings,
    session_factory: async_sessionmaker[AsyncSession],
    key: CallerKey,
    secrets: WebhookSecretKey,
    client: OutboundClient,
    mail_recorded: Callable[[], None] | None = None,
) -> WebhookWorker:
    """The delivery worker as the settings say (the app's in-process one, `worker`'s)."""
    policy = DeliveryPolicy(
        schedule=tuple(settings.webhook_retry_schedule),
        jitter=settings.webhook_retry_jitter,
        poll_seconds=settings.webhook_poll_seconds,
        timeout_seconds=settings.webhook_timeout_seconds,
        lease_seconds=max(60.0, 2 * settings.webhook_timeout_seconds + 30),
        disable_after_seconds=settings.webhook_disable_after_days * 86400,
    )
    sender = WebhookSender(client, settings.webhook_timeout_seconds)
    return WebhookWorker(session_factory, key, sender, secrets, policy, mail_recorded=mail_recorded)
