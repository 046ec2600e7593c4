"""Feeds that attack the service: recurrence bombs cost a bounded parse on threads of their
own; a reply that is not a calendar never comes back in an error; a slow feed holds no
pooled connection; a failed refresh never hides the last good copy; a workspace name with
a line break cannot add a property to its calendar feed."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import icalendar
import pytest
from httpx import AsyncClient
from sqlalchemy import text

from taskmanager.feeds.ics import FeedOptions, calendar_of
from taskmanager.integrations import subscribed_calendars
from taskmanager.integrations.calendar_parse import ParsedCalendar, parse_calendar
from taskmanager.integrations.subscribed_calendars import FeedState
from tests.calendar.conftest import Calendars
from tests.support.accounts import PASSWORD, register_and_login
from tests.support.ics_server import Feed, ics, ics_server
from tests.support.live_app import live_client, observer_engine
from tests.support.problems import assert_validation_problem

NOW = datetime.now(UTC).replace(microsecond=0)
LOCAL = {
    "outbound_allow_http": True,
    "outbound_allowed_networks": ["127.0.0.1/32"],
    "redis_url": "off",
}
SECRET = "hunter2-redis-password-4711"


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def _series(uid: str, start: str, rule: str, summary: str = "Bomb") -> str:
    return (
        f"BEGIN:VEVENT\r\nUID:{uid}\r\nDTSTAMP:{start}\r\nDTSTART:{start}\r\n"
        f"DTEND:{start}\r\nSUMMARY:{summary}\r\nRRULE:{rule}\r\nEND:VEVENT"
    )


def _with(*series: str) -> bytes:
    """A calendar with an ordinary event tomorrow and `series`."""
    tomorrow = NOW + timedelta(days=1)
    return ics(("Ordinary", tomorrow, tomorrow + timedelta(hours=1)), extra="\r\n".join(series))


# Each took from tens of seconds to minutes to expand before the steps were bounded.
BOMBS = {
    "secondly since 2024": [_series("s", "20240101T000000Z", "FREQ=SECONDLY")],
    "minutely since 2000": [_series("m", "20000101T000000Z", "FREQ=MINUTELY")],
    "200 minutely series": [
        _series(f"m{n}", "20240601T000000Z", "FREQ=MINUTELY") for n in range(200)
    ],
    "daily, every hour and 5 minutes": [
        _series(
            "h",
            "20250101T000000Z",
            "FREQ=DAILY;BYHOUR=" + ",".join(map(str, range(24))) + ";BYMINUTE=0,5,10,15,20,25",
        )
    ],
    # No day is ever February 30th: dateutil scans every day to the year 9999 (2.5 s each).
    "20 rules that never match": [
        _series(f"n{n}", "20240101T000000Z", "FREQ=DAILY;BYMONTH=2;BYMONTHDAY=30")
        for n in range(20)
    ],
}


@pytest.mark.parametrize("series", BOMBS.values(), ids=BOMBS.keys())
def test_a_recurrence_bomb_is_skipped_and_the_rest_kept(series: list[str]) -> None:
    started = time.monotonic()

    parsed = parse_calendar(_with(*series), now=NOW, max_events=2000)

    elapsed = time.monotonic() - started
    assert [event["summary"] for event in parsed.events] == ["Ordinary"]
    assert parsed.truncated
    assert parsed.skipped_series == len(series)
    assert elapsed < 5, elapsed  # minutes before


def test_ordinary_recurrences_are_within_the_budget() -> None:
    body = _with(
        _series("weekly", "20150105T090000Z", "FREQ=WEEKLY;BYDAY=MO,WE,FR", "Class"),
        _series("leap", "20000229T090000Z", "FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=29", "Leap"),
        _series("hourly", _stamp(NOW - timedelta(days=30)), "FREQ=HOURLY;COUNT=3", "Old"),
    )

    parsed = parse_calendar(body, now=NOW, max_events=2000)

    assert not parsed.truncated
    assert parsed.skipped_series == 0
    titles = [event["summary"] for event in parsed.events]
    assert titles.count("Class") > 400  # three a week, a year back and two ahead
    assert titles.count("Old") == 3
    assert "Ordinary" in titles


def test_a_parse_past_its_deadline_stops_and_says_so() -> None:
    body = _with(_series("weekly", "20150105T090000Z", "FREQ=WEEKLY;BYDAY=MO", "Class"))

    parsed = parse_calendar(body, now=NOW, max_events=2000, deadline=time.monotonic() - 1)

    assert parsed.out_of_time
    assert parsed.truncated
    assert parsed.events == []


async def test_a_bomb_feed_shows_truncated_with_its_ordinary_events(
    calendars: Calendars, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[str] = []

    def recording(*args: Any, **kwargs: Any) -> ParsedCalendar:
        threads.append(threading.current_thread().name)
        return parse_calendar(*args, **kwargs)

    monkeypatch.setattr(subscribed_calendars, "parse_calendar", recording)
    calendars.server.feeds["/bomb.ics"] = Feed(
        _with(*BOMBS["secondly since 2024"], *BOMBS["minutely since 2000"])
    )
    made = await calendars.subscribe("/bomb.ics")

    agenda = await calendars.agenda()

    assert [item["title"] for item in agenda["items"]] == ["Ordinary"]
    (feed,) = [c for c in agenda["calendars"] if c["calendar_id"] == made["id"]]
    assert feed["status"] == "fresh"
    assert feed["truncated"] is True
    # Parsed on the feeds' own threads, never the default executor's (name lookups).
    assert threads
    assert all(name.startswith("calendar-parse") for name in threads), threads


async def test_a_reply_that_is_not_a_calendar_is_never_quoted(calendars: Calendars) -> None:
    stored: list[FeedState] = []

    async def persist(subscription_id: int, state: FeedState) -> None:
        stored.append(state)

    calendars.feeds.persist = persist
    body = f'BEGIN:VCALENDAR\r\n{{"redis_password": "{SECRET}"}}\r\nEND:VCALENDAR\r\n'
    calendars.server.feeds["/config.json"] = Feed(body.encode(), content_type="text/plain")
    made = await calendars.subscribe("/config.json")

    agenda = await calendars.agenda()
    listed = await calendars.client.get(f"/workspaces/{calendars.team_id}/calendars")

    (feed,) = [c for c in agenda["calendars"] if c["calendar_id"] == made["id"]]
    assert feed["status"] == "failing"
    assert feed["error"] == "not an iCalendar document (line 2)"
    assert SECRET not in str(agenda)
    assert "redis_password" not in str(agenda)
    assert listed.status_code == 200
    assert SECRET not in listed.text
    assert stored
    assert all(SECRET not in state.to_json() for state in stored)


async def test_manual_refreshes_of_one_feed_are_spaced(calendars: Calendars) -> None:
    calendars.server.feeds["/spaced.ics"] = Feed(_with())
    made = await calendars.subscribe("/spaced.ics")
    url = f"/workspaces/{calendars.team_id}/calendars/{made['id']}/refresh"

    first = await calendars.client.post(url)
    second = await calendars.client.post(url)
    calendars.clock.advance(seconds=31)
    third = await calendars.client.post(url)

    assert first.status_code == 200, first.text
    assert second.status_code == 429, second.text
    assert second.headers["content-type"] == "application/problem+json"
    assert 1 <= int(second.headers["retry-after"]) <= 30
    assert third.status_code == 200, third.text
    assert calendars.server.count("/spaced.ics") == 2


def test_a_calendar_name_with_line_breaks_stays_one_value() -> None:
    options = FeedOptions(
        host="tests", name="ok\r\nX-INJ:1\u2028\x00", refresh=timedelta(hours=1), alarm_before=None
    )

    body = calendar_of([], options)

    calendar = icalendar.Calendar.from_ical(body)
    assert b"X-INJ" not in body.replace(b"\r\n ", b"").split(b"NAME:", 1)[0]
    assert "X-INJ" not in calendar
    assert str(calendar["NAME"]) == str(calendar["X-WR-CALNAME"]) == "ok  X-INJ:1  "


async def test_a_workspace_name_must_be_one_line(client: AsyncClient) -> None:
    made = await client.post("/workspaces", json={"name": "Fine"})
    assert made.status_code == 201, made.text

    created = await client.post("/workspaces", json={"name": "ok\r\nX-INJ:1"})
    renamed = await client.patch(f"/workspaces/{made.json()['id']}", json={"name": "a\nb"})

    assert_validation_problem(created, "body.name")
    assert_validation_problem(renamed, "body.name")


# ── over a real socket, with the app's own sessions and pool


async def _subscribe(client: AsyncClient, headers: dict[str, str], url: str) -> str:
    me = (await client.get("/users/me", headers=headers)).json()
    made = await client.post(
        f"/workspaces/{me['personal_workspace_id']}/calendars",
        json={"url": url, "name": url[-12:]},
        headers=headers,
    )
    assert made.status_code == 201, made.text
    return f"/workspaces/{me['personal_workspace_id']}/calendars/{made.json()['id']}"


async def test_a_request_waiting_on_a_slow_feed_holds_no_pooled_connection(
    own_database_url: str,
) -> None:
    window = {
        "from": NOW.isoformat(),
        "to": (NOW + timedelta(days=7)).isoformat(),
    }
    async with ics_server() as server:
        server.feeds["/slow.ics"] = Feed(_with(), delay=2.5)
        server.feeds["/slower.ics"] = Feed(_with(), delay=2.5)
        settings = {**LOCAL, "pool_size": 1, "pool_timeout": 20, "in_process_worker": False}
        async with live_client(own_database_url, **settings) as client:
            headers = await register_and_login(client, "slow.feed@example.com")
            base = await _subscribe(client, headers, server.url("/slow.ics"))
            # Never fetched: the agenda waits for it (its budget) after the refresh.
            await _subscribe(client, headers, server.url("/slower.ics"))
            for waiting in (
                client.post(f"{base}/refresh", headers=headers),
                client.get("/agenda", params=window, headers=headers),
            ):
                slow = asyncio.create_task(waiting)
                await asyncio.sleep(0.3)  # the slow request is waiting on the feed

                other = await client.get("/users/me", headers=headers)

                # Served from the one pooled connection while the slow one still waits.
                assert other.status_code == 200, other.text
                assert not slow.done()
                assert (await slow).status_code == 200


async def test_a_failed_refresh_keeps_the_last_good_copy(own_database_url: str) -> None:
    soon = NOW + timedelta(hours=2)
    window = {
        "from": (soon - timedelta(days=1)).isoformat(),
        "to": (soon + timedelta(days=1)).isoformat(),
    }
    email = "kept.after.refresh@example.com"
    async with ics_server() as server:
        server.feeds["/kept.ics"] = Feed(ics(("Kept", soon, soon)))
        async with live_client(own_database_url, **LOCAL) as client:
            headers = await register_and_login(client, email)
            me = (await client.get("/users/me", headers=headers)).json()
            made = await client.post(
                f"/workspaces/{me['personal_workspace_id']}/calendars",
                json={"url": server.url("/kept.ics"), "name": "Kept"},
                headers=headers,
            )
            assert made.status_code == 201, made.text
            first = await client.get("/agenda", params=window, headers=headers)
            assert [item["title"] for item in first.json()["items"]] == ["Kept"]
        calendar_id = made.json()["id"]
        async with observer_engine(own_database_url) as observer:
            for _ in range(50):  # the fetcher's own transaction, after the fetch
                async with observer.connect() as connection:
                    count = (
                        await connection.execute(
                            text(
                                "SELECT jsonb_array_length(events) "
                                "FROM calendar_subscriptions WHERE id = :id"
                            ),
                            {"id": calendar_id},
                        )
                    ).scalar_one()
                if count is not None:
                    break
                await asyncio.sleep(0.1)
            assert count == 1

    # The server is gone; a new process (nothing in memory, no Redis) refreshes by hand.
    async with live_client(own_database_url, **LOCAL) as client:
        login = await client.post("/auth/token", data={"username": email, "password": PASSWORD})
        headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
        base = f"/workspaces/{me['personal_workspace_id']}/calendars/{calendar_id}"

        refreshed = await client.post(f"{base}/refresh", headers=headers)
        agenda = await client.get("/agenda", params=window, headers=headers)

    assert refreshed.status_code == 200, refreshed.text
    assert refreshed.json()["feed"]["status"] == "failing"
    assert refreshed.json()["feed"]["event_count"] == 1
    assert [item["title"] for item in agenda.json()["items"]] == ["Kept"]
    (feed,) = agenda.json()["calendars"]
    assert feed["status"] == "failing"
    assert feed["error"].startswith("could not fetch")
