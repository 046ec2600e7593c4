"""Memberships without limit must not break an account.

An account in tens of thousands of workspaces (made before the caps below existed, or by
an operator) still gets its lists: the caller's workspace ids travel as ONE array
parameter (`= ANY($1)`), never one parameter per workspace, which asyncpg refuses beyond
32,767 and which answered 503 on every category, label and workspace list of such an
account.

And nobody gets there through the API: an account belongs to at most
TASKMANAGER_MAX_WORKSPACES_PER_USER workspaces and a workspace has at most
TASKMANAGER_MAX_MEMBERS_PER_WORKSPACE members, counted when a workspace is created and when
an invitation is accepted (the invitee's workspaces and the workspace's members), also
when requests race.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, Protocol

import pytest
import pytest_asyncio
from fastapi import FastAPI
from httpx import AsyncClient, Response
from pydantic import ValidationError
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from taskmanager.accounts.callers import scope_of_account
from taskmanager.config import Settings
from taskmanager.models import Membership, Workspace
from taskmanager.postgres.deployment import caller_role_name
from taskmanager.problems import CONFLICT, LIMIT_REACHED
from taskmanager.repositories.workspace_repository import (
    MembershipLimitError,
    MembershipLimits,
    WorkspaceRepository,
)
from taskmanager.security.roles import Role
from tests.support.accounts import Account, register_and_login
from tests.support.databases import TEST_DATABASE, TEST_KEY
from tests.support.invitations import invite, verify_address
from tests.support.live_app import live_client
from tests.support.problems import assert_problem
from tests.support.statements import count_statements

REQUEST_ROLE = caller_role_name(TEST_DATABASE)

# More than asyncpg's 32,767 bind parameters, as many as the account the issue reported.
MANY = 40_000
# What a statement of these routes binds besides the workspace ids: an id, a limit and an
# offset, the names of a label's fields in a task's JSON...
FEW = 8


# ─────────────────────────────── helpers


async def join_workspaces(db_session: AsyncSession, user_id: int, how_many: int) -> list[int]:
    """Make `user_id` a member of `how_many` new workspaces in three statements, as an
    operator's bulk SQL would (rolled back with the test)."""
    ids = list(
        (
            await db_session.execute(
                text("SELECT nextval('workspaces_id_seq') FROM generate_series(1, :n)"),
                {"n": how_many},
            )
        ).scalars()
    )
    await db_session.execute(
        text(
            "INSERT INTO workspaces (id, name, created_by) "
            "SELECT id, 'Bulk ' || id, :user_id FROM unnest(CAST(:ids AS integer[])) AS id"
        ),
        {"ids": ids, "user_id": user_id},
    )
    await db_session.execute(
        text(
            "INSERT INTO memberships (workspace_id, user_id, role) "
            "SELECT id, :user_id, 'member' FROM unnest(CAST(:ids AS integer[])) AS id"
        ),
        {"ids": ids, "user_id": user_id},
    )
    await db_session.commit()  # releases the seeding savepoint; the outer transaction stays
    return ids


async def ok(client: AsyncClient, url: str) -> Any:
    response = await client.get(url)
    assert response.status_code == 200, (url, response.status_code, response.text[:500])
    return response.json()


# ─────────────────────────────── the caller's workspaces, one array parameter


async def test_an_account_in_40000_workspaces_still_gets_its_lists(
    client: AsyncClient, db_session: AsyncSession, account: Account
) -> None:
    joined = await join_workspaces(db_session, account.user_id, MANY)
    category = (await client.post("/categories", json={"name": "Errands"})).json()
    label = (await client.post("/labels", json={"name": "home"})).json()
    task = (await client.post("/tasks", json={"title": "t", "label_ids": [label["id"]]})).json()

    workspaces = await ok(client, "/workspaces")
    assert len(workspaces) == MANY + 1
    assert {w["id"] for w in workspaces} == {account.personal_workspace_id, *joined}
    assert [c["id"] for c in await ok(client, "/categories")] == [category["id"]]
    assert [lb["id"] for lb in await ok(client, "/labels")] == [label["id"]]
    assert [t["id"] for t in await ok(client, "/tasks")] == [task["id"]]
    assert [t["id"] for t in await ok(client, f"/tasks?label_id={label['id']}")] == [task["id"]]
    assert (await ok(client, f"/categories/{category['id']}"))["name"] == "Errands"
    assert (await ok(client, f"/labels/{label['id']}"))["name"] == "home"
    assert (await ok(client, f"/workspaces/{joined[-1]}"))["role"] == "member"


