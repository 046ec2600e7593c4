"""The /tasks endpoints over HTTP, checked in the response AND in the database.

Every request runs in the test's rolled-back transaction (conftest `client`), so the database
state after a request is read back through `db_session` with Core selects (fresh rows, never
the session's identity map).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from httpx import AsyncClient
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from taskmanager.config import Settings
from taskmanager.models import Category, Task
from tests.support.accounts import Account
from tests.support.problems import assert_problem, assert_validation_problem

PROBLEM_JSON = "application/problem+json"
TASK_KEYS = {
    "id",
    "title",
    "description",
    "completed",
    "created_at",
    "updated_at",
    "version",
    "workspace_id",
    "due_at",
    "priority",
    "completed_at",
    "category",
    "labels",
}


# ─────────────────────────────── helpers


async def task_row(db_session: AsyncSession, task_id: int) -> Any:
    """The task's row as stored now (a Core select: no identity-map copy)."""
    result = await db_session.execute(select(Task.__table__).where(Task.id == task_id))
    return result.one_or_none()


async def task_count(db_session: AsyncSession) -> int:
    return int((await db_session.execute(select(func.count()).select_from(Task))).scalar_one())


async def make_category(db_session: AsyncSession, account: Account, name: str) -> Category:
    """A category in `account`'s personal workspace, inserted directly (not through the API)."""
    category = Category(name=name, workspace_id=account.personal_workspace_id)
    db_session.add(category)
    await db_session.flush()
    return category


async def add_tasks(db_session: AsyncSession, account: Account, *tasks: Task) -> None:
    """Insert `tasks` directly (not through the API) into `account`'s personal workspace."""
    for task in tasks:
        task.workspace_id = account.personal_workspace_id
    db_session.add_all(tasks)
    await db_session.flush()


async def make_task(client: AsyncClient, **fields: Any) -> dict[str, Any]:
    body = {"title": "A task", **fields}
    response = await client.post("/tasks", json=body)
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()
    return data


