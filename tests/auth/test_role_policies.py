"""The roles in PostgreSQL: the policies enforce the same matrix the routes read, with the
application out of the way.

(a) The matrix the policies read (`role_permissions`, stored by a migration) is the Python
    one (taskmanager.security.roles), and so are the roles a membership may have: a change
    of the matrix without a migration fails here.
(b) In a workspace of alice's where adam is an admin, carol a member and vic a viewer, each
    of them (and alice) runs raw SQL, entered as a request enters: reading works for all;
    inserting, changing, locking for a change and deleting tasks, categories, labels and
    task labels works exactly where the role allows tasks:write (an INSERT is refused, an
    UPDATE or DELETE finds nothing); the workspace is changed and deleted only with
    workspaces:write; memberships are given, changed and removed only as
    `may_manage` says (an admin never touches an owner's), and anyone may leave.
(c) The repositories, handed a scope that claims the viewer may write (the application's
    check bypassed), still write nothing; with the policy checking nothing, the same
    insert goes through, so these tests are what would notice.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, get_args

import pytest
import pytest_asyncio
from sqlalchemy import func, insert, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from taskmanager import schemas
from taskmanager.models import (
    Category,
    Label,
    Membership,
    RolePermission,
    Task,
    TaskLabel,
    Workspace,
)
from taskmanager.repositories.category_repository import CategoryRepository
from taskmanager.repositories.label_repository import LabelRepository
from taskmanager.repositories.task_repository import TaskRepository
from taskmanager.security.roles import PERMISSIONS, ROLES, Action, Role, may_manage
from taskmanager.security.scope import Scope, mint_scope
from tests.support.accounts import Account
from tests.support.row_level_security import (
    INSUFFICIENT_PRIVILEGE,
    enter_scope,
    is_policy_violation,
    sqlstate,
)

# ─────────────────────────────── (a) one matrix


async def test_the_databases_matrix_is_the_python_matrix(db_session: AsyncSession) -> None:
    stored = await db_session.execute(select(RolePermission.role, RolePermission.action))
    assert {tuple(row) for row in stored} == {
        (str(role), str(action)) for role, actions in PERMISSIONS.items() for action in actions
    }


async def test_the_caller_cannot_run_the_unpinned_permissions_function_itself(
    db_session: AsyncSession, account: Account
) -> None:
    """taskmanager_caller_permissions() has no search_path of its own, so that the pinned
    functions the policies call can inline it: it is theirs alone (EXECUTE to nobody)."""
    await enter_scope(db_session, account)
    with pytest.raises(DBAPIError) as refused:
        async with db_session.begin_nested():
            await db_session.execute(text("SELECT * FROM taskmanager_caller_permissions()"))
    assert sqlstate(refused.value) == INSUFFICIENT_PRIVILEGE
    allowed = await db_session.execute(
        text("SELECT taskmanager_workspace_ids_allowing('tasks:write')")
    )
    assert account.personal_workspace_id in allowed.scalar_one()


async def test_a_membership_has_exactly_the_roles_of_the_matrix(db_session: AsyncSession) -> None:
    definitions = await db_session.execute(
        text(
            "SELECT conrelid::regclass::text, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE contype = 'c' AND conrelid IN ('memberships'::regclass, "
            "'role_permissions'::regclass) AND pg_get_constraintdef(oid) LIKE '%role%'"
        )
    )
    found = {table: set(re.findall(r"'(\w+)'", definition)) for table, definition in definitions}
    assert found == {"memberships": set(ROLES), "role_permissions": set(ROLES)}
    # What the API accepts and answers.
    assert set(get_args(schemas.RoleName)) == set(ROLES)
    assert set(PERMISSIONS) == set(ROLES)


def test_each_role_may_do_what_the_weaker_ones_may_and_more() -> None:
    """The matrix's shape the routes' messages and may_manage rely on: roles weakest first,
    each one's actions a strict superset of the one before; the owner may do everything."""
    for weaker, stronger in itertools.pairwise(ROLES):
        assert PERMISSIONS[weaker] < PERMISSIONS[stronger], (weaker, stronger)
    assert PERMISSIONS[Role.OWNER] == frozenset(Action)
    assert PERMISSIONS[Role.VIEWER] == {Action.TASKS_READ}


