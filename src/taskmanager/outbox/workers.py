"""The process's background workers, built and run alike by `serve` (in every process,
unless TASKMANAGER_IN_PROCESS_WORKER=false) and by `taskmanager worker`: the mail outbox,
the webhook deliveries and the refresh of subscribed calendars."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from taskmanager.config import Settings
from taskmanager.integrations.outbound import OutboundClient
from taskmanager.integrations.subscribed_calendars import SubscribedCalendars
from taskmanager.mail.sender import MAIL_PREFIX, MailSender, transport_for
from taskmanager.outbox.calendar_refresher import CalendarRefresher, calendar_refresher
from taskmanager.outbox.webhooks import WebhookWorker, webhook_worker
from taskmanager.outbox.worker import OutboxWorker, RetryPolicy
from taskmanager.security.caller_key import CallerKey
from taskmanager.security.mail_tokens import MailTokenKey
from taskmanager.security.webhook_secrets import WebhookSecretKey

log = logging.getLogger(__name__)


def mail_worker(
    settings: Settings,
    session_factory: async_sessionmaker[AsyncSession],
    key: CallerKey,
    mail_tokens: MailTokenKey,
) -> OutboxWorker:
    """The worker that sends what requests recorded in the outbox, after their commit."""
    transport = transport_for(settings)
    log.info("mail goes out through %r", transport)
    mail = MailSender(transport, mail_tokens, settings.mail_from, settings.public_base_url)
    policy = RetryPolicy(
        poll_seconds=settings.outbox_poll_seconds,
        first_retry_seconds=settings.outbox_retry_seconds,
        max_retry_seconds=settings.outbox_retry_max_seconds,
        max_attempts=settings.outbox_max_attempts,
        # Longer than one SMTP conversation may take, so no other worker claims a row
        # that is still being sent.
        lease_seconds=max(60.0, 2 * settings.smtp_timeout + 30),
    )
    return OutboxWorker(session_factory, key, {MAIL_PREFIX: mail.send}, policy)


@dataclass(frozen=True, slots=True)
class BackgroundWorkers:
    outbox: OutboxWorker
    deliveries: WebhookWorker
    refresher: CalendarRefresher

    @classmethod
    def build(
        cls,
        settings: Settings,
        session_factory: async_sessionmaker[AsyncSession],
        key: CallerKey,
        mail_tokens: MailTokenKey,
        webhook_secrets: WebhookSecretKey,
        client: OutboundClient,
        feeds: SubscribedCalendars,
    ) -> BackgroundWorkers:
        outbox = mail_worker(settings, session_factory, key, mail_tokens)
        deliveries = webhook_worker(
            settings, session_factory, key, webhook_secrets, client, mail_recorded=outbox.wake
        )
        refresher = calendar_refresher(settings, session_factory, key, feeds)
        return cls(outbox, deliveries, refresher)

    def start(self, engine: AsyncEngine, *, pgbouncer: bool) -> None:
        self.outbox.start()
        # Woken by PostgreSQL's NOTIFY at each commit that recorded a delivery (from any
        # process); not through PgBouncer in transaction mode, where a LISTEN does not
        # last: there it polls.
        self.deliveries.start(listen_on=None if pgbouncer else engine)
        self.refresher.start()

    async def stop(self) -> None:
        """Stop looking; what is being sent is left to its lease."""
        await self.refresher.stop()
        await self.deliveries.stop()
        await self.outbox.stop()