def assert_aware_iso(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    assert parsed.tzinfo is not None, f"{value!r} has no time zone"
    assert parsed.utcoffset() is not None
    return parsed


# ─────────────────────────────── POST /tasks


async def test_create_task_returns_201_location_and_full_body(
    client: AsyncClient, db_session: AsyncSession, account: Account
) -> None:
    response = await client.post("/tasks", json={"title": "Buy milk", "description": "2% milk"})

    assert response.status_code == 201
    data = response.json()
    assert set(data) == TASK_KEYS
    assert isinstance(data["id"], int)
    assert response.headers["location"].endswith(f"/tasks/{data['id']}")
    assert data["title"] == "Buy milk"
    assert data["description"] == "2% milk"
    assert data["completed"] is False
    assert data["category"] is None
    assert data["workspace_id"] == account.personal_workspace_id  # none named: personal
    created_at = assert_aware_iso(data["created_at"])
    updated_at = assert_aware_iso(data["updated_at"])
    assert updated_at >= created_at
    assert abs(datetime.now(UTC) - created_at) < timedelta(minutes=5)

    row = await task_row(db_session, data["id"])
    assert row is not None
    assert (row.title, row.description, row.completed, row.category_id, row.workspace_id) == (
        "Buy milk",
        "2% milk",
        False,
        None,
        account.personal_workspace_id,
    )
    assert row.created_at == created_at


async def test_location_header_points_at_the_new_task(client: AsyncClient) -> None:
    created = await client.post("/tasks", json={"title": "Follow me"})
    fetched = await client.get(created.headers["location"])
    assert fetched.status_code == 200
    assert fetched.json() == created.json()


async def test_create_task_defaults_description_to_null(client: AsyncClient) -> None:
    data = await make_task(client, title="No description")
    assert data["description"] is None
    assert data["completed"] is False


async def test_create_completed_task(client: AsyncClient, db_session: AsyncSession) -> None:
    data = await make_task(client, title="Done already", completed=True)
    assert data["completed"] is True
    row = await task_row(db_session, data["id"])
    assert row.completed is True


async def test_create_task_with_category_returns_it_nested(
    client: AsyncClient, db_session: AsyncSession, account: Account
) -> None:
    category = await make_category(db_session, account, "Errands")

    data = await make_task(client, title="Buy bread", category_id=category.id)

    assert data["category"] == {"id": category.id, "name": "Errands"}
    row = await task_row(db_session, data["id"])
    assert row.category_id == category.id


async def test_create_task_with_title_of_200_chars_is_accepted(client: AsyncClient) -> None:
    data = await make_task(client, title="x" * 200)
    assert data["title"] == "x" * 200


async def test_create_task_round_trips_unicode(client: AsyncClient) -> None:
    data = await make_task(client, title="Café ☕ 日本 😀")
    assert data["title"] == "Café ☕ 日本 😀"
    assert (await client.get(f"/tasks/{data['id']}")).json()["title"] == "Café ☕ 日本 😀"


async def test_create_task_with_unknown_category_is_422_and_stores_nothing(
    client: AsyncClient, db_session: AsyncSession
) -> None:
    before = await task_count(db_session)

    response = await client.post("/tasks", json={"title": "Orphan", "category_id": 999_999})

    body = assert_problem(response, 422)
    assert body["errors"][0]["field"] == "body.category_id"
    assert "category_id" in body["detail"]
    assert await task_count(db_session) == before
    # The failed request rolled back cleanly: the next one works.
    await make_task(client, title="Still works")
    assert await task_count(db_session) == before + 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param({"title": ""}, "body.title", id="empty-title"),
        pytest.param({"title": "   \t\n"}, "body.title", id="whitespace-title"),
        pytest.param({"title": "bad\u0000title"}, "body.title", id="nul-in-title"),
        pytest.param({"title": "x" * 201}, "body.title", id="title-201-chars"),
        pytest.param({"title": None}, "body.title", id="null-title"),
        pytest.param({}, "body.title", id="missing-title"),
        pytest.param({"title": 123}, "body.title", id="number-title"),
        pytest.param({"title": "ok", "priority": 1}, "body.priority", id="unknown-field"),
        pytest.param({"title": "ok", "description": "a\u0000b"}, "body.description", id="nul-desc"),
        pytest.param({"title": "\u00a0\u2003"}, "body.title", id="unicode-space-title"),
        pytest.param(
            {"title": "ok", "description": "d" * 10_001}, "body.description", id="desc-10001"
        ),
        pytest.param(
            {"title": "ok", "category_id": 99_999_999_999_999_999_999},
            "body.category_id",
            id="category-huge",
        ),
        pytest.param({"title": "ok", "category_id": 1.5}, "body.category_id", id="category-float"),
        pytest.param({"title": "ok", "completed": "maybe"}, "body.completed", id="bad-completed"),
        pytest.param({"title": "ok", "category_id": 0}, "body.category_id", id="category-0"),
        pytest.param(
            {"title": "ok", "category_id": 2_147_483_648}, "body.category_id", id="category-int8"
        ),
    ],
)
async def test_create_task_invalid_body_is_422_naming_the_field(
    client: AsyncClient, db_session: AsyncSession, body: dict[str, Any], field: str
) -> None:
    before = await task_count(db_session)

    response = await client.post("/tasks", json=body)

    problem = assert_validation_problem(response, field)
    assert problem["type"] == "/problems/validation-error"
    assert await task_count(db_session) == before


async def test_create_task_with_non_json_body_is_422(
    client: AsyncClient, db_session: AsyncSession
) -> None:
    before = await task_count(db_session)

    response = await client.post(
        "/tasks", content=b"{not json", headers={"content-type": "application/json"}
    )

    body = assert_problem(response, 422)
    assert body["errors"][0]["field"].startswith("body")
    assert body["errors"][0]["type"] == "json_invalid"
    assert "body" in body["detail"]
    assert await task_count(db_session) == before