def test_who_manages_whom() -> None:
    manages = {
        (str(actor), str(role))
        for actor in ROLES
        for role in ROLES
        if may_manage(PERMISSIONS[actor], role)
    }
    assert manages == {
        ("admin", "viewer"),
        ("admin", "member"),
        ("admin", "admin"),
        ("owner", "viewer"),
        ("owner", "member"),
        ("owner", "admin"),
        ("owner", "owner"),
    }


# ─────────────────────────────── (b) each role, in raw SQL


@dataclass(frozen=True)
class Team:
    """A workspace of alice's with one person of each role, a category, two labels and a
    task carrying the first, made as the server's superuser (no policy in the way)."""

    workspace_id: int
    people: dict[Role, Account]
    outsider: Account
    task_id: int
    category_id: int
    label_id: int
    spare_label_id: int

    def values(self) -> dict[str, int]:
        return {
            "ws": self.workspace_id,
            "task": self.task_id,
            "category": self.category_id,
            "label": self.label_id,
            "spare": self.spare_label_id,
        }


@pytest_asyncio.fixture
async def team(
    db_session: AsyncSession,
    account: Account,
    admin_account: Account,
    member_account: Account,
    viewer_account: Account,
    other_account: Account,
) -> Team:
    people = {
        Role.OWNER: account,
        Role.ADMIN: admin_account,
        Role.MEMBER: member_account,
        Role.VIEWER: viewer_account,
    }

    async def returned(statement: Any) -> int:
        return int((await db_session.execute(statement)).scalar_one())

    workspace_id = await returned(
        insert(Workspace).values(name="Roles", created_by=account.user_id).returning(Workspace.id)
    )
    for role, person in people.items():
        await db_session.execute(
            insert(Membership).values(
                workspace_id=workspace_id, user_id=person.user_id, role=str(role)
            )
        )
    category_id = await returned(
        insert(Category).values(workspace_id=workspace_id, name="Kept").returning(Category.id)
    )
    label_id, spare_label_id = [
        await returned(
            insert(Label).values(workspace_id=workspace_id, name=name).returning(Label.id)
        )
        for name in ("kept", "spare")
    ]
    task_id = await returned(
        insert(Task)
        .values(workspace_id=workspace_id, title="Kept", category_id=category_id)
        .returning(Task.id)
    )
    await db_session.execute(
        insert(TaskLabel).values(task_id=task_id, label_id=label_id, workspace_id=workspace_id)
    )
    return Team(workspace_id, people, other_account, task_id, category_id, label_id, spare_label_id)


async def outcome(session: AsyncSession, sql: str, values: dict[str, int]) -> int | str:
    """What `sql` did, in a savepoint rolled back afterwards (so the next statement meets
    the team as it was): the rows it touched or returned, or "refused" (a policy),
    "denied" (a privilege)."""
    connection = await session.connection()
    savepoint = await connection.begin_nested()
    try:
        result = await connection.execute(text(sql), values)
        touched = result.rowcount if not result.returns_rows else len(result.all())
    except DBAPIError as error:
        if is_policy_violation(error):
            return "refused"
        return "denied" if sqlstate(error) == INSUFFICIENT_PRIVILEGE else str(error.orig)
    finally:
        if savepoint.is_active:
            await savepoint.rollback()
    return touched


