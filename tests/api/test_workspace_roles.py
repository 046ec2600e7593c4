"""The four roles over HTTP, checked in the database: giving and changing roles, handing a
workspace over, leaving, and the 403 that names the role a change needs.

alice (`account`, the client's default caller) owns the team workspace made here; bob,
carol and vera (tests/api/conftest.py) get the roles a test needs; mallory
(`other_account`) shares nothing with anyone. The matrix of every role against every
operation is tests/auth/test_bola_matrix.py; PostgreSQL's own refusals are
tests/auth/test_role_policies.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from httpx import AsyncClient, Response
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from taskmanager.models import Invitation, Task, Workspace
from taskmanager.problems import CONFLICT, FORBIDDEN
from tests.api.test_workspaces_api import add_member, memberships, new_workspace
from tests.support.accounts import Account
from tests.support.problems import assert_problem, assert_validation_problem


@dataclass(frozen=True)
class Team:
    """alice's team workspace: bob an admin, carol a member, vera a viewer."""

    id: int
    owner: Account
    admin: Account
    member: Account
    viewer: Account


@pytest.fixture
async def team(
    client: AsyncClient, account: Account, bob: Account, carol: Account, vera: Account
) -> Team:
    workspace = await new_workspace(client, "Team")
    await add_member(client, workspace["id"], bob, "admin")
    await add_member(client, workspace["id"], carol, "member")
    await add_member(client, workspace["id"], vera, "viewer")
    return Team(workspace["id"], account, bob, carol, vera)


def ok(response: Response, status: int = 200) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    return body


async def set_role(
    client: AsyncClient, team: Team, who: Account, role: str, by: Account
) -> Response:
    return await client.patch(
        f"/workspaces/{team.id}/members/{who.user_id}", json={"role": role}, headers=by.headers
    )


# ─────────────────────────────── inviting with a role


async def test_members_are_added_with_each_role_and_the_workspace_lists_it(
    client: AsyncClient, db_session: AsyncSession, team: Team
) -> None:
    assert await memberships(db_session, team.id) == {
        team.owner.user_id: "owner",
        team.admin.user_id: "admin",
        team.member.user_id: "member",
        team.viewer.user_id: "viewer",
    }
    for who, role in ((team.admin, "admin"), (team.member, "member"), (team.viewer, "viewer")):
        assert ok(await client.get(f"/workspaces/{team.id}", headers=who.headers))["role"] == role


async def test_an_admin_invites_members_but_never_an_owner(
    client: AsyncClient, db_session: AsyncSession, team: Team, other_account: Account
) -> None:
    url = f"/workspaces/{team.id}/invitations"
    refused = await client.post(
        url, json={"email": other_account.email, "role": "owner"}, headers=team.admin.headers
    )
    body = assert_problem(refused, 403, problem_type=FORBIDDEN)
    assert body["detail"] == (
        "a membership as owner: this needs the role owner in this workspace; yours is admin"
    )
    assert await invitations_of(db_session, team.id, other_account.email) == []

    invited = await client.post(
        url, json={"email": other_account.email, "role": "admin"}, headers=team.admin.headers
    )
    assert ok(invited, 202)["role"] == "admin"
    accepted = await client.post(
        f"/invitations/{invited.json()['id']}/accept", headers=other_account.headers
    )
    assert ok(accepted)["role"] == "admin"
    assert (await memberships(db_session, team.id))[other_account.user_id] == "admin"


@pytest.mark.parametrize("caller", ["member", "viewer"])
async def test_members_and_viewers_invite_nobody(
    client: AsyncClient, db_session: AsyncSession, team: Team, other_account: Account, caller: str
) -> None:
    who: Account = getattr(team, caller)
    response = await client.post(
        f"/workspaces/{team.id}/invitations",
        json={"email": other_account.email, "role": "viewer"},
        headers=who.headers,
    )
    body = assert_problem(response, 403, problem_type=FORBIDDEN)
    assert body["detail"] == (
        f"this needs the role admin or owner in this workspace; yours is {caller}"
    )
    assert await invitations_of(db_session, team.id, other_account.email) == []


async def invitations_of(
    db_session: AsyncSession, workspace_id: int, email: str
) -> list[tuple[str, str]]:
    rows = await db_session.execute(
        select(Invitation.email, Invitation.role).where(
            Invitation.workspace_id == workspace_id, Invitation.email == email
        )
    )
    return [tuple(row) for row in rows]


# ─────────────────────────────── what each role may do to tasks


