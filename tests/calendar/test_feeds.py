"""Calendar feeds out: a secret iCalendar URL of the caller's tasks with due dates.

Each feed is fetched without any Authorization header, as a calendar app does, and read
with two parsers: `icalendar` (which builds it) and `vobject`, so what one tolerates the
other must too. What the feed shows follows the feed owner's memberships as they are when
it is fetched; its URL dies when regenerated or deleted and with a password reset; it is a
key to that feed only (not to the API); and only a login session manages feeds.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import pytest_asyncio
import vobject
from fastapi import FastAPI
from httpx import AsyncClient
from icalendar import Calendar
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from taskmanager.config import Settings
from taskmanager.main import create_app
from taskmanager.models import AccountToken, CalendarFeed
from taskmanager.security.feed_secrets import feed_secret_hash, new_feed_secret
from taskmanager.security.mail_tokens import MailTokenKey
from tests.support.accounts import TEST_SECRET, Account
from tests.support.invitations import add_member
from tests.support.problems import assert_problem, assert_validation_problem
from tests.support.rolled_back import rolled_back_client
from tests.support.tokens import assert_unauthorized, bearer, make_access_token, send_without_token

HOST = "127.0.0.1"  # the test settings' public_base_url's host (the UIDs' domain)
NOW = datetime.now(UTC).replace(microsecond=0)
TRICKY_TITLE = "Call Zoë, Ana; then\nwrite back\\ 📅"


async def make_feed(client: AsyncClient, headers: dict[str, str], **body: Any) -> dict[str, Any]:
    response = await client.post("/calendar/feeds", json=body, headers=headers)
    assert response.status_code == 201, response.text
    made: dict[str, Any] = response.json()
    assert made["url"].endswith(".ics"), made
    return made


def path_of(feed: dict[str, Any]) -> str:
    return httpx.URL(feed["url"]).path


async def fetch(client: AsyncClient, feed: dict[str, Any], **kwargs: Any) -> httpx.Response:
    """GET the feed as a calendar app does: no Authorization header."""
    return await send_without_token(client, "GET", path_of(feed), **kwargs)


def parsed(response: httpx.Response) -> Calendar:
    """The feed, read by icalendar AND by vobject (each must accept it)."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/calendar; charset=utf-8"
    vobject.readOne(response.text)  # a second parser: raises on what it cannot read
    return Calendar.from_ical(response.content)


def todos(calendar: Calendar) -> dict[str, Any]:
    return {str(todo["SUMMARY"]): todo for todo in calendar.walk("VTODO")}


async def task(client: AsyncClient, headers: dict[str, str] | None = None, **body: Any) -> Any:
    response = await client.post("/tasks", json=body, headers=headers or {})
    assert response.status_code == 201, response.text
    return response.json()


def seconds(moment: str) -> datetime:
    """An answer's moment as iCalendar writes it: to the second."""
    return datetime.fromisoformat(moment).replace(microsecond=0)


def at(delta: timedelta) -> str:
    return (NOW + delta).isoformat()


# ─────────────────────────────── what a feed shows


async def test_a_feed_shows_the_tasks_with_due_dates_and_parses_in_two_parsers(
    client: AsyncClient, account: Account
) -> None:
    category = (await client.post("/categories", json={"name": "Home, garden"})).json()
    label = (await client.post("/labels", json={"name": "errand"})).json()
    open_task = await task(
        client,
        title=TRICKY_TITLE,
        description="line one\nline two; with, punctuation",
        due_at=at(timedelta(days=2)),
        priority="urgent",
        category_id=category["id"],
        label_ids=[label["id"]],
    )
    done = await task(client, title="Filed the taxes", due_at=at(-timedelta(days=3)))
    completed = await client.patch(f"/tasks/{done['id']}", json={"completed": True})
    assert completed.status_code == 200, completed.text
    await task(client, title="Someday, no due date")
    feed = await make_feed(client, account.headers)

    calendar = parsed(await fetch(client, feed))

    assert str(calendar["X-WR-CALNAME"]) == "My tasks (taskmanager)"
    assert calendar["REFRESH-INTERVAL"].to_ical() == b"PT1H"
    assert str(calendar["X-PUBLISHED-TTL"]) == "PT1H"
    entries = todos(calendar)
    assert set(entries) == {TRICKY_TITLE, "Filed the taxes"}  # none without a due date
    todo = entries[TRICKY_TITLE]
    assert todo.decoded("DUE") == datetime.fromisoformat(open_task["due_at"])
    assert str(todo["UID"]) == f"task-{open_task['id']}@{HOST}"
    assert str(todo["STATUS"]) == "NEEDS-ACTION"
    assert int(todo["PRIORITY"]) == 1
    assert str(todo["DESCRIPTION"]) == "line one\nline two; with, punctuation"
    assert list(todo["CATEGORIES"].cats) == ["Home, garden", "errand"]
    assert int(todo["SEQUENCE"]) == open_task["version"] - 1
    assert todo.decoded("LAST-MODIFIED") == seconds(open_task["updated_at"])
    (alarm,) = todo.walk("VALARM")
    assert alarm.decoded("TRIGGER") == -timedelta(hours=1)
    assert alarm["TRIGGER"].params["RELATED"] == "END"
    finished = entries["Filed the taxes"]
    assert str(finished["STATUS"]) == "COMPLETED"
    assert finished.decoded("COMPLETED") == seconds(completed.json()["completed_at"])
    assert finished.walk("VALARM") == []  # nothing to remind of


