"""Labels: /labels CRUD, label_ids on tasks (a set, replaced whole), labels in every task
answer, and the label_id filter (tasks carrying ALL the labels named)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from httpx import AsyncClient
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from taskmanager.models import Label, Task, TaskLabel
from taskmanager.schemas import MAX_LABELS_PER_TASK
from tests.support.accounts import Account
from tests.support.pages import walk_both_ways
from tests.support.problems import assert_problem, assert_validation_problem
from tests.support.statements import count_statements

MISSING_ID = 2_147_483_000


async def created(client: AsyncClient, url: str, body: dict[str, Any], **kwargs: Any) -> Any:
    response = await client.post(url, json=body, **kwargs)
    assert response.status_code == 201, response.text
    return response.json()


async def label(
    client: AsyncClient, name: str, headers: dict[str, str] | None = None, **fields: Any
) -> dict[str, Any]:
    body: dict[str, Any] = await created(
        client, "/labels", {"name": name, **fields}, headers=headers
    )
    return body


async def task(
    client: AsyncClient, title: str, headers: dict[str, str] | None = None, **fields: Any
) -> dict[str, Any]:
    body: dict[str, Any] = await created(
        client, "/tasks", {"title": title, **fields}, headers=headers
    )
    return body


def shown(*labels: dict[str, Any]) -> list[dict[str, Any]]:
    """Labels as a task answer shows them."""
    return [{"id": lb["id"], "name": lb["name"], "colour": lb["colour"]} for lb in labels]


async def stored_label_ids(db_session: AsyncSession, task_id: int) -> set[int]:
    result = await db_session.execute(
        select(TaskLabel.label_id).where(TaskLabel.task_id == task_id)
    )
    return set(result.scalars())


async def stored_version(db_session: AsyncSession, task_id: int) -> int:
    result = await db_session.execute(select(Task.__table__.c.version).where(Task.id == task_id))
    return int(result.scalar_one())


# ─────────────────────────────── /labels


async def test_create_label_returns_201_location_etag_and_body(
    client: AsyncClient, db_session: AsyncSession, account: Account
) -> None:
    response = await client.post("/labels", json={"name": "Urgent", "colour": "#FF8800"})

    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == {"id", "name", "colour", "workspace_id", "created_at", "version"}
    assert (body["name"], body["colour"], body["version"]) == ("Urgent", "#ff8800", 1)
    assert body["workspace_id"] == account.personal_workspace_id
    assert response.headers["location"].endswith(f"/labels/{body['id']}")
    assert response.headers["etag"] == '"1"'
    row = (await db_session.execute(select(Label).where(Label.id == body["id"]))).scalar_one()
    assert (row.name, row.colour) == ("Urgent", "#ff8800")  # stored in lower case
    got = await client.get(f"/labels/{body['id']}")
    assert got.status_code == 200
    assert got.json() == body


async def test_a_label_without_colour_has_none(client: AsyncClient) -> None:
    assert (await label(client, "plain"))["colour"] is None


async def test_labels_are_listed_by_name_ignoring_case_and_by_workspace(
    client: AsyncClient, account: Account
) -> None:
    team = await created(client, "/workspaces", {"name": "Team"})
    await label(client, "beta")
    await label(client, "Alpha")
    await label(client, "gamma", workspace_id=team["id"])

    everything = (await client.get("/labels")).json()
    assert [lb["name"] for lb in everything] == ["Alpha", "beta", "gamma"]
    personal = (await client.get("/labels", params={"workspace_id": team["id"]})).json()
    assert [lb["name"] for lb in personal] == ["gamma"]


async def test_a_duplicate_name_in_another_case_is_409_naming_the_name(
    client: AsyncClient, db_session: AsyncSession
) -> None:
    await label(client, "Urgent")

    response = await client.post("/labels", json={"name": "uRGENT"})

    assert_problem(response, 409, field="body.name")
    names = (await db_session.execute(select(Label.name))).scalars().all()
    assert [n for n in names if n.lower() == "urgent"] == ["Urgent"]


async def test_the_same_name_in_another_workspace_is_fine(client: AsyncClient) -> None:
    team = await created(client, "/workspaces", {"name": "Team"})
    await label(client, "Urgent")
    assert (await label(client, "urgent", workspace_id=team["id"]))["name"] == "urgent"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("colour", "red"),
        ("colour", "#12345"),
        ("colour", "#1234567"),
        ("colour", "#GG0000"),
        ("colour", "ff8800"),
        ("colour", 0xFF8800),
        ("name", ""),
        ("name", "   "),
        ("name", "x" * 51),
        ("name", "nul\x00"),
    ],
)
async def test_bad_label_values_are_422_naming_the_field(
    client: AsyncClient, field: str, value: object
) -> None:
    body = {"name": "ok", field: value}
    assert_validation_problem(await client.post("/labels", json=body), f"body.{field}")


async def test_patch_renames_recolours_and_clears_the_colour(
    client: AsyncClient, db_session: AsyncSession
) -> None:
    made = await label(client, "Home", colour="#00aa00")
    url = f"/labels/{made['id']}"

    renamed = await client.patch(url, json={"name": "House"})
    assert renamed.status_code == 200, renamed.text
    assert (renamed.json()["name"], renamed.json()["colour"]) == ("House", "#00aa00")
    assert renamed.headers["etag"] == '"2"'
    recoloured = (await client.patch(url, json={"colour": "#ABCDEF"})).json()
    assert (recoloured["colour"], recoloured["version"]) == ("#abcdef", 3)
    cleared = (await client.patch(url, json={"colour": None})).json()
    assert (cleared["name"], cleared["colour"], cleared["version"]) == ("House", None, 4)
    unchanged = (await client.patch(url, json={"name": "House"})).json()
    assert unchanged["version"] == 4  # nothing changed: the same ETag

    assert_validation_problem(await client.patch(url, json={"name": None}), "body.name")
    assert_validation_problem(await client.patch(url, json={"colour": "blue"}), "body.colour")
    row = (await db_session.execute(select(Label).where(Label.id == made["id"]))).scalar_one()
    assert (row.name, row.colour, row.version) == ("House", None, 4)


async def test_patch_to_a_taken_name_is_409_and_if_match_guards_changes(
    client: AsyncClient,
) -> None:
    await label(client, "Work")
    home = await label(client, "Home")
    url = f"/labels/{home['id']}"

    assert_problem(await client.patch(url, json={"name": "WORK"}), 409, field="body.name")
    stale = await client.patch(url, json={"name": "Casa"}, headers={"If-Match": '"7"'})
    assert_problem(stale, 412)
    assert (await client.delete(url, headers={"If-Match": '"7"'})).status_code == 412
    fresh = await client.patch(url, json={"name": "Casa"}, headers={"If-Match": '"1"'})
    assert fresh.status_code == 200, fresh.text


async def test_another_accounts_label_is_404_for_every_method(
    client: AsyncClient, db_session: AsyncSession, other_account: Account
) -> None:
    theirs = await label(client, "Mallory's", headers=other_account.headers)
    url = f"/labels/{theirs['id']}"
    missing = f"/labels/{MISSING_ID}"

    for method, body in (("GET", None), ("PATCH", {"name": "defaced"}), ("DELETE", None)):
        response = await client.request(method, url, json=body)
        assert_problem(response, 404)
        assert response.content == (await client.request(method, missing, json=body)).content
    assert theirs["id"] not in [lb["id"] for lb in (await client.get("/labels")).json()]
    row = (await db_session.execute(select(Label).where(Label.id == theirs["id"]))).scalar_one()
    assert row.name == "Mallory's"


async def test_an_idempotent_label_post_is_replayed(client: AsyncClient) -> None:
    headers = {"Idempotency-Key": "label-once"}
    first = await client.post("/labels", json={"name": "Once"}, headers=headers)
    again = await client.post("/labels", json={"name": "Once"}, headers=headers)
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"


# ─────────────────────────────── label_ids on tasks, labels in answers


async def test_a_task_created_with_labels_shows_them_everywhere(
    client: AsyncClient, db_session: AsyncSession
) -> None:
    urgent = await label(client, "urgent", colour="#ff0000")
    home = await label(client, "Home")
    errands = await label(client, "errands")

    made = await task(client, "Buy milk", label_ids=[urgent["id"], home["id"], errands["id"]])

    expected = shown(errands, home, urgent)  # by name, ignoring case
    assert made["labels"] == expected
    assert (await client.get(f"/tasks/{made['id']}")).json()["labels"] == expected
    [listed] = (await client.get("/tasks")).json()
    assert listed["labels"] == expected
    assert await stored_label_ids(db_session, made["id"]) == {
        urgent["id"],
        home["id"],
        errands["id"],
    }


async def test_a_task_without_labels_shows_an_empty_list(client: AsyncClient) -> None:
    made = await task(client, "plain")
    assert made["labels"] == []
    assert (await client.get(f"/tasks/{made['id']}")).json()["labels"] == []
    assert (await client.get("/tasks")).json()[0]["labels"] == []


async def test_an_idempotent_task_post_replays_its_labels(client: AsyncClient) -> None:
    urgent = await label(client, "urgent")
    body = {"title": "once", "label_ids": [urgent["id"]]}
    headers = {"Idempotency-Key": "task-with-labels"}
    first = await client.post("/tasks", json=body, headers=headers)
    again = await client.post("/tasks", json=body, headers=headers)
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    assert again.json()["labels"] == shown(urgent)


async def test_a_label_of_another_account_is_422_naming_label_ids_and_nothing_is_made(
    client: AsyncClient, db_session: AsyncSession, other_account: Account
) -> None:
    mine = await label(client, "mine")
    theirs = await label(client, "theirs", headers=other_account.headers)
    before = (await db_session.execute(select(Task.id))).scalars().all()

    response = await client.post(
        "/tasks", json={"title": "sneaky", "label_ids": [mine["id"], theirs["id"]]}
    )

    body = assert_validation_problem(response, "body.label_ids")
    assert "theirs" not in response.text  # says which id, never what it is
    assert str(theirs["id"]) in body["detail"]
    assert (await db_session.execute(select(Task.id))).scalars().all() == before


async def test_a_label_of_another_of_my_workspaces_is_422_naming_label_ids(
    client: AsyncClient, db_session: AsyncSession
) -> None:
    team = await created(client, "/workspaces", {"name": "Team"})
    team_label = await label(client, "team", workspace_id=team["id"])
    personal_task = await task(client, "personal")

    created_elsewhere = await client.post(
        "/tasks", json={"title": "x", "label_ids": [team_label["id"]]}
    )
    assert_validation_problem(created_elsewhere, "body.label_ids")
    changed = await client.patch(
        f"/tasks/{personal_task['id']}", json={"label_ids": [team_label["id"]]}
    )
    assert_validation_problem(changed, "body.label_ids")
    assert await stored_label_ids(db_session, personal_task["id"]) == set()
    # In the label's own workspace, it is fine.
    team_task = await task(client, "team's", workspace_id=team["id"], label_ids=[team_label["id"]])
    assert team_task["labels"] == shown(team_label)


@pytest.mark.parametrize(
    "label_ids",
    [
        [MISSING_ID],
        [0],
        [-1],
        ["1"],
        [1, 1],
        None,
        list(range(1, MAX_LABELS_PER_TASK + 2)),
    ],
)
async def test_bad_label_ids_are_422_naming_label_ids(
    client: AsyncClient, label_ids: object
) -> None:
    response = await client.post("/tasks", json={"title": "x", "label_ids": label_ids})
    body = assert_problem(response, 422)
    assert "body.label_ids" in body["detail"], body


async def test_patch_replaces_the_set_and_bumps_the_version_only_on_change(
    client: AsyncClient, db_session: AsyncSession
) -> None:
    a, b, c = [await label(client, name) for name in ("a", "b", "c")]
    made = await task(client, "t", label_ids=[a["id"], b["id"]])
    url = f"/tasks/{made['id']}"

    replaced = await client.patch(url, json={"label_ids": [c["id"], b["id"]]})
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["labels"] == shown(b, c)
    assert replaced.json()["version"] == 2
    # Its version, then a digest of the labels (and category) it shows.
    assert replaced.headers["etag"].startswith('"2-')
    get = await client.get(url)
    assert get.headers["etag"] == replaced.headers["etag"]
    assert await stored_label_ids(db_session, made["id"]) == {b["id"], c["id"]}

    same = await client.patch(url, json={"label_ids": [b["id"], c["id"]]})
    assert (same.json()["version"], same.json()["labels"]) == (2, shown(b, c))

    # Absent: unchanged, and still shown.
    # Renaming a label the task shows changes the task's ETag, not its version: a 304 never
    # keeps a copy that shows the old name.
    before = await client.get(url)
    relabelled = await client.patch(f"/labels/{b['id']}", json={"name": "b2"})
    assert relabelled.status_code == 200, relabelled.text
    after = await client.get(url, headers={"If-None-Match": before.headers["etag"]})
    assert after.status_code == 200, "the copy with the old name is not current"
    assert after.json()["version"] == before.json()["version"]
    assert after.headers["etag"] != before.headers["etag"]
    b = relabelled.json()
    renamed = (await client.patch(url, json={"title": "renamed"})).json()
    assert (renamed["version"], renamed["labels"]) == (3, shown(b, c))

    cleared = (await client.patch(url, json={"label_ids": []})).json()
    assert (cleared["version"], cleared["labels"]) == (4, [])
    assert await stored_label_ids(db_session, made["id"]) == set()
    assert await stored_version(db_session, made["id"]) == 4

    assert_validation_problem(await client.patch(url, json={"label_ids": None}), "body.label_ids")


async def test_put_answers_with_labels_too(client: AsyncClient) -> None:
    a = await label(client, "a")
    made = await task(client, "t")
    response = await client.put(f"/tasks/{made['id']}", json={"label_ids": [a["id"]]})
    assert response.status_code == 200, response.text
    assert response.json()["labels"] == shown(a)


async def test_if_match_guards_a_change_of_labels(client: AsyncClient) -> None:
    a = await label(client, "a")
    made = await task(client, "t")
    url = f"/tasks/{made['id']}"
    stale = await client.patch(url, json={"label_ids": [a["id"]]}, headers={"If-Match": '"9"'})
    assert_problem(stale, 412)
    assert (await client.get(url)).json()["labels"] == []


async def test_a_renamed_label_shows_its_new_name_on_tasks(client: AsyncClient) -> None:
    a = await label(client, "old")
    made = await task(client, "t", label_ids=[a["id"]])
    await client.patch(f"/labels/{a['id']}", json={"name": "new", "colour": "#000000"})
    shown_now = (await client.get(f"/tasks/{made['id']}")).json()["labels"]
    assert shown_now == [{"id": a["id"], "name": "new", "colour": "#000000"}]


async def test_deleting_a_label_takes_it_off_every_task(
    client: AsyncClient, db_session: AsyncSession
) -> None:
    a = await label(client, "a")
    b = await label(client, "b")
    first = await task(client, "first", label_ids=[a["id"], b["id"]])
    second = await task(client, "second", label_ids=[a["id"]])

    response = await client.delete(f"/labels/{a['id']}")

    assert response.status_code == 204
    assert (await client.get(f"/labels/{a['id']}")).status_code == 404
    assert (await client.get(f"/tasks/{first['id']}")).json()["labels"] == shown(b)
    assert (await client.get(f"/tasks/{second['id']}")).json()["labels"] == []
    rows = await db_session.execute(select(TaskLabel).where(TaskLabel.label_id == a["id"]))
    assert rows.all() == []


async def test_deleting_a_task_deletes_its_label_rows_not_the_labels(
    client: AsyncClient, db_session: AsyncSession
) -> None:
    a = await label(client, "a")
    made = await task(client, "t", label_ids=[a["id"]])
    assert (await client.delete(f"/tasks/{made['id']}")).status_code == 204
    assert await stored_label_ids(db_session, made["id"]) == set()
    assert (await client.get(f"/labels/{a['id']}")).status_code == 200


# ─────────────────────────────── the label_id filter


async def test_label_id_filter_finds_tasks_carrying_all_the_labels(client: AsyncClient) -> None:
    home = await label(client, "home")
    urgent = await label(client, "urgent")
    both = await task(client, "both", label_ids=[home["id"], urgent["id"]])
    only_home = await task(client, "only home", label_ids=[home["id"]])
    await task(client, "only urgent", label_ids=[urgent["id"]])
    await task(client, "none")

    async def found(*label_ids: int) -> tuple[list[int], str]:
        response = await client.get("/tasks", params={"label_id": list(label_ids)})
        assert response.status_code == 200, response.text
        return [t["id"] for t in response.json()], response.headers["x-total-count"]

    assert await found(home["id"]) == ([only_home["id"], both["id"]], "2")
    assert await found(home["id"], urgent["id"]) == ([both["id"]], "1")
    assert await found(urgent["id"], home["id"]) == ([both["id"]], "1")
    assert await found(home["id"], home["id"]) == ([only_home["id"], both["id"]], "2")
    # With other filters, sorts and pages.
    response = await client.get(
        "/tasks", params={"label_id": home["id"], "sort": "title", "q": "only", "limit": 1}
    )
    assert [t["id"] for t in response.json()] == [only_home["id"]]


async def test_label_id_filter_with_an_unknown_or_foreign_label_finds_nothing(
    client: AsyncClient, other_account: Account
) -> None:
    home = await label(client, "home")
    await task(client, "mine", label_ids=[home["id"]])
    theirs = await label(client, "theirs", headers=other_account.headers)
    await task(client, "their task", label_ids=[theirs["id"]], headers=other_account.headers)

    for label_ids in ([MISSING_ID], [theirs["id"]], [home["id"], theirs["id"]]):
        response = await client.get("/tasks", params={"label_id": label_ids})
        assert response.status_code == 200, response.text
        assert (response.json(), response.headers["x-total-count"]) == ([], "0")


def tables_read(statement: str) -> set[str]:
    return set(re.findall(r"\b(?:FROM|JOIN)\s+(\w+)", statement, flags=re.IGNORECASE))


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"q": "task"},
        {"q": "task", "sort": "relevance"},
        {"q": "!!!"},
        {"count": "false"},
        {"sort": "due", "limit": 1},
    ],
)
async def test_another_tenants_label_is_answered_without_reading_its_tasks(
    client: AsyncClient, engine: AsyncEngine, other_account: Account, extra: dict[str, Any]
) -> None:
    """A timing oracle: how long a label filter takes must not tell how many of another
    tenant's tasks carry their label. Whether every label asked for is the caller's is
    checked first, reading only labels; a foreign one is then answered at once, exactly
    like an id of no label, and no statement reads tasks or task_labels."""
    home = await label(client, "home")
    await task(client, "my task", label_ids=[home["id"]])
    theirs = await label(client, "theirs", headers=other_account.headers)
    for n in range(3):
        await task(
            client, f"their task {n}", label_ids=[theirs["id"]], headers=other_account.headers
        )

    answers = []
    for label_ids in ([theirs["id"]], [MISSING_ID], [home["id"], theirs["id"]]):
        with count_statements(engine) as log:
            response = await client.get("/tasks", params={"label_id": label_ids, **extra})
        answers.append(
            (
                response.status_code,
                response.json(),
                response.headers.get("x-total-count"),
                response.headers.get("link"),
            )
        )
        assert log.queries, log.statements
        assert tables_read(log.queries[0]) == {"labels"}, log.queries
        for statement in log.queries:
            assert "task_labels" not in statement, log.queries
            assert "tasks" not in tables_read(statement), log.queries

    assert answers[0] == answers[1] == answers[2]
    status, body, total, link = answers[0]
    if "!!!" in extra.values():  # q without a word is refused whatever the labels
        assert status == 422, body
    else:
        assert (status, body, link) == (200, [], None)
        assert total == (None if extra.get("count") == "false" else "0")


@pytest.mark.parametrize(
    "params",
    [
        {"label_id": "0"},
        {"label_id": "x"},
        {"label_id": [str(i) for i in range(1, MAX_LABELS_PER_TASK + 2)]},
    ],
)
async def test_bad_label_id_filters_are_422_naming_the_query(
    client: AsyncClient, params: dict[str, Any]
) -> None:
    body = assert_problem(await client.get("/tasks", params=params), 422)
    assert "query.label_id" in body["detail"], body


@pytest.mark.parametrize("sort", ["newest", "oldest", "due", "priority", "title"])
async def test_both_ways_of_finding_a_labelled_page_answer_alike(
    client: AsyncClient, monkeypatch: pytest.MonkeyPatch, sort: str
) -> None:
    """By the carriers' ids (a rare label) or by walking the order's index asking each task
    (a common one, TaskRepository._labels_way): the same tasks, in the same order, on every
    page, whichever way the count of carriers picks; with one label and with two."""
    red, blue = await label(client, "red"), await label(client, "blue")
    for n in range(12):
        wanted = [red["id"]] if n % 3 else [red["id"], blue["id"]] if n % 2 else []
        await task(client, f"task {n}", label_ids=wanted)

    for query, expected in (
        (f"label_id={red['id']}", 10),
        (f"label_id={red['id']}&label_id={blue['id']}", 2),
    ):
        by_id, by_walking = await walk_both_ways(
            client, monkeypatch, f"/tasks?{query}&sort={sort}&limit=3"
        )
        assert by_id == by_walking
        assert by_id.total == expected  # X-Total-Count
        assert len(by_id.ids) == expected
