"""TaskRepository against the real test PostgreSQL, no HTTP (lecture 6.4's second layer).

Each test runs in the conftest's rolled-back transaction. Where a test checks what is
STORED, it reads with a Core select or after `expunge_all()`, since the session's identity
map would otherwise hand back the very objects the test just changed.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import distinct, func, select
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncSession

from taskmanager.errors import translate_database_error
from taskmanager.models import Category, Task, TaskLabel
from taskmanager.repositories.category_repository import CategoryRepository
from taskmanager.repositories.label_repository import LabelRepository
from taskmanager.repositories.task_queries.bulk import BULK_TASK_COLUMNS
from taskmanager.repositories.task_queries.filters import LIST_FILTERS, TaskFilters
from taskmanager.repositories.task_repository import TaskRepository
from taskmanager.security.scope import Scope
from tests.support.accounts import Account

BASE = datetime(2024, 1, 1, tzinfo=UTC)


@pytest.fixture
def repo(db_session: AsyncSession, scope: Scope) -> TaskRepository:
    return TaskRepository(db_session, scope)


async def stored(db_session: AsyncSession, task_id: int) -> Any:
    result = await db_session.execute(select(Task.__table__).where(Task.id == task_id))
    return result.one_or_none()


async def make_category(db_session: AsyncSession, name: str) -> Category:
    return await CategoryRepository(db_session, db_session.info["scope"]).create(name)


def personal(scope: Scope) -> int:
    """The account's personal workspace: where `create` puts a task by default."""
    assert scope.personal_workspace_id is not None
    return scope.personal_workspace_id


async def add_task_at(
    db_session: AsyncSession, title: str, created_at: datetime, **kw: Any
) -> Task:
    """A task with explicit timestamps (one transaction's now() never moves), in the
    account's personal workspace."""
    workspace_id = personal(db_session.info["scope"])
    task = Task(
        title=title, created_at=created_at, updated_at=created_at, workspace_id=workspace_id, **kw
    )
    db_session.add(task)
    await db_session.flush()
    return task


# ─────────────────────────────── create


async def test_create_returns_task_with_database_generated_fields(
    repo: TaskRepository, db_session: AsyncSession, scope: Scope
) -> None:
    task = await repo.create(title="Buy milk", description="2%")

    assert isinstance(task.id, int)
    assert task.completed is False
    assert task.created_at.tzinfo is not None
    assert task.updated_at == task.created_at
    assert task.category is None  # readable: create says "no category" instead of lazy-loading
    row = await stored(db_session, task.id)
    assert (row.title, row.description, row.completed, row.category_id, row.workspace_id) == (
        "Buy milk",
        "2%",
        False,
        None,
        personal(scope),  # no workspace named: the caller's personal one
    )


async def test_create_with_category_loads_it(
    repo: TaskRepository, db_session: AsyncSession
) -> None:
    work = await make_category(db_session, "Work")

    task = await repo.create(title="Report", category_id=work.id, completed=True)

    assert task.category is not None
    assert (task.category.id, task.category.name) == (work.id, "Work")
    assert task.completed is True
    assert (await stored(db_session, task.id)).category_id == work.id


async def test_create_with_unknown_category_fails_at_flush_as_422_category_id(
    repo: TaskRepository, db_session: AsyncSession
) -> None:
    with pytest.raises(sa_exc.IntegrityError) as raised:
        async with db_session.begin_nested():
            await repo.create(title="Orphan", category_id=999_999)

    problem = translate_database_error(raised.value)
    assert problem is not None
    assert problem.status_code == 422
    assert b"body.category_id" in problem.body
    # The savepoint rolled back; the session (and the test's transaction) is usable.
    assert await repo.count() == 0
    await repo.create(title="Fine")
    assert await repo.count() == 1


@pytest.mark.parametrize("title", ["", "   "])
async def test_database_refuses_blank_titles_even_past_pydantic(
    repo: TaskRepository, db_session: AsyncSession, title: str
) -> None:
    with pytest.raises(sa_exc.IntegrityError) as raised:
        async with db_session.begin_nested():
            await repo.create(title=title)

    problem = translate_database_error(raised.value)
    assert problem is not None
    assert problem.status_code == 422
    assert b"body.title" in problem.body