# Raw statements on each table of a workspace's rows: what a role that may write does
# (reading works for every member).
ROW_WRITES = {
    "tasks": {
        "insert": "INSERT INTO tasks (workspace_id, title) VALUES (:ws, 'planted')",
        "update": "UPDATE tasks SET title = 'defaced' WHERE id = :task",
        "lock": "SELECT id FROM tasks WHERE id = :task FOR UPDATE",
        "delete": "DELETE FROM tasks WHERE id = :task",
    },
    "categories": {
        "insert": "INSERT INTO categories (workspace_id, name) VALUES (:ws, 'planted')",
        "update": "UPDATE categories SET name = 'defaced' WHERE id = :category",
        "lock": "SELECT id FROM categories WHERE id = :category FOR NO KEY UPDATE",
        "delete": "DELETE FROM categories WHERE id = :category",
    },
    "labels": {
        "insert": "INSERT INTO labels (workspace_id, name) VALUES (:ws, 'planted')",
        "update": "UPDATE labels SET name = 'defaced' WHERE id = :label",
        "lock": "SELECT id FROM labels WHERE id = :label FOR UPDATE",
        "delete": "DELETE FROM labels WHERE id = :label",
    },
    "task_labels": {
        "insert": "INSERT INTO task_labels (task_id, label_id, workspace_id) "
        "VALUES (:task, :spare, :ws)",
        "update": "UPDATE task_labels SET label_id = :spare WHERE task_id = :task",
        "lock": "SELECT task_id FROM task_labels WHERE task_id = :task FOR UPDATE",
        "delete": "DELETE FROM task_labels WHERE task_id = :task",
    },
}
READS = {
    "tasks": "SELECT id FROM tasks WHERE workspace_id = :ws",
    "categories": "SELECT id FROM categories WHERE workspace_id = :ws",
    "labels": "SELECT id FROM labels WHERE workspace_id = :ws AND id = :label",
    "task_labels": "SELECT task_id FROM task_labels WHERE workspace_id = :ws",
}


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("table", ROW_WRITES)
async def test_a_workspaces_rows_are_read_by_all_and_written_as_the_role_allows(
    db_session: AsyncSession, team: Team, role: Role, table: str
) -> None:
    await enter_scope(db_session, team.people[role])
    values = team.values()
    assert await outcome(db_session, READS[table], values) == 1

    may_write = Action.TASKS_WRITE in PERMISSIONS[role]
    expected = {"insert": 1, "update": 1, "lock": 1, "delete": 1}
    if not may_write:
        expected = {"insert": "refused", "update": 0, "lock": 0, "delete": 0}
    found = {
        what: await outcome(db_session, sql, values) for what, sql in ROW_WRITES[table].items()
    }
    assert found == expected, (role, table)


@pytest.mark.parametrize("role", ROLES)
async def test_the_workspace_is_changed_and_deleted_only_with_workspaces_write(
    db_session: AsyncSession, team: Team, role: Role
) -> None:
    await enter_scope(db_session, team.people[role])
    values = team.values()
    owner = Action.WORKSPACES_WRITE in PERMISSIONS[role]
    found = {
        "rename": await outcome(
            db_session, "UPDATE workspaces SET name = 'defaced' WHERE id = :ws", values
        ),
        "delete": await outcome(db_session, "DELETE FROM workspaces WHERE id = :ws", values),
        # Where additions of members queue: any member may take it.
        "lock": await outcome(
            db_session, "SELECT id FROM workspaces WHERE id = :ws FOR NO KEY UPDATE", values
        ),
    }
    assert found == {
        "rename": 1 if owner else "refused",
        "delete": 1 if owner else 0,
        "lock": 1,
    }, role


