"""CategoryRepository against the real test PostgreSQL, no HTTP.

A duplicate name fails the unique index on lower(name) at flush. Inside the conftest's
savepoint fixture the failing call runs in `begin_nested()`, so only that savepoint is
rolled back and the test's own transaction carries on, as the request's would.
"""

from __future__ import annotations

import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from taskmanager.errors import translate_database_error
from taskmanager.models import Category, Task
from taskmanager.repositories.category_repository import CategoryRepository
from taskmanager.repositories.task_repository import TaskRepository
from taskmanager.security.scope import Scope


@pytest.fixture
def repo(db_session: AsyncSession, scope: Scope) -> CategoryRepository:
    return CategoryRepository(db_session, scope)


def personal(scope: Scope) -> int:
    """The account's personal workspace: where `create` puts a category by default."""
    assert scope.personal_workspace_id is not None
    return scope.personal_workspace_id


async def stored_names(db_session: AsyncSession) -> list[str]:
    result = await db_session.execute(select(Category.name).order_by(Category.id))
    return list(result.scalars().all())


# ─────────────────────────────── create / get


async def test_create_returns_category_with_database_fields(
    repo: CategoryRepository, db_session: AsyncSession, scope: Scope
) -> None:
    category = await repo.create("Work")

    assert isinstance(category.id, int)
    assert category.name == "Work"
    assert category.workspace_id == personal(scope)  # no workspace named: the personal one
    assert category.created_at.tzinfo is not None
    assert await stored_names(db_session) == ["Work"]


@pytest.mark.parametrize("duplicate", ["Work", "work", "WORK", "wORK"])
async def test_create_duplicate_name_in_any_case_fails_at_flush_as_409(
    repo: CategoryRepository, db_session: AsyncSession, duplicate: str
) -> None:
    await repo.create("Work")

    with pytest.raises(sa_exc.IntegrityError) as raised:
        async with db_session.begin_nested():
            await repo.create(duplicate)

    problem = translate_database_error(raised.value)
    assert problem is not None
    assert problem.status_code == 409
    assert b"body.name" in problem.body
    # Only the savepoint was rolled back: the session still works.
    await repo.create("Home")
    assert await stored_names(db_session) == ["Work", "Home"]


@pytest.mark.parametrize("name", ["", "   "])
async def test_database_refuses_blank_names(
    repo: CategoryRepository, db_session: AsyncSession, name: str
) -> None:
    with pytest.raises(sa_exc.IntegrityError) as raised:
        async with db_session.begin_nested():
            await repo.create(name)

    problem = translate_database_error(raised.value)
    assert problem is not None
    assert problem.status_code == 422
    assert b"body.name" in problem.body


async def test_get_by_id(repo: CategoryRepository, db_session: AsyncSession) -> None:
    created = await repo.create("Work")
    db_session.expunge_all()

    found = await repo.get_by_id(created.id)

    assert found is not None
    assert (found.id, found.name) == (created.id, "Work")
    assert await repo.get_by_id(999_999) is None


async def test_category_tasks_relationship_is_lazy_raise(
    repo: CategoryRepository, db_session: AsyncSession
) -> None:
    created = await repo.create("Work")
    db_session.expunge_all()
    found = await repo.get_by_id(created.id)
    assert found is not None

    with pytest.raises(sa_exc.InvalidRequestError, match="lazy='raise'"):
        _ = found.tasks


# ─────────────────────────────── get_all


async def test_get_all_orders_by_name_ignoring_case(repo: CategoryRepository) -> None:
    for name in ("beta", "Alpha", "gamma", "Delta", "alphabet"):
        await repo.create(name)

    names = [c.name for c in await repo.get_all()]

    assert names == ["Alpha", "alphabet", "beta", "Delta", "gamma"]


async def test_get_all_empty(repo: CategoryRepository) -> None:
    assert await repo.get_all() == []


# ─────────────────────────────── rename


