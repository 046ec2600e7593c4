"""TaskRepository: how tasks are found, stored and changed. Flushes, never commits.

How its list queries are built (search, filters and the walk-or-index rule, sorts and
keysets, views, the cached statements, bulk inserts) lives beside it, in task_queries/.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select, bindparam, delete, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import joinedload
from sqlalchemy.orm.attributes import set_committed_value

from taskmanager.database import driver_connection
from taskmanager.models import Category, Label, Task
from taskmanager.repositories.array_parameters import WORKSPACE_IDS, scope_parameters
from taskmanager.repositories.label_repository import LabelRepository
from taskmanager.repositories.precompiled import precompiled
from taskmanager.repositories.task_queries.bulk import BULK_INSERT
from taskmanager.repositories.task_queries.calendar import DUE_SINCE
from taskmanager.repositories.task_queries.filters import (
    IN_SCOPE,
    ListFilter,
    TaskFilters,
    active_filters,
    filter_parameters,
)
from taskmanager.repositories.task_queries.search import SearchWordsMissingError
from taskmanager.repositories.task_queries.sorts import DEFAULT_SORT, SORTS_NEEDING_Q
from taskmanager.repositories.task_queries.statements import (
    all_statement,
    count_statement,
    empty_search_statement,
    page_keys,
    page_statement,
)
from taskmanager.repositories.task_queries.task_labels import LABELS_OF, REPLACE_LABELS
from taskmanager.repositories.task_queries.views import VIEW_BY_ID, TaskView, row_view
from taskmanager.repositories.task_queries.walk_or_index import (
    LABELS_WALK,
    SEARCH_WALKS,
    labels_by_walking,
    search_by_walking,
)
from taskmanager.security.scope import Scope

# Columns a client may change through TaskRepository.update.
UPDATABLE_FIELDS = frozenset(
    {"title", "description", "completed", "category_id", "due_at", "priority", "label_ids"}
)


# Built once: the hot paths skip statement construction and cache-key generation.
_BY_ID = select(Task).where(Task.id == bindparam("task_id"), IN_SCOPE)
_BY_ID_WITH_CATEGORY = _BY_ID.options(joinedload(Task.category))
# For changes: the row stays locked until the request's transaction ends, so concurrent
# writers to one task queue up and each one sees the version the previous one left.
_BY_ID_WITH_CATEGORY_FOR_UPDATE = _BY_ID_WITH_CATEGORY.with_for_update(of=Task)
# The caller's tasks due in [:due_from, :due_to), soonest first: a range of the due_key
# index (due_key is due_at where there is one; comparing timestamps is LEAKPROOF, so the
# index serves it under row-level security), at most :due_limit of them.
_DUE_BETWEEN = (
    select(Task)
    .where(
        Task.due_key >= bindparam("due_from"),
        Task.due_key < bindparam("due_to"),
        IN_SCOPE,
    )
    .order_by(Task.due_key, Task.id)
    .limit(bindparam("due_limit"))
)


@dataclass(frozen=True, slots=True)
class TaskPage:
    """One page of tasks as GET shows them; how many match the filters in all (None when
    not counted); and, if more follow, the sort keys of the last task shown, after which
    the next page starts."""

    items: Sequence[TaskView]
    total: int | None
    next_after: tuple[Any, ...] | None = None


class TaskRepository:
    """Encapsulates all database operations for Tasks, within the caller's Scope."""

    def __init__(self, session: AsyncSession, scope: Scope) -> None:
        self.session = session
        self.scope = scope
        self._in_scope = scope_parameters(scope)

    async def due_between(
        self,
        start: datetime,
        end: datetime,
        *,
        workspace_id: int | None = None,
        limit: int,
    ) -> list[Task]:
        """The caller's tasks (of one workspace, if given) due at or after `start` and
        before `end`, soonest first, at most `limit`."""
        stmt = _DUE_BETWEEN
        if workspace_id is not None:
            stmt = stmt.where(Task.workspace_id == workspace_id)
        parameters = {"due_from": start, "due_to": end, "due_limit": limit, **self._in_scope}
        result = await self.session.execute(stmt, parameters)
        return list(result.scalars().all())

    async def get_by_id(self, task_id: int) -> Task | None:
        """Fetch a single task by ID (its category is not loaded)."""
        result = await self.session.execute(_BY_ID, {"task_id": task_id, **self._in_scope})
        return result.scalar_one_or_none()

    async def get_by_id_with_category(
        self, task_id: int, *, for_update: bool = False
    ) -> Task | None:
        """Fetch a task with its category eagerly loaded (one statement, a LEFT JOIN).

        `for_update=True` locks the task's row until the transaction ends (SELECT ... FOR
        UPDATE): use it to read a task you are about to change."""
        stmt = _BY_ID_WITH_CATEGORY_FOR_UPDATE if for_update else _BY_ID_WITH_CATEGORY
        result = await self.session.execute(stmt, {"task_id": task_id, **self._in_scope})
        task = result.scalar_one_or_none()
        loaded_id = None if task is None or task.category is None else task.category.id
        if task is not None and task.category_id != loaded_id:
            # Having waited for the lock, PostgreSQL re-reads only the locked task row, not
            # the joined category: after a concurrent category change the join finds none.
            await self._load_category(task)
        return task

    async def get_view(self, task_id: int) -> TaskView | None:
        """A task with its category, read-only, for showing it (one statement)."""
        parameters = {"task_id": task_id, **self._in_scope}
        row = (await precompiled(VIEW_BY_ID).execute(self.session, parameters)).one_or_none()
        return None if row is None else row_view(row)

    async def due_since(self, since: datetime, most: int) -> list[TaskView]:
        """The tasks due at or after `since` (none without a due date), soonest first, at
        most `most` of them, as GET shows them (for a calendar feed)."""
        parameters = {"since": since, "most": most, **self._in_scope}
        rows = await self.session.execute(DUE_SINCE, parameters)
        return [row_view(row) for row in rows]

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
        active = active_filters(filters)
        parameters = {
            **filter_parameters(filters, active),
            **self._in_scope,
            "limit": limit,
            "offset": offset,
        }
        result = await self.session.execute(all_statement(active), parameters)
        return list(result.scalars().all())

    async def get_page(
        self,
        filters: TaskFilters | None = None,
        *,
        limit: int = 50,
        offset: int = 0,
        sort: str = DEFAULT_SORT,
        after: Sequence[Any] | None = None,
        counted: bool = True,
    ) -> TaskPage:
        """A page of tasks in `sort` order with their categories: one statement for the page
        itself, after at most two small ones: whether the labels filtered by are all the
        caller's, and which way finds the page of a search or a label filter sooner.

        `after`: the sort keys of the last task of the previous page (a cursor's); the page
        starts after it, by a row comparison an index serves, instead of skipping `offset`
        rows. `counted`: the total rides along as an uncorrelated scalar subquery (PostgreSQL
        evaluates it once, but it reads every matching row); only a page past the end then
        needs a second statement. One row more than `limit` is read, to know whether
        another page follows. Label ids that are not all the caller's labels match no task,
        which is answered from the labels alone. A sort in SORTS_NEEDING_Q without
        `filters.q` is a ValueError (the caller checks its input first)."""
        filters = filters or TaskFilters()
        active = listed = active_filters(filters)
        if sort in SORTS_NEEDING_Q and not filters.q:
            raise ValueError(f"sort {sort!r} needs filters.q")
        labels = LabelRepository(self.session, self.scope)
        if filters.label_ids and not await labels.all_in_scope(filters.label_ids):
            # Answered like an id of no label, before anything reads task_labels: how long
            # it takes must not tell how many of someone else's tasks carry their label.
            if filters.q:  # a q without words is still refused (a statement reading no table)
                await self._empty_search_page(filters, listed, counted=False, past_the_start=False)
            return TaskPage(items=[], total=0 if counted else None)
        if filters.q and sort not in SORTS_NEEDING_Q:  # relevance ranks every match anyway
            active = await self._search_way(filters.q, active, limit)
        elif filters.label_ids:
            active = await self._labels_way(filters.label_ids, active, limit)
        parameters = {
            **filter_parameters(filters, active),
            **self._in_scope,
            "limit": limit + 1,
            "offset": offset,
        }
        if after is not None:
            parameters.update({f"after_{i}": value for i, value in enumerate(after)})
        statement = page_statement(
            active,
            sort,
            counted=counted,
            after=after is not None,
            counted_by=None if active is listed else listed,
        )
        rows = (await precompiled(statement).execute(self.session, parameters)).all()
        shown = rows[:limit]
        past_the_start = bool(offset) or after is not None
        if not rows and filters.q:
            return await self._empty_search_page(
                filters, listed, counted=counted, past_the_start=past_the_start
            )
        total: int | None = None
        if counted and rows:
            total = rows[0].total
        elif counted:  # no row carries the total: past the end, or nothing matches
            total = await self.count(filters) if past_the_start else 0
        return TaskPage(
            items=[row_view(row) for row in shown],
            total=total,
            next_after=page_keys(shown[-1], sort) if len(rows) > limit else None,
        )

    async def _search_way(
        self, q: str, active: tuple[ListFilter, ...], limit: int
    ) -> tuple[ListFilter, ...]:
        """`active` with the search done the way that finds the page sooner (one statement:
        a count of q's matches through the GIN index, as far as the answer needs)."""
        parameters = {"q": q, "page_rows": limit + 1}
        if not await self._walk_finds_the_page_sooner(SEARCH_WALKS, parameters):
            return active
        return search_by_walking(active)

    async def _labels_way(
        self, label_ids: Sequence[int], active: tuple[ListFilter, ...], limit: int
    ) -> tuple[ListFilter, ...]:
        """`active` with the label filter done the way that finds the page sooner (one
        statement: the carriers of the first label counted, as far as the answer needs)."""
        parameters = {"first_label": label_ids[0], "page_rows": limit + 1, **self._in_scope}
        if not await self._walk_finds_the_page_sooner(LABELS_WALK, parameters):
            return active
        return labels_by_walking(active)

    async def _walk_finds_the_page_sooner(
        self, question: Select[Any], parameters: dict[str, Any]
    ) -> bool:
        return bool((await self.session.execute(question, parameters)).scalar_one())

    async def _empty_search_page(
        self,
        filters: TaskFilters,
        active: tuple[ListFilter, ...],
        *,
        counted: bool,
        past_the_start: bool,
    ) -> TaskPage:
        """A search page without tasks, or SearchWordsMissingError if q has no word at all.
        Asked only when the page came back empty, so a search that finds tasks costs no
        extra statement; and in one statement with the count a page past the end needs."""
        parameters = {**filter_parameters(filters, active), **self._in_scope}
        statement = empty_search_statement(active, counted and past_the_start)
        row = (await self.session.execute(statement, parameters)).one()
        if row.no_words:
            raise SearchWordsMissingError
        return TaskPage(items=[], total=row.total if counted else None)

    async def count(self, filters: TaskFilters | None = None) -> int:
        """How many tasks match `filters` (for X-Total-Count)."""
        filters = filters or TaskFilters()
        active = active_filters(filters)
        result = await self.session.execute(
            count_statement(active), {**filter_parameters(filters, active), **self._in_scope}
        )
        return int(result.scalar_one())

    async def create(
        self,
        title: str,
        description: str | None = None,
        category_id: int | None = None,
        completed: bool = False,
        workspace_id: int | None = None,
        due_at: datetime | None = None,
        priority: str = "low",
        label_ids: Sequence[int] = (),
    ) -> Task:
        """Create a task in `workspace_id` (default: the caller's personal workspace); id and
        timestamps come back with the INSERT (RETURNING). A category of another workspace
        fails the composite foreign key (422 naming category_id); a label that is not the
        workspace's raises LabelsNotInWorkspaceError before anything is written."""
        workspace_id = self.scope.workspace_for_new_row(workspace_id)
        labels = await LabelRepository(self.session, self.scope).in_workspace(
            label_ids, workspace_id
        )
        task = Task(
            title=title,
            description=description,
            completed=completed,
            category_id=category_id,
            workspace_id=workspace_id,
            due_at=due_at,
            priority=priority,
            completed_at=datetime.now(UTC) if completed else None,
        )
        if category_id is None:
            task.category = None  # nothing to load: say so instead of leaving it unloaded
        self.session.add(task)
        await self.session.flush()  # INSERT ... RETURNING; a missing category fails here
        if labels:
            await self._replace_labels(task, [label.id for label in labels])
        set_committed_value(task, "labels", labels)
        if category_id is not None:
            await self._load_category(task)
        return task

    async def update(
        self, task: Task, changes: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> Task:
        """Apply `changes` (field -> new value) to `task` and flush.

        Unknown field names raise ValueError. If the category changed, it is reloaded so
        the returned task carries the new one. `label_ids` replaces the task's labels (a
        label not of the task's workspace raises LabelsNotInWorkspaceError); the returned task
        carries its labels either way.
        """
        changes = {**(changes or {}), **kwargs}
        unknown = set(changes) - UPDATABLE_FIELDS
        if unknown:
            raise ValueError(f"cannot update {', '.join(sorted(unknown))}")
        label_ids = changes.pop("label_ids", None)
        labels_changed = False
        if label_ids is not None:
            labels = await LabelRepository(self.session, self.scope).in_workspace(
                label_ids, task.workspace_id
            )
            labels_changed = await self._replace_labels(task, label_ids)
        reopened_or_done = "completed" in changes and changes["completed"] != task.completed
        for key, value in changes.items():
            setattr(task, key, value)
        if reopened_or_done:  # done now: when; reopened: not done any more
            task.completed_at = datetime.now(UTC) if task.completed else None
        if labels_changed or self.session.is_modified(task):
            task.version += 1  # a new state, a new ETag; unchanged values keep the old one
        await self.session.flush()  # UPDATE ... RETURNING updated_at
        if "category_id" in changes:
            await self._load_category(task)
        if label_ids is None:
            labels = await self._labels_of(task.id)
        set_committed_value(task, "labels", labels)
        return task

    async def _replace_labels(self, task: Task, label_ids: Sequence[int]) -> bool:
        """Make `label_ids` the task's labels, in ONE statement (a DELETE of the others and
        an INSERT of the missing ones, as CTEs); whether anything changed."""
        parameters = {
            "task_id": task.id,
            "workspace_id": task.workspace_id,
            "label_ids": list(label_ids),
        }
        changed = (await self.session.execute(REPLACE_LABELS, parameters)).scalar_one()
        return bool(changed)

    async def _labels_of(self, task_id: int) -> list[Label]:
        """The task's labels in label order (one statement)."""
        result = await self.session.execute(LABELS_OF, {"task_id": task_id})
        return list(result.scalars().all())

    async def _load_category(self, task: Task) -> None:
        """Put the category `task.category_id` names in place, as loaded (no change to
        flush): one SELECT by primary key, where `refresh(task, ["category"])` would first
        select the task's row again. Read afresh, since it may have changed meanwhile."""
        category = (
            None
            if task.category_id is None
            else await self.session.get(Category, task.category_id, populate_existing=True)
        )
        set_committed_value(task, "category", category)

    async def delete(self, task: Task) -> None:
        """Delete a task."""
        await self.session.delete(task)
        await self.session.flush()

    async def delete_all_in_workspace(self, workspace_id: int) -> int:
        """Delete every task of `workspace_id` (their labels go with them), in one
        statement; a workspace outside the caller's scope has none to delete. Returns
        how many were deleted."""
        result = await self.session.execute(
            delete(Task)
            .where(Task.workspace_id == bindparam("workspace_id"), IN_SCOPE)
            .execution_options(synchronize_session=False),
            {"workspace_id": workspace_id, **self._in_scope},
        )
        return int(getattr(result, "rowcount", 0) or 0)

    async def bulk_insert(
        self, rows: Sequence[tuple[Any, ...]], label_ids: Sequence[int] = ()
    ) -> int:
        """Insert many tasks at once (rows in BULK_TASK_COLUMNS order) into the caller's
        workspaces. For seeding: the rows go over as one array per column, unnested in one
        INSERT ... SELECT (COPY is refused under row-level security, and the caller role
        may not create the temporary table COPY could fill instead); tens of times faster
        than ORM inserts. Returns the count.

        A completed row gets its completed_at, as `create` and `update` give one: the
        moment it was last changed (its updated_at), when it was done.

        With `label_ids` (labels of the rows' workspace), each task also gets 0 to 3 of
        them, picked in SQL from its id (task_queries/bulk.py): nothing more crosses the
        wire."""
        if not rows:
            return 0
        driver = await driver_connection(self.session)
        values = [list(column) for column in zip(*rows, strict=True)]
        workspace_ids = self._in_scope[WORKSPACE_IDS.key]  # $1, as the statements bind it
        inserted = await driver.fetchval(BULK_INSERT, workspace_ids, list(label_ids), *values)
        return int(inserted)
