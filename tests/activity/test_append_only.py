"""The log is append-only and written by the database alone: SQL in a request may read its
own workspaces' rows and nothing else (no INSERT, UPDATE, DELETE, no purge); only a
transaction entered for maintenance purges, and only what is older than the retention.
What a deleted workspace or task takes along is not logged row by row; the operator's
paths log what they should (registration, claiming) and `db seed` logs nothing."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from httpx import AsyncClient
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from taskmanager.accounts.registration import register_account
from taskmanager.config import Settings
from taskmanager.database import create_engine
from taskmanager.models import Activity, UnclaimedWorkspace, Workspace
from taskmanager.repositories.activity_repository import purge_activity
from taskmanager.repositories.user_repository import UserRepository
from taskmanager.security.caller_key import UNLOGGED_SUBJECT
from taskmanager.seed import DEMO_EMAIL, seed
from tests.activity.conftest import World, activity_after, last_activity_id
from tests.support.accounts import PASSWORD, Account
from tests.support.databases import TEST_KEY, owner_url
from tests.support.processes import clean_env
from tests.support.row_level_security import (
    INSUFFICIENT_PRIVILEGE,
    enter_scope,
    leave_scope,
    sqlstate,
)


async def _refused(session: AsyncSession, sql: str) -> str | None:
    """Run `sql` in a savepoint: the SQLSTATE PostgreSQL refused it with (None: it ran)."""
    try:
        async with session.begin_nested():
            await session.execute(text(sql))
    except DBAPIError as error:
        return sqlstate(error)
    return None


# ─────────────────────────────── request SQL


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE activity SET kind = 'task.forged'",
        "UPDATE activity SET after = NULL WHERE id = (SELECT max(id) FROM activity)",
        "DELETE FROM activity",
        "DELETE FROM activity WHERE id = (SELECT max(id) FROM activity)",
        "TRUNCATE activity",
        "INSERT INTO activity (workspace_id, actor_id, kind, object_type, object_id) "
        "VALUES (1, 1, 'task.created', 'task', '1')",
        "SELECT taskmanager_purge_activity(1)",
        # (PERFORM: asyncpg cannot even describe a SELECT of a trigger function)
        "DO $$ BEGIN PERFORM taskmanager_log_activity(); END $$",
        "ALTER TABLE tasks DISABLE TRIGGER taskmanager_activity",
        "DROP TRIGGER taskmanager_activity ON tasks",
    ],
)
async def test_request_sql_can_neither_change_nor_remove_nor_add_a_row(
    db_session: AsyncSession, world: World, sql: str
) -> None:
    before = (await db_session.execute(select(Activity.id, Activity.kind))).all()
    await enter_scope(db_session, world.owner)  # alice owns the workspace the rows are of

    refused = await _refused(db_session, sql)

    await leave_scope(db_session)
    assert refused == INSUFFICIENT_PRIVILEGE, sql
    assert (await db_session.execute(select(Activity.id, Activity.kind))).all() == before


async def test_request_sql_reads_the_rows_of_its_own_workspaces_only(
    db_session: AsyncSession, world: World, other_account: Account
) -> None:
    read = text("SELECT DISTINCT workspace_id FROM activity")
    await enter_scope(db_session, world.viewer)
    viewers = {row[0] for row in (await db_session.execute(read)).all()}
    await leave_scope(db_session)
    await enter_scope(db_session, other_account)
    strangers = {row[0] for row in (await db_session.execute(read)).all()}
    await leave_scope(db_session)

    assert world.workspace_id in viewers
    assert world.workspace_id not in strangers


async def test_a_forged_request_id_only_labels_the_rows_of_its_own_transaction(
    db_session: AsyncSession, world: World
) -> None:
    """The request id is metadata, not sealed: SQL in a request may write its own (it names
    nobody and opens nothing)."""
    before = await last_activity_id(db_session)
    await enter_scope(db_session, world.owner)
    await db_session.execute(text("SELECT set_config('taskmanager.request_id', 'forged', true)"))
    await db_session.execute(
        text("UPDATE tasks SET title = 'renamed in SQL' WHERE id = :id"), {"id": world.task_id}
    )
    await leave_scope(db_session)

    (row,) = await activity_after(db_session, before)
    assert (row.kind, row.actor_id, row.request_id) == (
        "task.updated",
        world.owner.user_id,
        "forged",
    )


async def test_a_forged_caller_cannot_change_anything_unlogged(
    db_session: AsyncSession, world: World
) -> None:
    """Dressing the caller up as the seed's unlogged operator fails the seal, and with it
    the change (the trigger checks it, whatever the policies checked before)."""
    before = await last_activity_id(db_session)
    await enter_scope(db_session, world.owner)
    unlogged = UNLOGGED_SUBJECT.encode().hex()
    refused = await _refused(
        db_session,
        "UPDATE tasks SET title = 'hidden' WHERE set_config('taskmanager.caller', "
        f"format('%s||operator|{unlogged}|%s', taskmanager_user_id(), repeat('0', 64)), true) "
        "IS NOT NULL",
    )
    await leave_scope(db_session)

    assert refused == INSUFFICIENT_PRIVILEGE
    assert await activity_after(db_session, before) == []
    title = await db_session.execute(
        text("SELECT title FROM tasks WHERE id = :id"), {"id": world.task_id}
    )
    assert title.scalar_one() == "Buy milk"


# ─────────────────────────────── the purge


async def _aged(db_session: AsyncSession, world: World, days: int) -> None:
    """The world's rows, made `days` old."""
    await db_session.execute(
        text("UPDATE activity SET created_at = now() - make_interval(days => :days) "
             "WHERE workspace_id = :workspace"),
        {"days": days, "workspace": world.workspace_id},
    )  # fmt: skip