async def test_create_task_with_lone_surrogate_title_is_422(
    client: AsyncClient, db_session: AsyncSession
) -> None:
    # Valid JSON ("\\ud800" escape) but not storable text; httpx's json= cannot even send it.
    response = await client.post(
        "/tasks", content=b'{"title": "\\ud800"}', headers={"content-type": "application/json"}
    )

    assert_validation_problem(response, "body.title")
    assert await task_count(db_session) == 0


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b"", "application/json"),
        (b"null", "application/json"),
        (b"\xff\xfe", "application/json"),
        (b"title=x", "application/x-www-form-urlencoded"),
        (b'{"title": "x"}', "text/plain"),
    ],
)
async def test_create_task_with_unusable_body_is_422_never_500(
    client: AsyncClient, db_session: AsyncSession, content: bytes, content_type: str
) -> None:
    before = await task_count(db_session)

    response = await client.post("/tasks", content=content, headers={"content-type": content_type})

    body = assert_problem(response, 422)
    assert body["errors"][0]["field"].startswith("body")
    assert await task_count(db_session) == before


async def test_create_task_with_json_array_body_is_422(client: AsyncClient) -> None:
    response = await client.post("/tasks", json=["title"])
    body = assert_problem(response, 422)
    assert body["errors"][0]["field"].startswith("body")


# ─────────────────────────────── GET /tasks


async def test_list_is_empty_with_total_zero(client: AsyncClient) -> None:
    response = await client.get("/tasks")
    assert response.status_code == 200
    assert response.json() == []
    assert response.headers["x-total-count"] == "0"


async def test_list_newest_first_by_id_within_one_transaction(client: AsyncClient) -> None:
    # All three share created_at (now() is the transaction's start), so id desc decides.
    ids = [(await make_task(client, title=f"Task {n}"))["id"] for n in range(3)]

    response = await client.get("/tasks")

    listed = response.json()
    assert [task["id"] for task in listed] == sorted(ids, reverse=True)
    assert len({task["created_at"] for task in listed}) == 1


async def test_list_orders_by_created_at_before_id(
    client: AsyncClient, db_session: AsyncSession, account: Account
) -> None:
    base = datetime(2024, 1, 1, tzinfo=UTC)
    # Inserted so that id order and created_at order disagree.
    newest = Task(title="newest", created_at=base + timedelta(days=2), updated_at=base)
    oldest = Task(title="oldest", created_at=base, updated_at=base)
    middle = Task(title="middle", created_at=base + timedelta(days=1), updated_at=base)
    await add_tasks(db_session, account, newest, oldest, middle)
    assert newest.id < oldest.id < middle.id

    response = await client.get("/tasks")

    assert [task["title"] for task in response.json()] == ["newest", "middle", "oldest"]


async def test_list_filters_by_completed(client: AsyncClient) -> None:
    done = await make_task(client, title="done", completed=True)
    open_ = await make_task(client, title="open", completed=False)

    only_done = await client.get("/tasks", params={"completed": "true"})
    only_open = await client.get("/tasks", params={"completed": "false"})

    assert [task["id"] for task in only_done.json()] == [done["id"]]
    assert only_done.headers["x-total-count"] == "1"
    assert [task["id"] for task in only_open.json()] == [open_["id"]]
    assert only_open.headers["x-total-count"] == "1"
    assert (await client.get("/tasks")).headers["x-total-count"] == "2"


async def test_list_filters_by_category(
    client: AsyncClient, db_session: AsyncSession, account: Account
) -> None:
    work = await make_category(db_session, account, "Work")
    home = await make_category(db_session, account, "Home")
    w1 = await make_task(client, title="w1", category_id=work.id)
    await make_task(client, title="h1", category_id=home.id)
    w2 = await make_task(client, title="w2", category_id=work.id)
    await make_task(client, title="none")

    response = await client.get("/tasks", params={"category_id": work.id})

    assert [task["id"] for task in response.json()] == [w2["id"], w1["id"]]
    assert all(task["category"] == {"id": work.id, "name": "Work"} for task in response.json())
    assert response.headers["x-total-count"] == "2"