@pytest.mark.parametrize("actor", ROLES)
async def test_memberships_are_changed_and_removed_as_may_manage_says_and_added_by_nobody(
    db_session: AsyncSession, team: Team, actor: Role
) -> None:
    await enter_scope(db_session, team.people[actor])
    actions = PERMISSIONS[actor]
    ws = team.workspace_id
    for role in ROLES:
        added = await outcome(
            db_session,
            "INSERT INTO memberships (workspace_id, user_id, role) VALUES (:ws, :user, :role)",
            {"ws": ws, "user": team.outsider.user_id, "role": str(role)},
        )
        # Nobody adds anyone, whatever their role: a membership comes from an invitation
        # its invitee accepts (migration 0014; tests/auth/test_request_sql.py).
        assert added == "refused", (actor, "adds", role)
    for target_role, target in team.people.items():
        if target_role == actor:
            continue
        removed = await outcome(
            db_session,
            "DELETE FROM memberships WHERE workspace_id = :ws AND user_id = :user",
            {"ws": ws, "user": target.user_id},
        )
        assert removed == (1 if may_manage(actions, target_role) else 0), (actor, target_role)
        for role in ROLES:
            changed = await outcome(
                db_session,
                "UPDATE memberships SET role = :role WHERE workspace_id = :ws AND user_id = :user",
                {"ws": ws, "user": target.user_id, "role": str(role)},
            )
            if not may_manage(actions, target_role):
                expected: int | str = 0  # the policy hides the membership from the change
            else:
                expected = 1 if may_manage(actions, role) else "refused"
            assert changed == expected, (actor, target_role, role)
    # Anyone may leave; nobody moves a membership to another account (the caller role may
    # update a membership's role only).
    me = {"ws": ws, "user": team.people[actor].user_id, "other": team.outsider.user_id}
    assert (
        await outcome(
            db_session, "DELETE FROM memberships WHERE workspace_id = :ws AND user_id = :user", me
        )
        == 1
    )
    moved = await outcome(
        db_session,
        "UPDATE memberships SET user_id = :other WHERE workspace_id = :ws AND user_id = :user",
        me,
    )
    assert moved == "denied"


# ─────────────────────────────── (c) the application's check bypassed


def _claimed_scope(viewer: Account, workspace_id: int) -> Scope:
    """The viewer's scope, but claiming the role member in the team: the application's
    check says yes, so only PostgreSQL stands in the way."""
    return mint_scope(
        user_id=viewer.user_id,
        session_id=viewer.session_id,
        workspace_ids=(viewer.personal_workspace_id, workspace_id),
        roles={viewer.personal_workspace_id: Role.OWNER, workspace_id: Role.MEMBER},
        personal_workspace_id=viewer.personal_workspace_id,
        valid_until=int((datetime.now(UTC) + timedelta(hours=1)).timestamp()),
    )


async def test_the_repositories_write_nothing_for_a_viewer_whatever_the_scope_says(
    db_session: AsyncSession, team: Team
) -> None:
    viewer = team.people[Role.VIEWER]
    await enter_scope(db_session, viewer)
    scope = _claimed_scope(viewer, team.workspace_id)
    ws = team.workspace_id
    tasks = TaskRepository(db_session, scope)
    categories = CategoryRepository(db_session, scope)
    labels = LabelRepository(db_session, scope)
    for what, write in {
        "a task": lambda: tasks.create("planted", workspace_id=ws),
        "a category": lambda: categories.create("planted", ws),
        "a label": lambda: labels.create("planted", None, ws),
    }.items():
        with pytest.raises(DBAPIError) as raised:
            async with db_session.begin_nested():
                await write()
        assert is_policy_violation(raised.value), (what, raised.value)
    # A change starts with a locked read, which finds nothing to change; the plain read
    # still finds the task (which is what tells a route to answer 403, not 404).
    assert await tasks.get_by_id_with_category(team.task_id, for_update=True) is None
    assert await categories.get_by_id(team.category_id, for_update=True) is None
    assert await tasks.get_by_id(team.task_id) is not None
    await db_session.execute(text("SELECT set_config('role', 'none', true)"))
    count = await db_session.execute(select(func.count()).where(Task.workspace_id == ws))
    assert count.scalar_one() == 1


async def test_with_the_policy_checking_nothing_the_viewers_insert_goes_through(
    db_session: AsyncSession, team: Team
) -> None:
    """The tests above can fail: WITH CHECK (true) on the insert policy (in this test's
    transaction only), and the viewer's raw insert is accepted."""
    await db_session.execute(text("ALTER POLICY tasks_add ON tasks WITH CHECK (true)"))
    await enter_scope(db_session, team.people[Role.VIEWER])
    assert await outcome(db_session, ROW_WRITES["tasks"]["insert"], team.values()) == 1
