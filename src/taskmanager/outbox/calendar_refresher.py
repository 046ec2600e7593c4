"""CalendarRefresher: fetches subscribed calendars in the background, so an agenda finds
them fresh instead of waiting for them.

Every `poll_seconds` it claims, in a short transaction entered for 'maintenance', the
subscriptions whose copy is older than the refresh interval and whose breaker is closed
(CalendarFetchRepository.claim_due: FOR UPDATE SKIP LOCKED, and a lease written into the
rows' last attempt), and hands them to the process's SubscribedCalendars, which fetches
those still due with the agenda's concurrency limit and records each outcome (memory,
Redis, the row) in a transaction of its own. No database connection is held while a
feed is fetched.

Several refreshers (every `serve` process, every `taskmanager worker`) share the work: a
claimed row is skipped by the others' claims while the claim is open and, once it
committed, is no longer due for them until its lease runs out (longer than a fetch may
take) or the fetch's record replaces the lease. One that dies mid-fetch leaves the
feed due again when the lease ends.

It lives beside the outbox workers because it is one of the process's background loops
(claimed rows, leases, started and stopped with them), and it reads the database, which
taskmanager.integrations never does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from taskmanager.accounts.agenda import feed_of
from taskmanager.config import Settings
from taskmanager.integrations.subscribed_calendars import SubscribedCalendars
from taskmanager.models import CalendarSubscription
from taskmanager.repositories.calendar_subscription_repository import CalendarFetchRepository
from taskmanager.repositories.user_repository import UserRepository
from taskmanager.security.caller_key import CallerKey

log = logging.getLogger(__name__)


def lease_seconds(fetch_timeout_seconds: float) -> float:
    """How long a claim holds its feeds: longer than one fetch may take (the fetch's
    limit, once more for the slot it may wait for, and parsing), at least a minute."""
    return max(60.0, 3 * fetch_timeout_seconds + 30)


class CalendarRefresher:
    """The background refresh of subscribed calendars (see the module's docstring)."""

    def __init__(
        self,
        session_factory: async_sessionmaker[AsyncSession],
        key: CallerKey,
        feeds: SubscribedCalendars,
        *,
        poll_seconds: float,
        lease_seconds: float,
    ) -> None:
        self.session_factory = session_factory
        self.key = key
        self.feeds = feeds
        self.poll_seconds = poll_seconds
        self.lease_seconds = lease_seconds
        # A batch the process fetches at once (its slots), so a claim's lease covers it.
        self.batch = feeds.limits.concurrency
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="calendar refresher")

    async def stop(self) -> None:
        """Stop looking; a fetch under way is the feeds' (their aclose ends it) and its
        claim runs out with its lease."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def run_cycle(self) -> int:
        """Claim and fetch every subscription that is due now, a batch at a time; how
        many were fetched."""
        fetched = 0
        while claimed := await self._claim():
            fetched += await self.feeds.refresh_due(
                [feed_of(subscription, with_events=True) for subscription in claimed]
            )
            if len(claimed) < self.batch:
                break
        return fetched

    async def _claim(self) -> list[CalendarSubscription]:
        async with self.session_factory() as session, session.begin():
            await UserRepository(session).enter(self.key.entry("maintenance"))
            return await CalendarFetchRepository(session).claim_due(
                self.batch, self.feeds.limits.refresh_seconds, self.lease_seconds
            )

    async def _run(self) -> None:
        while True:
            try:
                await self.run_cycle()
            except (SQLAlchemyError, OSError) as error:  # the database is away: next cycle
                log.warning(
                    "subscribed calendars could not be claimed: %s: %s",
                    type(error).__name__,
                    str(error).splitlines()[0] if str(error) else "",
                )
            except Exception:  # a bug: say so, keep refreshing
                log.exception("the calendar refresher failed")
            await asyncio.sleep(self.poll_seconds)


def calendar_refresher(
    settings: Settings,
    session_factory: async_sessionmaker[AsyncSession],
    key: CallerKey,
    feeds: SubscribedCalendars,
) -> CalendarRefresher:
    """The refresher as the settings say (the app's in-process one, `worker`'s)."""
    return CalendarRefresher(
        session_factory,
        key,
        feeds,
        poll_seconds=settings.calendar_refresh_poll_seconds,
        lease_seconds=lease_seconds(settings.calendar_fetch_timeout_seconds),
    )
