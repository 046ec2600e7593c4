"""The background refresher of subscribed calendars, against a real .ics server on 127.0.0.1
and the module's own database (real commits: the refresher claims in transactions of its
own, as it does in `serve` and in `taskmanager worker`).

The subscriptions are made through the API of a live app that runs no worker of its own;
each test drives refreshers itself (each one a process's: feeds with their own memory),
except the first, which shows the app's in-process one at work.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest_asyncio
from httpx import AsyncClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from taskmanager.accounts.agenda import database_persist
from taskmanager.config import Settings
from taskmanager.database import create_engine, create_session_factory
from taskmanager.integrations.outbound import OutboundClient
from taskmanager.integrations.subscribed_calendars import FeedState, SubscribedCalendars
from taskmanager.outbox.calendar_refresher import CalendarRefresher
from tests.calendar.conftest import LIMITS
from tests.support.accounts import TEST_SECRET, register_and_login
from tests.support.databases import TEST_KEY
from tests.support.ics_server import Feed, IcsServer, ics, ics_server
from tests.support.live_app import live_client, observer_engine
from tests.support.rolled_back import LOCAL_POLICY

LOCAL: dict[str, Any] = {
    "outbound_allow_http": True,
    "outbound_allowed_networks": ["127.0.0.1/32"],
    "redis_url": "off",
}
SOON = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=2)


@dataclass
class World:
    """The live app (no worker of its own) logged in as the owner of `workspace_id`, the
    module's database for refreshers, and an observer past every policy."""

    client: AsyncClient
    workspace_id: int
    sessions: async_sessionmaker[AsyncSession]
    observer: AsyncEngine
    server: IcsServer | None = None
    _made: list[SubscribedCalendars] = dataclasses.field(default_factory=list)

    async def subscribe(self, path: str, feed: Feed) -> int:
        assert self.server is not None
        self.server.feeds[path] = feed
        response = await self.client.post(
            f"/workspaces/{self.workspace_id}/calendars",
            json={"url": self.server.url(path), "name": path},
        )
        assert response.status_code == 201, response.text
        calendar_id: int = response.json()["id"]
        return calendar_id

    def feeds(self, kind: type[SubscribedCalendars] = SubscribedCalendars, **limits: Any) -> Any:
        """A process's feeds: their own memory, storing each fetch in the row."""
        made = kind(
            OutboundClient(LOCAL_POLICY),
            dataclasses.replace(LIMITS, **limits),
            persist=database_persist(self.sessions, TEST_KEY),
        )
        self._made.append(made)
        return made

    def refresher(
        self,
        feeds: SubscribedCalendars | None = None,
        sessions: Callable[[], Any] | None = None,
        **limits: Any,
    ) -> CalendarRefresher:
        return CalendarRefresher(
            sessions or self.sessions,  # type: ignore[arg-type]
            TEST_KEY,
            feeds or self.feeds(**limits),
            poll_seconds=0.1,
            lease_seconds=30.0,
        )

    async def row(self, calendar_id: int) -> Any:
        async with self.observer.connect() as connection:
            return (
                await connection.execute(
                    text(
                        "SELECT last_fetched_at, last_success_at, last_error, "
                        "consecutive_failures, skip_until, jsonb_array_length(events) AS events "
                        "FROM calendar_subscriptions WHERE id = :id"
                    ),
                    {"id": calendar_id},
                )
            ).one()

    async def agenda(self, client: AsyncClient | None = None) -> dict[str, Any]:
        window = {
            "from": (SOON - timedelta(days=1)).isoformat(),
            "to": (SOON + timedelta(days=1)).isoformat(),
        }
        response = await (client or self.client).get("/agenda", params=window)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def world(own_database_url: str) -> AsyncIterator[World]:
    engine = create_engine(
        Settings(database_url=own_database_url, jwt_secret=TEST_SECRET), own_database_url
    )
    async with (
        live_client(own_database_url, **LOCAL, in_process_worker=False) as client,
        observer_engine(own_database_url) as observer,
    ):
        client.headers.update(await register_and_login(client, "refresher@example.com"))
        made = await client.post("/workspaces", json={"name": "refreshed"})
        assert made.status_code == 201, made.text
        try:
            yield World(client, made.json()["id"], create_session_factory(engine), observer)
        finally:
            await engine.dispose()


@pytest_asyncio.fixture(loop_scope="session")
async def clean(world: World) -> AsyncIterator[World]:
    """No subscription from an earlier test, and an .ics server of this test's."""
    async with world.observer.begin() as connection:
        await connection.execute(text("DELETE FROM calendar_subscriptions"))
    async with ics_server() as server:
        world.server = server
        try:
            yield world
        finally:
            for feeds in world._made:
                await feeds.aclose()
                await feeds.client.aclose()
            world._made.clear()
            world.server = None


def calendar(summary: str) -> Feed:
    return Feed(ics((summary, SOON, SOON + timedelta(hours=1))))


