"""Each of the two layers of tenancy holds on its own, not only the two together.

(a) The repositories, with row-level security out of the way (the test's connection is the
    server's superuser and enters no caller): given alice's scope, every read by id, every
    list and the idempotency-key lookup keep to alice's rows. Remove a repository's
    workspace or user condition and a test here fails, though the policies would still
    have hidden the row from a request.
(b) The policies, with the application's checks bypassed: raw INSERT and UPDATE statements
    without RETURNING (whose rows the SELECT policy would otherwise check too), entered as
    alice, writing into mallory's workspace, are refused (42501) by the policies' WITH
    CHECK alone; and with a policy's WITH CHECK made `true`, the same statement goes
    through, so these tests are what would notice.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import pytest_asyncio
from httpx import AsyncClient
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from taskmanager.repositories.category_repository import CategoryRepository
from taskmanager.repositories.idempotency_repository import IdempotencyRepository
from taskmanager.repositories.label_repository import LabelRepository, LabelsNotInWorkspaceError
from taskmanager.repositories.task_queries.filters import TaskFilters
from taskmanager.repositories.task_repository import TaskRepository
from taskmanager.repositories.workspace_repository import WorkspaceRepository
from taskmanager.security.roles import Action, Role
from taskmanager.security.scope import Scope, mint_scope
from tests.support.accounts import Account, created_by
from tests.support.row_level_security import enter_scope, is_policy_violation

IDEMPOTENCY_SCOPE = "POST /tasks"


@dataclass(frozen=True)
class Rows:
    """What alice and mallory each made through the API (in the test's transaction)."""

    my_task: int
    their_task: int
    their_category: int
    their_label: int
    my_workspace: int
    their_workspace: int


async def _post(client: AsyncClient, account: Account, path: str, body: dict[str, Any]) -> int:
    return int((await created_by(client, account, path, body))["id"])


@pytest_asyncio.fixture
async def rows(client: AsyncClient, account: Account, other_account: Account) -> Rows:
    await _post(client, account, "/categories", {"name": "Alice's"})
    await _post(client, account, "/labels", {"name": "alice's"})
    their_category = await _post(client, other_account, "/categories", {"name": "Mallory's"})
    their_label = await _post(client, other_account, "/labels", {"name": "mallory's"})
    return Rows(
        my_task=await _post(client, account, "/tasks", {"title": "alice's plan"}),
        their_task=await _post(
            client,
            other_account,
            "/tasks",
            {"title": "mallory's plan", "category_id": their_category, "label_ids": [their_label]},
        ),
        their_category=their_category,
        their_label=their_label,
        my_workspace=account.personal_workspace_id,
        their_workspace=other_account.personal_workspace_id,
    )


def alices_scope(account: Account) -> Scope:
    """Alice's scope as authentication would make it, minted here: the test's connection
    enters no caller, so nothing but the repositories keeps mallory's rows out."""
    return mint_scope(
        user_id=account.user_id,
        session_id=account.session_id,
        workspace_ids=(account.personal_workspace_id,),
        roles={account.personal_workspace_id: Role.OWNER},
        personal_workspace_id=account.personal_workspace_id,
        valid_until=int((datetime.now(UTC) + timedelta(hours=1)).timestamp()),
    )


@pytest_asyncio.fixture
async def unguarded(db_session: AsyncSession, rows: Rows) -> AsyncSession:
    """The test's session with row-level security out of the way: the control shows that
    mallory's rows are there to be found."""
    role = (
        await db_session.execute(
            text("SELECT rolbypassrls OR rolsuper FROM pg_roles WHERE rolname = current_user")
        )
    ).scalar_one()
    assert role is True
    found = await db_session.execute(
        text("SELECT count(*) FROM tasks WHERE id = :id"), {"id": rows.their_task}
    )
    assert found.scalar_one() == 1
    return db_session


# ─────────────────────────────── (a) the repositories alone


async def test_the_task_repository_alone_keeps_to_the_scope(
    unguarded: AsyncSession, rows: Rows, account: Account
) -> None:
    tasks = TaskRepository(unguarded, alices_scope(account))
    assert await tasks.get_by_id(rows.their_task) is None
    assert await tasks.get_by_id_with_category(rows.their_task) is None
    assert await tasks.get_by_id_with_category(rows.their_task, for_update=True) is None
    assert await tasks.get_view(rows.their_task) is None
    assert (await tasks.get_by_id(rows.my_task)) is not None  # the control
    listed = {task.id for task in await tasks.get_all(limit=1000)}
    assert rows.my_task in listed
    assert rows.their_task not in listed
    page = await tasks.get_page(limit=1000)
    assert rows.their_task not in {item["id"] for item in page.items}
    assert page.total == await tasks.count() == len(listed)
    by_label = await tasks.get_page(TaskFilters(label_ids=(rows.their_label,)))
    assert by_label.items == []
    by_category = await tasks.get_page(TaskFilters(category_id=rows.their_category))
    assert by_category.items == []


async def test_the_category_and_label_repositories_alone_keep_to_the_scope(
    unguarded: AsyncSession, rows: Rows, account: Account
) -> None:
    scope = alices_scope(account)
    categories = CategoryRepository(unguarded, scope)
    assert await categories.get_by_id(rows.their_category) is None
    assert await categories.get_by_id(rows.their_category, for_update=True) is None
    assert [c.name for c in await categories.get_all()] == ["Alice's"]
    assert await categories.get_all(rows.their_workspace) == []
    labels = LabelRepository(unguarded, scope)
    assert await labels.get_by_id(rows.their_label) is None
    assert await labels.get_by_id(rows.their_label, for_update=True) is None
    assert [label.name for label in await labels.get_all()] == ["alice's"]
    assert await labels.get_all(rows.their_workspace) == []
    assert await labels.all_in_scope([rows.their_label]) is False
    with pytest.raises(LabelsNotInWorkspaceError):
        await labels.in_workspace([rows.their_label], rows.their_workspace)


async def test_the_workspace_repository_alone_keeps_to_the_scope(
    unguarded: AsyncSession, rows: Rows, account: Account, other_account: Account
) -> None:
    scope = alices_scope(account)
    workspaces = WorkspaceRepository(unguarded)
    assert await workspaces.get(scope, rows.their_workspace) is None
    assert await workspaces.get_for_change(scope, rows.their_workspace) is None
    assert await workspaces.members(scope, rows.their_workspace) == []
    assert await workspaces.member(scope, rows.their_workspace, other_account.user_id) is None
    assert await workspaces.membership(scope, rows.their_workspace, other_account.user_id) is None
    holders = await workspaces.lock_holders(scope, rows.their_workspace, Action.WORKSPACES_WRITE)
    assert holders == []
    assert [view.id for view in await workspaces.list_mine(scope)] == [rows.my_workspace]
    assert await workspaces.remove_member(scope, rows.their_workspace, other_account.user_id) is (
        False
    )


async def test_the_idempotency_key_lookup_alone_keeps_to_its_user(
    unguarded: AsyncSession, account: Account, other_account: Account
) -> None:
    """Both used the same key on the same route: alice's retry finds her own record, never
    mallory's (whose stored response would be replayed to alice)."""
    expires = datetime.now(UTC) + timedelta(hours=1)
    for who, request_hash in ((other_account, "mallory's request"), (account, "alice's request")):
        await unguarded.execute(
            text(
                "INSERT INTO idempotency_keys (user_id, scope, key, request_hash, expires_at, "
                "status_code, response_body, response_headers) VALUES (:user_id, :scope, "
                "'shared-key', :hash, :expires, 201, CAST(:body AS jsonb), '{}')"
            ),
            {
                "user_id": who.user_id,
                "scope": IDEMPOTENCY_SCOPE,
                "hash": request_hash,
                "expires": expires,
                "body": f'{{"who": "{who.email}"}}',
            },
        )
    record = await IdempotencyRepository(unguarded).claim(
        account.user_id, IDEMPOTENCY_SCOPE, "shared-key", "alice's request", expires
    )
    assert record is not None
    assert (record.user_id, record.request_hash) == (account.user_id, "alice's request")
    assert record.response_body == {"who": account.email}


# ─────────────────────────────── (b) the policies alone


# Raw writes into mallory's workspace (or as mallory), none with RETURNING: only a policy's
# WITH CHECK can refuse them. {mine}: alice's task; {theirs}: mallory's workspace.
RAW_WRITES = {
    "tasks: insert": "INSERT INTO tasks (workspace_id, title) VALUES ({theirs}, 'planted')",
    "tasks: move": "UPDATE tasks SET workspace_id = {theirs} WHERE id = {mine}",
    "labels: insert": "INSERT INTO labels (workspace_id, name) VALUES ({theirs}, 'planted')",
    "labels: move": "UPDATE labels SET workspace_id = {theirs} WHERE workspace_id = {my_ws}",
    "categories: insert": "INSERT INTO categories (workspace_id, name) VALUES ({theirs}, 'x')",
    "categories: move": (
        "UPDATE categories SET workspace_id = {theirs} WHERE workspace_id = {my_ws}"
    ),
    "task_labels: insert": (
        "INSERT INTO task_labels (task_id, label_id, workspace_id) "
        "VALUES ({their_task}, {their_label}, {theirs})"
    ),
    "memberships: join": (
        "INSERT INTO memberships (workspace_id, user_id, role) VALUES ({theirs}, {me}, 'owner')"
    ),
    "workspaces: in mallory's name": (
        "INSERT INTO workspaces (id, name, created_by) "
        "VALUES (nextval('workspaces_id_seq'), 'planted', {mallory})"
    ),
    "idempotency_keys: mallory's": (
        "INSERT INTO idempotency_keys (user_id, scope, key, request_hash, expires_at) "
        "VALUES ({mallory}, 'POST /tasks', 'planted', 'x', now() + interval '1 day')"
    ),
    "auth_sessions: mallory's": (
        "INSERT INTO auth_sessions (id, user_id, expires_at) "
        "VALUES ('{session}', {mallory}, now() + interval '1 day')"
    ),
}


def _statement(what: str, rows: Rows, account: Account, other_account: Account) -> str:
    return RAW_WRITES[what].format(
        theirs=rows.their_workspace,
        mine=rows.my_task,
        my_ws=rows.my_workspace,
        their_task=rows.their_task,
        their_label=rows.their_label,
        me=account.user_id,
        mallory=other_account.user_id,
        session=uuid.uuid4(),
    )


@pytest.mark.parametrize("what", RAW_WRITES)
async def test_the_policies_alone_refuse_writes_into_another_workspace(
    db_session: AsyncSession, rows: Rows, account: Account, other_account: Account, what: str
) -> None:
    await enter_scope(db_session, account)
    connection = await db_session.connection()
    with pytest.raises(DBAPIError) as raised:
        async with connection.begin_nested():
            await connection.exec_driver_sql(_statement(what, rows, account, other_account))
    assert is_policy_violation(raised.value), raised.value


@pytest.mark.parametrize(
    ("what", "policy", "table"),
    [
        ("tasks: insert", "tasks_add", "tasks"),
        ("labels: insert", "labels_add", "labels"),
        ("categories: insert", "categories_add", "categories"),
    ],
)
async def test_with_a_policy_checking_nothing_the_same_write_goes_through(
    db_session: AsyncSession,
    rows: Rows,
    account: Account,
    other_account: Account,
    what: str,
    policy: str,
    table: str,
) -> None:
    """The test above can fail: `WITH CHECK (true)` on the policy (in this test's
    transaction only) and the raw insert it refuses is accepted. (A moving UPDATE stays
    refused even then: its WHERE reads the row, so PostgreSQL also holds the new row to the
    policy's USING; only an INSERT without RETURNING meets WITH CHECK alone.)"""
    await db_session.execute(text(f"ALTER POLICY {policy} ON {table} WITH CHECK (true)"))
    await enter_scope(db_session, account)
    connection = await db_session.connection()
    inserted = await connection.exec_driver_sql(_statement(what, rows, account, other_account))
    assert inserted.rowcount == 1