async def test_list_filters_combine(
    client: AsyncClient, db_session: AsyncSession, account: Account
) -> None:
    work = await make_category(db_session, account, "Work")
    target = await make_task(client, title="Report", category_id=work.id, completed=True)
    await make_task(client, title="Report draft", category_id=work.id, completed=False)
    await make_task(client, title="Report", completed=True)

    response = await client.get(
        "/tasks", params={"category_id": work.id, "completed": "true", "q": "report"}
    )

    assert [task["id"] for task in response.json()] == [target["id"]]
    assert response.headers["x-total-count"] == "1"


async def test_list_q_finds_words_ignoring_case(client: AsyncClient) -> None:
    milk = await make_task(client, title="Buy MILK today")
    oat = await make_task(client, title="oat milk")
    await make_task(client, title="Walk the dog")

    response = await client.get("/tasks", params={"q": "Milk"})

    assert [task["id"] for task in response.json()] == [oat["id"], milk["id"]]
    assert response.headers["x-total-count"] == "2"


# q used to be an ILIKE substring in which % and _ had to be matched literally; now it is a
# word search, and LIKE's wildcards, like any punctuation, only separate words.
@pytest.mark.parametrize(
    ("q", "expected"),
    [
        ("100%", ["1000 done", "100% done"]),  # the word prefix "100"
        ("a_b", ["a_b"]),  # the words "a" and "b"
        ("back\\slash", ["back\\slash"]),
    ],
)
async def test_list_q_reads_like_wildcards_as_punctuation(
    client: AsyncClient, q: str, expected: list[str]
) -> None:
    for title in ("100% done", "1000 done", "a_b", "axb", "back\\slash", "plain"):
        await make_task(client, title=title)

    response = await client.get("/tasks", params={"q": q})

    assert [task["title"] for task in response.json()] == expected
    assert response.headers["x-total-count"] == str(len(expected))


@pytest.mark.parametrize("q", ["%", "_", "\\"])
async def test_list_q_of_only_wildcards_has_no_words_to_search(client: AsyncClient, q: str) -> None:
    await make_task(client, title="100% a_b back\\slash")
    assert_validation_problem(await client.get("/tasks", params={"q": q}), "query.q")


async def test_list_q_with_undecodable_bytes_is_not_a_server_error(client: AsyncClient) -> None:
    await make_task(client, title="plain")
    response = await client.get("/tasks?q=%FF%FE")
    # Decoded as two U+FFFD replacement characters: no word in them.
    assert_validation_problem(response, "query.q")


async def test_list_default_limit_is_50_and_total_counts_all(
    client: AsyncClient, db_session: AsyncSession, account: Account
) -> None:
    for n in range(55):
        await add_tasks(db_session, account, Task(title=f"Task {n}"))

    response = await client.get("/tasks")

    assert len(response.json()) == 50
    assert response.headers["x-total-count"] == "55"


@pytest.mark.parametrize("limit", [1, 100])
async def test_list_limit_bounds_are_accepted(
    client: AsyncClient, db_session: AsyncSession, limit: int, account: Account
) -> None:
    for n in range(3):
        await add_tasks(db_session, account, Task(title=f"Task {n}"))

    response = await client.get("/tasks", params={"limit": limit})

    assert response.status_code == 200
    assert len(response.json()) == min(limit, 3)
    assert response.headers["x-total-count"] == "3"


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": 0}, "query.limit"),
        ({"limit": 101}, "query.limit"),
        ({"limit": "ten"}, "query.limit"),
        ({"offset": -1}, "query.offset"),
        ({"offset": 2_147_483_648}, "query.offset"),
        ({"completed": "maybe"}, "query.completed"),
        ({"category_id": 0}, "query.category_id"),
        ({"category_id": 2_147_483_648}, "query.category_id"),
        ({"q": ""}, "query.q"),
        ({"q": "x" * 201}, "query.q"),
        ({"q": "nul\u0000"}, "query.q"),
    ],
)
async def test_list_invalid_query_is_422_naming_the_parameter(
    client: AsyncClient, params: dict[str, Any], field: str
) -> None:
    response = await client.get("/tasks", params=params)
    assert_validation_problem(response, field)


