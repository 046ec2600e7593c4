"""Defence in depth: PostgreSQL's row-level security hides and protects other workspaces'
rows even from code that forgot the scope.

(a) A query without any scope, run in a transaction that entered alice's request scope
    (the one statement every request starts with), returns none of mallory's rows; so does
    a route whose repository lost its scope filter.
(b) Inside a request, statements run as the deployment's caller role: no BYPASSRLS, no superuser,
    not the tables' owner.
(c) Every table with a workspace or user column has row-level security enabled, the tenant
    tables FORCE it (tasks apart: see migration 0006), and the request role can touch no
    table without it.
(d) Writing into another workspace through the request role is refused by the policies'
    WITH CHECK, even when the application's own check is bypassed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from httpx import AsyncClient
from sqlalchemy import bindparam, delete, insert, select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from taskmanager.models import (
    AuthSession,
    Category,
    IdempotencyKey,
    Membership,
    RefreshToken,
    Task,
    User,
    Workspace,
)
from taskmanager.postgres.deployment import caller_role_name
from taskmanager.problems import INTERNAL_ERROR
from taskmanager.repositories import task_repository
from taskmanager.repositories.task_queries import views
from taskmanager.repositories.task_repository import TaskRepository
from taskmanager.repositories.user_repository import UserRepository
from taskmanager.security.scope import Scope
from tests.support.accounts import Account, created_by
from tests.support.databases import TEST_DATABASE, TEST_KEY
from tests.support.problems import assert_problem
from tests.support.row_level_security import (
    assert_nothing_matches,
    assert_refused_by_the_policies,
    enter_scope,
    leave_scope,
    rows,
)

TENANT_TABLES = {
    "categories",
    "idempotency_keys",
    "labels",
    "task_labels",
}
REQUEST_ROLE = caller_role_name(TEST_DATABASE)


async def post(client: AsyncClient, account: Account, url: str, body: dict[str, Any]) -> Any:
    """Created as `account`, with an Idempotency-Key: each account has keys to hide."""
    return await created_by(client, account, url, body, {"Idempotency-Key": f"rls-{url}"})


# ─────────────────────────────── (a) a query that forgets the scope


async def test_a_query_without_scope_sees_no_other_workspace(
    client: AsyncClient, db_session: AsyncSession, account: Account, other_account: Account
) -> None:
    mine = await post(client, account, "/tasks", {"title": "alice's"})
    theirs = await post(client, other_account, "/tasks", {"title": "mallory's"})
    their_category = await post(client, other_account, "/categories", {"name": "Mallory's"})
    mallory_workspace = other_account.personal_workspace_id

    # The control: as mallory, the same unscoped queries do find her rows.
    await enter_scope(db_session, other_account)
    assert theirs["id"] in [task.id for task in (await db_session.scalars(select(Task))).all()]
    await leave_scope(db_session)

    await enter_scope(db_session, account)
    tasks = (await db_session.scalars(select(Task))).all()
    assert mine["id"] in [task.id for task in tasks]
    assert all(task.workspace_id != mallory_workspace for task in tasks)
    assert all(task.id != theirs["id"] for task in tasks)
    # Even naming the row outright finds nothing.
    assert await rows(db_session, select(Task).where(Task.id == theirs["id"])) == []
    assert await rows(db_session, select(Category).where(Category.id == their_category["id"])) == []
    raw = await rows(db_session, text("SELECT id, workspace_id FROM tasks"))
    assert all(row.workspace_id != mallory_workspace for row in raw)
    workspaces = await rows(db_session, select(Workspace.id))
    assert account.personal_workspace_id in [row.id for row in workspaces]
    assert mallory_workspace not in [row.id for row in workspaces]
    memberships = await rows(db_session, select(Membership.workspace_id, Membership.user_id))
    assert all(row.user_id != other_account.user_id for row in memberships)
    assert all(row.workspace_id != mallory_workspace for row in memberships)
    users = await rows(db_session, select(User.id))
    assert account.user_id in [row.id for row in users]
    assert other_account.user_id not in [row.id for row in users]
    keys = await rows(db_session, select(IdempotencyKey.user_id))
    assert keys
    assert all(row.user_id == account.user_id for row in keys)
    sessions = await rows(db_session, select(AuthSession.user_id))
    assert sessions
    assert all(row.user_id == account.user_id for row in sessions)
    their_tokens = await rows(
        db_session,
        select(RefreshToken.session_id).where(RefreshToken.session_id == other_account.session_id),
    )
    assert their_tokens == []


async def test_a_route_whose_repository_forgot_the_scope_still_answers_404(
    client: AsyncClient,
    account: Account,
    other_account: Account,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """GET /tasks/{id} with its statement stripped of the scope filter: PostgreSQL still
    hides mallory's task from alice."""
    theirs = await post(client, other_account, "/tasks", {"title": "mallory's"})
    unscoped = (
        select(*views.VIEW_COLUMNS)
        .select_from(views.WITH_CATEGORY)
        .where(Task.__table__.c.id == bindparam("task_id"))
    )
    monkeypatch.setattr(task_repository, "VIEW_BY_ID", unscoped)

    # The control: the stripped statement works (mallory reads her task through it).
    assert (
        await client.get(f"/tasks/{theirs['id']}", headers=other_account.headers)
    ).status_code == 200
    assert (await client.get(f"/tasks/{theirs['id']}", headers=account.headers)).status_code == 404