async def test_database_refuses_titles_over_200_chars(
    repo: TaskRepository, db_session: AsyncSession
) -> None:
    with pytest.raises(sa_exc.DBAPIError) as raised:
        async with db_session.begin_nested():
            await repo.create(title="x" * 201)

    problem = translate_database_error(raised.value)
    assert problem is not None
    assert problem.status_code == 422


# ─────────────────────────────── get_by_id / get_by_id_with_category


async def test_get_by_id(repo: TaskRepository, db_session: AsyncSession) -> None:
    created = await repo.create(title="Find me")
    db_session.expunge_all()

    found = await repo.get_by_id(created.id)

    assert found is not None
    assert found is not created
    assert (found.id, found.title) == (created.id, "Find me")


async def test_get_by_id_unknown_is_none(repo: TaskRepository) -> None:
    assert await repo.get_by_id(999_999) is None
    assert await repo.get_by_id_with_category(999_999) is None


async def test_get_by_id_does_not_load_category_and_access_raises(
    repo: TaskRepository, db_session: AsyncSession
) -> None:
    """The lecture's Mistake 2, made loud: lazy="raise" instead of MissingGreenlet."""
    work = await make_category(db_session, "Work")
    created = await repo.create(title="Lazy", category_id=work.id)
    db_session.expunge_all()  # otherwise get_by_id returns `created`, category already loaded

    task = await repo.get_by_id(created.id)

    assert task is not None
    assert task.category_id == work.id  # the column is there ...
    with pytest.raises(sa_exc.InvalidRequestError, match="lazy='raise'"):
        _ = task.category  # ... the relationship was never loaded


async def test_get_by_id_with_category_loads_it(
    repo: TaskRepository, db_session: AsyncSession
) -> None:
    work = await make_category(db_session, "Work")
    with_category = await repo.create(title="With", category_id=work.id)
    without = await repo.create(title="Without")
    db_session.expunge_all()

    loaded = await repo.get_by_id_with_category(with_category.id)
    loaded_none = await repo.get_by_id_with_category(without.id)

    assert loaded is not None
    assert loaded.category is not None
    assert loaded.category.name == "Work"
    assert loaded_none is not None
    assert loaded_none.category is None


# ─────────────────────────────── get_all / count


async def test_get_all_newest_first_then_id_desc(
    repo: TaskRepository, db_session: AsyncSession
) -> None:
    # ids ascend in insertion order; created_at disagrees, and two tasks tie on it.
    late = await add_task_at(db_session, "late", BASE + timedelta(days=2))
    early = await add_task_at(db_session, "early", BASE)
    tie_a = await add_task_at(db_session, "tie-a", BASE + timedelta(days=1))
    tie_b = await add_task_at(db_session, "tie-b", BASE + timedelta(days=1))

    tasks = await repo.get_all()

    assert [t.id for t in tasks] == [late.id, tie_b.id, tie_a.id, early.id]


async def test_get_all_on_empty_table(repo: TaskRepository) -> None:
    assert await repo.get_all() == []
    assert await repo.count() == 0


async def test_get_all_loads_categories(repo: TaskRepository, db_session: AsyncSession) -> None:
    work = await make_category(db_session, "Work")
    await repo.create(title="with", category_id=work.id)
    await repo.create(title="without")
    db_session.expunge_all()

    tasks = await repo.get_all()

    by_title = {t.title: t for t in tasks}
    assert by_title["with"].category is not None
    assert by_title["with"].category.name == "Work"
    assert by_title["without"].category is None


async def seed_filterable(repo: TaskRepository, db_session: AsyncSession) -> dict[str, int]:
    work = await make_category(db_session, "Work")
    home = await make_category(db_session, "Home")
    specs = [
        ("Write REPORT", True, work.id),
        ("report draft", False, work.id),
        ("Paint fence", False, home.id),
        ("Report taxes", True, None),
        ("100% effort", False, None),
        ("snake_case", False, None),
    ]
    ids = {}
    for title, completed, category_id in specs:
        task = await repo.create(title=title, completed=completed, category_id=category_id)
        ids[title] = task.id
    return {"work": work.id, "home": home.id, **ids}


def test_every_filter_field_has_its_clause() -> None:
    """A TaskFilters field without a ListFilter would be silently ignored: unfiltered rows.
    (Sorted: the clauses' order in the WHERE is free, and workspace_id comes first there.
    A filter with a clause per value, such as overdue, is counted once.)"""
    assert sorted({f.name for f in LIST_FILTERS}) == sorted(
        f.name for f in dataclasses.fields(TaskFilters)
    )