async def test_list_offset_and_limit_page_through_in_order(
    client: AsyncClient, db_session: AsyncSession, account: Account
) -> None:
    for n in range(7):
        await add_tasks(db_session, account, Task(title=f"Task {n}"))
    everything = [task["id"] for task in (await client.get("/tasks")).json()]
    assert everything == sorted(everything, reverse=True)

    pages = []
    for offset in (0, 3, 6):
        response = await client.get("/tasks", params={"limit": 3, "offset": offset})
        assert response.headers["x-total-count"] == "7"
        pages.append([task["id"] for task in response.json()])

    assert [len(page) for page in pages] == [3, 3, 1]
    assert [task_id for page in pages for task_id in page] == everything
    beyond = await client.get("/tasks", params={"offset": 100})
    assert beyond.json() == []
    assert beyond.headers["x-total-count"] == "7"


async def test_an_offset_deeper_than_the_setting_is_a_422_pointing_to_cursor_pages(
    client: AsyncClient, db_session: AsyncSession, account: Account, settings: Settings
) -> None:
    """An offset page reads and skips every row before it (seconds, deep in a million tasks):
    TASKMANAGER_MAX_OFFSET (10,000) bounds it, and the problem says how to go deeper."""
    await add_tasks(db_session, account, Task(title="The only one"))
    deepest = await client.get("/tasks", params={"offset": settings.max_offset})
    assert deepest.status_code == 200, deepest.text
    assert deepest.json() == []

    deeper = await client.get("/tasks", params={"offset": settings.max_offset + 1})

    body = assert_validation_problem(deeper, "query.offset")
    assert "at most 10000" in body["detail"], body
    assert "cursor" in body["detail"], body


async def test_list_total_count_respects_filters_not_pagination(
    client: AsyncClient, db_session: AsyncSession, account: Account
) -> None:
    for n in range(6):
        await add_tasks(db_session, account, Task(title=f"Task {n}", completed=n % 2 == 0))

    response = await client.get("/tasks", params={"completed": "true", "limit": 1, "offset": 1})

    assert len(response.json()) == 1
    assert response.json()[0]["completed"] is True
    assert response.headers["x-total-count"] == "3"


async def test_list_and_total_count_only_count_the_callers_rows(
    client: AsyncClient, db_session: AsyncSession, other_account: Account
) -> None:
    """Someone else's tasks, in the same database, are never listed nor counted: not by
    the page, not by X-Total-Count (nor its separate COUNT for a page past the end), not
    under any filter, not even when the filter names their workspace."""
    before = await task_count(db_session)
    mine = [(await make_task(client, title=f"Mine {n}"))["id"] for n in range(2)]
    theirs = []
    for n in range(3):
        response = await client.post(
            "/tasks",
            json={"title": f"Theirs {n}", "completed": True},
            headers=other_account.headers,
        )
        assert response.status_code == 201, response.text
        assert response.json()["workspace_id"] == other_account.personal_workspace_id
        theirs.append(response.json()["id"])
    assert await task_count(db_session) == before + 5  # all five are stored

    listed = await client.get("/tasks")
    assert [task["id"] for task in listed.json()] == sorted(mine, reverse=True)
    assert listed.headers["x-total-count"] == "2"
    for params in (
        {"completed": "true"},
        {"q": "theirs"},
        {"workspace_id": other_account.personal_workspace_id},
    ):
        filtered = await client.get("/tasks", params=params)
        assert filtered.json() == [], params
        assert filtered.headers["x-total-count"] == "0", params
    beyond = await client.get("/tasks", params={"offset": 10})
    assert beyond.json() == []
    assert beyond.headers["x-total-count"] == "2"
    assert_problem(await client.get(f"/tasks/{theirs[0]}"), 404)

    # And the other way round.
    their_list = await client.get("/tasks", headers=other_account.headers)
    assert [task["id"] for task in their_list.json()] == sorted(theirs, reverse=True)
    assert their_list.headers["x-total-count"] == "3"


