"""Due dates, priorities and completion times: stored, shown, filtered and sorted."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, get_args

import pytest
from httpx import AsyncClient

from taskmanager.models import PRIORITIES
from taskmanager.repositories.task_queries.sorts import SORTS
from taskmanager.schemas import Priority, TaskSort
from tests.support.problems import assert_validation_problem

NOW = datetime.now(UTC)


async def create(client: AsyncClient, title: str, **fields: Any) -> dict[str, Any]:
    response = await client.post("/tasks", json={"title": title, **fields})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def iso(moment: datetime) -> str:
    return moment.isoformat()


def test_the_api_offers_exactly_the_stored_priorities_and_the_repository_sorts() -> None:
    assert get_args(Priority) == PRIORITIES
    assert set(get_args(TaskSort)) == set(SORTS)


async def test_a_new_task_is_low_priority_without_due_date(client: AsyncClient) -> None:
    task = await create(client, "plain")
    assert (task["priority"], task["due_at"], task["completed_at"]) == ("low", None, None)


async def test_due_date_and_priority_are_stored_and_shown(client: AsyncClient) -> None:
    due = datetime(2026, 12, 24, 18, 0, tzinfo=UTC)
    task = await create(client, "gifts", due_at="2026-12-24T19:00:00+01:00", priority="high")
    assert datetime.fromisoformat(task["due_at"]) == due
    assert task["priority"] == "high"
    shown = (await client.get(f"/tasks/{task['id']}")).json()
    assert datetime.fromisoformat(shown["due_at"]) == due
    assert shown["priority"] == "high"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("due_at", "2026-12-24T18:00:00"),  # no time zone: which 18:00?
        ("due_at", "tomorrow"),
        ("priority", "critical"),
        ("priority", None),
    ],
)
async def test_bad_planning_values_are_422_naming_the_field(
    client: AsyncClient, field: str, value: object
) -> None:
    response = await client.post("/tasks", json={"title": "x", field: value})
    assert_validation_problem(response, f"body.{field}")


async def test_completing_sets_completed_at_and_reopening_clears_it(client: AsyncClient) -> None:
    task = await create(client, "report")
    done = (await client.patch(f"/tasks/{task['id']}", json={"completed": True})).json()
    assert done["completed_at"] is not None
    completed_at = datetime.fromisoformat(done["completed_at"])
    assert abs(completed_at - datetime.now(UTC)) < timedelta(minutes=1)
    # Changing something else keeps the time it was completed.
    renamed = (await client.patch(f"/tasks/{task['id']}", json={"title": "Report"})).json()
    assert renamed["completed_at"] == done["completed_at"]
    again = (await client.patch(f"/tasks/{task['id']}", json={"completed": True})).json()
    assert again["completed_at"] == done["completed_at"]
    reopened = (await client.patch(f"/tasks/{task['id']}", json={"completed": False})).json()
    assert reopened["completed_at"] is None
    born_done = await create(client, "already done", completed=True)
    assert born_done["completed_at"] is not None


async def test_due_date_can_be_changed_and_cleared(client: AsyncClient) -> None:
    task = await create(client, "dentist", due_at=iso(NOW + timedelta(days=3)))
    moved = await client.patch(f"/tasks/{task['id']}", json={"due_at": iso(NOW)})
    assert datetime.fromisoformat(moved.json()["due_at"]) == NOW
    cleared = await client.patch(f"/tasks/{task['id']}", json={"due_at": None})
    assert cleared.json()["due_at"] is None
    refused = await client.patch(f"/tasks/{task['id']}", json={"priority": None})
    assert_validation_problem(refused, "body.priority")


async def titles(client: AsyncClient, **params: Any) -> list[str]:
    response = await client.get("/tasks", params=params)
    assert response.status_code == 200, response.text
    assert int(response.headers["X-Total-Count"]) == len(response.json())
    return [task["title"] for task in response.json()]


@pytest.fixture
async def planned(client: AsyncClient) -> None:
    await create(client, "late", due_at=iso(NOW - timedelta(days=2)), priority="urgent")
    await create(client, "late but done", due_at=iso(NOW - timedelta(days=1)), completed=True)
    await create(client, "soon", due_at=iso(NOW + timedelta(days=1)), priority="high")
    await create(client, "later", due_at=iso(NOW + timedelta(days=30)), priority="normal")
    await create(client, "someday")


async def test_planning_filters(client: AsyncClient, planned: None) -> None:
    assert await titles(client, overdue="true") == ["late"]
    assert set(await titles(client, overdue="false")) == {
        "late but done",
        "soon",
        "later",
        "someday",
    }
    assert set(await titles(client, due_before=iso(NOW))) == {"late", "late but done"}
    assert set(await titles(client, due_after=iso(NOW))) == {"soon", "later"}
    assert await titles(client, due_after=iso(NOW), due_before=iso(NOW + timedelta(days=7))) == [
        "soon"
    ]
    assert await titles(client, priority="urgent") == ["late"]
    assert await titles(client, priority="low", overdue="false") == ["someday", "late but done"]


async def test_sort_orders(client: AsyncClient, planned: None) -> None:
    assert await titles(client, sort="due") == [
        "late",
        "late but done",
        "soon",
        "later",
        "someday",  # no due date: last
    ]
    by_priority = await titles(client, sort="priority")
    assert by_priority[:3] == ["late", "soon", "later"]
    assert set(by_priority[3:]) == {"late but done", "someday"}
    assert await titles(client, sort="title") == sorted(
        ["late", "late but done", "soon", "later", "someday"]
    )
    newest = await titles(client)
    assert newest == await titles(client, sort="newest")
    assert await titles(client, sort="oldest") == list(reversed(newest))


async def test_every_order_is_stable_with_the_id_as_last_key(client: AsyncClient) -> None:
    """Equal keys (same priority, same title, same due date) come back in id order, so a
    page boundary never repeats or skips a task."""
    same = NOW + timedelta(days=5)
    ids = [
        (await create(client, "same", due_at=iso(same), priority="high"))["id"] for _ in range(6)
    ]
    for sort in ("due", "title"):
        pages = [
            (await client.get("/tasks", params={"sort": sort, "limit": 2, "offset": offset})).json()
            for offset in (0, 2, 4)
        ]
        assert [task["id"] for page in pages for task in page] == sorted(ids)
    by_priority = (await client.get("/tasks", params={"sort": "priority"})).json()
    assert [task["id"] for task in by_priority] == sorted(ids, reverse=True)


async def test_an_unknown_sort_is_422(client: AsyncClient) -> None:
    assert_validation_problem(await client.get("/tasks", params={"sort": "random"}), "query.sort")


@pytest.mark.parametrize("moment", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"])
async def test_a_moment_outside_the_storable_range_is_422(client: AsyncClient, moment: str) -> None:
    assert_validation_problem(
        await client.post("/tasks", json={"title": "x", "due_at": moment}), "body.due_at"
    )
    assert_validation_problem(
        await client.get("/tasks", params={"due_before": moment}), "query.due_before"
    )


@pytest.mark.parametrize("moment", [0, 1.5, "0.5", "1700000000", True])
async def test_a_due_date_is_an_iso_8601_string_not_a_number(
    client: AsyncClient, moment: object
) -> None:
    assert_validation_problem(
        await client.post("/tasks", json={"title": "x", "due_at": moment}), "body.due_at"
    )
    if isinstance(moment, str):
        assert_validation_problem(
            await client.get("/tasks", params={"due_after": moment}), "query.due_after"
        )