@pytest.mark.parametrize(
    ("make_filters", "expected"),
    [
        (lambda ids: TaskFilters(), None),
        (lambda ids: TaskFilters(completed=True), ["Report taxes", "Write REPORT"]),
        (
            lambda ids: TaskFilters(completed=False),
            ["snake_case", "100% effort", "Paint fence", "report draft"],
        ),
        (lambda ids: TaskFilters(category_id=ids["work"]), ["report draft", "Write REPORT"]),
        (lambda ids: TaskFilters(category_id=ids["home"]), ["Paint fence"]),
        (lambda ids: TaskFilters(category_id=999_999), []),
        (lambda ids: TaskFilters(q="report"), ["Report taxes", "report draft", "Write REPORT"]),
        (lambda ids: TaskFilters(q="REPORT"), ["Report taxes", "report draft", "Write REPORT"]),
        # q is a search for word prefixes, not a substring: punctuation only separates words.
        (lambda ids: TaskFilters(q="rep"), ["Report taxes", "report draft", "Write REPORT"]),
        (lambda ids: TaskFilters(q="effort 100%"), ["100% effort"]),
        (lambda ids: TaskFilters(q="case snake"), ["snake_case"]),
        (lambda ids: TaskFilters(q="e_c"), []),
        (lambda ids: TaskFilters(q="%"), []),  # no word at all (the API answers 422)
        (lambda ids: TaskFilters(q="nothing like it"), []),
        (lambda ids: TaskFilters(completed=True, category_id=ids["work"]), ["Write REPORT"]),
        (
            lambda ids: TaskFilters(completed=False, category_id=ids["work"], q="draft"),
            ["report draft"],
        ),
    ],
)
async def test_get_all_and_count_apply_filters(
    repo: TaskRepository, db_session: AsyncSession, make_filters: Any, expected: list[str] | None
) -> None:
    ids = await seed_filterable(repo, db_session)
    filters = make_filters(ids)
    all_titles = [title for title in ids if title not in ("work", "home")]
    if expected is None:
        expected = list(reversed(all_titles))

    tasks = await repo.get_all(filters)

    assert [t.title for t in tasks] == expected
    assert await repo.count(filters) == len(expected)


async def test_get_all_completed_shorthand(repo: TaskRepository, db_session: AsyncSession) -> None:
    await seed_filterable(repo, db_session)

    done = await repo.get_all(completed=True)

    assert [t.title for t in done] == ["Report taxes", "Write REPORT"]


async def test_get_all_paginates_in_order(repo: TaskRepository) -> None:
    created = [await repo.create(title=f"Task {n}") for n in range(7)]
    newest_first = [t.id for t in reversed(created)]

    pages = [await repo.get_all(limit=3, offset=offset) for offset in (0, 3, 6, 9)]

    assert [[t.id for t in page] for page in pages] == [
        newest_first[0:3],
        newest_first[3:6],
        newest_first[6:7],
        [],
    ]
    assert len(await repo.get_all()) == 7  # default limit 50
    assert await repo.count() == 7  # count ignores pagination


async def test_get_all_default_limit_is_50(repo: TaskRepository) -> None:
    for n in range(52):
        await repo.create(title=f"Task {n}")
    assert len(await repo.get_all()) == 50
    assert await repo.count() == 52


# ─────────────────────────────── update


async def test_update_changes_given_fields_only(
    repo: TaskRepository, db_session: AsyncSession
) -> None:
    task = await repo.create(title="Old", description="keep")

    updated = await repo.update(task, {"title": "New", "completed": True})

    assert updated is task
    assert (task.title, task.description, task.completed) == ("New", "keep", True)
    row = await stored(db_session, task.id)
    assert (row.title, row.description, row.completed) == ("New", "keep", True)


async def test_update_accepts_keyword_changes(
    repo: TaskRepository, db_session: AsyncSession
) -> None:
    task = await repo.create(title="Old", description="drop")

    await repo.update(task, description=None)

    assert (await stored(db_session, task.id)).description is None