async def test_rename(repo: CategoryRepository, db_session: AsyncSession) -> None:
    category = await repo.create("Wrok")

    renamed = await repo.rename(category, "Work")

    assert renamed is category
    assert category.name == "Work"
    assert await stored_names(db_session) == ["Work"]


async def test_rename_to_own_name_in_other_case(
    repo: CategoryRepository, db_session: AsyncSession
) -> None:
    category = await repo.create("work")

    await repo.rename(category, "WORK")

    assert await stored_names(db_session) == ["WORK"]


async def test_rename_to_taken_name_fails_at_flush(
    repo: CategoryRepository, db_session: AsyncSession
) -> None:
    await repo.create("Work")
    home = await repo.create("Home")

    with pytest.raises(sa_exc.IntegrityError) as raised:
        async with db_session.begin_nested():
            await repo.rename(home, "wORK")

    problem = translate_database_error(raised.value)
    assert problem is not None
    assert problem.status_code == 409
    assert await stored_names(db_session) == ["Work", "Home"]


# ─────────────────────────────── delete


async def test_delete_sets_its_tasks_category_to_null(
    repo: CategoryRepository, db_session: AsyncSession, scope: Scope
) -> None:
    tasks = TaskRepository(db_session, scope)
    work = await repo.create("Work")
    home = await repo.create("Home")
    in_work = await tasks.create(title="W", category_id=work.id)
    in_home = await tasks.create(title="H", category_id=home.id)

    await repo.delete(work)

    # A fresh select sees what PostgreSQL's ON DELETE SET NULL did ...
    result = await db_session.execute(select(Task.id, Task.category_id).order_by(Task.id))
    assert result.all() == [(in_work.id, None), (in_home.id, home.id)]
    # ... an object already in the identity map needs a refresh to see it.
    await db_session.refresh(in_work)
    assert in_work.category_id is None
    assert await repo.get_by_id(work.id) is None
    assert [c.name for c in await repo.get_all()] == ["Home"]
    assert await tasks.count() == 2


async def test_delete_category_without_tasks(
    repo: CategoryRepository, db_session: AsyncSession
) -> None:
    work = await repo.create("Work")
    await repo.delete(work)
    assert await stored_names(db_session) == []


# ─────────────────────────────── ensure_names


async def count_categories(db_session: AsyncSession) -> int:
    result = await db_session.execute(select(func.count()).select_from(Category))
    return int(result.scalar_one())


async def test_ensure_names_creates_missing_and_returns_ids(
    repo: CategoryRepository, db_session: AsyncSession, scope: Scope
) -> None:
    ids = await repo.ensure_names(["Work", "Home"], personal(scope))

    assert len(ids) == 2
    by_id = {c.id: c.name for c in await repo.get_all()}
    assert sorted(by_id[i] for i in ids) == ["Home", "Work"]


async def test_ensure_names_is_idempotent(
    repo: CategoryRepository, db_session: AsyncSession, scope: Scope
) -> None:
    first = await repo.ensure_names(["Work", "Home"], personal(scope))
    second = await repo.ensure_names(["Work", "Home"], personal(scope))

    assert first == second
    assert await count_categories(db_session) == 2


async def test_ensure_names_ignores_case(
    repo: CategoryRepository, db_session: AsyncSession, scope: Scope
) -> None:
    existing = await repo.create("Work")

    ids = await repo.ensure_names(["WORK", "work", "Gym", "GYM"], personal(scope))

    assert existing.id in ids
    assert len(ids) == 2
    # One row per name whatever its case, and the stored spelling is kept (never renamed).
    assert sorted(await stored_names(db_session)) == ["Gym", "Work"]


async def test_ensure_names_empty(
    repo: CategoryRepository, db_session: AsyncSession, scope: Scope
) -> None:
    assert await repo.ensure_names([], personal(scope)) == []
    assert await count_categories(db_session) == 0
