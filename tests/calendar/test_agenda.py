"""GET /agenda: the caller's due tasks and their workspaces' calendar events by time, and
each feed's state; faults of every kind make a feed failing, never the agenda; slow feeds
do not add up; a stale copy is served; the circuit breaker opens and closes."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.calendar.conftest import Calendars
from tests.support.ics_server import Feed, ics, weekly
from tests.support.problems import assert_validation_problem

NOW = datetime.now(UTC).replace(microsecond=0)


def _soon(hours: float) -> datetime:
    return NOW + timedelta(hours=hours)


def _feed(body: dict[str, Any], calendar_id: int) -> dict[str, Any]:
    (found,) = [item for item in body["calendars"] if item["calendar_id"] == calendar_id]
    return found


def _titles(body: dict[str, Any], source: str | None = None) -> list[str]:
    return [item["title"] for item in body["items"] if source in (None, item["source"])]


async def test_the_agenda_combines_due_tasks_and_events_by_time(calendars: Calendars) -> None:
    calendars.server.feeds["/team.ics"] = Feed(
        ics(("Standup", _soon(2), _soon(3)), ("Offsite", _soon(30), _soon(34))).replace(
            b"END:VCALENDAR", weekly("Planning", _soon(5), 3).encode() + b"\r\nEND:VCALENDAR"
        )
    )
    made = await calendars.subscribe("/team.ics", "Team")
    for title, due in (("Ship it", _soon(4)), ("Later", _soon(40)), ("Undated", None)):
        body: dict[str, Any] = {"title": title, "workspace_id": calendars.team_id}
        if due is not None:
            body["due_at"] = due.isoformat()
        created = await calendars.client.post("/tasks", json=body)
        assert created.status_code == 201, created.text

    agenda = await calendars.agenda()

    assert _titles(agenda) == [
        "Standup",
        "Ship it",
        "Planning",
        "Offsite",
        "Later",
        "Planning",
        "Planning",
    ]
    starts = [item["start"] for item in agenda["items"]]
    assert starts == sorted(starts, key=datetime.fromisoformat)
    task = next(item for item in agenda["items"] if item["title"] == "Ship it")
    assert (task["source"], task["workspace_id"]) == ("task", calendars.team_id)
    event = next(item for item in agenda["items"] if item["title"] == "Offsite")
    assert (event["source"], event["calendar_id"]) == ("calendar", made["id"])
    assert datetime.fromisoformat(event["end"]) == _soon(34)
    feed = _feed(agenda, made["id"])
    assert (feed["status"], feed["error"], feed["event_count"]) == ("fresh", None, 5)
    # A viewer of the workspace sees the same events.
    seen = await calendars.agenda(calendars.viewer)
    assert _titles(seen, "calendar") == _titles(agenda, "calendar")
    # Only one workspace's, on request: the owner's personal one has none of them.
    personal = await calendars.agenda(workspace_id=calendars.owner.personal_workspace_id)
    assert (personal["items"], personal["calendars"]) == ([], [])


async def test_a_stranger_sees_nothing_of_another_workspaces_calendars(
    calendars: Calendars,
) -> None:
    calendars.server.feeds["/secret.ics"] = Feed(ics(("Secret meeting", _soon(1), _soon(2))))
    await calendars.subscribe("/secret.ics")
    await calendars.agenda()  # fetched and cached for the team

    theirs = await calendars.agenda(calendars.stranger)
    asked = await calendars.agenda(calendars.stranger, workspace_id=calendars.team_id)

    for body in (theirs, asked):
        assert "Secret meeting" not in _titles(body)
        assert body["calendars"] == []


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"from": "2026-01-10T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, "query.to"),
        ({"from": "2026-01-01T00:00:00Z", "to": "2026-06-01T00:00:00Z"}, "query.to"),
        ({"from": "2026-01-01T00:00:00", "to": "2026-01-02T00:00:00Z"}, "query.from"),
        ({"from": "yesterday", "to": "2026-01-02T00:00:00Z"}, "query.from"),
        ({"to": "2026-01-02T00:00:00Z"}, "query.from"),
    ],
)
async def test_a_bad_window_is_422(
    calendars: Calendars, params: dict[str, str], field: str
) -> None:
    response = await calendars.client.get("/agenda", params=params)
    assert_validation_problem(response, field)


async def test_a_304_keeps_the_copy(calendars: Calendars) -> None:
    calendars.server.feeds["/etag.ics"] = Feed(ics(("Kept", _soon(1), _soon(2))), etag='"v1"')
    made = await calendars.subscribe("/etag.ics")
    await calendars.agenda()
    calendars.clock.advance(seconds=3600)  # due again

    agenda = await calendars.agenda()

    requests = [r for r in calendars.server.requests if r.path == "/etag.ics"]
    assert [r.headers.get("if-none-match") for r in requests] == [None, '"v1"']
    assert _titles(agenda) == ["Kept"]
    assert _feed(agenda, made["id"])["status"] == "fresh"


async def test_a_refresh_fetches_at_once(calendars: Calendars) -> None:
    calendars.server.feeds["/now.ics"] = Feed(ics(("First", _soon(1), _soon(2))))
    made = await calendars.subscribe("/now.ics")
    await calendars.agenda()
    calendars.server.feeds["/now.ics"] = Feed(ics(("Second", _soon(1), _soon(2))))
    assert _titles(await calendars.agenda()) == ["First"]  # not due yet: the copy

    refreshed = await calendars.client.post(
        f"/workspaces/{calendars.team_id}/calendars/{made['id']}/refresh"
    )

    assert refreshed.status_code == 200, refreshed.text
    assert refreshed.json()["feed"]["status"] == "fresh"
    assert _titles(await calendars.agenda()) == ["Second"]
    assert calendars.server.count("/now.ics") == 2


BIG = ics(*((f"Event {n}", _soon(n), _soon(n + 1)) for n in range(400)))
# Each fault, and what the feed's error says.
FAULTS: dict[str, tuple[Feed, str]] = {
    "500": (Feed(status=500, body=b"oops"), "answered HTTP 500"),
    "reset": (Feed(reset=True), "could not fetch"),
    "malformed": (Feed(body=b"this is not a calendar\r\n"), "not an iCalendar document"),
    "not a vcalendar": (
        Feed(body=b"BEGIN:VEVENT\r\nSUMMARY:x\r\nEND:VEVENT\r\n"),
        "not an iCalendar document",
    ),
    "oversized": (Feed(body=BIG), "larger than 20000 bytes"),
    "slow": (Feed(body=ics(("Late", _soon(1), _soon(2))), delay=3.0), "no complete answer"),
    "redirect to a private address": (
        Feed(status=302, location="http://10.1.2.3/internal.ics"),
        "refused: 10.1.2.3 is a private address",
    ),
    "redirect loop": (Feed(status=302, location="/loop"), "more than 3 redirects"),
}


@pytest.mark.parametrize("fault", FAULTS)
async def test_a_fault_makes_the_feed_failing_never_the_agenda(
    calendars: Calendars, fault: str
) -> None:
    feed, reason = FAULTS[fault]
    calendars.server.feeds["/ok.ics"] = Feed(ics(("Fine", _soon(1), _soon(2))))
    calendars.server.feeds["/bad.ics"] = feed
    calendars.server.feeds["/loop"] = feed
    good = await calendars.subscribe("/ok.ics")
    bad = await calendars.subscribe("/bad.ics")

    # (The slow one meets the fetch's time limit, 1 s, within the agenda's budget.)
    agenda = await calendars.agenda()

    assert _titles(agenda) == ["Fine"]
    assert _feed(agenda, good["id"])["status"] == "fresh"
    failing = _feed(agenda, bad["id"])
    assert failing["status"] == "failing", failing
    assert reason in failing["error"], failing
    assert failing["consecutive_failures"] == 1


async def test_slow_feeds_do_not_add_up(calendars: Calendars) -> None:
    """Eight feeds taking 0.8 s each: one after another they would take 6.4 s, far past
    the budget (1.5 s); fetched together, every one is fresh in the first agenda."""
    for number in range(8):
        calendars.server.feeds[f"/slow-{number}.ics"] = Feed(
            ics((f"Slow {number}", _soon(1), _soon(2))), delay=0.8
        )
        await calendars.subscribe(f"/slow-{number}.ics")

    agenda = await calendars.agenda()

    assert [feed["status"] for feed in agenda["calendars"]] == ["fresh"] * 8
    assert len(_titles(agenda, "calendar")) == 8


async def test_a_feed_slower_than_the_budget_is_served_stale_and_lands_later(
    calendars: Calendars,
) -> None:
    # A fetch may take 5 s; the agenda waits 1.5 s.
    calendars.use_limits(fetch_timeout_seconds=5.0)
    calendars.server.feeds["/late.ics"] = Feed(ics(("Early copy", _soon(1), _soon(2))))
    made = await calendars.subscribe("/late.ics")
    first = await calendars.agenda()
    assert _feed(first, made["id"])["status"] == "fresh"
    calendars.server.feeds["/late.ics"] = Feed(ics(("New copy", _soon(1), _soon(2))), delay=0.9)
    calendars.clock.advance(seconds=3600)
    for number in range(3):  # three more slow feeds: their waits overlap, not add up
        calendars.server.feeds[f"/late-{number}.ics"] = Feed(ics(), delay=2.5)
        await calendars.subscribe(f"/late-{number}.ics")

    started = time.perf_counter()
    agenda = await calendars.agenda()
    waited = time.perf_counter() - started

    # Within the budget (1.5 s) and some slack, not 0.9 + 3 x 2.5 s.
    assert waited < 4.0, waited
    stale = [feed for feed in agenda["calendars"] if feed["status"] == "stale"]
    assert len(stale) == 3  # the 2.5 s feeds, never fetched before: no copy yet
    assert _titles(agenda) == ["New copy"]  # the 0.9 s one made it within the budget
    calendars.server.feeds["/late.ics"] = Feed(ics(("Newest copy", _soon(1), _soon(2))), delay=3)
    calendars.clock.advance(seconds=3600)
    agenda = await calendars.agenda()
    late = _feed(agenda, made["id"])
    assert late["status"] == "stale"
    assert late["as_of"] is not None  # as of the last good copy, which is served
    assert _titles(agenda) == ["New copy"]


async def test_the_copy_is_served_when_the_server_dies(calendars: Calendars) -> None:
    calendars.server.feeds["/gone.ics"] = Feed(ics(("Survivor", _soon(1), _soon(2))))
    made = await calendars.subscribe("/gone.ics")
    fresh = await calendars.agenda()
    await calendars.server.stop()
    calendars.clock.advance(seconds=3600)

    agenda = await calendars.agenda()

    assert _titles(agenda) == ["Survivor"]
    feed = _feed(agenda, made["id"])
    assert feed["status"] == "failing"
    assert "could not fetch" in feed["error"]
    assert feed["as_of"] == _feed(fresh, made["id"])["as_of"]


async def test_the_circuit_breaker_opens_and_closes(calendars: Calendars) -> None:
    calendars.server.feeds["/flaky.ics"] = Feed(status=500)
    made = await calendars.subscribe("/flaky.ics")
    path = "/flaky.ics"

    first = _feed(await calendars.agenda(), made["id"])
    calendars.clock.advance(seconds=3600)
    second = _feed(await calendars.agenda(), made["id"])
    assert (first["consecutive_failures"], first["skipped_until"]) == (1, None)
    assert second["consecutive_failures"] == 2
    assert second["skipped_until"] is not None  # open: skipped for 60 s
    assert calendars.server.count(path) == 2

    # While open, no request reaches the feed.
    calendars.clock.advance(seconds=30)
    skipped = _feed(await calendars.agenda(), made["id"])
    assert skipped["status"] == "failing"
    assert calendars.server.count(path) == 2

    # Half open after the skip: one try; it fails again, and the skip doubles.
    calendars.clock.advance(seconds=3600)
    third = _feed(await calendars.agenda(), made["id"])
    assert calendars.server.count(path) == 3
    assert third["consecutive_failures"] == 3
    # Skipped 60 s after the second failure, 120 s after the third (3630 s later).
    later = datetime.fromisoformat(third["skipped_until"]) - datetime.fromisoformat(
        second["skipped_until"]
    )
    assert timedelta(seconds=3685) <= later <= timedelta(seconds=3700), later

    # Mended: the next try after the skip closes the breaker.
    calendars.server.feeds[path] = Feed(ics(("Back", _soon(1), _soon(2))))
    calendars.clock.advance(seconds=7200)
    closed = await calendars.agenda()
    feed = _feed(closed, made["id"])
    assert (feed["status"], feed["consecutive_failures"], feed["skipped_until"]) == (
        "fresh",
        0,
        None,
    )
    assert _titles(closed) == ["Back"]
