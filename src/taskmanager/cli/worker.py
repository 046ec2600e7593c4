"""`taskmanager worker`: send what commits recorded (mail, webhooks) and refresh the
subscribed calendars, until SIGINT/SIGTERM.

Several may run at once, on one machine or many: each delivery and each mail is claimed
with FOR UPDATE SKIP LOCKED and a lease, so none is sent by two at the same time, and
each calendar due is claimed likewise, so one fetches it. `serve` runs the same in-process
unless TASKMANAGER_IN_PROCESS_WORKER=false."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from taskmanager.cli.shared import DATABASE_HELP, caller_key, console
from taskmanager.config import Settings, load_settings

WORKER_HELP = (
    "Send the mail and webhook deliveries commits recorded, and refresh the subscribed "
    "calendars, until Ctrl-C or SIGTERM. Run as many as you like (each delivery and each "
    "calendar due is claimed by one at a time); set TASKMANAGER_IN_PROCESS_WORKER=false for "
    "`serve` then.\n\n" + DATABASE_HELP
)
log = logging.getLogger(__name__)


async def run_workers(settings: Settings, database_url: str, stop: asyncio.Event) -> None:
    """The outbox (mail) and webhook workers and the calendar refresher on `database_url`
    until `stop` is set."""
    from taskmanager import __version__
    from taskmanager.database import create_engine, create_session_factory
    from taskmanager.integrations.outbound import OutboundClient, OutboundPolicy
    from taskmanager.main import cache_client, subscribed_calendars
    from taskmanager.outbox.workers import BackgroundWorkers
    from taskmanager.security.mail_tokens import MailTokenKey
    from taskmanager.security.signing_key import signing_key
    from taskmanager.security.webhook_secrets import WebhookSecretKey

    key = caller_key(settings)
    secret = signing_key(settings)
    engine = create_engine(settings, database_url)
    sessions = create_session_factory(engine)
    client = OutboundClient(
        OutboundPolicy.from_settings(settings), user_agent=f"taskmanager/{__version__}"
    )
    # The deployment's cache, if it has one: what this process fetches, the servers'
    # agendas read from Redis at once (and from the rows either way).
    cache = cache_client(settings)
    feeds = subscribed_calendars(settings, client, cache, sessions, key)
    workers = BackgroundWorkers.build(
        settings, sessions, key, MailTokenKey(secret), WebhookSecretKey(secret), client, feeds
    )
    try:
        workers.start(engine, pgbouncer=settings.pgbouncer)
        await stop.wait()
    finally:
        await workers.stop()
        await feeds.aclose()
        await client.aclose()
        if cache is not None:
            await cache.close()
        await engine.dispose()


def worker() -> None:
    from taskmanager.observability.logs import configure_logging
    from taskmanager.postgres.logins import database_logins

    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)

    async def main(url: str) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(signum, stop.set)
        console.print(
            "worker: sending mail and webhooks, refreshing calendars (Ctrl-C stops)",
            highlight=False,
        )
        await run_workers(settings, url, stop)
        console.print("worker: stopped", highlight=False)

    with database_logins(settings) as logins:
        asyncio.run(main(logins.service))