async def test_a_viewer_reads_but_changes_nothing_and_is_told_which_role_would(
    client: AsyncClient, db_session: AsyncSession, team: Team
) -> None:
    task = ok(
        await client.post("/tasks", json={"title": "Plan", "workspace_id": team.id}), status=201
    )
    viewer = team.viewer.headers
    assert ok(await client.get(f"/tasks/{task['id']}", headers=viewer))["title"] == "Plan"

    needs = "this needs the role member, admin or owner in this workspace; yours is viewer"
    for response in (
        await client.patch(f"/tasks/{task['id']}", json={"title": "Mine"}, headers=viewer),
        await client.delete(f"/tasks/{task['id']}", headers=viewer),
        await client.post("/tasks", json={"title": "New", "workspace_id": team.id}, headers=viewer),
        await client.post(
            "/categories", json={"name": "New", "workspace_id": team.id}, headers=viewer
        ),
        await client.post("/labels", json={"name": "New", "workspace_id": team.id}, headers=viewer),
    ):
        assert assert_problem(response, 403, problem_type=FORBIDDEN)["detail"] == needs

    titles = await db_session.execute(select(Task.title).where(Task.workspace_id == team.id))
    assert list(titles.scalars()) == ["Plan"]
    # A member may (the control).
    changed = await client.patch(
        f"/tasks/{task['id']}", json={"title": "Theirs"}, headers=team.member.headers
    )
    assert ok(changed)["title"] == "Theirs"


# ─────────────────────────────── changing roles


async def test_an_owner_gives_any_role(
    client: AsyncClient, db_session: AsyncSession, team: Team
) -> None:
    changes = [(team.viewer, "member"), (team.member, "admin"), (team.admin, "owner")]
    for who, role in changes:
        body = ok(await set_role(client, team, who, role, by=team.owner))
        assert (body["user_id"], body["role"]) == (who.user_id, role)
    assert await memberships(db_session, team.id) == {
        team.owner.user_id: "owner",
        team.admin.user_id: "owner",
        team.member.user_id: "admin",
        team.viewer.user_id: "member",
    }


async def test_an_admin_changes_roles_among_admin_member_and_viewer_only(
    client: AsyncClient, db_session: AsyncSession, team: Team
) -> None:
    assert ok(await set_role(client, team, team.viewer, "admin", by=team.admin))["role"] == "admin"
    assert ok(await set_role(client, team, team.member, "viewer", by=team.admin))["role"] == (
        "viewer"
    )
    before = await memberships(db_session, team.id)

    promote = await set_role(client, team, team.member, "owner", by=team.admin)
    assert "this needs the role owner" in assert_problem(promote, 403)["detail"]
    demote = await set_role(client, team, team.owner, "member", by=team.admin)
    assert "yours is admin" in assert_problem(demote, 403, problem_type=FORBIDDEN)["detail"]
    assert await memberships(db_session, team.id) == before


@pytest.mark.parametrize("caller", ["member", "viewer"])
async def test_members_and_viewers_change_no_role_not_even_their_own(
    client: AsyncClient, db_session: AsyncSession, team: Team, caller: str
) -> None:
    who: Account = getattr(team, caller)
    before = await memberships(db_session, team.id)
    for target in (who, team.viewer if caller == "member" else team.member):
        response = await set_role(client, team, target, "admin", by=who)
        assert_problem(response, 403, problem_type=FORBIDDEN)
    assert await memberships(db_session, team.id) == before


async def test_the_last_owner_cannot_step_down_but_one_of_two_may(
    client: AsyncClient, db_session: AsyncSession, team: Team
) -> None:
    alone = await set_role(client, team, team.owner, "admin", by=team.owner)
    assert "transfer the workspace" in assert_problem(alone, 409, problem_type=CONFLICT)["detail"]
    assert (await memberships(db_session, team.id))[team.owner.user_id] == "owner"

    ok(await set_role(client, team, team.admin, "owner", by=team.owner))
    assert ok(await set_role(client, team, team.owner, "admin", by=team.owner))["role"] == "admin"
    roles = await memberships(db_session, team.id)
    assert (roles[team.owner.user_id], roles[team.admin.user_id]) == ("admin", "owner")


async def test_a_personal_workspace_keeps_its_one_owner(
    client: AsyncClient, db_session: AsyncSession, account: Account, bob: Account
) -> None:
    personal = account.personal_workspace_id
    await add_member(client, personal, bob, "admin")
    response = await client.patch(
        f"/workspaces/{personal}/members/{bob.user_id}", json={"role": "owner"}
    )
    assert_problem(response, 409, problem_type=CONFLICT)
    assert (await memberships(db_session, personal))[bob.user_id] == "admin"


async def test_changing_the_role_of_no_member_or_in_a_workspace_not_yours_is_404(
    client: AsyncClient, team: Team, other_account: Account
) -> None:
    missing = await client.patch(
        f"/workspaces/{team.id}/members/{other_account.user_id}", json={"role": "viewer"}
    )
    assert_problem(missing, 404)
    foreign = await client.patch(
        f"/workspaces/{team.id}/members/{team.viewer.user_id}",
        json={"role": "admin"},
        headers=other_account.headers,
    )
    assert_problem(foreign, 404)


# ─────────────────────────────── transferring


