"""Lost updates: versions, ETag and If-Match on tasks and categories.

Every task and category has a `version`, sent as the strong ETag `"<version>"` on GET one,
POST, PATCH and PUT. A PATCH, PUT or DELETE with If-Match changes the row only if it lists
the current ETag (or `*`), else 412 with the current ETag; without If-Match the last writer
wins, as before. The row is read with SELECT ... FOR UPDATE, so concurrent writers queue up
and each one sees the version the previous one left.

Single-request semantics run in the rolled-back `client` fixture. The concurrent cases need
real commits and real concurrent transactions, so they run the real app (lifespan, pool)
against a database of their own and check the result through a separate connection.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import httpx
import pytest
from httpx import AsyncClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from tests.support.kinds import CATEGORIES, KINDS, TASKS, Kind
from tests.support.problems import assert_problem
from tests.support.reliability import ReliabilityRecorder

pytestmark = pytest.mark.reliability

AREA = "Lost updates and retries"
WRITERS = 20


async def create(client: AsyncClient, kind: Kind, value: str) -> dict[str, Any]:
    response = await client.post(kind.path, json=kind.body(value))
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def stored_row(
    session_or_engine: AsyncSession | AsyncEngine, kind: Kind, row_id: int
) -> tuple[str, int] | None:
    """(field value, version) as PostgreSQL has it, or None if the row is gone."""
    query = text(f"SELECT {kind.field}, version FROM {kind.table} WHERE id = :id")
    if isinstance(session_or_engine, AsyncSession):
        result = await session_or_engine.execute(query, {"id": row_id})
        row = result.one_or_none()
    else:
        async with session_or_engine.connect() as connection:
            row = (await connection.execute(query, {"id": row_id})).one_or_none()
    return None if row is None else (row[0], row[1])


def assert_precondition_failed(response: httpx.Response, current_etag: str) -> None:
    problem = assert_problem(response, 412, problem_type="/problems/precondition-failed")
    assert current_etag in problem["detail"]
    assert response.headers["ETag"] == current_etag


# ─────────────────────────────────────────────
# One request at a time (rolled-back fixture)
# ─────────────────────────────────────────────


@KINDS
async def test_every_response_carries_the_etag_of_its_version(
    client: AsyncClient, kind: Kind, reliability: ReliabilityRecorder
) -> None:
    created = await client.post(kind.path, json=kind.body("etag 1"))
    assert created.status_code == 201
    assert created.json()["version"] == 1
    assert created.headers["ETag"] == '"1"'
    url = f"{kind.path}/{created.json()['id']}"

    fetched = await client.get(url)
    assert fetched.headers["ETag"] == '"1"'
    assert fetched.json()["version"] == 1

    changed = await client.patch(url, json=kind.body("etag 2"))
    assert changed.status_code == 200
    assert changed.json()["version"] == 2
    assert changed.headers["ETag"] == '"2"'
    assert (await client.get(url)).headers["ETag"] == '"2"'

    if kind is TASKS:  # PUT: the lecture's route, same semantics as PATCH
        replaced = await client.put(url, json={"completed": True})
        assert replaced.status_code == 200
        assert replaced.headers["ETag"] == '"3"'
        assert replaced.json()["version"] == 3
    reliability.record(
        AREA,
        f"{kind.name}: POST, GET, PATCH{', PUT' if kind is TASKS else ''} read the version",
        'every response carries ETag "<version>" matching the body\'s version, bumped by '
        "each change",
    )


@KINDS
async def test_an_unchanged_value_keeps_the_version(
    client: AsyncClient, db_session: AsyncSession, kind: Kind, reliability: ReliabilityRecorder
) -> None:
    row = await create(client, kind, "same value")
    url = f"{kind.path}/{row['id']}"

    same = await client.patch(url, json=kind.body("same value"), headers={"If-Match": '"1"'})
    assert same.status_code == 200
    assert same.headers["ETag"] == '"1"'
    assert same.json()["version"] == 1
    if kind is TASKS:
        nothing = await client.patch(url, json={"description": None, "completed": False})
        assert nothing.status_code == 200
        assert nothing.headers["ETag"] == '"1"'
    assert await stored_row(db_session, kind, row["id"]) == ("same value", 1)
    reliability.record(
        AREA,
        f"{kind.name}: PATCH that sends the values it already has",
        '200 with the same ETag "1": nothing changed, so an If-Match taken before still holds',
        lost=False,
    )


@KINDS
async def test_if_match_with_the_current_etag_changes_the_row(
    client: AsyncClient, db_session: AsyncSession, kind: Kind, reliability: ReliabilityRecorder
) -> None:
    row = await create(client, kind, "before")
    url = f"{kind.path}/{row['id']}"

    changed = await client.patch(url, json=kind.body("after"), headers={"If-Match": '"1"'})
    assert changed.status_code == 200, changed.text
    assert changed.headers["ETag"] == '"2"'
    assert changed.json()[kind.field] == "after"
    assert await stored_row(db_session, kind, row["id"]) == ("after", 2)
    reliability.record(
        AREA,
        f"{kind.name}: PATCH with If-Match naming the current ETag",
        '200, the change stored, new ETag "2"',
        lost=False,
    )


@KINDS
async def test_a_stale_if_match_is_412_and_changes_nothing(
    client: AsyncClient, db_session: AsyncSession, kind: Kind, reliability: ReliabilityRecorder
) -> None:
    row = await create(client, kind, "original")
    url = f"{kind.path}/{row['id']}"
    first = await client.patch(url, json=kind.body("first writer"), headers={"If-Match": '"1"'})
    assert first.status_code == 200

    stale = await client.patch(url, json=kind.body("second writer"), headers={"If-Match": '"1"'})
    assert_precondition_failed(stale, '"2"')
    if kind is TASKS:
        stale_put = await client.put(
            url, json={"title": "third writer"}, headers={"If-Match": '"1"'}
        )
        assert_precondition_failed(stale_put, '"2"')
    assert await stored_row(db_session, kind, row["id"]) == ("first writer", 2)
    assert (await client.get(url)).json()[kind.field] == "first writer"
    reliability.record(
        AREA,
        f"{kind.name}: PATCH{'/PUT' if kind is TASKS else ''} with a stale If-Match "
        "(someone changed it since)",
        '412 problem /problems/precondition-failed with the current ETag "2"; the row keeps '
        "the other writer's change",
        lost=False,
    )


@KINDS
async def test_if_match_star_lists_and_weak_tags(
    client: AsyncClient, db_session: AsyncSession, kind: Kind, reliability: ReliabilityRecorder
) -> None:
    row = await create(client, kind, "v1")
    url = f"{kind.path}/{row['id']}"

    star = await client.patch(url, json=kind.body("v2"), headers={"If-Match": "*"})
    assert star.status_code == 200
    assert star.headers["ETag"] == '"2"'

    weak = await client.patch(url, json=kind.body("weak"), headers={"If-Match": 'W/"2"'})
    assert_precondition_failed(weak, '"2"')

    listed = await client.patch(url, json=kind.body("v3"), headers={"If-Match": '"1", "2"'})
    assert listed.status_code == 200
    assert listed.headers["ETag"] == '"3"'

    none_current = await client.patch(url, json=kind.body("no"), headers={"If-Match": '"1","2"'})
    assert_precondition_failed(none_current, '"3"')

    missing = await client.patch(f"{kind.path}/2147483647", json=kind.body("x"))
    missing_star = await client.patch(
        f"{kind.path}/2147483647", json=kind.body("x"), headers={"If-Match": "*"}
    )
    assert missing.status_code == missing_star.status_code == 404
    assert await stored_row(db_session, kind, row["id"]) == ("v3", 3)
    reliability.record(
        AREA,
        f'{kind.name}: If-Match *, W/"2" (weak), "1", "2" (a list), and on a missing id',
        "* and a list holding the current tag: 200; a weak tag never matches: 412; a "
        "missing id: 404",
        lost=False,
    )


@KINDS
async def test_delete_with_a_stale_if_match_keeps_the_row(
    client: AsyncClient, db_session: AsyncSession, kind: Kind, reliability: ReliabilityRecorder
) -> None:
    row = await create(client, kind, "keep me")
    url = f"{kind.path}/{row['id']}"
    assert (await client.patch(url, json=kind.body("changed"))).status_code == 200

    stale = await client.delete(url, headers={"If-Match": '"1"'})
    assert_precondition_failed(stale, '"2"')
    assert await stored_row(db_session, kind, row["id"]) == ("changed", 2)
    assert (await client.get(url)).status_code == 200

    current = await client.delete(url, headers={"If-Match": '"2"'})
    assert current.status_code == 204
    assert await stored_row(db_session, kind, row["id"]) is None
    reliability.record(
        AREA,
        f"{kind.name}: DELETE with a stale If-Match",
        "412 problem with the current ETag and the row still there; with the current ETag: "
        "204 and gone",
        lost=False,
    )


@KINDS
async def test_without_if_match_the_last_writer_wins(
    client: AsyncClient, db_session: AsyncSession, kind: Kind, reliability: ReliabilityRecorder
) -> None:
    row = await create(client, kind, "start")
    url = f"{kind.path}/{row['id']}"

    first = await client.patch(url, json=kind.body("writer A"))
    second = await client.patch(url, json=kind.body("writer B"))
    assert (first.status_code, second.status_code) == (200, 200)
    assert second.headers["ETag"] == '"3"'
    assert await stored_row(db_session, kind, row["id"]) == ("writer B", 3)
    assert (await client.delete(url)).status_code == 204
    assert await stored_row(db_session, kind, row["id"]) is None
    reliability.record(
        AREA,
        f"{kind.name}: PATCH and DELETE without If-Match",
        "200/204 as before: the last writer wins (each change still bumps the version)",
        lost=False,
    )


# ─────────────────────────────────────────────
# Concurrent transactions (real commits, own database)
# ─────────────────────────────────────────────


async def test_20_concurrent_patches_with_the_same_if_match_one_wins(
    live: AsyncClient, observer: AsyncEngine, reliability: ReliabilityRecorder
) -> None:
    task = await create(live, TASKS, "contended")
    url = f"/tasks/{task['id']}"
    titles = [f"writer {i}" for i in range(WRITERS)]

    responses = await asyncio.gather(
        *(live.patch(url, json={"title": t}, headers={"If-Match": '"1"'}) for t in titles)
    )

    statuses = Counter(r.status_code for r in responses)
    assert statuses == {200: 1, 412: WRITERS - 1}, statuses
    (winner,) = (r for r in responses if r.status_code == 200)
    for loser in (r for r in responses if r.status_code == 412):
        assert_precondition_failed(loser, '"2"')
    assert winner.headers["ETag"] == '"2"'
    assert await stored_row(observer, TASKS, task["id"]) == (winner.json()["title"], 2)
    reliability.record(
        AREA,
        f"{WRITERS} concurrent PATCHes of one task with the same If-Match",
        f"1 of {WRITERS} got 200, {WRITERS - 1} got 412 problem; the row shows exactly the "
        "winner's change and version + 1",
        lost=False,
    )


async def test_20_concurrent_renames_with_the_same_if_match_one_wins(
    live: AsyncClient, observer: AsyncEngine, reliability: ReliabilityRecorder
) -> None:
    category = await create(live, CATEGORIES, "contended category")
    url = f"/categories/{category['id']}"
    names = [f"renamed {i}" for i in range(WRITERS)]  # distinct: no 409 for a duplicate

    responses = await asyncio.gather(
        *(live.patch(url, json={"name": n}, headers={"If-Match": '"1"'}) for n in names)
    )

    statuses = Counter(r.status_code for r in responses)
    assert statuses == {200: 1, 412: WRITERS - 1}, statuses
    (winner,) = (r for r in responses if r.status_code == 200)
    for loser in (r for r in responses if r.status_code == 412):
        assert_precondition_failed(loser, '"2"')
    assert await stored_row(observer, CATEGORIES, category["id"]) == (winner.json()["name"], 2)
    reliability.record(
        AREA,
        f"{WRITERS} concurrent renames of one category with the same If-Match",
        f"1 of {WRITERS} got 200, {WRITERS - 1} got 412 problem; the category has exactly "
        "the winner's name and version + 1",
        lost=False,
    )


async def test_20_concurrent_patches_without_if_match_all_apply_in_turn(
    live: AsyncClient, observer: AsyncEngine, reliability: ReliabilityRecorder
) -> None:
    task = await create(live, TASKS, "busy")
    url = f"/tasks/{task['id']}"
    # Every change sets a value nobody else sets, so each one really changes the row.
    changes = [
        {"title": f"title {i}"} if i % 2 == 0 else {"description": f"description {i}"}
        for i in range(WRITERS)
    ]

    responses = await asyncio.gather(*(live.patch(url, json=change) for change in changes))

    assert [r.status_code for r in responses] == [200] * WRITERS
    versions = sorted(r.json()["version"] for r in responses)
    # Serialised by the row lock: each writer saw the version the previous one left.
    assert versions == list(range(2, WRITERS + 2)), versions
    by_version = {
        r.json()["version"]: (change, r) for change, r in zip(changes, responses, strict=True)
    }
    newest_first = [by_version[v][0] for v in sorted(by_version, reverse=True)]
    last_title = next(c["title"] for c in newest_first if "title" in c)
    last_description = next(c["description"] for c in newest_first if "description" in c)
    async with observer.connect() as connection:
        row = (
            await connection.execute(
                text("SELECT title, description, version FROM tasks WHERE id = :id"),
                {"id": task["id"]},
            )
        ).one()
    assert tuple(row) == (last_title, last_description, 1 + WRITERS)
    # The last response tells what the row holds now.
    assert by_version[1 + WRITERS][1].json()["title"] == last_title
    reliability.record(
        AREA,
        f"{WRITERS} concurrent PATCHes of one task without If-Match, on different fields",
        f"all {WRITERS} got 200, one after another (versions 2 to {WRITERS + 1}, none skipped or "
        "repeated); the row holds the last title and the last description written",
        lost=False,
    )


async def test_concurrent_patch_and_delete_with_the_same_if_match(
    live: AsyncClient, observer: AsyncEngine, reliability: ReliabilityRecorder
) -> None:
    task = await create(live, TASKS, "patch or delete")
    url = f"/tasks/{task['id']}"
    requests = [
        live.patch(url, json={"title": f"patched {i}"}, headers={"If-Match": '"1"'})
        if i % 2 == 0
        else live.delete(url, headers={"If-Match": '"1"'})
        for i in range(WRITERS)
    ]

    responses = await asyncio.gather(*requests)

    succeeded = [r for r in responses if r.is_success]
    assert len(succeeded) == 1, [r.status_code for r in responses]
    (winner,) = succeeded
    stored = await stored_row(observer, TASKS, task["id"])
    if winner.request.method == "DELETE":
        assert winner.status_code == 204
        assert stored is None
        # Those that waited for the lock find the task gone (404) or were already refused.
        assert {r.status_code for r in responses if r is not winner} <= {404, 412}
    else:
        assert stored == (winner.json()["title"], 2)
        assert {r.status_code for r in responses if r is not winner} == {412}
    reliability.record(
        AREA,
        f"{WRITERS // 2} PATCHes and {WRITERS // 2} DELETEs of one task at once, same If-Match",
        "exactly one succeeds (whichever got the row lock first); the others get 412, or "
        "404 once it is deleted; the row matches the winner",
        lost=False,
    )


async def test_a_patch_that_waited_for_a_category_change_shows_the_new_category(
    live: AsyncClient, observer: AsyncEngine, reliability: ReliabilityRecorder
) -> None:
    """After waiting for the row lock, PostgreSQL re-reads only the locked task row: the
    category joined in the same statement must not come back empty or stale."""
    old = await create(live, CATEGORIES, "old home")
    new = await create(live, CATEGORIES, "new home")
    created = await live.post("/tasks", json={"title": "moving", "category_id": old["id"]})
    task = created.json()

    async with observer.connect() as connection, connection.begin():
        await connection.execute(
            text("UPDATE tasks SET category_id = :c, version = version + 1 WHERE id = :id"),
            {"c": new["id"], "id": task["id"]},
        )
        waiting = asyncio.create_task(live.patch(f"/tasks/{task['id']}", json={"title": "moved"}))
        await asyncio.sleep(0.3)
        assert not waiting.done(), "the PATCH did not wait for the row lock"
    patched = await waiting

    assert patched.status_code == 200, patched.text
    assert patched.json()["category"] == {"id": new["id"], "name": "new home"}
    assert patched.json()["version"] == 3
    reliability.record(
        AREA,
        "PATCH of a task whose category another transaction was changing",
        "waits for the other transaction, then 200 showing the new category and version",
        lost=False,
    )