async def test_update_unknown_field_raises_value_error_and_changes_nothing(
    repo: TaskRepository, db_session: AsyncSession
) -> None:
    task = await repo.create(title="Safe")

    with pytest.raises(ValueError, match="id"):
        await repo.update(task, {"title": "Hacked", "id": 12345})
    with pytest.raises(ValueError, match="created_at"):
        await repo.update(task, created_at=BASE)

    assert task.title == "Safe"
    assert (await stored(db_session, task.id)).title == "Safe"


async def test_update_category_reloads_the_relationship(
    repo: TaskRepository, db_session: AsyncSession
) -> None:
    work = await make_category(db_session, "Work")
    home = await make_category(db_session, "Home")
    created = await repo.create(title="Move", category_id=work.id)
    db_session.expunge_all()
    task = await repo.get_by_id_with_category(created.id)
    assert task is not None

    await repo.update(task, {"category_id": home.id})

    assert task.category is not None
    assert (task.category.id, task.category.name) == (home.id, "Home")
    assert (await stored(db_session, task.id)).category_id == home.id

    await repo.update(task, {"category_id": None})

    assert task.category is None
    assert (await stored(db_session, task.id)).category_id is None


async def test_update_category_on_task_loaded_without_it(
    repo: TaskRepository, db_session: AsyncSession
) -> None:
    home = await make_category(db_session, "Home")
    created = await repo.create(title="Move")
    db_session.expunge_all()
    task = await repo.get_by_id(created.id)
    assert task is not None

    await repo.update(task, {"category_id": home.id})

    assert task.category is not None
    assert task.category.name == "Home"


async def test_update_moves_updated_at_readable_without_lazy_load(
    repo: TaskRepository, db_session: AsyncSession
) -> None:
    task = await add_task_at(db_session, "Old", BASE)

    await repo.update(task, {"title": "Touched"})

    # eager_defaults: UPDATE ... RETURNING updated_at, so this is no lazy load (which
    # would fail in async code) and holds the new value.
    assert task.updated_at > BASE
    assert task.created_at == BASE
    assert (await stored(db_session, task.id)).updated_at == task.updated_at


async def test_update_to_unknown_category_fails_at_flush(
    repo: TaskRepository, db_session: AsyncSession
) -> None:
    task = await repo.create(title="Keep")
    task_id = task.id

    with pytest.raises(sa_exc.IntegrityError):
        async with db_session.begin_nested():
            await repo.update(task, {"category_id": 999_999})

    assert (await stored(db_session, task_id)).category_id is None


# ─────────────────────────────── delete


async def test_delete_removes_only_that_task(
    repo: TaskRepository, db_session: AsyncSession
) -> None:
    doomed = await repo.create(title="Doomed")
    kept = await repo.create(title="Kept")

    await repo.delete(doomed)

    assert await stored(db_session, doomed.id) is None
    assert await stored(db_session, kept.id) is not None
    assert await repo.get_by_id(doomed.id) is None
    assert await repo.count() == 1


async def test_delete_keeps_the_category(
    repo: TaskRepository, db_session: AsyncSession, scope: Scope
) -> None:
    work = await make_category(db_session, "Work")
    task = await repo.create(title="Doomed", category_id=work.id)

    await repo.delete(task)

    assert await CategoryRepository(db_session, scope).get_by_id(work.id) is not None


# ─────────────────────────────── bulk_insert


async def test_bulk_insert_stores_rows_in_bulk_task_columns_order(
    repo: TaskRepository, db_session: AsyncSession, scope: Scope, other_account: Account
) -> None:
    assert BULK_TASK_COLUMNS == (
        "workspace_id",
        "title",
        "description",
        "completed",
        "category_id",
        "created_at",
        "updated_at",
        "due_at",
        "priority",
    )
    work = await make_category(db_session, "Work")
    mine = personal(scope)
    later = BASE + timedelta(hours=1)
    rows = [
        (mine, "first", "one", False, work.id, BASE, BASE, None, "low"),
        (mine, "second", None, True, None, later, BASE + timedelta(hours=2), BASE, "urgent"),
        (
            mine,
            "third",
            "three",
            False,
            work.id,
            BASE + timedelta(days=1),
            BASE + timedelta(days=1),
            BASE + timedelta(days=2),
            "normal",
        ),
    ]
    # A row for a workspace outside the caller's scope is left out, not inserted.
    foreign = (
        other_account.personal_workspace_id, "not mine", None, False, None, BASE, BASE, None, "low"
    )  # fmt: skip

    inserted = await repo.bulk_insert([*rows, foreign])

    assert inserted == 3
    result = await db_session.execute(
        select(
            Task.workspace_id,
            Task.title,
            Task.description,
            Task.completed,
            Task.category_id,
            Task.created_at,
            Task.updated_at,
            Task.due_at,
            Task.priority,
        ).order_by(Task.id)
    )
    assert [tuple(row) for row in result.all()] == rows
    # ORM reads see them too, newest first, with the category loaded.
    tasks = await repo.get_all()
    assert [t.title for t in tasks] == ["third", "second", "first"]
    assert tasks[0].category is not None
    assert tasks[0].category.name == "Work"
    assert await repo.count(TaskFilters(category_id=work.id)) == 2