async def test_an_owner_transfers_the_workspace_and_becomes_an_admin(
    client: AsyncClient, db_session: AsyncSession, team: Team
) -> None:
    response = await client.post(
        f"/workspaces/{team.id}/transfer", json={"user_id": team.member.user_id}
    )

    body = ok(response)
    assert body["role"] == "admin"
    listed = {member["user_id"]: member["role"] for member in body["members"]}
    assert (listed[team.owner.user_id], listed[team.member.user_id]) == ("admin", "owner")
    roles = await memberships(db_session, team.id)
    assert (roles[team.owner.user_id], roles[team.member.user_id]) == ("admin", "owner")
    # What the new roles allow follows at once: the old owner may not rename it any more,
    # the new one may.
    renamed = await client.patch(f"/workspaces/{team.id}", json={"name": "Theirs"})
    assert "yours is admin" in assert_problem(renamed, 403, problem_type=FORBIDDEN)["detail"]
    again = await client.patch(
        f"/workspaces/{team.id}", json={"name": "Theirs"}, headers=team.member.headers
    )
    assert ok(again)["name"] == "Theirs"


@pytest.mark.parametrize("caller", ["admin", "member", "viewer"])
async def test_only_an_owner_transfers(
    client: AsyncClient, db_session: AsyncSession, team: Team, caller: str
) -> None:
    who: Account = getattr(team, caller)
    before = await memberships(db_session, team.id)
    response = await client.post(
        f"/workspaces/{team.id}/transfer", json={"user_id": who.user_id}, headers=who.headers
    )
    body = assert_problem(response, 403, problem_type=FORBIDDEN)
    assert body["detail"] == f"this needs the role owner in this workspace; yours is {caller}"
    assert await memberships(db_session, team.id) == before


async def test_a_transfer_needs_another_member_and_not_a_personal_workspace(
    client: AsyncClient,
    db_session: AsyncSession,
    team: Team,
    account: Account,
    other_account: Account,
) -> None:
    url = f"/workspaces/{team.id}/transfer"
    before = await memberships(db_session, team.id)
    stranger = await client.post(url, json={"user_id": other_account.user_id})
    assert_validation_problem(stranger, "body.user_id")
    self = await client.post(url, json={"user_id": account.user_id})
    assert_validation_problem(self, "body.user_id")
    assert await memberships(db_session, team.id) == before

    personal = account.personal_workspace_id
    await add_member(client, personal, team.admin, "admin")
    refused = await client.post(
        f"/workspaces/{personal}/transfer", json={"user_id": team.admin.user_id}
    )
    assert_problem(refused, 409, problem_type=CONFLICT)
    assert (await memberships(db_session, personal))[account.user_id] == "owner"


# ─────────────────────────────── leaving


@pytest.mark.parametrize("caller", ["admin", "member", "viewer"])
async def test_anyone_may_leave(
    client: AsyncClient, db_session: AsyncSession, team: Team, caller: str
) -> None:
    who: Account = getattr(team, caller)
    response = await client.delete(
        f"/workspaces/{team.id}/members/{who.user_id}", headers=who.headers
    )
    assert response.status_code == 204, response.text
    assert who.user_id not in await memberships(db_session, team.id)
    gone = await client.get(f"/workspaces/{team.id}", headers=who.headers)
    assert_problem(gone, 404)


async def test_the_last_owner_leaves_only_after_a_transfer(
    client: AsyncClient, db_session: AsyncSession, team: Team, account: Account
) -> None:
    url = f"/workspaces/{team.id}/members/{account.user_id}"
    refused = await client.delete(url)
    detail = assert_problem(refused, 409, problem_type=CONFLICT)["detail"]
    assert f"POST /workspaces/{team.id}/transfer" in detail
    assert (await memberships(db_session, team.id))[account.user_id] == "owner"

    ok(await client.post(f"/workspaces/{team.id}/transfer", json={"user_id": team.admin.user_id}))
    left = await client.delete(url)
    assert left.status_code == 204, left.text
    assert await memberships(db_session, team.id) == {
        team.admin.user_id: "owner",
        team.member.user_id: "member",
        team.viewer.user_id: "viewer",
    }


async def test_an_admin_removes_members_and_viewers_but_not_an_owner(
    client: AsyncClient, db_session: AsyncSession, team: Team
) -> None:
    for who in (team.viewer, team.member):
        removed = await client.delete(
            f"/workspaces/{team.id}/members/{who.user_id}", headers=team.admin.headers
        )
        assert removed.status_code == 204, removed.text
    owner = await client.delete(
        f"/workspaces/{team.id}/members/{team.owner.user_id}", headers=team.admin.headers
    )
    assert_problem(owner, 403, problem_type=FORBIDDEN)
    assert await memberships(db_session, team.id) == {
        team.owner.user_id: "owner",
        team.admin.user_id: "admin",
    }


async def test_only_an_owner_deletes_a_workspace(
    client: AsyncClient, db_session: AsyncSession, team: Team
) -> None:
    refused = await client.delete(f"/workspaces/{team.id}", headers=team.admin.headers)
    assert_problem(refused, 403, problem_type=FORBIDDEN)
    assert (await db_session.execute(select(Workspace.id).where(Workspace.id == team.id))).first()
    deleted = await client.delete(f"/workspaces/{team.id}")
    assert deleted.status_code == 204, deleted.text