async def test_list_items_carry_their_category(
    client: AsyncClient, db_session: AsyncSession, account: Account
) -> None:
    work = await make_category(db_session, account, "Work")
    await make_task(client, title="with", category_id=work.id)
    await make_task(client, title="without")

    by_title = {task["title"]: task for task in (await client.get("/tasks")).json()}

    assert by_title["with"]["category"] == {"id": work.id, "name": "Work"}
    assert by_title["without"]["category"] is None
    assert set(by_title["with"]) == TASK_KEYS


# ─────────────────────────────── GET /tasks/{id}


async def test_get_task_returns_it_with_category(
    client: AsyncClient, db_session: AsyncSession, account: Account
) -> None:
    work = await make_category(db_session, account, "Work")
    created = await make_task(client, title="Read", description="a book", category_id=work.id)

    response = await client.get(f"/tasks/{created['id']}")

    assert response.status_code == 200
    assert response.json() == created
    assert response.json()["category"] == {"id": work.id, "name": "Work"}


async def test_get_unknown_task_is_404_problem(client: AsyncClient) -> None:
    response = await client.get("/tasks/999999")
    body = assert_problem(response, 404)
    assert body["detail"] == "Task not found"


@pytest.mark.parametrize("task_id", ["2147483648", "99999999999999999999", "abc", "0", "-1", "1.5"])
async def test_get_task_with_invalid_id_is_422_naming_the_path(
    client: AsyncClient, task_id: str
) -> None:
    response = await client.get(f"/tasks/{task_id}")
    assert_validation_problem(response, "path.task_id")


async def test_get_task_with_max_int4_id_is_404_not_error(client: AsyncClient) -> None:
    response = await client.get("/tasks/2147483647")
    assert_problem(response, 404)


# ─────────────────────────────── PATCH /tasks/{id}


async def test_patch_changes_only_the_fields_sent(
    client: AsyncClient, db_session: AsyncSession, account: Account
) -> None:
    work = await make_category(db_session, account, "Work")
    created = await make_task(
        client, title="Original", description="keep me", category_id=work.id, completed=False
    )

    response = await client.patch(f"/tasks/{created['id']}", json={"completed": True})

    assert response.status_code == 200
    data = response.json()
    assert data["completed"] is True
    assert data["title"] == "Original"
    assert data["description"] == "keep me"
    assert data["category"] == {"id": work.id, "name": "Work"}
    assert data["created_at"] == created["created_at"]
    row = await task_row(db_session, created["id"])
    assert (row.title, row.description, row.completed, row.category_id) == (
        "Original",
        "keep me",
        True,
        work.id,
    )


async def test_patch_title_only(client: AsyncClient, db_session: AsyncSession) -> None:
    created = await make_task(client, title="Old", description="stays", completed=True)

    response = await client.patch(f"/tasks/{created['id']}", json={"title": "New"})

    assert response.json()["title"] == "New"
    row = await task_row(db_session, created["id"])
    assert (row.title, row.description, row.completed) == ("New", "stays", True)


async def test_patch_explicit_null_clears_description_and_category(
    client: AsyncClient, db_session: AsyncSession, account: Account
) -> None:
    work = await make_category(db_session, account, "Work")
    created = await make_task(client, title="T", description="D", category_id=work.id)

    response = await client.patch(
        f"/tasks/{created['id']}", json={"description": None, "category_id": None}
    )

    assert response.status_code == 200
    assert response.json()["description"] is None
    assert response.json()["category"] is None
    assert response.json()["title"] == "T"
    row = await task_row(db_session, created["id"])
    assert row.description is None
    assert row.category_id is None
    # The category itself is untouched.
    assert (await client.get(f"/categories/{work.id}")).status_code == 200


