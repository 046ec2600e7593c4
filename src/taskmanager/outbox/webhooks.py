"""WebhookWorker: sends the webhook deliveries PostgreSQL recorded, after their commit.

Like the mail outbox worker: deliveries are claimed in a short transaction of their own
(FOR UPDATE SKIP LOCKED, leased: migration 0017's taskmanager_claim_webhook_deliveries),
sent outside any transaction (a slow receiver holds no database connection), and the
outcome recorded in another. Several workers (in several processes) never send one
delivery at the same time; one that dies mid-send leaves its deliveries to be claimed
again when the lease ends, with the same webhook-id (at least once).

A claimed batch is sent concurrently (one slow endpoint does not hold up the others'), at
most `concurrency_per_host` requests at a time to one host: a receiver is not flooded with
a batch's worth of connections at once, and the shared client's pool stays small (httpcore
looks through every pooled connection on each request, so fifty connections to one
receiver cost more than the requests they carry). The batch's outcomes are then recorded
together, in one transaction of a few statements (WebhookDeliveryRepository.record), not
one transaction per delivery; should that transaction fail on a constraint, each outcome is
recorded alone, so one delivery's trouble does not send the whole batch again.
The worker is woken by PostgreSQL (LISTEN taskmanager_webhooks: the fan-out NOTIFYs at
the commit of a change that recorded a delivery, from whichever process made it) and
looks every `poll_seconds` anyway (retries falling due, a lost notification, PgBouncer
in transaction mode, where LISTEN is not available).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import random
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, SQLAlchemyError
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
    AttemptOutcome,
    ClaimedDelivery,
    WebhookDeliveryRepository,
)
from taskmanager.security.caller_key import CallerKey
from taskmanager.security.webhook_secrets import WebhookSecretKey

log = logging.getLogger(__name__)

CHANNEL = "taskmanager_webhooks"  # migration 0017's NOTIFY
BATCH = 100
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
    # Requests in flight at once to one host (scheme, host and port) from one worker.
    concurrency_per_host: int = 10

    def retry_in(self, attempt: int, rng: Callable[[float, float], float]) -> float | None:
        """The wait after failed attempt number `attempt` (1, 2, ...); None: no more."""
        if attempt >= len(self.schedule):
            return None
        wait = self.schedule[attempt]
        return wait * rng(1 - self.jitter, 1 + self.jitter)


def disabled_reason(days: float) -> str:
    return f"every delivery failed for {days:g} days"


def _refused(error: DBAPIError) -> bool:
    """A transaction PostgreSQL refused for one of its rows (a constraint, a value its
    types refuse) or ended to break a deadlock (40P01): worth recording outcome by
    outcome, unlike a database that is not answering."""
    if isinstance(error, IntegrityError | DataError):
        return True
    orig = error.orig
    sqlstate = str(
        getattr(orig, "sqlstate", None)
        or getattr(getattr(orig, "__cause__", None), "sqlstate", None)
        or ""
    )
    # 22: data exceptions (a value the column's type refuses), 23: constraints.
    return sqlstate == "40P01" or sqlstate[:2] in ("22", "23")


def _host_of(url: str) -> str:
    """What a per-host limit counts by: scheme, host and port (a pool's connections are
    kept per origin)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.lower()}"


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
            hosts: dict[str, asyncio.Semaphore] = {}
            outcomes = await asyncio.gather(*(self._attempt(item, hosts) for item in items))
            await self._record(outcomes)
            delivered += sum(1 for outcome in outcomes if outcome.delivered)
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

    async def _attempt(
        self, item: ClaimedDelivery, hosts: dict[str, asyncio.Semaphore]
    ) -> AttemptOutcome:
        """Send one delivery (waiting for a turn at its host); what came of it."""
        if not item.enabled and item.event_type != TEST_EVENT:
            # Disabled after the event was recorded: never sent, not logged, not retried.
            return AttemptOutcome(
                item, None, 0, None, "the endpoint is disabled", False, None, logged=False
            )
        host = _host_of(item.url)
        if host not in hosts:
            hosts[host] = asyncio.Semaphore(self.policy.concurrency_per_host)
        try:
            async with hosts[host]:
                result = await self.sender.send(self._message(item))
        except Exception as error:  # a bug in sending: the delivery waits for a retry
            log.exception("sending webhook delivery %s failed", item.id)
            result = SendResult(None, 0, None, f"{type(error).__name__}: {error}")
        retry_in = None
        # A test event is tried once: its outcome is for the manager who asked, now.
        if not result.delivered and not result.gone and item.event_type != TEST_EVENT:
            retry_in = self.policy.retry_in(item.attempt, self.rng)
        return AttemptOutcome(
            item,
            result.status_code,
            result.latency_ms,
            result.excerpt,
            result.error,
            result.delivered,
            retry_in,
        )

    async def _record(self, outcomes: Sequence[AttemptOutcome]) -> None:
        """Record a batch's outcomes in one transaction; if a constraint refuses it (e.g. a
        delivery deleted in a way the batch's statements did not foresee) or PostgreSQL
        ends it to break a deadlock, each alone, so the others are not sent again. One that
        still cannot be recorded stays leased and is sent again when its lease ends (at
        least once)."""
        try:
            mailed = await self._record_together(outcomes)
        except DBAPIError as error:
            if not _refused(error):
                raise
            log.warning(
                "recording %s webhook outcomes together failed (%s); recording each alone",
                len(outcomes),
                str(error).splitlines()[0],
            )
            mailed = False
            for outcome in outcomes:
                try:
                    mailed = await self._record_together([outcome]) or mailed
                except DBAPIError as alone:
                    if not _refused(alone):
                        raise
                    log.warning(
                        "the outcome of webhook delivery %s could not be recorded in full "
                        "(%s); recording its status alone",
                        outcome.delivery.id,
                        str(alone).splitlines()[0],
                    )
                    mailed = await self._record_minimal(outcome) or mailed
        if mailed and self.mail_recorded is not None:
            self.mail_recorded()

    async def _record_minimal(self, outcome: AttemptOutcome) -> bool:
        """The outcome without any text of the receiver's; if even that is refused, the
        delivery stays leased, and the claim fails it once it has had its attempts."""
        error = None if outcome.delivered else "the outcome could not be recorded in full"
        minimal = dataclasses.replace(outcome, excerpt=None, error=error)
        try:
            return await self._record_together([minimal])
        except DBAPIError as refused:
            if not _refused(refused):
                raise
            log.error(
                "webhook delivery %s: not even its status could be recorded: %s",
                outcome.delivery.id,
                str(refused).splitlines()[0],
            )
            return False

    async def _record_together(self, outcomes: Sequence[AttemptOutcome]) -> bool:
        """One transaction: the attempts logged, each delivery moved on, and each endpoint's
        health: one that took a delivery is not failing; one that only failed is failing
        (since its first failure), and disabled once that lasted `disable_after_seconds`;
        one that answered 410 is disabled. Whether a mail to its owners was recorded."""
        # A failure of a disabled endpoint (a test event sent to it) decides nothing about
        # it; a 410 disables, whatever else the batch saw of the endpoint.
        gone = {
            o.delivery.endpoint_id for o in outcomes if o.status_code == 410 and o.delivery.enabled
        }
        answering = {o.delivery.endpoint_id for o in outcomes if o.delivered} - gone
        failing = (
            {
                o.delivery.endpoint_id
                for o in outcomes
                if not o.delivered and o.logged and o.delivery.enabled
            }
            - answering
            - gone
        )
        disable: dict[uuid.UUID, str] = dict.fromkeys(gone, GONE_REASON)
        mailed = False
        async with self.session_factory() as session, session.begin():
            await UserRepository(session).enter(self.key.entry("maintenance"))
            deliveries = WebhookDeliveryRepository(session)
            # The endpoints first (locked in id order), then the deliveries: the order a
            # manager deleting an endpoint takes them in too.
            for_long = await deliveries.endpoint_health(
                answering, failing, gone, self.policy.disable_after_seconds
            )
            days = self.policy.disable_after_seconds / 86400
            disable |= dict.fromkeys(for_long, disabled_reason(days))
            for endpoint_id, reason in sorted(disable.items()):
                if await deliveries.disable_endpoint(endpoint_id, reason):
                    log.warning("webhook endpoint %s was disabled: %s", endpoint_id, reason)
                    mailed = True
            await deliveries.record(outcomes)
        for outcome in outcomes:
            if not outcome.delivered and outcome.retry_in is None and outcome.logged:
                log.warning(
                    "webhook delivery %s (%s) failed for good after %s attempts: %s",
                    outcome.delivery.id,
                    outcome.delivery.event_type,
                    outcome.delivery.attempt,
                    outcome.error,
                )
        return mailed

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
        # Longer than a whole batch may take: all of it to one slow host is BATCH /
        # concurrency_per_host waves of one timeout each (and one more for the record),
        # so no other worker claims a delivery still waiting for its turn.
        lease_seconds=max(
            60.0,
            (math.ceil(BATCH / settings.webhook_concurrency_per_host) + 1)
            * settings.webhook_timeout_seconds
            + 30,
        ),
        disable_after_seconds=settings.webhook_disable_after_days * 86400,
        concurrency_per_host=settings.webhook_concurrency_per_host,
    )
    sender = WebhookSender(client, settings.webhook_timeout_seconds)
    return WebhookWorker(session_factory, key, sender, secrets, policy, mail_recorded=mail_recorded)