async def test_vobject_reads_the_same_values(client: AsyncClient, account: Account) -> None:
    made = await task(client, title=TRICKY_TITLE, due_at=at(timedelta(hours=5)), priority="high")
    feed = await make_feed(client, account.headers)

    response = await fetch(client, feed)

    calendar = vobject.readOne(response.text)
    (todo,) = calendar.vtodo_list
    assert todo.summary.value == TRICKY_TITLE
    assert todo.due.value == datetime.fromisoformat(made["due_at"])
    assert todo.priority.value == "3"
    assert todo.uid.value == f"task-{made['id']}@{HOST}"
    assert todo.valarm.trigger.value == -timedelta(hours=1)


async def test_the_events_shape_for_calendar_apps_that_show_no_to_dos(
    client: AsyncClient, account: Account
) -> None:
    made = await task(client, title="Dentist", due_at=at(timedelta(days=1)))
    done = await task(client, title="Paid rent", due_at=at(-timedelta(days=1)), completed=True)
    feed = await make_feed(client, account.headers)

    calendar = parsed(await fetch(client, feed, params={"as": "events"}))

    assert calendar.walk("VTODO") == []
    events = {str(event["UID"]): event for event in calendar.walk("VEVENT")}
    dentist = events[f"task-{made['id']}@{HOST}"]
    assert dentist.decoded("DTSTART") == datetime.fromisoformat(made["due_at"])
    assert str(dentist["TRANSP"]) == "TRANSPARENT"
    assert dentist.walk("VALARM")[0].decoded("TRIGGER") == -timedelta(hours=1)
    assert str(events[f"task-{done['id']}@{HOST}"]["SUMMARY"]) == "✓ Paid rent"


@pytest_asyncio.fixture
async def small_feeds(
    settings: Settings, engine: AsyncEngine, db_session: AsyncSession, account: Account
) -> AsyncIterator[AsyncClient]:
    """The app with feeds of at most 2 tasks due in the last 10 days or later, alarms
    off, refreshed every 30 minutes."""
    app: FastAPI = create_app(
        settings.model_copy(
            update={
                "calendar_feed_max_tasks": 2,
                "calendar_feed_past_days": 10,
                "calendar_alarm_minutes": 0,
                "calendar_feed_refresh_minutes": 30,
            }
        )
    )
    async with rolled_back_client(app, engine, db_session) as client:
        client.headers.update(account.headers)
        yield client
    app.dependency_overrides.clear()


async def test_a_feed_is_bounded_by_its_window_and_its_cap(
    small_feeds: AsyncClient, account: Account
) -> None:
    client = small_feeds
    await task(client, title="long ago", due_at=at(-timedelta(days=11)))
    await task(client, title="last week", due_at=at(-timedelta(days=7)))
    await task(client, title="tomorrow", due_at=at(timedelta(days=1)))
    await task(client, title="next year", due_at=at(timedelta(days=365)))
    feed = await make_feed(client, account.headers)

    response = await fetch(client, feed)

    calendar = parsed(response)
    assert list(todos(calendar)) == ["last week", "tomorrow"]  # the soonest 2 in the window
    assert all(todo.walk("VALARM") == [] for todo in calendar.walk("VTODO"))
    assert calendar["REFRESH-INTERVAL"].to_ical() == b"PT30M"
    assert response.headers["cache-control"] == "private, max-age=1800"