async def test_the_callers_workspace_ids_are_bound_as_one_array(
    client: AsyncClient, engine: AsyncEngine, db_session: AsyncSession, account: Account
) -> None:
    """Statement by statement: whatever the number of workspaces, a list binds a few
    values, one of which is the list of all the caller's workspace ids."""
    joined = await join_workspaces(db_session, account.user_id, 50)
    category = (await client.post("/categories", json={"name": "Errands"})).json()
    label = (await client.post("/labels", json={"name": "home"})).json()
    mine = sorted([account.personal_workspace_id, *joined])

    for url in (
        "/workspaces",
        "/categories",
        "/labels",
        "/tasks",
        f"/categories/{category['id']}",
        f"/labels/{label['id']}",
    ):
        with count_statements(engine) as log:
            await ok(client, url)
        assert log.queries_sent, url
        for statement, parameters in log.queries_sent:
            assert len(parameters) <= FEW, (url, statement, len(parameters))
        arrays = [p for _, ps in log.queries_sent for p in ps if isinstance(p, list | tuple)]
        assert [sorted(array) for array in arrays] == [mine] * len(arrays), url
        assert arrays, (url, log.queries_sent)


# ─────────────────────────────── caps on workspaces per account and members per workspace


@pytest.fixture
def cap(app: FastAPI, settings: Settings) -> Iterator[Cap]:
    """Set the caps of the app the `client` fixture calls, for one test."""

    def set_caps(*, workspaces: int = 100, members: int = 500) -> None:
        app.state.settings = settings.model_copy(
            update={"max_workspaces_per_user": workspaces, "max_members_per_workspace": members}
        )

    # Put back by hand: pytest's monkeypatch would delete a starlette State attribute.
    try:
        yield set_caps
    finally:
        app.state.settings = settings


class Cap(Protocol):
    def __call__(self, *, workspaces: int = ..., members: int = ...) -> None: ...


async def workspaces_of(db_session: AsyncSession, user_id: int) -> int:
    found = await db_session.execute(
        select(func.count()).select_from(Membership).where(Membership.user_id == user_id)
    )
    return int(found.scalar_one())


async def members_of(db_session: AsyncSession, workspace_id: int) -> set[int]:
    found = await db_session.execute(
        select(Membership.user_id).where(Membership.workspace_id == workspace_id)
    )
    return set(found.scalars())


async def new_workspace(client: AsyncClient, name: str = "Household") -> int:
    response = await client.post("/workspaces", json={"name": name})
    assert response.status_code == 201, response.text
    workspace_id: int = response.json()["id"]
    return workspace_id


async def add(client: AsyncClient, workspace_id: int, who: Account) -> Response:
    """alice invites `who` as a member, and `who` accepts: the acceptance's answer."""
    invitation = await invite(client, workspace_id, who.email)
    return await client.post(f"/invitations/{invitation['id']}/accept", headers=who.headers)


def test_the_caps_are_settings_with_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TASKMANAGER_MAX_WORKSPACES_PER_USER", "TASKMANAGER_MAX_MEMBERS_PER_WORKSPACE"):
        monkeypatch.delenv(name, raising=False)
    defaults = Settings(_env_file=None)  # type: ignore[call-arg]
    assert (defaults.max_workspaces_per_user, defaults.max_members_per_workspace) == (100, 500)

    monkeypatch.setenv("TASKMANAGER_MAX_WORKSPACES_PER_USER", "7")
    monkeypatch.setenv("TASKMANAGER_MAX_MEMBERS_PER_WORKSPACE", "9")
    chosen = Settings(_env_file=None)  # type: ignore[call-arg]
    assert (chosen.max_workspaces_per_user, chosen.max_members_per_workspace) == (7, 9)

    monkeypatch.setenv("TASKMANAGER_MAX_MEMBERS_PER_WORKSPACE", "0")
    with pytest.raises(ValidationError):
        Settings(_env_file=None)  # type: ignore[call-arg]


async def test_creating_a_workspace_past_the_cap_is_409_and_creates_nothing(
    client: AsyncClient, db_session: AsyncSession, account: Account, cap: Cap
) -> None:
    cap(workspaces=3)
    await new_workspace(client, "Second")  # the personal workspace is the first
    await new_workspace(client, "Third")

    response = await client.post("/workspaces", json={"name": "Fourth"})

    body = assert_problem(response, 409, problem_type=LIMIT_REACHED)
    assert "3 workspaces" in body["detail"], body
    assert "at most 3" in body["detail"], body
    assert await workspaces_of(db_session, account.user_id) == 3
    names = await db_session.execute(select(Workspace.name).where(Workspace.name == "Fourth"))
    assert names.first() is None


