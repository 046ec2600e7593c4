"""An SMTP server per test module, and the pieces of the outbox for tests that drive the
worker themselves (no app running, so nothing else drains the module's own database)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from taskmanager.accounts.registration import MailLifetimes, register_by_mail
from taskmanager.config import Settings
from taskmanager.database import create_engine, create_session_factory
from taskmanager.mail.sender import MAIL_PREFIX, MailSender
from taskmanager.mail.transports import MailTransport, SmtpTransport
from taskmanager.outbox.worker import OutboxWorker, RetryPolicy
from taskmanager.security.mail_tokens import MailTokenKey
from tests.support.accounts import PASSWORD, TEST_SECRET
from tests.support.databases import TEST_KEY
from tests.support.mail import SmtpServer, smtp_server

BASE_URL = "https://tasks.example"
LIFETIMES = MailLifetimes(verification_seconds=3600, reset_seconds=1800)
TOKENS = MailTokenKey(TEST_SECRET)


@pytest.fixture(scope="module")
def smtp() -> Iterator[SmtpServer]:
    with smtp_server() as server:
        yield server


@pytest.fixture(autouse=True)
def smtp_accepts(smtp: SmtpServer) -> None:
    """Each test starts with a server that accepts everything at once."""
    smtp.refuse = smtp.refused = 0
    smtp.delay = 0.0


@dataclass
class Outbox:
    """The module's own database as the service reaches it, and workers for it."""

    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    smtp: SmtpServer

    def worker(self, transport: MailTransport | None = None, **policy: Any) -> OutboxWorker:
        """A worker sending over the test's SMTP server (or `transport`), retrying soon."""
        transport = transport or SmtpTransport(
            "127.0.0.1", self.smtp.port, starttls=False, username=None, password=None, timeout=5
        )
        sender = MailSender(transport, TOKENS, "taskmanager <noreply@tasks.example>", BASE_URL)
        rules = {
            "poll_seconds": 0.2,
            "first_retry_seconds": 0.2,
            "max_retry_seconds": 10.0,
            "max_attempts": 5,
            "lease_seconds": 60.0,
        } | policy
        return OutboxWorker(
            self.sessions, TEST_KEY, {MAIL_PREFIX: sender.send}, RetryPolicy(**rules)
        )

    async def register(self, email: str, *, commit: bool = True) -> None:
        """POST /auth/register's flow in a transaction of its own, committed or rolled back."""
        async with self.sessions() as session:
            await register_by_mail(session, TEST_KEY, TOKENS, LIFETIMES, email, PASSWORD)
            if commit:
                await session.commit()
            else:
                await session.rollback()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def outbox(own_database_url: str, smtp: SmtpServer) -> AsyncIterator[Outbox]:
    settings = Settings(database_url=own_database_url, jwt_secret=TEST_SECRET)
    engine = create_engine(settings, own_database_url)
    try:
        yield Outbox(engine, create_session_factory(engine), smtp)
    finally:
        await engine.dispose()
