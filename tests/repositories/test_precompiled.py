"""Precompiled statements (repositories/precompiled.py) answer exactly what SQLAlchemy's own
execution of the same statement answers, on real rows: every column of a task view (the
priority enum, timestamps, no or some category, no or several labels as JSON), the caller's
entry (the memberships array, the roles as JSON), and pages of the list in every sort, with
filters, with and without a cursor's keys."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from taskmanager.repositories.category_repository import CategoryRepository
from taskmanager.repositories.label_repository import LabelRepository
from taskmanager.repositories.precompiled import Precompiled, precompiled
from taskmanager.repositories.task_queries.filters import (
    TaskFilters,
    active_filters,
    filter_parameters,
)
from taskmanager.repositories.task_queries.statements import page_keys, page_statement
from taskmanager.repositories.task_queries.views import VIEW_BY_ID
from taskmanager.repositories.task_repository import TaskRepository
from taskmanager.repositories.user_repository import _ENTER_ROW
from taskmanager.security.scope import Scope
from tests.support.accounts import Account
from tests.support.databases import TEST_KEY


async def test_a_task_view_reads_the_same_both_ways(db_session: AsyncSession, scope: Scope) -> None:
    workspace_id = scope.workspace_for_new_row(None)
    repo = TaskRepository(db_session, scope)
    [category_id] = await CategoryRepository(db_session, scope).ensure_names(["Home"], workspace_id)
    label_ids = await LabelRepository(db_session, scope).ensure_names(
        [("urgent", "#ff0000"), ("Later", None), ("b", None)], workspace_id
    )
    due = datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)
    tasks = [
        await repo.create("bare"),
        await repo.create(
            "full",
            description="with — everything ✓",
            category_id=category_id,
            completed=True,
            due_at=due,
            priority="urgent",
            label_ids=label_ids,
        ),
        await repo.create("one label", due_at=due - timedelta(days=400), label_ids=label_ids[:1]),
    ]
    for task in tasks:
        parameters = {"task_id": task.id, "workspace_ids": list(scope.workspace_ids)}
        by_sqlalchemy = (await db_session.execute(VIEW_BY_ID, parameters)).one()
        by_precompiled = (await precompiled(VIEW_BY_ID).execute(db_session, parameters)).one()
        assert tuple(by_precompiled) == tuple(by_sqlalchemy)
        assert [type(v) for v in by_precompiled] == [type(v) for v in by_sqlalchemy]
        assert by_precompiled._fields == by_sqlalchemy._fields
    assert (await repo.get_view(tasks[1].id)) is not None
    # Out of scope: no row either way.
    parameters = {"task_id": tasks[0].id, "workspace_ids": [-1]}
    assert (await precompiled(VIEW_BY_ID).execute(db_session, parameters)).first() is None


async def test_the_callers_entry_reads_the_same_both_ways(
    db_session: AsyncSession, account: Account
) -> None:
    entry = TEST_KEY.entry("operator", account.user_id)
    parameters = {
        "user_id": entry.user_id,
        "session_id": entry.session_id,
        "purpose": entry.purpose,
        "valid_until": entry.valid_until,
        "proof": entry.proof,
        "subject": entry.subject,
        "request_id": "a-request",
    }
    async with db_session.begin_nested():
        by_sqlalchemy = (await db_session.execute(_ENTER_ROW, parameters)).one()
        request_id = (
            await db_session.execute(text("SELECT current_setting('taskmanager.request_id')"))
        ).scalar()
    async with db_session.begin_nested():
        by_precompiled = (await precompiled(_ENTER_ROW).execute(db_session, parameters)).one()
    assert tuple(by_precompiled) == tuple(by_sqlalchemy)
    assert by_precompiled._fields == by_sqlalchemy._fields
    assert by_precompiled.workspace_roles  # the roles, decoded from JSON
    assert request_id == "a-request"


async def test_a_missing_value_is_an_error_as_in_execute(db_session: AsyncSession) -> None:
    with pytest.raises(Exception, match="task_id"):
        await precompiled(VIEW_BY_ID).execute(db_session, {"workspace_ids": [1]})


def test_one_precompiled_form_per_statement() -> None:
    assert precompiled(VIEW_BY_ID) is precompiled(VIEW_BY_ID)
    assert isinstance(precompiled(_ENTER_ROW), Precompiled)
    assert precompiled(_ENTER_ROW) is not precompiled(VIEW_BY_ID)


@pytest.mark.parametrize(
    ("filters", "sort"),
    [
        (TaskFilters(), "newest"),
        (TaskFilters(), "oldest"),
        (TaskFilters(), "due"),
        (TaskFilters(), "priority"),
        (TaskFilters(), "title"),
        (TaskFilters(completed=False, priority="urgent"), "newest"),
        (TaskFilters(due_before=datetime(2031, 1, 1, tzinfo=UTC), overdue=False), "due"),
        (TaskFilters(q="milk"), "relevance"),
        (TaskFilters(q="milk"), "newest"),
    ],
)
async def test_a_page_reads_the_same_both_ways(
    db_session: AsyncSession, scope: Scope, filters: TaskFilters, sort: str
) -> None:
    repo = TaskRepository(db_session, scope)
    due = datetime(2030, 5, 6, tzinfo=UTC)
    for n in range(6):
        await repo.create(
            f"buy milk {n}" if n % 2 else f"task {n}",
            due_at=due + timedelta(days=n) if n % 3 else None,
            priority=("low", "urgent", "high")[n % 3],
            completed=n == 4,
        )
    active = active_filters(filters)
    parameters: dict[str, object] = {
        **filter_parameters(filters, active),
        "workspace_ids": list(scope.workspace_ids),
        "limit": 4,
        "offset": 0,
    }
    for after in (False, True):  # the first page, then the page after its first task
        statement = page_statement(active, sort, counted=True, after=after)
        by_sqlalchemy = (await db_session.execute(statement, parameters)).all()
        by_precompiled = (await precompiled(statement).execute(db_session, parameters)).all()
        assert [tuple(row) for row in by_precompiled] == [tuple(row) for row in by_sqlalchemy]
        if after:
            break
        assert by_precompiled, "the filters should find some tasks"
        keys = page_keys(by_precompiled[0], sort)
        parameters.update({f"after_{i}": value for i, value in enumerate(keys)})
