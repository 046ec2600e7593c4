"""The calendar tests' world: a real .ics server on 127.0.0.1, feeds of the test's own
(fresh memory, short limits, a clock the test moves), and alice's team workspace with a
viewer in it and a stranger outside it."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest_asyncio
from fastapi import FastAPI
from httpx import AsyncClient
from sqlalchemy.ext.asyncio import AsyncEngine

from taskmanager.dependencies import get_subscribed_calendars
from taskmanager.integrations.outbound import OutboundClient
from taskmanager.integrations.subscribed_calendars import FeedLimits, SubscribedCalendars
from tests.support.accounts import Account, create_account
from tests.support.ics_server import IcsServer, ics_server
from tests.support.invitations import add_member
from tests.support.rolled_back import LOCAL_POLICY

# Short limits, so the faults show within a test's patience.
LIMITS = FeedLimits(
    fetch_timeout_seconds=1.0,
    max_bytes=20_000,
    refresh_seconds=600,
    concurrency=8,
    failures_before_skip=2,
    skip_seconds=60,
    skip_max_seconds=600,
    max_events=500,
    agenda_budget_seconds=1.5,
)


class Clock:
    """The feeds' now, moved by the test (refresh intervals and skips without waiting)."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, **delta: float) -> None:
        self.offset += timedelta(**delta)


@dataclass
class Calendars:
    """What a calendar test works with."""

    client: AsyncClient
    app: FastAPI
    server: IcsServer
    feeds: SubscribedCalendars
    clock: Clock
    team_id: int
    owner: Account
    viewer: Account
    stranger: Account
    _made: list[SubscribedCalendars] = dataclasses.field(default_factory=list)

    def use_limits(self, **changes: Any) -> SubscribedCalendars:
        """New feeds (fresh memory) with LIMITS changed by `changes`."""
        self.feeds = make_feeds(self.clock, dataclasses.replace(LIMITS, **changes))
        self.app.dependency_overrides[get_subscribed_calendars] = lambda: self.feeds
        self._made.append(self.feeds)
        return self.feeds

    async def subscribe(self, path: str, name: str | None = None, **kwargs: Any) -> dict[str, Any]:
        response = await self.client.post(
            f"/workspaces/{self.team_id}/calendars",
            json={"url": self.server.url(path), "name": name or path},
            headers=self.owner.headers,
        )
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        return body

    async def agenda(self, account: Account | None = None, **params: Any) -> dict[str, Any]:
        now = datetime.now(UTC)
        query = {
            "from": (now - timedelta(days=1)).isoformat(),
            "to": (now + timedelta(days=30)).isoformat(),
            **params,
        }
        response = await self.client.get(
            "/agenda", params=query, headers=(account or self.owner).headers
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


@pytest_asyncio.fixture(scope="session")
async def calendar_viewer(engine: AsyncEngine) -> Account:
    return await create_account(engine, "vera.calendar.viewer@example.com")


@pytest_asyncio.fixture
async def server() -> AsyncIterator[IcsServer]:
    async with ics_server() as running:
        yield running


def make_feeds(clock: Clock, limits: FeedLimits = LIMITS) -> SubscribedCalendars:
    return SubscribedCalendars(OutboundClient(LOCAL_POLICY), limits, clock=clock)


@pytest_asyncio.fixture
async def calendars(
    client: AsyncClient,
    app: FastAPI,
    server: IcsServer,
    account: Account,
    calendar_viewer: Account,
    other_account: Account,
) -> AsyncIterator[Calendars]:
    clock = Clock()
    feeds = make_feeds(clock)
    app.dependency_overrides[get_subscribed_calendars] = lambda: feeds
    team = await client.post("/workspaces", json={"name": "Calendar team"})
    assert team.status_code == 201, team.text
    team_id = team.json()["id"]
    await add_member(
        client,
        team_id,
        calendar_viewer.email,
        calendar_viewer.headers,
        "viewer",
        inviter=account.headers,
    )
    made = Calendars(
        client, app, server, feeds, clock, team_id, account, calendar_viewer, other_account
    )
    yield made
    for each in (feeds, *made._made):
        await each.aclose()
        await each.client.aclose()


@pytest_asyncio.fixture(scope="session")
async def colleague_account(engine: AsyncEngine) -> Account:
    """Made a member of one of alice's workspaces by the feed tests that need one."""
    return await create_account(engine, "colin.calendar@example.com")
