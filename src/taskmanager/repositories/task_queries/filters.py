"""What the task list may be filtered by: `TaskFilters`, and each filter's WHERE clause.

Every statement is limited to the caller's workspaces first (`IN_SCOPE`); the filters a
request asks for (`active_filters`) are also the key its statement is cached under.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    DateTime,
    Integer,
    Select,
    and_,
    any_,
    bindparam,
    func,
    literal_column,
    or_,
    select,
)
from sqlalchemy.dialects.postgresql import ARRAY

from taskmanager.models import PRIORITIES, Task, TaskLabel
from taskmanager.repositories.array_parameters import distinct_ids, scoped
from taskmanager.repositories.task_queries.search import MATCHES_Q

_TASKS = Task.__table__
_INFINITY = literal_column("'infinity'::timestamptz", DateTime(timezone=True))
_TASK_LABELS = TaskLabel.__table__


@dataclass(frozen=True, slots=True)
class TaskFilters:
    """What GET /tasks may filter by; None means "any"."""

    completed: bool | None = None
    category_id: int | None = None
    q: str | None = None
    workspace_id: int | None = None
    due_before: datetime | None = None
    due_after: datetime | None = None
    overdue: bool | None = None
    priority: str | None = None
    # Tasks that carry every one of these labels; empty: any.
    label_ids: tuple[int, ...] = ()


def _same(value: Any) -> Any:
    return value


# eq=False: compared and hashed by identity (a statement-cache key); `==` on a clause
# builds SQL instead of comparing.
@dataclass(frozen=True, slots=True, eq=False)
class ListFilter:
    """One filter of the task list: the TaskFilters field it reads, its WHERE clause (with a
    bound parameter of the same name) and how a value becomes that parameter."""

    name: str
    clause: ColumnElement[bool]
    parameter: Callable[[Any], Any] = _same
    # A filter whose clause depends on the value (not only binds it): active only for this
    # value, and it binds nothing.
    when: Any = None


def has_all_labels() -> ColumnElement[bool]:
    """The task carries every label of :label_ids (distinct ids), in one shape for any
    number of them: its rows among those labels are as many as the labels. Read from
    ix_task_labels_label_id_task_id, so the cost follows how many tasks carry the labels,
    not how many tasks there are. (The relational division `NOT EXISTS (unnest ... NOT
    EXISTS ...)` was planned by PostgreSQL 18 as a hash of ALL of task_labels per statement,
    with a sequential scan of tasks for the count: 3 to 20 times slower at 100,000 tasks.)
    An id of no label (or of someone else's) matches no task."""
    wanted = bindparam("label_ids", type_=ARRAY(Integer))
    carrying = (
        select(_TASK_LABELS.c.task_id)
        .where(_TASK_LABELS.c.label_id == any_(wanted))
        .group_by(_TASK_LABELS.c.task_id)
        .having(func.count() == func.cardinality(wanted))
    )
    return _TASKS.c.id.in_(carrying)


# The clauses name the table's columns, not the mapped attributes: a view statement that
# mentions no ORM entity runs as plain Core, without ORM loading (see views.VIEW_COLUMNS).
LIST_FILTERS = (
    ListFilter("workspace_id", _TASKS.c.workspace_id == bindparam("workspace_id")),
    ListFilter("completed", _TASKS.c.completed == bindparam("completed")),
    ListFilter("category_id", _TASKS.c.category_id == bindparam("category_id")),
    # The due-date filters and overdue compare due_key (no due date = +infinity), which the
    # due-date index is built on: `< :due_before` never matches a task without a due date,
    # and `< infinity` keeps those out of `>= :due_after` without a second column.
    ListFilter("due_before", _TASKS.c.due_key < bindparam("due_before")),
    ListFilter(
        "due_after",
        and_(_TASKS.c.due_key >= bindparam("due_after"), _TASKS.c.due_key < _INFINITY),
    ),
    # Overdue: due in the past and still open (a task without a due date never is). Two
    # statements, one per answer, so that overdue=true is a range of the due-date index.
    ListFilter("overdue", and_(_TASKS.c.due_key < func.now(), ~_TASKS.c.completed), when=True),
    ListFilter("overdue", or_(_TASKS.c.due_key >= func.now(), _TASKS.c.completed), when=False),
    ListFilter("priority", _TASKS.c.priority_rank == bindparam("priority"), PRIORITIES.index),
    # Every word of q is the prefix of a word in the title or the description, in any
    # order, ignoring case (the GIN index ix_tasks_workspace_words finds them).
    ListFilter("q", MATCHES_Q),
    ListFilter("label_ids", has_all_labels(), distinct_ids),
)


def active_filters(filters: TaskFilters) -> tuple[ListFilter, ...]:
    """The filters `filters` asks for (an empty `q` asks for nothing): also the key under
    which the statement for that combination is cached."""
    return tuple(f for f in LIST_FILTERS if _asks_for(f, getattr(filters, f.name)))


def _asks_for(list_filter: ListFilter, value: Any) -> bool:
    if list_filter.when is not None:
        return bool(value == list_filter.when)
    return value not in (None, "", ())


def filter_parameters(filters: TaskFilters, active: tuple[ListFilter, ...]) -> dict[str, Any]:
    """The bound parameters of the `active` filters (from active_filters(filters))."""
    return {f.name: f.parameter(getattr(filters, f.name)) for f in active if f.when is None}


# Every statement reads only the caller's workspaces (the Scope's ids, bound per request).
IN_SCOPE = scoped(_TASKS.c.workspace_id)


def where(stmt: Select[Any], active: tuple[ListFilter, ...]) -> Select[Any]:
    return stmt.where(IN_SCOPE, *(f.clause for f in active))
