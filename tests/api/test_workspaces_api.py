"""The /workspaces endpoints, and tasks and categories in shared workspaces, over HTTP and
checked in the database.

alice (`account`, the client's default caller) owns the workspaces made here; bob and
carol (tests/api/conftest.py) are made members where a test needs them; mallory
(`other_account`) shares nothing with anyone.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from httpx import AsyncClient, Response
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from taskmanager.models import Category, Membership, Task, Workspace
from taskmanager.problems import CONFLICT, FORBIDDEN, PRECONDITION_FAILED
from tests.support.accounts import Account, register_and_login
from tests.support.invitations import add_member as invite_and_accept
from tests.support.invitations import verify_address
from tests.support.problems import assert_problem, assert_validation_problem

# ─────────────────────────────── helpers


def created(response: Response) -> dict[str, Any]:
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def new_workspace(client: AsyncClient, name: str = "Household") -> dict[str, Any]:
    return created(await client.post("/workspaces", json={"name": name}))


async def add_member(
    client: AsyncClient, workspace_id: int, who: Account, role: str = "member"
) -> dict[str, Any]:
    """`who` invited by alice (the client's caller) as `role`, and accepting."""
    return await invite_and_accept(client, workspace_id, who.email, who.headers, role)


async def memberships(db_session: AsyncSession, workspace_id: int) -> dict[int, str]:
    rows = await db_session.execute(
        select(Membership.user_id, Membership.role).where(Membership.workspace_id == workspace_id)
    )
    return {row.user_id: row.role for row in rows}


async def workspace_exists(db_session: AsyncSession, workspace_id: int) -> bool:
    found = await db_session.execute(select(Workspace.id).where(Workspace.id == workspace_id))
    return found.first() is not None


# ─────────────────────────────── create, list, get


async def test_create_workspace(
    client: AsyncClient, db_session: AsyncSession, account: Account
) -> None:
    response = await client.post("/workspaces", json={"name": "Household"})

    body = created(response)
    assert response.headers["Location"].endswith(f"/workspaces/{body['id']}")
    assert response.headers["ETag"] == '"1"'
    assert (body["name"], body["personal"], body["role"], body["version"]) == (
        "Household",
        False,
        "owner",
        1,
    )
    assert [(m["user_id"], m["role"]) for m in body["members"]] == [(account.user_id, "owner")]
    stored = (
        await db_session.execute(select(Workspace).where(Workspace.id == body["id"]))
    ).scalar_one()
    assert (stored.name, stored.created_by, stored.personal) == (
        "Household",
        account.user_id,
        False,
    )
    assert await memberships(db_session, body["id"]) == {account.user_id: "owner"}


@pytest.mark.parametrize("name", ["", "   ", "x" * 101])
async def test_create_workspace_with_a_bad_name_is_422(client: AsyncClient, name: str) -> None:
    assert_validation_problem(await client.post("/workspaces", json={"name": name}), "body.name")


async def test_list_workspaces_shows_mine_personal_first_with_my_role(
    client: AsyncClient, account: Account, bob: Account, other_account: Account
) -> None:
    zoo = await new_workspace(client, "zoo")
    alpha = await new_workspace(client, "Alpha")
    bobs = created(await client.post("/workspaces", json={"name": "Bob's"}, headers=bob.headers))
    await invite_and_accept(client, bobs["id"], account.email, account.headers, inviter=bob.headers)

    response = await client.get("/workspaces")

    assert response.status_code == 200
    assert [(w["id"], w["role"]) for w in response.json()] == [
        (account.personal_workspace_id, "owner"),
        (alpha["id"], "owner"),
        (bobs["id"], "member"),
        (zoo["id"], "owner"),
    ]
    assert other_account.personal_workspace_id not in [w["id"] for w in response.json()]


async def test_get_workspace_with_its_members(
    client: AsyncClient, account: Account, bob: Account
) -> None:
    workspace = await new_workspace(client)
    await add_member(client, workspace["id"], bob)

    response = await client.get(f"/workspaces/{workspace['id']}")

    assert response.status_code == 200
    assert response.headers["ETag"] == '"1"'
    members = {m["user_id"]: (m["email"], m["role"]) for m in response.json()["members"]}
    assert members == {
        account.user_id: (account.email, "owner"),
        bob.user_id: (bob.email, "member"),
    }
    # bob sees it too, with his own role.
    as_bob = await client.get(f"/workspaces/{workspace['id']}", headers=bob.headers)
    assert as_bob.status_code == 200
    assert as_bob.json()["role"] == "member"


# ─────────────────────────────── rename, delete


async def test_rename_workspace(client: AsyncClient, db_session: AsyncSession) -> None:
    workspace = await new_workspace(client)

    response = await client.patch(
        f"/workspaces/{workspace['id']}", json={"name": "Home"}, headers={"If-Match": '"1"'}
    )

    assert response.status_code == 200, response.text
    assert response.json()["name"] == "Home"
    assert response.json()["version"] == 2
    assert response.headers["ETag"] == '"2"'
    stored = (
        await db_session.execute(select(Workspace.name).where(Workspace.id == workspace["id"]))
    ).scalar_one()
    assert stored == "Home"


async def test_rename_with_a_stale_etag_is_412(
    client: AsyncClient, db_session: AsyncSession
) -> None:
    workspace = await new_workspace(client)
    await client.patch(f"/workspaces/{workspace['id']}", json={"name": "First"})

    response = await client.patch(
        f"/workspaces/{workspace['id']}", json={"name": "Second"}, headers={"If-Match": '"1"'}
    )

    assert_problem(response, 412, problem_type=PRECONDITION_FAILED)
    stored = (
        await db_session.execute(select(Workspace.name).where(Workspace.id == workspace["id"]))
    ).scalar_one()
    assert stored == "First"


async def test_delete_workspace_deletes_its_tasks_and_categories(
    client: AsyncClient, db_session: AsyncSession
) -> None:
    workspace = await new_workspace(client)
    category = created(
        await client.post("/categories", json={"name": "Chores", "workspace_id": workspace["id"]})
    )
    task = created(
        await client.post(
            "/tasks",
            json={
                "title": "Dishes",
                "workspace_id": workspace["id"],
                "category_id": category["id"],
            },
        )
    )

    response = await client.delete(f"/workspaces/{workspace['id']}")

    assert response.status_code == 204, response.text
    assert not await workspace_exists(db_session, workspace["id"])
    assert (await db_session.execute(select(Task.id).where(Task.id == task["id"]))).first() is None
    assert (
        await db_session.execute(select(Category.id).where(Category.id == category["id"]))
    ).first() is None
    assert await memberships(db_session, workspace["id"]) == {}
    assert_problem(await client.get(f"/workspaces/{workspace['id']}"), 404)
    assert_problem(await client.get(f"/tasks/{task['id']}"), 404)


async def test_the_personal_workspace_cannot_be_deleted(
    client: AsyncClient, db_session: AsyncSession, account: Account
) -> None:
    response = await client.delete(f"/workspaces/{account.personal_workspace_id}")

    assert_problem(response, 409, problem_type=CONFLICT)
    assert await workspace_exists(db_session, account.personal_workspace_id)


# ─────────────────────────────── members


async def test_add_an_owner_answers_the_owner(
    client: AsyncClient, db_session: AsyncSession, bob: Account
) -> None:
    workspace = await new_workspace(client)

    body = await add_member(client, workspace["id"], bob, role="owner")

    assert (body["user_id"], body["role"]) == (bob.user_id, "owner")
    assert (await memberships(db_session, workspace["id"]))[bob.user_id] == "owner"


async def test_a_member_reads_another_member(
    client: AsyncClient, account: Account, bob: Account
) -> None:
    workspace = await new_workspace(client)
    await add_member(client, workspace["id"], bob)

    response = await client.get(
        f"/workspaces/{workspace['id']}/members/{account.user_id}", headers=bob.headers
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["user_id"], body["email"], body["role"]) == (
        account.user_id,
        account.email,
        "owner",
    )


async def test_reading_someone_who_is_not_a_member_is_404(
    client: AsyncClient, bob: Account, other_account: Account
) -> None:
    """Not a member of this workspace, even an account the caller shares another one with:
    the same 404 as for an id no account has."""
    workspace = await new_workspace(client)
    shared = await new_workspace(client, "Shared elsewhere")
    await add_member(client, shared["id"], bob)

    for user_id in (bob.user_id, other_account.user_id, 2_147_483_000):
        response = await client.get(f"/workspaces/{workspace['id']}/members/{user_id}")
        assert_problem(response, 404)
        assert response.json()["detail"] == "Member not found"


async def test_reading_a_member_of_a_workspace_you_cannot_see_is_404(
    client: AsyncClient, account: Account, other_account: Account
) -> None:
    workspace = await new_workspace(client)

    response = await client.get(
        f"/workspaces/{workspace['id']}/members/{account.user_id}", headers=other_account.headers
    )

    assert_problem(response, 404)
    missing = await client.get(
        f"/workspaces/2147483000/members/{account.user_id}", headers=other_account.headers
    )
    assert response.content == missing.content


async def test_a_personal_workspace_gets_no_second_owner(
    client: AsyncClient, db_session: AsyncSession, account: Account, bob: Account
) -> None:
    response = await client.post(
        f"/workspaces/{account.personal_workspace_id}/invitations",
        json={"email": bob.email, "role": "owner"},
    )

    assert_problem(response, 409, problem_type=CONFLICT)
    assert bob.user_id not in await memberships(db_session, account.personal_workspace_id)


async def test_a_member_may_leave(
    client: AsyncClient, db_session: AsyncSession, account: Account, bob: Account
) -> None:
    workspace = await new_workspace(client)
    await add_member(client, workspace["id"], bob)
    task = created(
        await client.post("/tasks", json={"title": "shared", "workspace_id": workspace["id"]})
    )

    response = await client.delete(
        f"/workspaces/{workspace['id']}/members/{bob.user_id}", headers=bob.headers
    )

    assert response.status_code == 204, response.text
    assert await memberships(db_session, workspace["id"]) == {account.user_id: "owner"}
    # What bob saw through the membership is gone with it.
    assert_problem(await client.get(f"/workspaces/{workspace['id']}", headers=bob.headers), 404)
    assert_problem(await client.get(f"/tasks/{task['id']}", headers=bob.headers), 404)


async def test_an_owner_removes_a_member(
    client: AsyncClient, db_session: AsyncSession, account: Account, bob: Account
) -> None:
    workspace = await new_workspace(client)
    await add_member(client, workspace["id"], bob)

    response = await client.delete(f"/workspaces/{workspace['id']}/members/{bob.user_id}")

    assert response.status_code == 204, response.text
    assert await memberships(db_session, workspace["id"]) == {account.user_id: "owner"}


async def test_removing_someone_who_is_not_a_member_is_404(
    client: AsyncClient, bob: Account
) -> None:
    workspace = await new_workspace(client)
    response = await client.delete(f"/workspaces/{workspace['id']}/members/{bob.user_id}")
    assert_problem(response, 404)


@pytest.mark.parametrize("victim", ["another member", "the owner"])
async def test_a_member_removing_someone_else_is_403(
    client: AsyncClient,
    db_session: AsyncSession,
    account: Account,
    bob: Account,
    carol: Account,
    victim: str,
) -> None:
    workspace = await new_workspace(client)
    await add_member(client, workspace["id"], bob)
    await add_member(client, workspace["id"], carol)
    before = await memberships(db_session, workspace["id"])
    target = carol if victim == "another member" else account

    response = await client.delete(
        f"/workspaces/{workspace['id']}/members/{target.user_id}", headers=bob.headers
    )

    assert_problem(response, 403, problem_type=FORBIDDEN)
    assert await memberships(db_session, workspace["id"]) == before


async def test_the_last_owner_cannot_leave(
    client: AsyncClient, db_session: AsyncSession, account: Account, bob: Account
) -> None:
    workspace = await new_workspace(client)
    await add_member(client, workspace["id"], bob)

    response = await client.delete(f"/workspaces/{workspace['id']}/members/{account.user_id}")

    assert_problem(response, 409, problem_type=CONFLICT)
    assert await memberships(db_session, workspace["id"]) == {
        account.user_id: "owner",
        bob.user_id: "member",
    }


async def test_an_owner_may_leave_when_another_owner_stays(
    client: AsyncClient, db_session: AsyncSession, account: Account, bob: Account
) -> None:
    workspace = await new_workspace(client)
    await add_member(client, workspace["id"], bob, role="owner")

    response = await client.delete(f"/workspaces/{workspace['id']}/members/{account.user_id}")

    assert response.status_code == 204, response.text
    assert await memberships(db_session, workspace["id"]) == {bob.user_id: "owner"}
    # bob, now the only owner, may rename it; alice no longer sees it.
    renamed = await client.patch(
        f"/workspaces/{workspace['id']}", json={"name": "Bob's now"}, headers=bob.headers
    )
    assert renamed.status_code == 200, renamed.text
    assert_problem(await client.get(f"/workspaces/{workspace['id']}"), 404)


async def test_the_owner_cannot_leave_the_personal_workspace(
    client: AsyncClient, db_session: AsyncSession, account: Account
) -> None:
    response = await client.delete(
        f"/workspaces/{account.personal_workspace_id}/members/{account.user_id}"
    )
    assert_problem(response, 409, problem_type=CONFLICT)
    assert await memberships(db_session, account.personal_workspace_id) == {
        account.user_id: "owner"
    }


# ─────────────────────────────── tasks and categories in workspaces


async def test_tasks_in_a_shared_workspace_are_visible_to_both_members(
    client: AsyncClient, account: Account, bob: Account
) -> None:
    workspace = await new_workspace(client)
    await add_member(client, workspace["id"], bob)
    alices = created(
        await client.post("/tasks", json={"title": "alice's", "workspace_id": workspace["id"]})
    )
    bobs = created(
        await client.post(
            "/tasks",
            json={"title": "bob's", "workspace_id": workspace["id"]},
            headers=bob.headers,
        )
    )
    private = created(await client.post("/tasks", json={"title": "alice's own"}))

    for who, expected in ((account, {alices["id"], bobs["id"], private["id"]}), (bob, None)):
        listed = await client.get("/tasks", headers=who.headers)
        ids = {task["id"] for task in listed.json()}
        if expected is not None:
            assert ids == expected
        else:  # bob sees the shared ones, not alice's personal task
            assert ids == {alices["id"], bobs["id"]}
    # Both may read and change what is in the shared workspace.
    changed = await client.patch(
        f"/tasks/{alices['id']}", json={"completed": True}, headers=bob.headers
    )
    assert changed.status_code == 200, changed.text
    assert (await client.get(f"/tasks/{bobs['id']}")).json()["title"] == "bob's"
    assert_problem(await client.get(f"/tasks/{private['id']}", headers=bob.headers), 404)


async def test_a_category_of_another_workspace_on_a_task_is_422(
    client: AsyncClient, db_session: AsyncSession, account: Account, other_account: Account
) -> None:
    shared = await new_workspace(client)
    personal_category = created(await client.post("/categories", json={"name": "Personal"}))
    malloys_category = created(
        await client.post("/categories", json={"name": "Theirs"}, headers=other_account.headers)
    )
    task = created(
        await client.post("/tasks", json={"title": "in shared", "workspace_id": shared["id"]})
    )
    tasks_before = (await db_session.execute(select(func.count()).select_from(Task))).scalar_one()

    for category in (personal_category, malloys_category):
        on_create = await client.post(
            "/tasks",
            json={"title": "x", "workspace_id": shared["id"], "category_id": category["id"]},
        )
        assert_validation_problem(on_create, "body.category_id")
        on_change = await client.patch(f"/tasks/{task['id']}", json={"category_id": category["id"]})
        assert_validation_problem(on_change, "body.category_id")

    tasks_after = (await db_session.execute(select(func.count()).select_from(Task))).scalar_one()
    assert tasks_after == tasks_before
    stored = (
        await db_session.execute(select(Task.category_id).where(Task.id == task["id"]))
    ).scalar_one()
    assert stored is None


async def test_a_task_in_a_workspace_i_am_not_in_is_422(
    client: AsyncClient, db_session: AsyncSession, other_account: Account
) -> None:
    response = await client.post(
        "/tasks", json={"title": "planted", "workspace_id": other_account.personal_workspace_id}
    )

    assert_validation_problem(response, "body.workspace_id")
    planted = await db_session.execute(
        select(Task.id).where(Task.workspace_id == other_account.personal_workspace_id)
    )
    assert planted.all() == []


async def test_x_total_count_counts_only_the_callers_rows(
    client: AsyncClient, db_session: AsyncSession, account: Account, other_account: Account
) -> None:
    for number in range(3):
        created(await client.post("/tasks", json={"title": f"alice {number}"}))
    theirs = [
        created(
            await client.post(
                "/tasks", json={"title": f"mallory {number}"}, headers=other_account.headers
            )
        )["id"]
        for number in range(2)
    ]

    for who, expected in ((account, 3), (other_account, 2)):
        visible = (
            await db_session.execute(
                select(func.count())
                .select_from(Task)
                .where(Task.workspace_id == who.personal_workspace_id)
            )
        ).scalar_one()
        assert visible == expected
        response = await client.get("/tasks", params={"limit": 1}, headers=who.headers)
        assert response.status_code == 200
        assert response.headers["X-Total-Count"] == str(expected)
    listed = await client.get("/tasks")
    assert not {task["id"] for task in listed.json()} & set(theirs)
    # Filters count only the caller's rows too.
    searched = await client.get("/tasks", params={"q": "mallory"})
    assert searched.headers["X-Total-Count"] == "0"
    assert searched.json() == []


async def test_the_workspace_id_filter(
    client: AsyncClient, account: Account, other_account: Account
) -> None:
    shared = await new_workspace(client)
    in_shared = created(
        await client.post("/tasks", json={"title": "shared", "workspace_id": shared["id"]})
    )
    in_personal = created(await client.post("/tasks", json={"title": "personal"}))
    category = created(
        await client.post("/categories", json={"name": "Shared", "workspace_id": shared["id"]})
    )
    created(await client.post("/categories", json={"name": "Personal"}))
    created(await client.post("/tasks", json={"title": "mallory's"}, headers=other_account.headers))
    created(await client.post("/categories", json={"name": "Hers"}, headers=other_account.headers))

    only_shared = await client.get("/tasks", params={"workspace_id": shared["id"]})
    assert [task["id"] for task in only_shared.json()] == [in_shared["id"]]
    assert only_shared.headers["X-Total-Count"] == "1"
    only_personal = await client.get(
        "/tasks", params={"workspace_id": account.personal_workspace_id}
    )
    assert [task["id"] for task in only_personal.json()] == [in_personal["id"]]
    categories = await client.get("/categories", params={"workspace_id": shared["id"]})
    assert [c["id"] for c in categories.json()] == [category["id"]]
    # Someone else's workspace: an empty list, not their rows (and not a 404 either).
    foreign = await client.get(
        "/tasks", params={"workspace_id": other_account.personal_workspace_id}
    )
    assert foreign.status_code == 200
    assert foreign.json() == []
    assert foreign.headers["X-Total-Count"] == "0"
    foreign_categories = await client.get(
        "/categories", params={"workspace_id": other_account.personal_workspace_id}
    )
    assert foreign_categories.status_code == 200
    assert foreign_categories.json() == []


async def test_a_task_cannot_move_to_another_workspace(
    client: AsyncClient, db_session: AsyncSession, account: Account
) -> None:
    shared = await new_workspace(client)
    task = created(await client.post("/tasks", json={"title": "stays"}))

    response = await client.patch(f"/tasks/{task['id']}", json={"workspace_id": shared["id"]})

    assert_validation_problem(response, "body.workspace_id")
    stored = (
        await db_session.execute(select(Task.workspace_id).where(Task.id == task["id"]))
    ).scalar_one()
    assert stored == account.personal_workspace_id


async def test_two_owners_leaving_at_once_leave_one_owner(
    live: AsyncClient, own_database_url: str
) -> None:
    """With real commits and concurrent transactions: each of the two owners alone may
    leave, but not both; whichever comes second is the last owner (409)."""
    for round_number in range(3):
        other = await register_and_login(live, f"co-owner{round_number}@example.com")
        await verify_address(own_database_url, f"co-owner{round_number}@example.com")
        workspace = created(await live.post("/workspaces", json={"name": "Two owners"}))
        me = (await live.get("/users/me")).json()["id"]
        them = (await live.get("/users/me", headers=other)).json()["id"]
        await invite_and_accept(
            live, workspace["id"], f"co-owner{round_number}@example.com", other, "owner"
        )
        url = f"/workspaces/{workspace['id']}/members/"

        answers = await asyncio.gather(
            live.delete(f"{url}{me}"), live.delete(f"{url}{them}", headers=other)
        )

        assert sorted(answer.status_code for answer in answers) == [204, 409], [
            answer.text for answer in answers
        ]
        # The one who got 409 is still there, as the only owner.
        mine_refused = answers[0].status_code == 409
        stayed, stayer_id = ({}, me) if mine_refused else (other, them)
        view = await live.get(f"/workspaces/{workspace['id']}", headers=stayed)
        assert view.status_code == 200, view.text
        owners = [m["user_id"] for m in view.json()["members"] if m["role"] == "owner"]
        assert owners == [stayer_id]
