"""The /categories endpoints over HTTP, checked in the response AND in the database."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from httpx import AsyncClient
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from taskmanager.models import Category, Task
from tests.support.accounts import Account
from tests.support.problems import assert_names_field, assert_problem

PROBLEM_JSON = "application/problem+json"
CATEGORY_KEYS = {"id", "name", "workspace_id", "created_at", "version"}


async def category_names(db_session: AsyncSession) -> list[str]:
    result = await db_session.execute(select(Category.name).order_by(Category.id))
    return list(result.scalars().all())


async def category_count(db_session: AsyncSession) -> int:
    return int((await db_session.execute(select(func.count()).select_from(Category))).scalar_one())


async def make_category(client: AsyncClient, name: str) -> dict[str, Any]:
    response = await client.post("/categories", json={"name": name})
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()
    return data


# ─────────────────────────────── POST /categories


async def test_create_category_returns_201_location_and_body(
    client: AsyncClient, db_session: AsyncSession, account: Account
) -> None:
    response = await client.post("/categories", json={"name": "Work"})

    assert response.status_code == 201
    data = response.json()
    assert set(data) == CATEGORY_KEYS
    assert data["name"] == "Work"
    assert data["workspace_id"] == account.personal_workspace_id  # none named: personal
    assert datetime.fromisoformat(data["created_at"]).tzinfo is not None
    assert response.headers["location"].endswith(f"/categories/{data['id']}")
    fetched = await client.get(response.headers["location"])
    assert fetched.json() == data
    assert await category_names(db_session) == ["Work"]


@pytest.mark.parametrize("second", ["wORK", "Work", "WORK", "work"])
async def test_duplicate_name_in_any_case_is_409_naming_the_field(
    client: AsyncClient, db_session: AsyncSession, second: str
) -> None:
    await make_category(client, "Work")

    response = await client.post("/categories", json={"name": second})

    body = assert_problem(response, 409)
    assert_names_field(body, "body.name")
    assert body["type"] == "/problems/conflict"
    assert await category_names(db_session) == ["Work"]
    # The failed INSERT was rolled back cleanly: the next request works.
    await make_category(client, "Home")
    assert await category_names(db_session) == ["Work", "Home"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param({"name": ""}, "body.name", id="empty"),
        pytest.param({"name": "   "}, "body.name", id="blank"),
        pytest.param({"name": "a\u0000b"}, "body.name", id="nul"),
        pytest.param({"name": "x" * 101}, "body.name", id="101-chars"),
        pytest.param({"name": None}, "body.name", id="null"),
        pytest.param({}, "body.name", id="missing"),
        pytest.param({"name": "ok", "color": "red"}, "body.color", id="unknown-field"),
    ],
)
async def test_create_category_invalid_name_is_422(
    client: AsyncClient, db_session: AsyncSession, body: dict[str, Any], field: str
) -> None:
    response = await client.post("/categories", json=body)

    assert_names_field(assert_problem(response, 422), field)
    assert await category_count(db_session) == 0


async def test_create_category_name_of_100_chars_is_accepted(client: AsyncClient) -> None:
    data = await make_category(client, "x" * 100)
    assert data["name"] == "x" * 100


# ─────────────────────────────── GET /categories


async def test_list_categories_orders_by_name_ignoring_case(client: AsyncClient) -> None:
    for name in ("beta", "Alpha", "gamma", "Delta", "alphabet"):
        await make_category(client, name)

    response = await client.get("/categories")

    assert response.status_code == 200
    assert [c["name"] for c in response.json()] == ["Alpha", "alphabet", "beta", "Delta", "gamma"]
    assert all(set(c) == CATEGORY_KEYS for c in response.json())


async def test_list_categories_shows_only_the_callers(
    client: AsyncClient, db_session: AsyncSession, other_account: Account
) -> None:
    """Someone else's categories, even one with the same name, are not listed; naming
    their workspace lists nothing."""
    mine = await make_category(client, "Work")
    response = await client.post(
        "/categories", json={"name": "Work"}, headers=other_account.headers
    )
    assert response.status_code == 201, response.text  # names are unique per workspace
    theirs = response.json()
    assert await category_count(db_session) == 2

    listed = await client.get("/categories")
    assert listed.json() == [mine]
    named = await client.get(
        "/categories", params={"workspace_id": other_account.personal_workspace_id}
    )
    assert named.json() == []
    assert_problem(await client.get(f"/categories/{theirs['id']}"), 404)
    their_list = await client.get("/categories", headers=other_account.headers)
    assert their_list.json() == [theirs]


async def test_list_categories_empty(client: AsyncClient) -> None:
    response = await client.get("/categories")
    assert response.status_code == 200
    assert response.json() == []


# ─────────────────────────────── GET /categories/{id}


async def test_get_category(client: AsyncClient) -> None:
    created = await make_category(client, "Work")
    response = await client.get(f"/categories/{created['id']}")
    assert response.status_code == 200
    assert response.json() == created


async def test_get_unknown_category_is_404(client: AsyncClient) -> None:
    body = assert_problem(await client.get("/categories/999999"), 404)
    assert body["detail"] == "Category not found"


@pytest.mark.parametrize("category_id", ["0", "abc", "2147483648", "99999999999999999999"])
async def test_get_category_invalid_id_is_422(client: AsyncClient, category_id: str) -> None:
    body = assert_problem(await client.get(f"/categories/{category_id}"), 422)
    assert_names_field(body, "path.category_id")


# ─────────────────────────────── PATCH /categories/{id}


async def test_rename_category(client: AsyncClient, db_session: AsyncSession) -> None:
    created = await make_category(client, "Wrok")

    response = await client.patch(f"/categories/{created['id']}", json={"name": "Work"})

    assert response.status_code == 200
    assert response.json() == {**created, "name": "Work", "version": created["version"] + 1}
    assert await category_names(db_session) == ["Work"]


async def test_rename_shows_in_tasks_of_the_category(client: AsyncClient) -> None:
    created = await make_category(client, "Wrok")
    task = (await client.post("/tasks", json={"title": "T", "category_id": created["id"]})).json()

    await client.patch(f"/categories/{created['id']}", json={"name": "Work"})

    assert (await client.get(f"/tasks/{task['id']}")).json()["category"]["name"] == "Work"


async def test_rename_to_a_taken_name_in_other_case_is_409(
    client: AsyncClient, db_session: AsyncSession
) -> None:
    await make_category(client, "Work")
    home = await make_category(client, "Home")

    response = await client.patch(f"/categories/{home['id']}", json={"name": "wORK"})

    assert_names_field(assert_problem(response, 409), "body.name")
    assert await category_names(db_session) == ["Work", "Home"]


async def test_rename_to_own_name_in_another_case_is_200(
    client: AsyncClient, db_session: AsyncSession
) -> None:
    work = await make_category(client, "work")

    response = await client.patch(f"/categories/{work['id']}", json={"name": "WORK"})

    assert response.status_code == 200
    assert response.json()["name"] == "WORK"
    assert await category_names(db_session) == ["WORK"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": ""}, "body.name"),
        ({"name": "  "}, "body.name"),
        ({"name": "\u0000"}, "body.name"),
        ({"name": "x" * 101}, "body.name"),
        ({"name": None}, "body.name"),
        ({}, "body.name"),
    ],
)
async def test_rename_invalid_name_is_422(
    client: AsyncClient, db_session: AsyncSession, body: dict[str, Any], field: str
) -> None:
    work = await make_category(client, "Work")

    response = await client.patch(f"/categories/{work['id']}", json=body)

    assert_names_field(assert_problem(response, 422), field)
    assert await category_names(db_session) == ["Work"]


async def test_rename_unknown_category_is_404(client: AsyncClient) -> None:
    response = await client.patch("/categories/999999", json={"name": "X"})
    assert assert_problem(response, 404)["detail"] == "Category not found"


# ─────────────────────────────── DELETE /categories/{id}


async def test_delete_category_leaves_its_tasks_uncategorised(
    client: AsyncClient, db_session: AsyncSession
) -> None:
    work = await make_category(client, "Work")
    home = await make_category(client, "Home")
    in_work = (await client.post("/tasks", json={"title": "W", "category_id": work["id"]})).json()
    in_home = (await client.post("/tasks", json={"title": "H", "category_id": home["id"]})).json()

    response = await client.delete(f"/categories/{work['id']}")

    assert response.status_code == 204
    assert response.content == b""
    assert assert_problem(await client.get(f"/categories/{work['id']}"), 404)
    # The task survives, without a category; the other category's task is untouched.
    task = await client.get(f"/tasks/{in_work['id']}")
    assert task.status_code == 200
    assert task.json()["category"] is None
    assert task.json()["title"] == "W"
    assert (await client.get(f"/tasks/{in_home['id']}")).json()["category"]["id"] == home["id"]
    rows = await db_session.execute(select(Task.id, Task.category_id).order_by(Task.id))
    assert rows.all() == [(in_work["id"], None), (in_home["id"], home["id"])]
    assert await category_names(db_session) == ["Home"]


async def test_delete_category_twice_is_404(client: AsyncClient) -> None:
    work = await make_category(client, "Work")
    assert (await client.delete(f"/categories/{work['id']}")).status_code == 204
    second = await client.delete(f"/categories/{work['id']}")
    assert assert_problem(second, 404)["detail"] == "Category not found"


async def test_deleted_category_name_can_be_reused(client: AsyncClient) -> None:
    work = await make_category(client, "Work")
    await client.delete(f"/categories/{work['id']}")
    again = await make_category(client, "work")
    assert again["id"] != work["id"]