async def eventually(condition: Callable[[], bool], within: float = 10.0) -> None:
    for _ in range(int(within / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {within} s")


async def test_the_in_process_refresher_fetches_without_any_agenda_and_the_agenda_waits_for_none(
    clean: World, own_database_url: str
) -> None:
    calendar_id = await clean.subscribe("/team.ics", calendar("Team offsite"))
    assert clean.server is not None
    async with live_client(
        own_database_url, **LOCAL, calendar_refresh_poll_seconds=0.2
    ) as served:  # serve's app: its workers in-process (the default)
        await eventually(lambda: clean.server is not None and clean.server.count("/team.ics") > 0)
        # Stored by the refresher's own transaction, not by any request.
        for _ in range(100):
            if (await clean.row(calendar_id)).events is not None:
                break
            await asyncio.sleep(0.05)
        served.headers.update(clean.client.headers)
        agenda = await clean.agenda(served)

    (feed,) = agenda["calendars"]
    assert feed["status"] == "fresh", feed
    assert [item["title"] for item in agenda["items"]] == ["Team offsite"]
    assert clean.server.count("/team.ics") == 1  # the agenda fetched nothing
    row = await clean.row(calendar_id)
    assert row.events == 1, row
    assert row.last_error is None, row


async def test_after_a_cycle_an_agenda_in_another_process_finds_every_feed_fresh(
    clean: World,
) -> None:
    # Slower than the agenda's budget: an agenda that fetched it would show it stale.
    await clean.subscribe("/slow.ics", dataclasses.replace(calendar("Slow"), delay=2.0))
    await clean.subscribe("/quick.ics", calendar("Quick"))
    assert clean.server is not None

    assert await clean.refresher(fetch_timeout_seconds=5.0).run_cycle() == 2

    assert clean.server.count("/slow.ics") == clean.server.count("/quick.ics") == 1
    # The live app's feeds never fetched these: their state comes from the rows.
    agenda = await clean.agenda()
    assert [feed["status"] for feed in agenda["calendars"]] == ["fresh", "fresh"]
    assert sorted(item["title"] for item in agenda["items"]) == ["Quick", "Slow"]
    assert clean.server.count("/slow.ics") == clean.server.count("/quick.ics") == 1
    # Nothing is due any more: the next cycle claims nothing.
    assert await clean.refresher().run_cycle() == 0


async def test_a_failing_feed_is_skipped_while_its_breaker_is_open(clean: World) -> None:
    broken = await clean.subscribe("/broken.ics", Feed(status=500, body=b"down"))
    await clean.subscribe("/fine.ics", calendar("Fine"))
    assert clean.server is not None
    limits = {"refresh_seconds": 1, "failures_before_skip": 1, "skip_seconds": 600}

    await clean.refresher(**limits).run_cycle()
    row = await clean.row(broken)
    assert row.last_error == "the feed answered HTTP 500", row
    assert row.skip_until is not None, row
    assert row.consecutive_failures == 1, row
    await asyncio.sleep(1.1)  # both copies are older than the refresh interval now
    # Another process (fresh memory): only the row's breaker keeps it away.
    await clean.refresher(**limits).run_cycle()

    assert clean.server.count("/fine.ics") == 2  # the cycle ran
    assert clean.server.count("/broken.ics") == 1  # skipped while the breaker is open


async def test_two_refreshers_never_fetch_one_feed_twice_in_a_cycle(clean: World) -> None:
    paths = [f"/shared-{number}.ics" for number in range(8)]
    for path in paths:
        await clean.subscribe(path, dataclasses.replace(calendar(path), delay=0.2))
    assert clean.server is not None
    # Two at a time each: the two claim batch after batch, side by side.
    first, second = clean.refresher(concurrency=2), clean.refresher(concurrency=2)

    fetched = await asyncio.gather(first.run_cycle(), second.run_cycle())

    assert sum(fetched) == len(paths), fetched
    assert {path: clean.server.count(path) for path in paths} == dict.fromkeys(paths, 1)


class RaisingFeeds(SubscribedCalendars):
    """Feeds whose fetch of one path raises (a bug, not a failing feed)."""

    async def fetch(self, url: str, previous: FeedState) -> FeedState:
        if url.endswith("/raises.ics"):
            raise RuntimeError("a bug in fetching")
        return await super().fetch(url, previous)


class AwayDatabase:
    """A session factory whose first `failures` sessions cannot connect."""

    def __init__(self, real: async_sessionmaker[AsyncSession], failures: int) -> None:
        self.real = real
        self.failures = failures

    def __call__(self) -> AsyncSession:
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionRefusedError("the database is away")
        return self.real()


async def test_the_loop_survives_a_feed_raising_and_the_database_away(clean: World) -> None:
    raising = await clean.subscribe("/raises.ics", calendar("Never"))
    await clean.subscribe("/ok.ics", calendar("Fine"))
    assert clean.server is not None
    away = AwayDatabase(clean.sessions, failures=2)
    feeds: SubscribedCalendars = clean.feeds(RaisingFeeds, refresh_seconds=1)
    refresher = clean.refresher(feeds, sessions=away)

    refresher.start()
    try:
        # Two cycles lost to the database, then every cycle fetches what is due (each
        # second): the loop went on after the raising feed too.
        await eventually(lambda: clean.server is not None and clean.server.count("/ok.ics") >= 2)
    finally:
        await refresher.stop()

    assert away.failures == 0
    row = await clean.row(raising)
    assert row.last_error == "could not fetch: RuntimeError", row
    assert clean.server.count("/raises.ics") == 0
