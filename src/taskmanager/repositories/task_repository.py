"""TaskRepository: how tasks are found, stored and changed. Flushes, never commits."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, bindparam, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import joinedload

from taskmanager.models import Task

# Columns a client may change through TaskRepository.update.
UPDATABLE_FIELDS = frozenset({"title", "description", "completed", "category_id"})


@dataclass(frozen=True, slots=True)
class TaskFilters:
    """What GET /tasks may filter by; None means "any"."""

    completed: bool | None = None
    category_id: int | None = None
    q: str | None = None


def _escape_like(term: str) -> str:
    return term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _apply_filters(stmt: Select[Any], filters: TaskFilters) -> Select[Any]:
    if filters.completed is not None:
        stmt = stmt.where(Task.completed == filters.completed)
    if filters.category_id is not None:
        stmt = stmt.where(Task.category_id == filters.category_id)
    if filters.q:
        stmt = stmt.where(Task.title.ilike(f"%{_escape_like(filters.q)}%", escape="\\"))
    return stmt


# Built once: the hot paths skip statement construction and cache-key generation.
_BY_ID = select(Task).where(Task.id == bindparam("task_id"))
_BY_ID_WITH_CATEGORY = _BY_ID.options(joinedload(Task.category))


class TaskRepository:
    """Encapsulates all database operations for Tasks."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get_by_id(self, task_id: int) -> Task | None:
        """Fetch a single task by ID (its category is not loaded)."""
        result = await self.session.execute(_BY_ID, {"task_id": task_id})
        return result.scalar_one_or_none()

    async def get_by_id_with_category(self, task_id: int) -> Task | None:
        """Fetch a task with its category eagerly loaded (one statement, a LEFT JOIN)."""
        result = await self.session.execute(_BY_ID_WITH_CATEGORY, {"task_id": task_id})
        return result.scalar_one_or_none()

    async def get_all(
        self,
        filters: TaskFilters | None = None,
        *,
        completed: bool | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[Task]:
        """Tasks newest first, with their categories, filtered and paginated.

        `completed=` is the lecture's shorthand for `TaskFilters(completed=...)`.
        """
        filters = filters or TaskFilters(completed=completed)
        stmt = _apply_filters(select(Task), filters)
        stmt = (
            stmt.options(joinedload(Task.category))
            .order_by(Task.created_at.desc(), Task.id.desc())
            .limit(limit)
            .offset(offset)
        )
        result = await self.session.execute(stmt)
        return list(result.scalars().all())

    async def count(self, filters: TaskFilters | None = None) -> int:
        """How many tasks match `filters` (for X-Total-Count)."""
        stmt = _apply_filters(select(func.count()).select_from(Task), filters or TaskFilters())
        result = await self.session.execute(stmt)
        return int(result.scalar_one())

    async def create(
        self,
        title: str,
        description: str | None = None,
        category_id: int | None = None,
        completed: bool = False,
    ) -> Task:
        """Create a task; id and timestamps come back with the INSERT (RETURNING)."""
        task = Task(
            title=title, description=description, completed=completed, category_id=category_id
        )
        if category_id is None:
            task.category = None  # nothing to load: say so instead of leaving it unloaded
        self.session.add(task)
        await self.session.flush()  # INSERT ... RETURNING; a missing category fails here
        if category_id is not None:
            await self.session.refresh(task, attribute_names=["category"])
        return task

    async def update(
        self, task: Task, changes: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> Task:
        """Apply `changes` (field -> new value) to `task` and flush.

        Unknown field names raise ValueError. If the category changed, it is reloaded so
        the returned task carries the new one.
        """
        changes = {**(changes or {}), **kwargs}
        unknown = set(changes) - UPDATABLE_FIELDS
        if unknown:
            raise ValueError(f"cannot update {', '.join(sorted(unknown))}")
        for key, value in changes.items():
            setattr(task, key, value)
        await self.session.flush()  # UPDATE ... RETURNING updated_at
        if "category_id" in changes:
            await self.session.refresh(task, attribute_names=["category"])
        return task

    async def delete(self, task: Task) -> None:
        """Delete a task."""
        await self.session.delete(task)
        await self.session.flush()

    async def bulk_insert(self, rows: Sequence[tuple[Any, ...]]) -> int:
        """Insert many tasks at once with COPY (rows in BULK_TASK_COLUMNS order).

        For seeding: about a hundred times faster than ORM inserts. Returns the count.
        """
        driver_connection = await _driver_connection(self.session)
        await driver_connection.copy_records_to_table(
            Task.__tablename__, records=rows, columns=BULK_TASK_COLUMNS
        )
        return len(rows)


# Column order of the rows TaskRepository.bulk_insert takes.
BULK_TASK_COLUMNS = (
    "title",
    "description",
    "completed",
    "category_id",
    "created_at",
    "updated_at",
)


async def _driver_connection(session: AsyncSession) -> Any:
    """The asyncpg connection under `session` (for COPY, which the ORM does not speak)."""
    connection = await session.connection()
    raw = await connection.get_raw_connection()
    return raw.driver_connection