# ─────────────────────────────── (b) the request role


async def test_requests_run_as_the_request_role_under_row_level_security(
    client: AsyncClient, account: Account, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[dict[str, Any]] = []
    probe = text(
        "SELECT current_user AS role, r.rolbypassrls AS bypassrls, r.rolsuper AS superuser,"
        " taskmanager_user_id()::text AS caller"
        " FROM pg_roles r WHERE r.rolname = current_user"
    )

    def spying(method: Callable[..., Any]) -> Callable[..., Any]:
        async def wrapper(self: TaskRepository, *args: Any, **kwargs: Any) -> Any:
            seen.append(dict((await self.session.execute(probe)).mappings().one()))
            return await method(self, *args, **kwargs)

        return wrapper

    monkeypatch.setattr(TaskRepository, "create", spying(TaskRepository.create))
    monkeypatch.setattr(TaskRepository, "get_view", spying(TaskRepository.get_view))

    created = await client.post("/tasks", json={"title": "probe"}, headers=account.headers)
    assert created.status_code == 201, created.text
    read = await client.get(f"/tasks/{created.json()['id']}", headers=account.headers)
    assert read.status_code == 200, read.text

    assert [entry["role"] for entry in seen] == [REQUEST_ROLE, REQUEST_ROLE]
    for entry in seen:
        assert entry["bypassrls"] is False
        assert entry["superuser"] is False
        assert entry["caller"] == str(account.user_id)


async def test_the_request_role_cannot_bypass_the_policies(db_session: AsyncSession) -> None:
    role = (
        await db_session.execute(
            text(
                "SELECT rolbypassrls, rolsuper, rolcanlogin, rolinherit FROM pg_roles"
                " WHERE rolname = :role"
            ),
            {"role": REQUEST_ROLE},
        )
    ).one()
    assert (role.rolbypassrls, role.rolsuper, role.rolcanlogin) == (False, False, False)
    # No role it belongs to may bypass row-level security either.
    powerful = (
        await db_session.execute(
            text(
                "SELECT count(*) FROM pg_roles r WHERE (r.rolbypassrls OR r.rolsuper)"
                " AND pg_has_role(:role, r.oid, 'MEMBER')"
            ),
            {"role": REQUEST_ROLE},
        )
    ).scalar_one()
    assert powerful == 0
    # It owns no table of this schema, and is no member of any table's owner.
    owned = (
        await db_session.execute(
            text(
                "SELECT c.relname FROM pg_class c"
                " WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind = 'r'"
                " AND pg_has_role(:role, c.relowner, 'MEMBER')"
            ),
            {"role": REQUEST_ROLE},
        )
    ).all()
    assert owned == []


# ─────────────────────────────── (c) the catalogue


async def _tables(db_session: AsyncSession) -> dict[str, Any]:
    result = await db_session.execute(
        text(
            """
            SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity,
                   EXISTS (SELECT FROM pg_attribute a WHERE a.attrelid = c.oid
                           AND a.attname IN ('workspace_id', 'user_id')
                           AND NOT a.attisdropped) AS has_owner_column,
                   (SELECT count(*) FROM pg_policy p WHERE p.polrelid = c.oid) AS policies,
                   has_table_privilege(:role, c.oid, 'INSERT, UPDATE, DELETE')
                       OR (has_table_privilege(:role, c.oid, 'SELECT')
                           AND c.relname <> 'alembic_version') AS request_role_may_touch
            FROM pg_class c
            WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind = 'r'
            """
        ),
        {"role": REQUEST_ROLE},
    )
    return {row.relname: row for row in result}


async def test_every_table_with_a_workspace_or_user_column_has_row_level_security(
    db_session: AsyncSession,
) -> None:
    tables = await _tables(db_session)
    with_owner = {name for name, row in tables.items() if row.has_owner_column}
    # The discovery finds what it should (it would pass vacuously on nothing).
    assert {"tasks", "categories", "memberships", "idempotency_keys", "auth_sessions"} <= with_owner
    # Plus the tables that are the workspace or the user themselves, and the tokens.
    protected = with_owner | {"workspaces", "users", "refresh_tokens"}
    for name in sorted(protected):
        assert tables[name].relrowsecurity, f"{name}: row-level security is not enabled"
        assert tables[name].policies > 0, f"{name}: no policy"
    for name in sorted(TENANT_TABLES):
        assert tables[name].relforcerowsecurity, f"{name}: row-level security is not forced"
    # tasks and workspaces do not force it on their owner, on purpose: the search function
    # (0006) runs as the owner so that an index serves `@@`, and the first-owner check
    # (0008) reads a workspace its creator cannot see yet; the owner serves no request.
    assert not tables["tasks"].relforcerowsecurity
    assert not tables["workspaces"].relforcerowsecurity


async def test_the_request_role_touches_no_table_without_row_level_security(
    db_session: AsyncSession,
) -> None:
    tables = await _tables(db_session)
    reachable = {name for name, row in tables.items() if row.request_role_may_touch}
    assert "tasks" in reachable
    # alembic_version (the schema's revision, read by every service at start-up) is the
    # only table without a policy it may read, and it holds nothing of anyone's; it may
    # not write it (request_role_may_touch leaves out only reading it).
    assert {name for name in reachable if not tables[name].relrowsecurity} == set()
    assert "login_failures" in reachable


# ─────────────────────────────── (d) WITH CHECK


async def test_writing_into_another_workspace_is_refused_by_postgresql(
    client: AsyncClient, db_session: AsyncSession, account: Account, other_account: Account
) -> None:
    mine = await post(client, account, "/tasks", {"title": "alice's"})
    theirs = await post(client, other_account, "/tasks", {"title": "mallory's"})
    mallory_workspace = other_account.personal_workspace_id
    await enter_scope(db_session, account)

    refused = {
        "task in mallory's workspace": insert(Task).values(
            workspace_id=mallory_workspace, title="planted"
        ),
        "category in mallory's workspace": insert(Category).values(
            workspace_id=mallory_workspace, name="planted"
        ),
        "alice joins mallory's workspace as owner": insert(Membership).values(
            workspace_id=mallory_workspace, user_id=account.user_id, role="owner"
        ),
        "alice joins mallory's workspace as member": insert(Membership).values(
            workspace_id=mallory_workspace, user_id=account.user_id, role="member"
        ),
        "a workspace in mallory's name": insert(Workspace).values(
            name="planted", created_by=other_account.user_id
        ),
        "an idempotency key of mallory's": text(
            "INSERT INTO idempotency_keys (user_id, scope, key, request_hash, expires_at)"
            " VALUES (:user_id, 'POST /tasks', 'planted', 'x', now() + interval '1 day')"
        ).bindparams(user_id=other_account.user_id),
        "alice's task moved to mallory's workspace": update(Task)
        .where(Task.id == mine["id"])
        .values(workspace_id=mallory_workspace),
    }
    await assert_refused_by_the_policies(db_session, refused)

    # Rows the policies hide cannot be changed or deleted either: nothing matches.
    await assert_nothing_matches(
        db_session,
        (
            update(Task).where(Task.id == theirs["id"]).values(title="defaced"),
            delete(Task).where(Task.id == theirs["id"]),
            update(Workspace).where(Workspace.id == mallory_workspace).values(name="defaced"),
            update(User).where(User.id == other_account.user_id).values(display_name="defaced"),
        ),
    )

    await leave_scope(db_session)
    await enter_scope(db_session, other_account)
    task = (await db_session.execute(select(Task).where(Task.id == theirs["id"]))).scalar_one()
    assert task.title == "mallory's"


async def test_a_bypassed_application_check_is_still_refused(
    client: AsyncClient,
    db_session: AsyncSession,
    account: Account,
    other_account: Account,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """POST /tasks naming mallory's workspace, with the Scope's membership check turned
    off: the INSERT reaches PostgreSQL, which refuses it."""

    def anything_goes(self: Scope, workspace_id: int | None) -> int:
        return workspace_id if workspace_id is not None else self.personal_workspace_id or 0

    monkeypatch.setattr(Scope, "workspace_for_new_row", anything_goes)
    mallory_workspace = other_account.personal_workspace_id
    # The control: with the check off, alice still creates tasks where she may.
    allowed = await client.post(
        "/tasks",
        json={"title": "mine", "workspace_id": account.personal_workspace_id},
        headers=account.headers,
    )
    assert allowed.status_code == 201, allowed.text

    response = await client.post(
        "/tasks",
        json={"title": "planted", "workspace_id": mallory_workspace},
        headers=account.headers,
    )

    # The application's check failing is a bug on the server's side: a logged 500 that
    # names nothing of mallory's, and nothing written.
    assert_problem(response, 500, problem_type=INTERNAL_ERROR)
    planted = await rows(db_session, select(Task.id).where(Task.workspace_id == mallory_workspace))
    assert planted == []


async def test_the_request_role_never_reads_a_password_hash(
    db_session: AsyncSession, scope: Scope, account: Account
) -> None:
    """Co-members' rows of `users` are visible to the request role, their password hashes
    are not (column privileges): not even the caller's own, except through the one
    function a login and a password change use, with a proof of the service's."""
    visible = await db_session.execute(select(User.email).where(User.id == account.user_id))
    assert visible.scalar_one() == account.email
    with pytest.raises(DBAPIError, match="permission denied"):
        async with db_session.begin_nested():
            await db_session.execute(select(User.password_hash))
    with pytest.raises(DBAPIError, match="proof is not valid"):
        async with db_session.begin_nested():
            await db_session.execute(
                text("SELECT * FROM taskmanager_password_hash(:email, 4102444800, 'made-up')"),
                {"email": account.email},
            )
    own = await UserRepository(db_session).password_hash_of(account.email, TEST_KEY)
    assert own is not None
    assert own.password_hash.startswith("$argon2id$")
