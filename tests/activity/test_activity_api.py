"""Reading the activity log: GET /workspaces/{id}/activity (cursor pages, filters) and
GET /tasks/{id}/activity, by any member and by nobody else."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
from httpx import AsyncClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from taskmanager.schemas import ActivityResponse
from tests.activity.conftest import World
from tests.support.accounts import Account
from tests.support.problems import assert_problem, assert_validation_problem


def _next(response: httpx.Response) -> str | None:
    """The cursor of the Link header's next page, if any."""
    link = response.headers.get("Link")
    if link is None:
        return None
    url = link.removeprefix("<").split(">;")[0]
    (cursor,) = parse_qs(urlsplit(url).query)["cursor"]
    return cursor


def _kinds(response: httpx.Response) -> list[tuple[str, str]]:
    return [(row["kind"], row["object_id"]) for row in response.json()]


async def _renames(client: AsyncClient, world: World, count: int) -> None:
    for n in range(count):
        response = await client.patch(
            f"/tasks/{world.task_id}", json={"title": f"title {n}"}, headers=world.owner.headers
        )
        assert response.status_code == 200, response.text


async def test_a_workspace_s_activity_newest_first_as_its_members_read_it(
    client: AsyncClient, world: World
) -> None:
    """The world's own making, read by vera (a member who made none of it): every row,
    newest first, each as the document describes it."""
    response = await client.get(
        f"/workspaces/{world.workspace_id}/activity", headers=world.viewer.headers
    )

    assert response.status_code == 200, response.text
    rows = response.json()
    assert [ActivityResponse.model_validate(row).id for row in rows] == sorted(
        (row["id"] for row in rows), reverse=True
    )
    # Each member was invited by alice and accepted (invitations are named by their ids).
    kinds = [
        (kind, "?" if kind.startswith("invitation.") else id_) for kind, id_ in _kinds(response)
    ]
    assert kinds[::-1] == [
        ("workspace.created", str(world.workspace_id)),
        ("member.added", str(world.owner.user_id)),
        ("invitation.created", "?"),
        ("invitation.accepted", "?"),
        ("member.added", str(world.viewer.user_id)),
        ("invitation.created", "?"),
        ("invitation.accepted", "?"),
        ("member.added", str(world.member.user_id)),
        ("category.created", str(world.category_id)),
        ("label.created", str(world.label_id)),
        ("task.created", str(world.task_id)),
        ("task.label_added", str(world.task_id)),
    ]
    accepted_by = {row["actor_id"] for row in rows if row["kind"] == "invitation.accepted"}
    assert accepted_by == {world.viewer.user_id, world.member.user_id}
    assert {row["actor_id"] for row in rows} == {
        world.owner.user_id,
        world.viewer.user_id,
        world.member.user_id,
    }
    assert {row["workspace_id"] for row in rows} == {world.workspace_id}
    # The world's requests sent no X-Request-ID: each row has the one the server made up.
    assert all(re.fullmatch(r"[0-9a-f]{32}", row["request_id"]) for row in rows), rows
    assert len({row["request_id"] for row in rows}) == 8  # 12 rows of 8 requests
    assert "Link" not in response.headers


async def test_pages_follow_the_cursor_to_the_end_without_gaps_or_repeats(
    client: AsyncClient, world: World
) -> None:
    await _renames(client, world, 5)  # 17 rows in all
    everything = await client.get(
        f"/workspaces/{world.workspace_id}/activity", headers=world.owner.headers
    )
    seen: list[int] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 4}
        if cursor is not None:
            params["cursor"] = cursor
        page = await client.get(
            f"/workspaces/{world.workspace_id}/activity", params=params, headers=world.owner.headers
        )
        assert page.status_code == 200, page.text
        seen += [row["id"] for row in page.json()]
        pages += 1
        cursor = _next(page)
        if cursor is None:
            break
    assert pages == 5
    assert seen == [row["id"] for row in everything.json()]
    assert len(seen) == 17


async def test_a_cursor_continues_only_its_own_list(
    client: AsyncClient, world: World, other_account: Account
) -> None:
    first = await client.get(
        f"/workspaces/{world.workspace_id}/activity",
        params={"limit": 2},
        headers=world.owner.headers,
    )
    cursor = _next(first)
    assert cursor is not None
    url = f"/workspaces/{world.workspace_id}/activity"
    other_filters = await client.get(
        url, params={"cursor": cursor, "kind": "task.updated"}, headers=world.owner.headers
    )
    assert_validation_problem(other_filters, "query.cursor")
    someone_else = await client.get(url, params={"cursor": cursor}, headers=world.viewer.headers)
    assert_validation_problem(someone_else, "query.cursor")
    await client.post("/tasks", json={"title": "a second task"}, headers=world.owner.headers)
    tasks_cursor = _next(
        await client.get("/tasks", params={"limit": 1}, headers=world.owner.headers)
    )
    assert tasks_cursor is not None
    not_ours = await client.get(url, params={"cursor": tasks_cursor}, headers=world.owner.headers)
    assert_validation_problem(not_ours, "query.cursor")