async def test_maintenance_purges_what_is_older_than_the_retention_only(
    client: AsyncClient, db_session: AsyncSession, world: World
) -> None:
    await _aged(db_session, world, 400)
    renamed = await client.patch(
        f"/tasks/{world.task_id}", json={"title": "kept"}, headers=world.owner.headers
    )
    assert renamed.status_code == 200
    old = await db_session.execute(
        text("SELECT count(*) FROM activity WHERE created_at < now() - interval '365 days'")
    )
    old_rows = old.scalar_one()
    assert old_rows >= 8

    await UserRepository(db_session).enter(TEST_KEY.entry("maintenance"))
    purged = await purge_activity(db_session, 365)
    await leave_scope(db_session)

    assert purged == old_rows
    left = await db_session.scalars(
        select(Activity.kind).where(Activity.workspace_id == world.workspace_id)
    )
    assert list(left) == ["task.updated"]


@pytest.mark.parametrize("purpose", ["request", "operator"])
async def test_nothing_but_maintenance_may_purge(
    db_session: AsyncSession, world: World, purpose: str
) -> None:
    await _aged(db_session, world, 400)
    if purpose == "request":
        await enter_scope(db_session, world.owner)
    else:
        await UserRepository(db_session).enter(TEST_KEY.entry("operator", world.owner.user_id))
    refused = await _refused(db_session, "SELECT taskmanager_purge_activity(1)")
    await leave_scope(db_session)
    assert refused == INSUFFICIENT_PRIVILEGE


async def test_the_purge_keeps_at_least_a_day(db_session: AsyncSession) -> None:
    await UserRepository(db_session).enter(TEST_KEY.entry("maintenance"))
    refused = await _refused(db_session, "SELECT taskmanager_purge_activity(0)")
    await leave_scope(db_session)
    assert refused == "22023"


async def test_db_purge_activity_purges_what_the_retention_setting_says(
    own_database_url: str, live: AsyncClient, observer: AsyncEngine, tmp_path: Path
) -> None:
    created = await live.post("/tasks", json={"title": "purged later"})
    assert created.status_code == 201, created.text
    async with observer.begin() as connection:
        await connection.execute(
            text("UPDATE activity SET created_at = now() - interval '40 days' WHERE id IN "
                 "(SELECT id FROM activity ORDER BY id DESC LIMIT 1)")
        )  # fmt: skip
        counts = text(
            "SELECT count(*) FILTER (WHERE created_at < now() - interval '30 days'), count(*) "
            "FROM activity"
        )
        old, total = (await connection.execute(counts)).one()
    assert old >= 1

    completed = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "taskmanager", "db", "purge-activity"],
        env=clean_env(DATABASE_URL=own_database_url, TASKMANAGER_ACTIVITY_RETENTION_DAYS="30"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )

    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output
    assert f"purged {old} activity rows older than 30 days" in output
    async with observer.connect() as connection:
        assert (await connection.execute(counts)).one() == (0, total - old)


