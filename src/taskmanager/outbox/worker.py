"""OutboxWorker: drains the outbox in the app's lifespan (every server process runs one).

It is woken right after a request's commit that recorded a row (database.get_async_session
calls `wake`), and looks every `poll_seconds` anyway, for rows a crash or another process
left. Each row is claimed in a short transaction of its own (FOR UPDATE SKIP LOCKED, leased:
OutboxRepository), handled outside any transaction (an SMTP conversation holds no database
connection), and marked sent, or failed with a backoff, in another. Workers in several
processes never handle one row at once; a worker that dies mid-send leaves its rows to be
claimed again once their lease ends (at least once, never twice at the same time).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from taskmanager.repositories.outbox_repository import OutboxItem, OutboxRepository
from taskmanager.repositories.user_repository import UserRepository
from taskmanager.security.caller_key import CallerKey

log = logging.getLogger(__name__)

# A handler performs one row's side effect: it returns when done, raises when it failed.
# Called with the row's kind without its prefix ("mail.verify_email" -> "verify_email").
Handler = Callable[[str, Mapping[str, Any]], Awaitable[None]]
# How many rows one claim takes.
BATCH = 20
# Sent rows are kept this long (for an operator's questions), then deleted.
KEEP_SENT_SECONDS = 7 * 24 * 3600


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When to look, when to try a failed row again, and when to give up on it."""

    poll_seconds: float
    first_retry_seconds: float
    max_retry_seconds: float
    max_attempts: int
    # How long a claimed row is this worker's: longer than any handler may take.
    lease_seconds: float

    def retry_in(self, attempt: int) -> float:
        """The wait after failed attempt number `attempt` (1, 2, ...): doubling."""
        return min(self.first_retry_seconds * 2.0 ** (attempt - 1), self.max_retry_seconds)


class OutboxWorker:
    def __init__(
        self,
        session_factory: async_sessionmaker[AsyncSession],
        key: CallerKey,
        handlers: Mapping[str, Handler],
        policy: RetryPolicy,
    ) -> None:
        self.session_factory = session_factory
        self.key = key
        self.handlers = dict(handlers)  # by prefix: "mail." -> MailSender.send
        self.policy = policy
        self._woken = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def wake(self) -> None:
        """Look at the outbox now (a commit just recorded a row)."""
        self._woken.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outbox worker")

    async def stop(self) -> None:
        """Stop looking; a row being handled right now is left to its lease."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        polls = 0
        while True:
            self._woken.clear()
            try:
                await self.drain()
                polls += 1
                if polls % 1000 == 1:  # now and then: the table stays small
                    await self._purge_sent()
            except (SQLAlchemyError, OSError) as error:
                # The database is away: the rows wait for it, and so does the worker.
                log.warning("the outbox could not be read: %s", type(error).__name__)
            except Exception:  # a bug: say so, and keep the worker alive for the next rows
                log.exception("the outbox worker failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._woken.wait(), self.policy.poll_seconds)

    async def drain(self) -> int:
        """Handle every row that is due now; how many were sent."""
        sent = 0
        while items := await self._claim():
            for item in items:
                sent += await self._handle(item)
        return sent

    async def _claim(self) -> list[OutboxItem]:
        async with self.session_factory() as session, session.begin():
            await UserRepository(session).enter(self.key.entry("maintenance"))
            return await OutboxRepository(session).claim(
                BATCH, self.policy.lease_seconds, self.policy.max_attempts
            )

    async def _handle(self, item: OutboxItem) -> int:
        prefix, _, kind = item.kind.partition(".")
        handler = self.handlers.get(f"{prefix}.")
        try:
            if handler is None:
                raise LookupError(f"no handler for outbox rows of the kind {item.kind!r}")
            await handler(kind, item.payload)
        except Exception as error:  # any failure of the side effect: try again later
            await self._failed(item, f"{type(error).__name__}: {error}")
            return 0
        async with self.session_factory() as session, session.begin():
            await UserRepository(session).enter(self.key.entry("maintenance"))
            await OutboxRepository(session).mark_sent(item.id)
        return 1

    async def _failed(self, item: OutboxItem, error: str) -> None:
        last = item.attempt >= self.policy.max_attempts
        retry_in = self.policy.retry_in(item.attempt)
        if last:
            log.error(
                "outbox row %s (%s) failed %s times; giving up: %s",
                item.id,
                item.kind,
                item.attempt,
                error,
            )
        else:
            log.warning(
                "outbox row %s (%s) failed (attempt %s), next in %.1f s: %s",
                item.id,
                item.kind,
                item.attempt,
                retry_in,
                error,
            )
        async with self.session_factory() as session, session.begin():
            await UserRepository(session).enter(self.key.entry("maintenance"))
            await OutboxRepository(session).mark_failed(item.id, error, retry_in)

    async def _purge_sent(self) -> None:
        async with self.session_factory() as session, session.begin():
            await UserRepository(session).enter(self.key.entry("maintenance"))
            await OutboxRepository(session).purge_sent(KEEP_SENT_SECONDS)