@pytest.mark.parametrize("field", ["title", "completed"])
async def test_patch_null_for_required_field_is_422_and_changes_nothing(
    client: AsyncClient, db_session: AsyncSession, field: str
) -> None:
    created = await make_task(client, title="Keep", completed=True)

    response = await client.patch(f"/tasks/{created['id']}", json={field: None})

    assert_validation_problem(response, f"body.{field}")
    row = await task_row(db_session, created["id"])
    assert (row.title, row.completed) == ("Keep", True)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"title": ""}, "body.title"),
        ({"title": "  "}, "body.title"),
        ({"title": "x" * 201}, "body.title"),
        ({"title": "a\u0000"}, "body.title"),
        ({"id": 5}, "body.id"),
        ({"created_at": "2020-01-01T00:00:00Z"}, "body.created_at"),
        ({"category_id": 0}, "body.category_id"),
    ],
)
async def test_patch_invalid_body_is_422(
    client: AsyncClient, db_session: AsyncSession, body: dict[str, Any], field: str
) -> None:
    created = await make_task(client, title="Keep")

    response = await client.patch(f"/tasks/{created['id']}", json=body)

    assert_validation_problem(response, field)
    row = await task_row(db_session, created["id"])
    assert row.title == "Keep"


async def test_patch_to_unknown_category_is_422_naming_category_id(
    client: AsyncClient, db_session: AsyncSession, account: Account
) -> None:
    work = await make_category(db_session, account, "Work")
    created = await make_task(client, title="Keep", category_id=work.id)

    response = await client.patch(f"/tasks/{created['id']}", json={"category_id": 999_999})

    body = assert_problem(response, 422)
    assert body["errors"][0]["field"] == "body.category_id"
    row = await task_row(db_session, created["id"])
    assert row.category_id == work.id


async def test_patch_changing_category_returns_the_new_one_nested(
    client: AsyncClient, db_session: AsyncSession, account: Account
) -> None:
    work = await make_category(db_session, account, "Work")
    home = await make_category(db_session, account, "Home")
    created = await make_task(client, title="Move me", category_id=work.id)

    response = await client.patch(f"/tasks/{created['id']}", json={"category_id": home.id})

    assert response.status_code == 200
    assert response.json()["category"] == {"id": home.id, "name": "Home"}
    assert (await task_row(db_session, created["id"])).category_id == home.id
    assert (await client.get(f"/tasks/{created['id']}")).json()["category"]["name"] == "Home"


async def test_patch_sets_category_on_uncategorised_task(
    client: AsyncClient, db_session: AsyncSession, account: Account
) -> None:
    home = await make_category(db_session, account, "Home")
    created = await make_task(client, title="No category yet")

    response = await client.patch(f"/tasks/{created['id']}", json={"category_id": home.id})

    assert response.json()["category"] == {"id": home.id, "name": "Home"}


async def test_patch_moves_updated_at_forward(
    client: AsyncClient, db_session: AsyncSession, account: Account
) -> None:
    # Everything in this test shares one transaction, whose now() never moves; so the task
    # starts with timestamps from the past, and the update must replace updated_at.
    past = datetime(2020, 1, 1, tzinfo=UTC)
    task = Task(title="Old", created_at=past, updated_at=past)
    await add_tasks(db_session, account, task)

    response = await client.patch(f"/tasks/{task.id}", json={"title": "Touched"})

    data = response.json()
    updated_at = assert_aware_iso(data["updated_at"])
    assert assert_aware_iso(data["created_at"]) == past
    assert updated_at > past
    assert abs(datetime.now(UTC) - updated_at) < timedelta(minutes=5)
    row = await task_row(db_session, task.id)
    assert row.updated_at == updated_at
    assert row.created_at == past


async def test_patch_after_create_keeps_updated_at_not_before_created_at(
    client: AsyncClient,
) -> None:
    created = await make_task(client, title="Fresh")
    response = await client.patch(f"/tasks/{created['id']}", json={"completed": True})
    data = response.json()
    assert assert_aware_iso(data["updated_at"]) >= assert_aware_iso(data["created_at"])


async def test_patch_unknown_task_is_404(client: AsyncClient) -> None:
    response = await client.patch("/tasks/999999", json={"title": "x"})
    assert assert_problem(response, 404)["detail"] == "Task not found"


