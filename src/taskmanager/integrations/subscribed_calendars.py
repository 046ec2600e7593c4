"""SubscribedCalendars: the external side of subscribed calendars, behind a repository-like class.

What a feed holds is fetched with the process's one OutboundClient (SSRF-safe: every address
checked before each connection; redirects followed here, at most MAX_REDIRECTS, each hop
checked again), within a time limit and a size limit (settings), sending the last answer's
validators (If-None-Match, If-Modified-Since: a 304 keeps the copy), and parsed into
occurrences off the event loop (taskmanager.integrations.calendar_parse) on an executor of
its own (PARSE_THREADS threads: never the default executor, which resolves host names for
every outbound request), each parse bounded by the steps a series may take
(`max_recurrence_steps`) and by what is left of the fetch's time limit: a parse that meets
it keeps what it found and says `truncated`.

Where the state of a feed lives (its last good copy, validators, failures), freshest first:
- this process's memory;
- the Week 10 cache (Redis), when the service has one, so every process of a deployment
  shares a fetch (an outage of Redis only means each process keeps its own);
- the subscription's row (`record_fetch` in a transaction entered for 'maintenance'), so a
  restart without Redis still serves the last good copy. Only this class writes it.

Reading (`current`): the feeds whose copy is older than the refresh interval are fetched
again, concurrently (an asyncio.TaskGroup, at most `concurrency` fetches at once in the
process), and the caller waits for them at most `budget` seconds. A fetch that is late goes
on in the background (it is shielded, and owned by this class, not by the request); the
agenda serves the copy it has and says it is stale. One fetch per feed at a time: a second
reader joins the fetch under way.

The circuit breaker: a feed that failed `failures_before_skip` times in a row is not
fetched again until `skip_until` (the first skip `skip_seconds`, doubled with each further
failure, at most `skip_max_seconds`); then one fetch tries it (half open), and a success
closes it. An explicit refresh (`refresh`) tries at once, breaker or not.

In the background (`refresh_due`): the refresher (taskmanager.outbox.calendar_refresher)
hands over the subscriptions it claimed, and those that are due are fetched as an agenda
would fetch them, in the same slots, so the next agenda finds them fresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from urllib.parse import urljoin

from redis.asyncio import Redis

from taskmanager.cache.client import CacheClient
from taskmanager.integrations.calendar_parse import MalformedCalendarError, parse_calendar
from taskmanager.integrations.outbound import (
    OutboundClient,
    OutboundError,
    OutboundTimeout,
    ResponseTooLarge,
    UnsafeDestination,
)

log = logging.getLogger(__name__)

MAX_REDIRECTS = 3
# Threads that parse calendars, per process: a parse is CPU work (one core at most under
# the GIL), and a slow one must never hold the threads name lookups need.
PARSE_THREADS = 2
ERROR_MAX_LENGTH = 500
# How long the cache keeps a feed's state (it is served stale long after it is due).
CACHE_SECONDS = 7 * 24 * 3600

FeedStatus = Literal["fresh", "stale", "failing"]


@dataclass(frozen=True, slots=True)
class FeedLimits:
    """The settings a fetch and the breaker follow (config.py: TASKMANAGER_CALENDAR_*)."""

    fetch_timeout_seconds: float = 10.0
    max_bytes: int = 2_000_000
    refresh_seconds: float = 900.0
    concurrency: int = 8
    failures_before_skip: int = 3
    skip_seconds: float = 60.0
    skip_max_seconds: float = 3600.0
    max_events: int = 2000
    # The steps one recurring series may take to expand; a series past it is skipped.
    max_recurrence_steps: int = 100_000
    # The least time between two manual refreshes of one feed (a sooner one is refused).
    manual_refresh_seconds: float = 30.0
    # The longest an agenda waits for the feeds it found due.
    agenda_budget_seconds: float = 1.5


@dataclass(frozen=True, slots=True)
class FeedState:
    """What is known of one feed: its last good copy and how the last fetches went."""

    url: str
    etag: str | None = None
    last_modified: str | None = None
    fetched_at: datetime | None = None  # the last attempt
    success_at: datetime | None = None  # the last good answer (200 or 304)
    error: str | None = None  # why the last attempt failed; None when it did not
    failures: int = 0  # failed attempts in a row
    skip_until: datetime | None = None
    events: tuple[dict[str, Any], ...] | None = None  # the last good copy
    truncated: bool = False

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        for name in ("fetched_at", "success_at", "skip_until"):
            value = getattr(self, name)
            data[name] = value.isoformat() if value is not None else None
        data["events"] = list(self.events) if self.events is not None else None
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> FeedState:
        data = json.loads(raw)
        for name in ("fetched_at", "success_at", "skip_until"):
            if data.get(name) is not None:
                data[name] = datetime.fromisoformat(data[name])
        if data.get("events") is not None:
            data["events"] = tuple(data["events"])
        return cls(**data)


@dataclass(frozen=True, slots=True)
class Feed:
    """A subscription as this class sees it: its id, its URL, and the state its row holds."""

    subscription_id: int
    url: str
    stored: FeedState

    @property
    def key(self) -> tuple[int, str]:
        return (self.subscription_id, self.url)


@dataclass(frozen=True, slots=True)
class FeedView:
    """A feed as an agenda shows it: its events (the last good copy) and its status."""

    subscription_id: int
    status: FeedStatus
    state: FeedState


class RefreshTooSoonError(Exception):
    """A manual refresh of a feed sooner than `manual_refresh_seconds` after the last one."""

    def __init__(self, wait: int) -> None:
        super().__init__(f"refreshed moments ago; try again in {wait} s")
        self.wait = wait


# Stores a fetch's outcome where it outlives the process (the subscription's row).
Persist = Callable[[int, FeedState], Awaitable[None]]


def _newest(states: Sequence[FeedState | None]) -> FeedState | None:
    """The state of the latest attempt, with the newest good copy known: a failure
    recorded where no copy was at hand (another process, a restart without Redis) never
    hides the copy another place still has."""
    known = [state for state in states if state is not None]
    if not known:
        return None
    never = datetime.min.replace(tzinfo=UTC)
    newest = max(known, key=lambda state: state.fetched_at or never)
    if newest.events is not None:
        return newest
    copies = [state for state in known if state.events is not None]
    if not copies:
        return newest
    copy = max(copies, key=lambda state: state.success_at or never)
    return dataclasses.replace(newest, events=copy.events, truncated=copy.truncated)


class SubscribedCalendars:
    """The feeds of subscribed calendars: fetched, cached, and served within a budget."""

    def __init__(
        self,
        client: OutboundClient,
        limits: FeedLimits,
        *,
        cache: CacheClient | None = None,
        persist: Persist | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.client = client
        self.limits = limits
        self.cache = cache
        self.persist = persist
        self.clock = clock
        self._memory: dict[tuple[int, str], FeedState] = {}
        self._inflight: dict[tuple[int, str], asyncio.Task[FeedState]] = {}
        self._slots = asyncio.Semaphore(limits.concurrency)
        # When each feed was last refreshed by hand (this process's memory: a cheap brake
        # on a member's loop of refreshes, not a quota).
        self._manual: dict[int, datetime] = {}
        self._parser = ThreadPoolExecutor(PARSE_THREADS, thread_name_prefix="calendar-parse")

    # ── reading

    async def current(self, feeds: Sequence[Feed], *, budget: float) -> dict[int, FeedView]:
        """Each feed's events and status, fetching those that are due (at most `budget`
        seconds of waiting; a late fetch finishes in the background)."""
        known = await self._known(feeds)
        await self._fetch_due(feeds, known, budget)
        return {feed.subscription_id: self._view(feed, known[feed.key]) for feed in feeds}

    async def refresh_due(self, feeds: Sequence[Feed]) -> int:
        """Fetch those of `feeds` that are due (as an agenda would: breaker respected, a
        fetch under way joined), waiting for every one, however long each fetch's own
        limit lets it take; how many were due. For the background refresher."""
        return await self._fetch_due(feeds, await self._known(feeds), None)

    async def _fetch_due(
        self,
        feeds: Sequence[Feed],
        known: Mapping[tuple[int, str], FeedState],
        budget: float | None,
    ) -> int:
        """Fetch the due ones of `feeds` concurrently, waiting at most `budget` seconds
        (None: until each is done); how many were due."""
        now = self.clock()
        due = [feed for feed in feeds if self._due(known[feed.key], now)]
        if due:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(budget), asyncio.TaskGroup() as group:
                    for feed in due:
                        fetch = self._start(feed, known[feed.key], force=False)
                        # Shielded: the budget (or a refresher stopping) ends the wait,
                        # never the fetch; aclose ends fetches.
                        group.create_task(_wait_for(asyncio.shield(fetch)))
        return len(due)

    def view_of(self, feed: Feed) -> FeedView:
        """The feed's view from this process's memory and its row (no fetch, no cache)."""
        return self._view(feed, feed.stored)

    def _view(self, feed: Feed, known: FeedState | None) -> FeedView:
        state = _newest([self._memory.get(feed.key), known])
        assert state is not None
        return FeedView(feed.subscription_id, self._status(state, self.clock()), state)

    async def refresh(self, feed: Feed) -> FeedView:
        """Fetch `feed` now (joining a fetch under way), breaker or not; its view after.
        RefreshTooSoonError within `manual_refresh_seconds` of the last manual refresh."""
        now = self.clock()
        last = self._manual.get(feed.subscription_id)
        brake = timedelta(seconds=self.limits.manual_refresh_seconds)
        if last is not None and now - last < brake:
            raise RefreshTooSoonError(math.ceil((brake - (now - last)).total_seconds()))
        self._manual[feed.subscription_id] = now
        known = await self._known([feed])
        state = await asyncio.shield(self._start(feed, known[feed.key], force=True))
        return FeedView(feed.subscription_id, self._status(state, self.clock()), state)

    def _status(self, state: FeedState, now: datetime) -> FeedStatus:
        if state.error is not None:
            return "failing"
        if state.success_at is not None and not self._due(state, now):
            return "fresh"
        return "stale"

    def _due(self, state: FeedState, now: datetime) -> bool:
        if state.skip_until is not None and now < state.skip_until:
            return False  # the breaker is open
        if state.fetched_at is None:
            return True
        return now - state.fetched_at >= timedelta(seconds=self.limits.refresh_seconds)

    async def _known(self, feeds: Sequence[Feed]) -> dict[tuple[int, str], FeedState]:
        """The freshest state of each feed among memory, the cache and its row."""
        cached = await self._from_cache(feeds)
        known: dict[tuple[int, str], FeedState] = {}
        for feed in feeds:
            newest = _newest([self._memory.get(feed.key), cached.get(feed.key), feed.stored])
            assert newest is not None  # the stored state is always there
            known[feed.key] = newest
        return known

    # ── fetching

    def _start(self, feed: Feed, state: FeedState, *, force: bool) -> asyncio.Task[FeedState]:
        """The fetch of `feed` under way, or a new one."""
        running = self._inflight.get(feed.key)
        if running is not None and not running.done():
            return running
        task = asyncio.create_task(self._fetch_and_keep(feed, state))
        self._inflight[feed.key] = task
        key = feed.key
        task.add_done_callback(lambda done: self._forget(key, done))
        return task

    def _forget(self, key: tuple[int, str], task: asyncio.Task[FeedState]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]

    async def _fetch_and_keep(self, feed: Feed, previous: FeedState) -> FeedState:
        async with self._slots:
            try:
                state = await self.fetch(feed.url, previous)
            except Exception as exc:  # whatever went wrong, the feed is failing, not the agenda
                log.exception("calendar %s: the fetch failed unexpectedly", feed.subscription_id)
                state = self._failed(
                    previous, self.clock(), f"could not fetch: {type(exc).__name__}"
                )
        self._memory[feed.key] = state
        await self._to_cache(feed, state)
        if self.persist is not None:
            try:
                await self.persist(feed.subscription_id, state)
            except Exception as exc:  # the copy in memory and Redis still serves
                log.warning("calendar %s: could not store its state: %s", feed.subscription_id, exc)
        return state

    async def fetch(self, url: str, previous: FeedState) -> FeedState:
        """One fetch of `url`: the state after it (a failure is a state, never an error)."""
        started = self.clock()
        # The parse gets what is left of the fetch's time limit: no feed holds a slot longer.
        deadline = time.monotonic() + self.limits.fetch_timeout_seconds
        try:
            answer = await self._get(url, previous)
        except UnsafeDestination as error:
            return self._failed(previous, started, f"refused: {error.reason}")
        except ResponseTooLarge:
            return self._failed(
                previous, started, f"the calendar is larger than {self.limits.max_bytes} bytes"
            )
        except (OutboundTimeout, TimeoutError):
            return self._failed(
                previous,
                started,
                f"no complete answer within {self.limits.fetch_timeout_seconds:g} s",
            )
        except OutboundError as error:
            return self._failed(previous, started, f"could not fetch: {error.reason}")
        status, headers, body = answer
        if status == 304:
            if previous.events is None:
                return self._failed(previous, started, "a 304 answer with no copy to keep")
            return dataclasses.replace(
                previous,
                etag=headers.get("etag") or previous.etag,
                last_modified=headers.get("last-modified") or previous.last_modified,
                fetched_at=started,
                success_at=started,
                error=None,
                failures=0,
                skip_until=None,
            )
        if status != 200:
            return self._failed(previous, started, f"the feed answered HTTP {status}")
        parse = functools.partial(
            parse_calendar,
            body,
            now=started,
            max_events=self.limits.max_events,
            max_steps=self.limits.max_recurrence_steps,
            deadline=deadline,
        )
        try:
            parsed = await asyncio.get_running_loop().run_in_executor(self._parser, parse)
        except MalformedCalendarError as error:
            return self._failed(previous, started, str(error))
        if parsed.skipped_series or parsed.out_of_time:
            log.warning(
                "a calendar feed: %d series skipped (too many steps), out of time: %s",
                parsed.skipped_series,
                parsed.out_of_time,
            )
        return FeedState(
            url=previous.url,
            etag=headers.get("etag"),
            last_modified=headers.get("last-modified"),
            fetched_at=started,
            success_at=started,
            events=tuple(parsed.events),
            truncated=parsed.truncated,
        )

    async def _get(self, url: str, previous: FeedState) -> tuple[int, Mapping[str, str], bytes]:
        """GET `url`, following at most MAX_REDIRECTS redirects (each hop checked by the
        client as the first was), all within the fetch's time limit."""
        headers = {
            "Accept": "text/calendar, */*;q=0.5",
            # The client reads the body as it comes: no compression to undo.
            "Accept-Encoding": "identity",
        }
        if previous.events is not None:  # validators only for a copy that can be kept
            if previous.etag:
                headers["If-None-Match"] = previous.etag
            if previous.last_modified:
                headers["If-Modified-Since"] = previous.last_modified
        async with asyncio.timeout(self.limits.fetch_timeout_seconds):
            for _ in range(MAX_REDIRECTS + 1):
                response = await self.client.request(
                    "GET",
                    url,
                    headers=headers,
                    timeout=self.limits.fetch_timeout_seconds,
                    max_bytes=self.limits.max_bytes,
                    refuse_larger=True,
                )
                location = response.headers.get("location")
                if response.status_code in (301, 302, 303, 307, 308) and location:
                    url = urljoin(url, location)
                    continue
                return response.status_code, response.headers, response.body
        raise OutboundError(f"more than {MAX_REDIRECTS} redirects")

    def _failed(self, previous: FeedState, at: datetime, error: str) -> FeedState:
        failures = previous.failures + 1
        skip_until = None
        limits = self.limits
        if failures >= limits.failures_before_skip:
            doublings = min(failures - limits.failures_before_skip, 30)
            seconds = min(limits.skip_seconds * 2**doublings, limits.skip_max_seconds)
            skip_until = at + timedelta(seconds=seconds)
        return dataclasses.replace(
            previous,
            fetched_at=at,
            error=error[:ERROR_MAX_LENGTH],
            failures=failures,
            skip_until=skip_until,
        )

    # ── the cache

    def _cache_key(self, feed: Feed) -> str:
        assert self.cache is not None
        return self.cache.key("calendar", feed.subscription_id)

    async def _from_cache(self, feeds: Sequence[Feed]) -> dict[tuple[int, str], FeedState]:
        if self.cache is None or not feeds:
            return {}
        keys = [self._cache_key(feed) for feed in feeds]

        async def read(redis: Redis) -> list[Any]:
            return list(await redis.mget(keys))

        raw = await self.cache.call("calendar", read)
        found: dict[tuple[int, str], FeedState] = {}
        for feed, value in zip(feeds, raw or [], strict=False):
            if value is None:
                continue
            try:
                state = FeedState.from_json(value)
            except (ValueError, TypeError, KeyError):
                continue
            if state.url == feed.url:  # a copy of the URL the row still has
                found[feed.key] = state
        return found

    async def _to_cache(self, feed: Feed, state: FeedState) -> None:
        if self.cache is None:
            return
        key, value = self._cache_key(feed), state.to_json()

        async def write(redis: Redis) -> bool:
            return bool(await redis.set(key, value, ex=CACHE_SECONDS))

        await self.cache.call("calendar", write)

    # ── stopping

    async def aclose(self) -> None:
        """Cancel the fetches under way (their feeds are fetched again when next due)."""
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        # A parse under way ends by its own deadline; nothing waits for it.
        self._parser.shutdown(wait=False, cancel_futures=True)


async def _wait_for(fetch: Awaitable[FeedState]) -> None:
    """Wait for a fetch; its failure is its feed's state, never the waiter's error."""
    with contextlib.suppress(Exception):
        await fetch