async def test_accepting_into_a_full_workspace_is_409_and_adds_nobody(
    client: AsyncClient,
    db_session: AsyncSession,
    account: Account,
    bob: Account,
    carol: Account,
    cap: Cap,
) -> None:
    cap(members=2)
    workspace_id = await new_workspace(client)
    assert (await add(client, workspace_id, bob)).status_code == 200

    response = await add(client, workspace_id, carol)

    body = assert_problem(response, 409, problem_type=LIMIT_REACHED)
    assert "2 members" in body["detail"], body
    assert "at most 2" in body["detail"], body
    assert await members_of(db_session, workspace_id) == {account.user_id, bob.user_id}


async def test_accepting_while_in_as_many_workspaces_as_allowed_is_409(
    client: AsyncClient, db_session: AsyncSession, bob: Account, cap: Cap
) -> None:
    """The invitee's own workspaces count: an account is in at most so many, however
    many invitations it is sent."""
    cap(workspaces=3)
    await join_workspaces(db_session, bob.user_id, 2)  # with the personal one: 3
    workspace_id = await new_workspace(client)

    response = await add(client, workspace_id, bob)

    body = assert_problem(response, 409, problem_type=LIMIT_REACHED)
    assert "at most 3" in body["detail"], body
    assert await workspaces_of(db_session, bob.user_id) == 3
    assert bob.user_id not in await members_of(db_session, workspace_id)


async def test_a_member_accepting_again_into_a_full_workspace_is_told_they_are_one(
    client: AsyncClient, bob: Account, cap: Cap
) -> None:
    cap(members=2, workspaces=2)
    workspace_id = await new_workspace(client)
    assert (await add(client, workspace_id, bob)).status_code == 200

    # Full, and bob at his cap: still the answer that says what is wrong with this request.
    response = await add(client, workspace_id, bob)

    body = assert_problem(response, 409, problem_type=CONFLICT)
    assert "member of this workspace already" in body["detail"], body


async def test_under_the_caps_nothing_changes(
    client: AsyncClient, db_session: AsyncSession, account: Account, bob: Account, cap: Cap
) -> None:
    cap(workspaces=3, members=2)
    workspace_id = await new_workspace(client)  # alice: 2 of 3

    assert (await add(client, workspace_id, bob)).status_code == 200  # bob: 2 of 3, 2 of 2
    assert await members_of(db_session, workspace_id) == {account.user_id, bob.user_id}


async def test_joining_counts_under_the_policies_and_ends_in_the_request_role(
    client: AsyncClient, db_session: AsyncSession, account: Account, bob: Account
) -> None:
    """The invitee cannot see the workspace's members yet: a database function counts
    them (its row locked), for an invitee who accepted in this transaction only; the
    transaction stays under the policies, cap reached or not."""
    team = (await client.post("/workspaces", json={"name": "Team"}, headers=bob.headers)).json()
    invitation = await invite(client, team["id"], account.email, inviter=bob.headers)
    scope = await scope_of_account(db_session, TEST_KEY, account.user_id)
    repo = WorkspaceRepository(db_session)
    counts = text("SELECT taskmanager_invitee_member_count(:workspace)")

    # Not for a workspace alice is not invited to, nor before she accepted.
    for workspace in (bob.personal_workspace_id, team["id"]):
        with pytest.raises(DBAPIError, match="only for an invitee who accepted"):
            async with db_session.begin_nested():
                await db_session.execute(counts, {"workspace": workspace})
    accepted = await db_session.execute(
        text("UPDATE invitations SET accepted_at = now() WHERE id = :id"), {"id": invitation["id"]}
    )
    assert getattr(accepted, "rowcount", None) == 1
    assert (await db_session.execute(counts, {"workspace": team["id"]})).scalar_one() == 1

    full = MembershipLimits(workspaces_per_user=100, members_per_workspace=1)
    with pytest.raises(MembershipLimitError):
        await repo.join(scope, team["id"], Role.MEMBER, full)
    assert await current_role(db_session) == REQUEST_ROLE
    roomy = MembershipLimits(workspaces_per_user=100, members_per_workspace=100)
    await repo.join(scope, team["id"], Role.MEMBER, roomy)
    assert await current_role(db_session) == REQUEST_ROLE
    assert await members_of(db_session, team["id"]) == {bob.user_id, account.user_id}