async def test_patch_invalid_id_is_422(client: AsyncClient) -> None:
    response = await client.patch("/tasks/2147483648", json={"title": "x"})
    assert_validation_problem(response, "path.task_id")


async def test_patch_with_empty_body_changes_nothing(
    client: AsyncClient, db_session: AsyncSession, account: Account
) -> None:
    past = datetime(2020, 1, 1, tzinfo=UTC)
    task = Task(title="Same", description="D", created_at=past, updated_at=past)
    await add_tasks(db_session, account, task)
    before = (await client.get(f"/tasks/{task.id}")).json()

    response = await client.patch(f"/tasks/{task.id}", json={})

    assert response.status_code == 200
    assert response.json() == before
    row = await task_row(db_session, task.id)
    assert row.updated_at == past
    assert (row.title, row.description) == ("Same", "D")


# ─────────────────────────────── PUT /tasks/{id} (deprecated alias of PATCH)


async def test_put_has_partial_semantics_like_patch(
    client: AsyncClient, db_session: AsyncSession, account: Account
) -> None:
    work = await make_category(db_session, account, "Work")
    created = await make_task(client, title="Keep", description="D", category_id=work.id)

    response = await client.put(f"/tasks/{created['id']}", json={"completed": True})

    assert response.status_code == 200
    data = response.json()
    assert (data["title"], data["description"], data["completed"]) == ("Keep", "D", True)
    assert data["category"] == {"id": work.id, "name": "Work"}
    row = await task_row(db_session, created["id"])
    assert (row.title, row.description, row.completed, row.category_id) == (
        "Keep",
        "D",
        True,
        work.id,
    )


async def test_put_null_clears_and_rejects_like_patch(
    client: AsyncClient, db_session: AsyncSession
) -> None:
    created = await make_task(client, title="Keep", description="D")

    cleared = await client.put(f"/tasks/{created['id']}", json={"description": None})
    rejected = await client.put(f"/tasks/{created['id']}", json={"title": None})
    missing = await client.put("/tasks/999999", json={"title": "x"})

    assert cleared.json()["description"] is None
    assert_validation_problem(rejected, "body.title")
    assert assert_problem(missing, 404)["detail"] == "Task not found"
    assert (await task_row(db_session, created["id"])).title == "Keep"


async def test_put_is_marked_deprecated_in_openapi(client: AsyncClient) -> None:
    operations = (await client.get("/openapi.json")).json()["paths"]["/tasks/{task_id}"]
    assert operations["put"].get("deprecated") is True
    assert not operations["patch"].get("deprecated", False)


# ─────────────────────────────── DELETE /tasks/{id}


async def test_delete_task_then_it_is_gone(client: AsyncClient, db_session: AsyncSession) -> None:
    created = await make_task(client, title="Delete me")
    kept = await make_task(client, title="Keep me")

    response = await client.delete(f"/tasks/{created['id']}")

    assert response.status_code == 204
    assert response.content == b""
    assert await task_row(db_session, created["id"]) is None
    assert await task_row(db_session, kept["id"]) is not None
    assert assert_problem(await client.get(f"/tasks/{created['id']}"), 404)
    second = await client.delete(f"/tasks/{created['id']}")
    assert assert_problem(second, 404)["detail"] == "Task not found"


async def test_delete_task_keeps_its_category(
    client: AsyncClient, db_session: AsyncSession, account: Account
) -> None:
    work = await make_category(db_session, account, "Work")
    created = await make_task(client, title="Delete me", category_id=work.id)

    assert (await client.delete(f"/tasks/{created['id']}")).status_code == 204

    assert (await client.get(f"/categories/{work.id}")).status_code == 200


@pytest.mark.parametrize("task_id", ["0", "abc", "2147483648"])
async def test_delete_with_invalid_id_is_422(client: AsyncClient, task_id: str) -> None:
    response = await client.delete(f"/tasks/{task_id}")
    assert_validation_problem(response, "path.task_id")