async def test_an_unchanged_feed_is_304_and_a_change_gives_a_new_etag(
    client: AsyncClient, account: Account
) -> None:
    made = await task(client, title="Water the plants", due_at=at(timedelta(days=1)))
    feed = await make_feed(client, account.headers)
    first = await fetch(client, feed)
    etag = first.headers["etag"]
    assert first.headers["cache-control"].startswith("private")

    again = await fetch(client, feed, headers={"If-None-Match": etag})

    assert again.status_code == 304, again.text
    assert again.content == b""
    assert again.headers["etag"] == etag
    renamed = await client.patch(f"/tasks/{made['id']}", json={"title": "Water the roses"})
    assert renamed.status_code == 200, renamed.text
    changed = await fetch(client, feed, headers={"If-None-Match": etag})
    assert changed.status_code == 200, changed.text
    assert changed.headers["etag"] != etag
    assert "Water the roses" in todos(parsed(changed))


# ─────────────────────────────── memberships, as they stand


async def test_a_removed_member_loses_the_workspace_at_once(
    client: AsyncClient, account: Account, colleague_account: Account
) -> None:
    team = (await client.post("/workspaces", json={"name": "Team; A, B"})).json()
    await add_member(
        client,
        team["id"],
        colleague_account.email,
        colleague_account.headers,
        inviter=account.headers,
    )
    await task(client, title="Team deadline", workspace_id=team["id"], due_at=at(timedelta(days=3)))
    await task(client, colleague_account.headers, title="Colin's own", due_at=at(timedelta(days=4)))
    personal = await make_feed(client, colleague_account.headers)
    of_team = await make_feed(client, colleague_account.headers, workspace_id=team["id"])
    assert set(todos(parsed(await fetch(client, personal)))) == {"Team deadline", "Colin's own"}
    team_calendar = parsed(await fetch(client, of_team))
    assert set(todos(team_calendar)) == {"Team deadline"}
    assert str(team_calendar["X-WR-CALNAME"]) == "Team; A, B (taskmanager)"

    removed = await client.delete(f"/workspaces/{team['id']}/members/{colleague_account.user_id}")
    assert removed.status_code == 204, removed.text

    assert set(todos(parsed(await fetch(client, personal)))) == {"Colin's own"}
    gone = await fetch(client, of_team)
    assert_problem(gone, 404)
    listed = await client.get("/calendar/feeds", headers=colleague_account.headers)
    assert [feed["id"] for feed in listed.json()] == [personal["id"]]


async def test_a_feed_bound_to_a_workspace_must_be_the_callers(
    client: AsyncClient, other_account: Account
) -> None:
    response = await client.post(
        "/calendar/feeds", json={"workspace_id": other_account.personal_workspace_id}
    )
    assert_validation_problem(response, "body.workspace_id")


# ─────────────────────────────── whose feeds, and when a URL dies


async def test_feeds_are_listed_without_secrets_and_are_nobody_elses(
    client: AsyncClient, db_session: AsyncSession, account: Account, other_account: Account
) -> None:
    feed = await make_feed(client, account.headers)
    secret = path_of(feed).removeprefix("/calendar/").removesuffix(".ics")

    mine = await client.get("/calendar/feeds")
    theirs = await client.get("/calendar/feeds", headers=other_account.headers)

    assert [item["id"] for item in mine.json()] == [feed["id"]]
    assert secret not in mine.text
    assert mine.json()[0]["prefix"] == secret[:11]
    assert theirs.json() == []
    for method, url in (
        ("POST", f"/calendar/feeds/{feed['id']}/regenerate"),
        ("DELETE", f"/calendar/feeds/{feed['id']}"),
    ):
        response = await client.request(method, url, headers=other_account.headers)
        assert_problem(response, 404)
    stored = await db_session.scalar(
        select(CalendarFeed.token_hash).where(CalendarFeed.id == uuid.UUID(feed["id"]))
    )
    assert stored == feed_secret_hash(secret)  # only the hash is kept
    assert (await fetch(client, feed)).status_code == 200


async def test_an_unknown_or_malformed_secret_is_the_same_404(
    client: AsyncClient, account: Account
) -> None:
    await make_feed(client, account.headers)
    unknown = new_feed_secret().secret  # well formed, never stored
    answers = [
        await send_without_token(client, "GET", f"/calendar/{secret}.ics")
        for secret in (unknown, unknown[:-1] + "x", "tm_cal_short", "../feeds")
    ]
    for answer in answers:
        assert_problem(answer, 404)
    assert len({answer.content for answer in answers[:3]}) == 1


