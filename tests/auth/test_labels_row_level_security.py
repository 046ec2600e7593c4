"""Labels under row-level security, and the composite keys that keep a label on tasks of
its own workspace: what holds even for code that skips the application's checks."""

from __future__ import annotations

import pytest
from httpx import AsyncClient
from sqlalchemy import delete, insert, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from taskmanager.models import FK_TASK_LABELS_LABEL, FK_TASK_LABELS_TASK, Label, TaskLabel
from tests.support.accounts import Account
from tests.support.accounts import created_by as post
from tests.support.row_level_security import (
    assert_nothing_matches,
    assert_refused_by_the_policies,
    enter_scope,
    leave_scope,
    rows,
)


async def test_labels_and_their_rows_of_another_workspace_are_invisible(
    client: AsyncClient, db_session: AsyncSession, account: Account, other_account: Account
) -> None:
    mine = await post(client, account, "/labels", {"name": "alice's"})
    await post(client, account, "/tasks", {"title": "a", "label_ids": [mine["id"]]})
    theirs = await post(client, other_account, "/labels", {"name": "mallory's"})
    await post(client, other_account, "/tasks", {"title": "m", "label_ids": [theirs["id"]]})

    # The control: as mallory, the unscoped queries find her rows.
    await enter_scope(db_session, other_account)
    assert theirs["id"] in (await db_session.scalars(select(Label.id))).all()
    assert theirs["id"] in (await db_session.scalars(select(TaskLabel.label_id))).all()
    await leave_scope(db_session)

    await enter_scope(db_session, account)
    assert mine["id"] in (await db_session.scalars(select(Label.id))).all()
    assert await rows(db_session, select(Label).where(Label.id == theirs["id"])) == []
    raw = await rows(db_session, text("SELECT label_id, workspace_id FROM task_labels"))
    assert raw
    assert all(row.workspace_id == account.personal_workspace_id for row in raw)


async def test_writing_labels_into_another_workspace_is_refused_by_postgresql(
    client: AsyncClient, db_session: AsyncSession, account: Account, other_account: Account
) -> None:
    mine = await post(client, account, "/labels", {"name": "alice's"})
    my_task = await post(client, account, "/tasks", {"title": "a"})
    theirs = await post(client, other_account, "/labels", {"name": "mallory's"})
    their_task = await post(client, other_account, "/tasks", {"title": "m"})
    mallory_workspace = other_account.personal_workspace_id
    await enter_scope(db_session, account)

    refused = {
        "a label in mallory's workspace": insert(Label).values(
            workspace_id=mallory_workspace, name="planted"
        ),
        "mallory's label on mallory's task": insert(TaskLabel).values(
            task_id=their_task["id"], label_id=theirs["id"], workspace_id=mallory_workspace
        ),
        "alice's label moved to mallory's workspace": update(Label)
        .where(Label.id == mine["id"])
        .values(workspace_id=mallory_workspace),
    }
    await assert_refused_by_the_policies(db_session, refused)

    # Rows the policies hide cannot be changed or deleted: nothing matches.
    await assert_nothing_matches(
        db_session,
        (
            update(Label).where(Label.id == theirs["id"]).values(name="defaced"),
            delete(Label).where(Label.id == theirs["id"]),
            delete(TaskLabel).where(TaskLabel.workspace_id == mallory_workspace),
        ),
    )
    assert my_task["labels"] == []


async def test_a_label_never_joins_a_task_of_another_workspace_even_of_the_same_user(
    client: AsyncClient, db_session: AsyncSession, account: Account
) -> None:
    """Both of alice's workspaces pass the policies; the composite foreign keys refuse a
    row whose label and task live in different workspaces, whichever workspace it names."""
    team = await post(client, account, "/workspaces", {"name": "Team"})
    team_label = await post(client, account, "/labels", {"name": "t", "workspace_id": team["id"]})
    personal_task = await post(client, account, "/tasks", {"title": "personal"})
    await enter_scope(db_session, account)

    for workspace_id, constraint in (
        (team["id"], FK_TASK_LABELS_TASK),
        (account.personal_workspace_id, FK_TASK_LABELS_LABEL),
    ):
        with pytest.raises(IntegrityError) as raised:
            async with db_session.begin_nested():
                await db_session.execute(
                    insert(TaskLabel).values(
                        task_id=personal_task["id"],
                        label_id=team_label["id"],
                        workspace_id=workspace_id,
                    )
                )
        assert constraint in str(raised.value.orig), raised.value
    await leave_scope(db_session)
