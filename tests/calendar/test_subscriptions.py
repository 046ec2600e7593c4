"""Subscribing a workspace to calendar feeds: who may, what is checked, what is stored."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from taskmanager.models import CalendarSubscription
from taskmanager.problems import FORBIDDEN
from tests.calendar.conftest import Calendars
from tests.support.problems import assert_problem, assert_validation_problem


async def _rows(db_session: AsyncSession, workspace_id: int) -> list[tuple[str, str, int | None]]:
    result = await db_session.execute(
        select(CalendarSubscription.url, CalendarSubscription.name, CalendarSubscription.created_by)
        .where(CalendarSubscription.workspace_id == workspace_id)
        .order_by(CalendarSubscription.id)
    )
    return [tuple(row) for row in result.all()]  # type: ignore[misc]


async def test_an_owner_subscribes_lists_and_unsubscribes(
    calendars: Calendars, db_session: AsyncSession
) -> None:
    made = await calendars.subscribe("/holidays.ics", "Holidays")

    assert made["workspace_id"] == calendars.team_id
    assert made["name"] == "Holidays"
    assert made["created_by"] == calendars.owner.user_id
    # Nothing fetched yet: stale, with no copy.
    assert made["feed"]["status"] == "stale"
    assert made["feed"]["as_of"] is None
    assert await _rows(db_session, calendars.team_id) == [
        (calendars.server.url("/holidays.ics"), "Holidays", calendars.owner.user_id)
    ]
    # Any member lists it, a viewer too.
    listed = await calendars.client.get(
        f"/workspaces/{calendars.team_id}/calendars", headers=calendars.viewer.headers
    )
    assert listed.status_code == 200, listed.text
    assert [item["id"] for item in listed.json()] == [made["id"]]

    deleted = await calendars.client.delete(
        f"/workspaces/{calendars.team_id}/calendars/{made['id']}",
        headers=calendars.owner.headers,
    )
    assert deleted.status_code == 204, deleted.text
    assert await _rows(db_session, calendars.team_id) == []


async def test_a_viewer_may_not_subscribe_or_unsubscribe(
    calendars: Calendars, db_session: AsyncSession
) -> None:
    made = await calendars.subscribe("/rota.ics")
    base = f"/workspaces/{calendars.team_id}/calendars"
    viewer = calendars.viewer.headers

    added = await calendars.client.post(
        base, json={"url": calendars.server.url("/x.ics"), "name": "x"}, headers=viewer
    )
    removed = await calendars.client.delete(f"{base}/{made['id']}", headers=viewer)
    refreshed = await calendars.client.post(f"{base}/{made['id']}/refresh", headers=viewer)

    for response in (added, removed, refreshed):
        assert_problem(response, 403, problem_type=FORBIDDEN)
    assert len(await _rows(db_session, calendars.team_id)) == 1
    assert calendars.server.count("/rota.ics") == 0  # a viewer's refresh fetched nothing


async def test_a_stranger_sees_nothing_of_the_workspaces_calendars(
    calendars: Calendars, db_session: AsyncSession
) -> None:
    made = await calendars.subscribe("/private.ics")
    base = f"/workspaces/{calendars.team_id}/calendars"
    stranger = calendars.stranger.headers

    answers = [
        await calendars.client.get(base, headers=stranger),
        await calendars.client.post(
            base, json={"url": calendars.server.url("/x.ics"), "name": "x"}, headers=stranger
        ),
        await calendars.client.delete(f"{base}/{made['id']}", headers=stranger),
        await calendars.client.post(f"{base}/{made['id']}/refresh", headers=stranger),
    ]

    for response in answers:
        assert_problem(response, 404)
    assert len(await _rows(db_session, calendars.team_id)) == 1
    assert calendars.server.count("/private.ics") == 0
    # The id under another workspace of the owner's is no way in either.
    personal = calendars.owner.personal_workspace_id
    wrong_workspace = await calendars.client.delete(
        f"/workspaces/{personal}/calendars/{made['id']}", headers=calendars.owner.headers
    )
    assert_problem(wrong_workspace, 404)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://calendar.example.com/a.ics", "must start with"),
        ("http://10.0.0.7/a.ics", "private address"),
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("http://localhost:8000/a.ics", "local machine"),
        ("http://2130706433/a.ics", "non-standard"),
        ("http://user:secret@calendar.example.com/a.ics", "user name or password"),
    ],
)
async def test_an_unsafe_url_is_refused_at_once(
    calendars: Calendars, db_session: AsyncSession, url: str, reason: str
) -> None:
    response = await calendars.client.post(
        f"/workspaces/{calendars.team_id}/calendars",
        json={"url": url, "name": "Unsafe"},
        headers=calendars.owner.headers,
    )

    body = assert_validation_problem(response, "body.url")
    assert reason in response.text, body
    assert await _rows(db_session, calendars.team_id) == []


async def test_the_same_url_twice_is_a_conflict(
    calendars: Calendars, db_session: AsyncSession
) -> None:
    await calendars.subscribe("/twice.ics")

    again = await calendars.client.post(
        f"/workspaces/{calendars.team_id}/calendars",
        json={"url": calendars.server.url("/twice.ics"), "name": "Again"},
        headers=calendars.owner.headers,
    )

    assert_problem(again, 409)
    assert len(await _rows(db_session, calendars.team_id)) == 1


async def test_a_workspace_has_at_most_its_limit_of_calendars(
    calendars: Calendars, db_session: AsyncSession
) -> None:
    limit = calendars.client._transport.app.state.settings.max_calendars_per_workspace  # type: ignore[attr-defined]
    for number in range(limit):
        await calendars.subscribe(f"/many-{number}.ics")

    over = await calendars.client.post(
        f"/workspaces/{calendars.team_id}/calendars",
        json={"url": calendars.server.url("/one-more.ics"), "name": "One more"},
        headers=calendars.owner.headers,
    )

    body = assert_problem(over, 409)
    assert f"at most {limit}" in body["detail"]
    assert len(await _rows(db_session, calendars.team_id)) == limit