async def test_bulk_insert_gives_completed_tasks_their_completed_at(
    repo: TaskRepository, db_session: AsyncSession, scope: Scope
) -> None:
    """The API's rule, kept in bulk too: a completed task has completed_at (the moment it
    was last changed, its updated_at), an open one none."""
    mine = personal(scope)
    done_at = BASE + timedelta(days=3)
    rows = [
        (mine, "open", None, False, None, BASE, BASE + timedelta(days=1), None, "low"),
        (mine, "done", None, True, None, BASE, done_at, None, "low"),
    ]

    assert await repo.bulk_insert(rows) == 2

    result = await db_session.execute(
        select(Task.title, Task.completed, Task.completed_at).order_by(Task.id)
    )
    assert [tuple(row) for row in result.all()] == [
        ("open", False, None),
        ("done", True, done_at),
    ]


async def test_delete_all_in_workspace_deletes_its_tasks_and_their_labels(
    repo: TaskRepository, db_session: AsyncSession, scope: Scope, other_account: Account
) -> None:
    mine = personal(scope)
    labels = await LabelRepository(db_session, scope).ensure_names([("seeded", None)], mine)
    rows = [(mine, f"task {n}", None, False, None, BASE, BASE, None, "low") for n in range(40)]
    await repo.bulk_insert(rows, labels)
    assert await db_session.scalar(select(func.count()).select_from(TaskLabel))

    # A workspace outside the caller's scope: nothing to delete there.
    assert await repo.delete_all_in_workspace(other_account.personal_workspace_id) == 0
    assert await repo.count() == 40

    assert await repo.delete_all_in_workspace(mine) == 40

    assert await repo.count() == 0
    assert await db_session.scalar(select(func.count()).select_from(TaskLabel)) == 0


async def test_bulk_insert_nothing(repo: TaskRepository) -> None:
    assert await repo.bulk_insert([]) == 0
    assert await repo.count() == 0


async def test_bulk_insert_with_labels_gives_each_task_0_to_3_distinct_ones(
    repo: TaskRepository, db_session: AsyncSession, scope: Scope, other_account: Account
) -> None:
    mine = personal(scope)
    label_ids = await LabelRepository(db_session, scope).ensure_names(
        [(f"label {n}", None) for n in range(5)], mine
    )
    rows = [(mine, f"task {n}", None, False, None, BASE, BASE, None, "low") for n in range(400)]
    foreign = (
        other_account.personal_workspace_id, "not mine", None, False, None, BASE, BASE, None, "low"
    )  # fmt: skip

    assert await repo.bulk_insert([*rows, foreign], label_ids) == 400

    result = await db_session.execute(
        select(Task.id, func.count(TaskLabel.label_id), func.count(distinct(TaskLabel.label_id)))
        .outerjoin(TaskLabel, TaskLabel.task_id == Task.id)
        .group_by(Task.id)
    )
    per_task = {task_id: (count, unique) for task_id, count, unique in result.all()}
    assert len(per_task) == 400
    assert all(count == unique for count, unique in per_task.values())  # never twice
    assert {count for count, _ in per_task.values()} == {0, 1, 2, 3}
    used = await db_session.execute(select(TaskLabel.label_id, TaskLabel.workspace_id).distinct())
    assert {(label_id, mine) for label_id in label_ids} == set(used.all())
    # The label filter finds exactly the tasks the rows say carry the label.
    first = label_ids[0]
    carrying = await db_session.execute(
        select(func.count()).select_from(TaskLabel).where(TaskLabel.label_id == first)
    )
    assert (await repo.get_page(TaskFilters(label_ids=(first,)))).total == carrying.scalar_one()