# ─────────────────────────────── what a deletion takes along


async def test_a_deleted_workspace_leaves_one_row_which_outlives_it(
    client: AsyncClient, db_session: AsyncSession, world: World
) -> None:
    before = await last_activity_id(db_session)
    response = await client.delete(f"/workspaces/{world.workspace_id}", headers=world.owner.headers)
    assert response.status_code == 204, response.text

    assert [row.kind for row in await activity_after(db_session, before)] == ["workspace.deleted"]
    kept = await db_session.scalars(
        select(Activity.kind)
        .where(Activity.workspace_id == world.workspace_id)
        .order_by(Activity.id)
    )
    assert list(kept)[-1] == "workspace.deleted"
    assert (
        len(
            list(
                await db_session.scalars(
                    select(Activity.id).where(Activity.workspace_id == world.workspace_id)
                )
            )
        )
        == 13  # the world's 12 (its invitations went along unlogged) and the deletion
    )
    # Nobody belongs to it any more: the API shows its log to no one (the operator keeps it).
    gone = await client.get(
        f"/workspaces/{world.workspace_id}/activity", headers=world.viewer.headers
    )
    assert gone.status_code == 404


async def test_a_deleted_task_takes_its_labels_along_unlogged_a_deleted_label_does_not(
    client: AsyncClient, db_session: AsyncSession, world: World
) -> None:
    second = await client.post(
        "/tasks",
        json={"title": "second", "workspace_id": world.workspace_id, "label_ids": [world.label_id]},
        headers=world.owner.headers,
    )
    assert second.status_code == 201
    before = await last_activity_id(db_session)

    assert (
        await client.delete(f"/tasks/{world.task_id}", headers=world.owner.headers)
    ).status_code == 204
    assert (
        await client.delete(f"/labels/{world.label_id}", headers=world.owner.headers)
    ).status_code == 204

    written = [(row.kind, row.object_id) for row in await activity_after(db_session, before)]
    assert written == [
        ("task.deleted", str(world.task_id)),
        ("label.deleted", str(world.label_id)),
        ("task.label_removed", str(second.json()["id"])),
    ]


# ─────────────────────────────── the operator's paths


async def test_claiming_the_unowned_workspaces_is_logged_as_the_new_owner(
    db_session: AsyncSession,
) -> None:
    db_session.add(Workspace(id=2_000_000_001, name="From before accounts"))
    await db_session.flush()
    db_session.add(UnclaimedWorkspace(workspace_id=2_000_000_001))
    await db_session.flush()
    before = await last_activity_id(db_session)

    user = await register_account(
        db_session, TEST_KEY, "claimer.activity@example.com", PASSWORD, claim_unowned=True
    )
    await leave_scope(db_session)

    rows = await activity_after(db_session, before)
    assert [(row.kind, row.workspace_id, row.actor_id) for row in rows] == [
        ("workspace.created", user.personal_workspace_id, user.id),
        ("member.added", user.personal_workspace_id, user.id),
        ("member.added", 2_000_000_001, user.id),
    ]
    assert rows[-1].after == {"role": "owner"}


@pytest.fixture(scope="module")
def seed_url(make_database: Callable[[str], str]) -> str:
    return make_database("activity_seed")


async def test_the_seed_writes_no_activity(seed_url: str) -> None:
    """`db seed`'s tasks, categories and labels are made up: only opening its demo account
    is logged (its personal workspace and membership)."""
    url = seed_url
    engine = create_engine(Settings(database_url=url), url)
    owner = create_engine(Settings(database_url=url), owner_url(url))
    try:
        result = await seed(engine, TEST_KEY, 300, 3, owner_engine=owner)
        await seed(engine, TEST_KEY, 100, 3, fresh=True)
        async with owner.connect() as connection:
            kinds = (await connection.execute(text("SELECT kind FROM activity ORDER BY id"))).all()
            tasks = (await connection.execute(text("SELECT count(*) FROM tasks"))).scalar_one()
    finally:
        await engine.dispose()
        await owner.dispose()
    assert result.email == DEMO_EMAIL
    assert tasks == 100
    assert [kind for (kind,) in kinds] == ["workspace.created", "member.added"]