async def current_role(db_session: AsyncSession) -> str:
    return str((await db_session.execute(text("SELECT current_user"))).scalar_one())


# ─────────────────────────────── the caps hold under concurrency (real commits)

LIVE_WORKSPACES_CAP = 4
LIVE_MEMBERS_CAP = 3


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def capped(own_database_url: str) -> AsyncIterator[AsyncClient]:
    """The real app on this module's own database, with small caps."""
    async with live_client(
        own_database_url,
        max_workspaces_per_user=LIVE_WORKSPACES_CAP,
        max_members_per_workspace=LIVE_MEMBERS_CAP,
        # Many accounts register here, all from the test's one address.
        registrations_per_address=100,
        registrations_total=100,
    ) as client:
        yield client


async def stored_memberships(
    observer: AsyncEngine, *, user: str | None = None, workspace_id: int | None = None
) -> int:
    """What PostgreSQL holds: the memberships of the account with email `user`, or of the
    workspace `workspace_id`."""
    async with observer.connect() as connection:
        if user is not None:
            found = await connection.execute(
                text(
                    "SELECT count(*) FROM memberships m JOIN users u ON u.id = m.user_id "
                    "WHERE u.email = :email"
                ),
                {"email": user},
            )
        else:
            found = await connection.execute(
                text("SELECT count(*) FROM memberships WHERE workspace_id = :id"),
                {"id": workspace_id},
            )
        return int(found.scalar_one())


def statuses(answers: Sequence[Response]) -> list[int]:
    return sorted(answer.status_code for answer in answers)


async def test_workspaces_created_at_once_stop_at_the_cap(
    capped: AsyncClient, observer: AsyncEngine
) -> None:
    """One account asks for 6 workspaces at once with 3 left under its cap: exactly 3 are
    made, whatever the order the transactions meet in."""
    me = await register_and_login(capped, "racer@example.com")  # the personal workspace: 1

    answers = await asyncio.gather(
        *(capped.post("/workspaces", json={"name": f"W{n}"}, headers=me) for n in range(6))
    )

    assert statuses(answers) == [201] * 3 + [409] * 3, [a.text for a in answers]
    assert await stored_memberships(observer, user="racer@example.com") == LIVE_WORKSPACES_CAP


async def test_one_account_accepting_many_invitations_at_once_stops_at_its_cap(
    capped: AsyncClient, observer: AsyncEngine, own_database_url: str
) -> None:
    """Five owners invite the same account; it accepts all five at once, with room for 3."""
    popular = await register_and_login(capped, "popular@example.com")  # its personal one: 1
    await verify_address(own_database_url, "popular@example.com")
    owners = [await register_and_login(capped, f"owner{n}@example.com") for n in range(5)]
    invitations = []
    for owner in owners:
        workspace = await capped.post("/workspaces", json={"name": "Team"}, headers=owner)
        invitations.append(
            await invite(capped, workspace.json()["id"], "popular@example.com", inviter=owner)
        )

    answers = await asyncio.gather(
        *(
            capped.post(f"/invitations/{invitation['id']}/accept", headers=popular)
            for invitation in invitations
        )
    )

    assert statuses(answers) == [200] * 3 + [409] * 2, [a.text for a in answers]
    assert await stored_memberships(observer, user="popular@example.com") == LIVE_WORKSPACES_CAP


async def test_many_invitees_accepting_into_one_workspace_at_once_stop_at_its_cap(
    capped: AsyncClient, observer: AsyncEngine, own_database_url: str
) -> None:
    """Five invitees accept invitations to one workspace at once; it has room for 2 more."""
    owner = await register_and_login(capped, "host@example.com")
    workspace_id = (await capped.post("/workspaces", json={"name": "Party"}, headers=owner)).json()[
        "id"
    ]
    guests = []
    for n in range(5):
        email = f"guest{n}@example.com"
        headers = await register_and_login(capped, email)
        await verify_address(own_database_url, email)
        invitation = await invite(capped, workspace_id, email, inviter=owner)
        guests.append((headers, invitation["id"]))

    answers = await asyncio.gather(
        *(
            capped.post(f"/invitations/{invitation_id}/accept", headers=headers)
            for headers, invitation_id in guests
        )
    )

    assert statuses(answers) == [200] * 2 + [409] * 3, [a.text for a in answers]
    assert await stored_memberships(observer, workspace_id=workspace_id) == LIVE_MEMBERS_CAP