async def test_filters_by_task_actor_and_kind(
    client: AsyncClient, db_session: AsyncSession, world: World
) -> None:
    other_task = await client.post(
        "/tasks",
        json={"title": "Call mum", "workspace_id": world.workspace_id},
        headers=world.viewer.headers,
    )
    assert other_task.status_code == 201, other_task.text
    await _renames(client, world, 2)
    url = f"/workspaces/{world.workspace_id}/activity"

    by_task = await client.get(url, params={"task_id": world.task_id}, headers=world.owner.headers)
    assert _kinds(by_task) == [
        ("task.updated", str(world.task_id)),
        ("task.updated", str(world.task_id)),
        ("task.label_added", str(world.task_id)),
        ("task.created", str(world.task_id)),
    ]
    by_actor = await client.get(
        url, params={"actor_id": world.viewer.user_id}, headers=world.owner.headers
    )
    assert [kind for kind, _ in _kinds(by_actor)] == [
        "task.created",
        "member.added",  # her membership, after her own answer
        "invitation.accepted",
    ]
    by_kind = await client.get(url, params={"kind": "task.created"}, headers=world.owner.headers)
    assert _kinds(by_kind) == [
        ("task.created", str(other_task.json()["id"])),
        ("task.created", str(world.task_id)),
    ]
    both = await client.get(
        url,
        params={"kind": "task.updated", "actor_id": world.owner.user_id, "limit": 1},
        headers=world.owner.headers,
    )
    assert [row["after"] for row in both.json()] == [{"title": "title 1"}]
    assert "Link" in both.headers
    nothing = await client.get(url, params={"kind": "task.renamed"}, headers=world.owner.headers)
    assert nothing.json() == []
    bad_kind = await client.get(url, params={"kind": "DROP TABLE"}, headers=world.owner.headers)
    assert_validation_problem(bad_kind, "query.kind")


async def test_strangers_and_missing_workspaces_are_404(
    client: AsyncClient, world: World, other_account: Account
) -> None:
    foreign = await client.get(
        f"/workspaces/{world.workspace_id}/activity", headers=other_account.headers
    )
    missing = await client.get("/workspaces/2147483000/activity", headers=other_account.headers)
    assert_problem(foreign, 404)
    assert foreign.content == missing.content


async def test_a_task_s_history_with_its_labels(client: AsyncClient, world: World) -> None:
    await _renames(client, world, 1)
    response = await client.get(f"/tasks/{world.task_id}/activity", headers=world.viewer.headers)

    assert response.status_code == 200, response.text
    assert [(row["kind"], row["before"], row["after"]) for row in response.json()] == [
        ("task.updated", {"title": "Buy milk"}, {"title": "title 0"}),
        ("task.label_added", None, {"label_id": world.label_id}),
        ("task.created", None, response.json()[-1]["after"]),
    ]
    assert response.json()[-1]["after"]["title"] == "Buy milk"


async def test_a_deleted_task_s_history_stays_readable_by_its_workspace(
    client: AsyncClient, world: World, other_account: Account
) -> None:
    deleted = await client.delete(f"/tasks/{world.task_id}", headers=world.owner.headers)
    assert deleted.status_code == 204, deleted.text
    assert (
        await client.get(f"/tasks/{world.task_id}", headers=world.viewer.headers)
    ).status_code == 404

    history = await client.get(f"/tasks/{world.task_id}/activity", headers=world.viewer.headers)

    assert history.status_code == 200, history.text
    assert [row["kind"] for row in history.json()] == [
        "task.deleted",
        "task.label_added",
        "task.created",
    ]
    foreign = await client.get(f"/tasks/{world.task_id}/activity", headers=other_account.headers)
    missing = await client.get("/tasks/2147483000/activity", headers=other_account.headers)
    assert_problem(foreign, 404)
    assert foreign.content == missing.content


async def test_a_task_without_history_has_an_empty_one(
    client: AsyncClient, db_session: AsyncSession, world: World
) -> None:
    """A task the log never saw (made before the log, or by `db seed`): 200 and no rows."""
    await db_session.execute(text("DELETE FROM activity WHERE object_type = 'task'"))
    response = await client.get(f"/tasks/{world.task_id}/activity", headers=world.owner.headers)
    assert response.status_code == 200, response.text
    assert response.json() == []


def test_the_document_describes_the_activity_and_its_pages(client: AsyncClient) -> None:
    document = client._transport.app.openapi()  # type: ignore[attr-defined]
    for path in ("/workspaces/{workspace_id}/activity", "/tasks/{task_id}/activity"):
        operation = document["paths"][path]["get"]
        ok = operation["responses"]["200"]
        schema = ok["content"]["application/json"]["schema"]
        assert schema == {
            "type": "array",
            "items": {"$ref": "#/components/schemas/ActivityResponse"},
            "title": schema["title"],
        }
        assert "Link" in ok["headers"]
        assert {"401", "404", "422"} <= set(operation["responses"])
    fields = document["components"]["schemas"]["ActivityResponse"]["properties"]
    assert {"kind", "actor_id", "object_type", "object_id", "before", "after", "request_id"} <= set(
        fields
    )