async def test_regenerating_kills_the_old_url_at_once(
    client: AsyncClient, account: Account
) -> None:
    await task(client, title="Still here", due_at=at(timedelta(days=1)))
    old = await make_feed(client, account.headers)

    response = await client.post(f"/calendar/feeds/{old['id']}/regenerate")

    assert response.status_code == 200, response.text
    new = response.json()
    assert new["id"] == old["id"]
    assert new["url"] != old["url"]
    assert new["webcal_url"] == "webcal://" + new["url"].split("://", 1)[1]
    assert_problem(await fetch(client, old), 404)
    assert "Still here" in todos(parsed(await fetch(client, new)))


async def test_deleting_a_feed_kills_its_url(client: AsyncClient, account: Account) -> None:
    feed = await make_feed(client, account.headers)

    deleted = await client.delete(f"/calendar/feeds/{feed['id']}")

    assert deleted.status_code == 204, deleted.text
    assert_problem(await fetch(client, feed), 404)
    assert (await client.get("/calendar/feeds")).json() == []
    again = await client.delete(f"/calendar/feeds/{feed['id']}")
    assert_problem(again, 404)


async def test_a_password_reset_revokes_every_feed(
    client: AsyncClient, db_session: AsyncSession, account: Account
) -> None:
    feeds = [await make_feed(client, account.headers) for _ in range(2)]
    asked = await send_without_token(
        client, "POST", "/auth/password-reset", json={"email": account.email}
    )
    assert asked.status_code == 202, asked.text
    token_id = await db_session.scalar(
        select(AccountToken.id)
        .where(AccountToken.user_id == account.user_id, AccountToken.purpose == "password_reset")
        .order_by(AccountToken.created_at.desc())
        .limit(1)
    )
    assert token_id is not None

    reset = await send_without_token(
        client,
        "POST",
        "/auth/password-reset/confirm",
        json={"token": MailTokenKey(TEST_SECRET).token(token_id), "new_password": "a new one!!"},
    )

    assert reset.status_code == 204, reset.text
    for feed in feeds:
        assert_problem(await fetch(client, feed), 404)
    assert (
        await db_session.scalar(
            select(CalendarFeed.id).where(CalendarFeed.user_id == account.user_id)
        )
        is None
    )


async def test_an_account_has_at_most_so_many_feeds(
    settings: Settings, engine: AsyncEngine, db_session: AsyncSession, account: Account
) -> None:
    app = create_app(settings.model_copy(update={"max_calendar_feeds_per_user": 2}))
    async with rolled_back_client(app, engine, db_session) as client:
        for _ in range(2):
            await make_feed(client, account.headers)
        refused = await client.post("/calendar/feeds", json={}, headers=account.headers)
    app.dependency_overrides.clear()
    assert_problem(refused, 409)


# ─────────────────────────────── a feed's secret is no other credential


async def test_a_personal_access_token_cannot_manage_feeds(
    client: AsyncClient, account: Account
) -> None:
    feed = await make_feed(client, account.headers)
    made = await make_access_token(client, account, ["tasks:read", "tasks:write", "account:write"])
    token = bearer(made["token"])
    for method, url in (
        ("POST", "/calendar/feeds"),
        ("GET", "/calendar/feeds"),
        ("POST", f"/calendar/feeds/{feed['id']}/regenerate"),
        ("DELETE", f"/calendar/feeds/{feed['id']}"),
    ):
        kwargs: dict[str, Any] = (
            {"json": {}} if url == "/calendar/feeds" and method == "POST" else {}
        )
        response = await client.request(method, url, headers=token, **kwargs)
        problem = assert_problem(response, 403)
        assert "login session" in problem["detail"], problem
    assert (await fetch(client, feed)).status_code == 200


@pytest.mark.parametrize("url", ["/tasks", "/users/me", "/calendar/feeds", "/workspaces"])
async def test_a_feeds_secret_does_not_call_the_api(
    client: AsyncClient, account: Account, url: str
) -> None:
    feed = await make_feed(client, account.headers)
    secret = path_of(feed).removeprefix("/calendar/").removesuffix(".ics")

    response = await client.get(url, headers=bearer(secret))

    assert_unauthorized(response, token_given=True)
