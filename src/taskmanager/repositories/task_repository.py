"""TaskRepository: how tasks are found, stored and changed. Flushes, never commits."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache, lru_cache
from typing import Any

from sqlalchemy import (
    Column,
    ColumnElement,
    DateTime,
    Integer,
    Select,
    Text,
    all_,
    and_,
    any_,
    bindparam,
    column,
    delete,
    func,
    literal,
    literal_column,
    or_,
    select,
    table,
    tuple_,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSON, TSQUERY, aggregate_order_by
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import joinedload
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.sql import operators
from sqlalchemy.sql.elements import UnaryExpression
from sqlalchemy.types import TypeEngine

from taskmanager.models import PRIORITIES, SEARCH_CONFIG, Category, Label, Task, TaskLabel
from taskmanager.repositories.label_repository import LABEL_ORDER, LabelRepository
from taskmanager.schemas import CategoryResponse, LabelResponse, TaskWithCategoryResponse
from taskmanager.security.scope import Scope

_TASKS = Task.__table__
_INFINITY = literal_column("'infinity'::timestamptz", DateTime(timezone=True))
_CATEGORIES = Category.__table__
_LABELS = Label.__table__
_TASK_LABELS = TaskLabel.__table__

# Columns a client may change through TaskRepository.update.
UPDATABLE_FIELDS = frozenset(
    {"title", "description", "completed", "category_id", "due_at", "priority", "label_ids"}
)


# ─────────────────────────────────────────────
# Full-text search: what `q` asks for, as a tsquery
# ─────────────────────────────────────────────

_SEARCH_CONFIG: ColumnElement[Any] = literal_column(f"'{SEARCH_CONFIG}'::regconfig")


def _sql_string(value: str) -> ColumnElement[str]:
    """A constant string written into the SQL, not a bound parameter: the statement reads
    as what it does, and PostgreSQL sees constants."""
    return literal_column("'" + value.replace("'", "''") + "'", Text)


# The words of q as PostgreSQL's parser splits them, the same parse the tasks' search_vector
# got, so a token of q is a token of the document: lower-cased, punctuation dropped, and
# anything tsquery syntax would read as an operator (& | ! <-> :* quotes, backslashes) is
# only ever a separator or a quoted lexeme here, never an operator.
_Q = bindparam("q", type_=Text)
_Q_WORDS = func.unnest(func.to_tsvector(_SEARCH_CONFIG, _Q)).table_valued("lexeme")
# Each word quoted for tsquery syntax (a backslash escapes, a quote is doubled) and marked
# as a prefix ':*'; all of them must match.
_Q_PREFIX = (
    _sql_string("'")
    + func.replace(
        func.replace(_Q_WORDS.c.lexeme, _sql_string("\\"), _sql_string("\\\\")),
        _sql_string("'"),
        _sql_string("''"),
    )
    + _sql_string("':*")
)
# A scalar subquery of nothing but the bound q: PostgreSQL runs it once per statement (an
# InitPlan), and its value is a key the GIN index is searched with. NULL when q has no
# words (then nothing matches: TaskRepository.get_page tells that apart from no matches).
# A cast, not to_tsquery(): the words are lexemes already, and to_tsquery would parse each
# one again, alone, differently ("x.com/a'b" became "x.com/a" followed by "b").
SEARCH_QUERY = (
    select(func.string_agg(_Q_PREFIX, _sql_string(" & ")).cast(TSQUERY))
    .select_from(_Q_WORDS)
    .scalar_subquery()
)
# The same words as an array (NULL when q has none), also computed once per statement: what
# the search functions look up in the caller's workspaces' index entries (migration 0009).
SEARCH_WORDS = select(func.array_agg(_Q_WORDS.c.lexeme)).select_from(_Q_WORDS).scalar_subquery()
# The tasks matching q, found through the GIN index by a SECURITY DEFINER function (migration
# 0006 says why: under row-level security an index serves no `@@`), which looks only at the
# entries of the caller's workspaces (0009: what it reads follows the caller's tasks, not
# every tenant's); then read by id, under the policy, like any other task.
_MATCHING_TASKS = func.taskmanager_matching_tasks(
    SEARCH_WORDS, SEARCH_QUERY, type_=Integer
).column_valued("task_id")
_MATCHES_Q = _TASKS.c.id.in_(select(_MATCHING_TASKS))
# A word most tasks hold costs that way a read of every match (83,000 of a million tasks:
# seconds). Then walking the order's index and testing each task reads about
# limit x tasks / matches rows (600 there) and stops at the page: the other way to find it.
_WALKING_SEARCH = _TASKS.c.search_vector.bool_op("@@")(SEARCH_QUERY)

# How well a task matches q (more of q's words, more often: higher); never NULL for a task
# that matched.
RELEVANCE = func.ts_rank(_TASKS.c.search_vector, SEARCH_QUERY)
_Q_HAS_NO_WORDS = func.length(func.to_tsvector(_SEARCH_CONFIG, _Q)) == 0


class SearchWordsMissingError(ValueError):
    """`q` holds nothing PostgreSQL's parser sees as a word ("!!!", "-"): nothing to search for."""


# The orders GET /tasks offers, by name; each ends with the id, so every order is total
# (stable across pages). "due": tasks without a due date last.
# Every key of one order goes the same direction and is never NULL: keyset() relies on it.
SORTS: dict[str, tuple[ColumnElement[Any], ...]] = {
    "newest": (_TASKS.c.created_at.desc(), _TASKS.c.id.desc()),
    "oldest": (_TASKS.c.created_at.asc(), _TASKS.c.id.asc()),
    # Tasks without a due date last: due_key is due_at, or +infinity without one (a stored
    # generated column, never NULL, so one row comparison continues a cursor page).
    "due": (_TASKS.c.due_key.asc(), _TASKS.c.id.asc()),
    # priority_rank is the priority as a number (a stored generated column): see models.py.
    "priority": (
        _TASKS.c.priority_rank.desc(),
        _TASKS.c.created_at.desc(),
        _TASKS.c.id.desc(),
    ),
    "title": (_TASKS.c.title.asc(), _TASKS.c.id.asc()),
    # Best match first; needs the q filter (its bound parameter "q").
    "relevance": (RELEVANCE.desc(), _TASKS.c.id.desc()),
}
DEFAULT_SORT = "newest"
SORTS_NEEDING_Q = frozenset({"relevance"})


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


def _has_all_labels() -> ColumnElement[bool]:
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


def _carries_all_labels() -> ColumnElement[bool]:
    """The same test, asked of each task in turn: how many of its rows are among the
    labels (probes of task_labels' primary key). A correlated subquery PostgreSQL cannot
    turn into a join, so walking an order's index it stops at the page; for labels many
    tasks carry, that reads a few hundred tasks where the other shape reads every carrier."""
    wanted = bindparam("label_ids", type_=ARRAY(Integer))
    carried = (
        select(func.count())
        .where(_TASK_LABELS.c.task_id == _TASKS.c.id, _TASK_LABELS.c.label_id == any_(wanted))
        .correlate(_TASKS)
        .scalar_subquery()
    )
    return carried == func.cardinality(wanted)


def _distinct_ids(ids: Sequence[int]) -> list[int]:
    return sorted(set(ids))


# Whether walking an order's index finds a page sooner than reading every match by id: when
# the matches are at least sqrt(0.2 x page rows x tasks) (a walk reads about page rows x
# tasks / matches tasks; a match read by id costs about five walked ones). The caller's
# matches are counted only as far as that: for a search through the GIN index (migration
# 0009's taskmanager_matches_at_least), for labels the tasks carrying the first one asked.
_PG_CLASS = table("pg_class", column("reltuples"), column("oid"))  # its row estimate
_ENOUGH_TO_WALK = func.ceil(
    func.sqrt(
        0.2
        * bindparam("page_rows", type_=Integer)
        * func.greatest(
            select(_PG_CLASS.c.reltuples)
            .where(_PG_CLASS.c.oid == literal_column("'tasks'::regclass"))
            .scalar_subquery(),
            1,
        )
    )
).cast(Integer)
_SEARCH_WALKS = select(func.taskmanager_matches_at_least(SEARCH_WORDS, _ENOUGH_TO_WALK))
_FIRST_LABEL_CARRIERS = (
    select(_TASK_LABELS.c.task_id)
    .where(
        _TASK_LABELS.c.label_id == bindparam("first_label", type_=Integer),
        _TASK_LABELS.c.workspace_id == any_(bindparam("workspace_ids", type_=ARRAY(Integer))),
    )
    .limit(_ENOUGH_TO_WALK)
    .subquery()
)
_LABELS_WALK = select(
    select(func.count()).select_from(_FIRST_LABEL_CARRIERS).scalar_subquery() >= _ENOUGH_TO_WALK
)


# The clauses name the table's columns, not the mapped attributes: a view statement that
# mentions no ORM entity runs as plain Core, without ORM loading (see _VIEW_COLUMNS).
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
    ListFilter("q", _MATCHES_Q),
    ListFilter("label_ids", _has_all_labels(), _distinct_ids),
)
_SEARCH_BY_ID = next(f for f in LIST_FILTERS if f.name == "q")
_SEARCH_BY_WALKING = ListFilter("q", _WALKING_SEARCH)
_LABELS_BY_ID = next(f for f in LIST_FILTERS if f.name == "label_ids")
_LABELS_BY_WALKING = ListFilter("label_ids", _carries_all_labels(), _distinct_ids)


def _active_filters(filters: TaskFilters) -> tuple[ListFilter, ...]:
    """The filters `filters` asks for (an empty `q` asks for nothing): also the key under
    which the statement for that combination is cached."""
    return tuple(f for f in LIST_FILTERS if _asks_for(f, getattr(filters, f.name)))


def _asks_for(list_filter: ListFilter, value: Any) -> bool:
    if list_filter.when is not None:
        return bool(value == list_filter.when)
    return value not in (None, "", ())


def _filter_parameters(filters: TaskFilters, active: tuple[ListFilter, ...]) -> dict[str, Any]:
    """The bound parameters of the `active` filters (from _active_filters(filters))."""
    return {f.name: f.parameter(getattr(filters, f.name)) for f in active if f.when is None}


# Every statement reads only the caller's workspaces (the Scope's ids, bound per request).
# Row-level security in PostgreSQL would hide the rest anyway; this is the first line.
_IN_SCOPE = _TASKS.c.workspace_id == any_(bindparam("workspace_ids", type_=ARRAY(Integer)))


def _where(stmt: Select[Any], active: tuple[ListFilter, ...]) -> Select[Any]:
    return stmt.where(_IN_SCOPE, *(f.clause for f in active))


# Built once: the hot paths skip statement construction and cache-key generation.
_BY_ID = select(Task).where(Task.id == bindparam("task_id"), _IN_SCOPE)
_BY_ID_WITH_CATEGORY = _BY_ID.options(joinedload(Task.category))
# For changes: the row stays locked until the request's transaction ends, so concurrent
# writers to one task queue up and each one sees the version the previous one left.
_BY_ID_WITH_CATEGORY_FOR_UPDATE = _BY_ID_WITH_CATEGORY.with_for_update(of=Task)

_NEWEST_FIRST = SORTS[DEFAULT_SORT]

# ─────────────────────────────────────────────
# Views: a task as GET shows it, read as plain rows
# ─────────────────────────────────────────────

# The fields a task answer shows are declared once, by the response models in schemas.py;
# a view reads exactly those columns, by name, and is a dict of them: {"id": ..., ...,
# "category": {"id": ..., "name": ...} or None, "labels": [{"id": ..., ...}, ...]}.
TASK_VIEW_FIELDS = tuple(
    name for name in TaskWithCategoryResponse.model_fields if name not in ("category", "labels")
)
CATEGORY_VIEW_FIELDS = tuple(CategoryResponse.model_fields)
LABEL_VIEW_FIELDS = tuple(LabelResponse.model_fields)
TaskView = dict[str, Any]

# A task's labels as one JSON array, in label order, computed per row by a correlated
# subquery (a probe of task_labels' primary key): the page and GET one stay ONE statement
# whatever the page size and the number of labels. Row-level security applies to
# task_labels and labels here too.
_LABELS_COLUMN = (
    select(
        func.coalesce(
            func.json_agg(
                aggregate_order_by(
                    func.json_build_object(
                        *(part for name in LABEL_VIEW_FIELDS for part in (name, _LABELS.c[name]))
                    ),
                    func.lower(_LABELS.c.name),
                    _LABELS.c.id,
                )
            ),
            literal_column("'[]'::json"),
            type_=JSON,
        )
    )
    .select_from(_TASK_LABELS.join(_LABELS, _LABELS.c.id == _TASK_LABELS.c.label_id))
    .where(_TASK_LABELS.c.task_id == _TASKS.c.id)
    .correlate(_TASKS)
    .scalar_subquery()
    .label("labels")
)

# Nothing that is only shown gets changed, so ORM objects, the identity map and the ORM's
# per-statement loading machinery would be pure overhead (~60 µs of CPU per request for one
# task): a view statement selects table columns and returns Core rows.
_VIEW_COLUMNS = (
    *(_TASKS.c[name] for name in TASK_VIEW_FIELDS),
    *(_CATEGORIES.c[name].label(f"category_{name}") for name in CATEGORY_VIEW_FIELDS),
    _LABELS_COLUMN,
)
_WITH_CATEGORY = _TASKS.outerjoin(_CATEGORIES, _CATEGORIES.c.id == _TASKS.c.category_id)
_CATEGORY_AT = len(TASK_VIEW_FIELDS)  # where the category's columns start in a view row
_LABELS_AT = _CATEGORY_AT + len(CATEGORY_VIEW_FIELDS)  # where the labels' JSON array is


def _task_view(row: Sequence[Any]) -> TaskView:
    """A row of _VIEW_COLUMNS (and maybe more after them) as a view: the names are the
    ones the columns were selected by, zipped with the row's values."""
    view = dict(zip(TASK_VIEW_FIELDS, row, strict=False))
    category = row[_CATEGORY_AT : _CATEGORY_AT + len(CATEGORY_VIEW_FIELDS)]
    view["category"] = (
        None if category[0] is None else dict(zip(CATEGORY_VIEW_FIELDS, category, strict=True))
    )
    view["labels"] = row[_LABELS_AT]
    return view


def task_view(task: Task) -> TaskView:
    """The view of an ORM task (its category and labels loaded): what GET would show."""
    view = {name: getattr(task, name) for name in TASK_VIEW_FIELDS}
    category = task.category
    view["category"] = (
        None
        if category is None
        else {name: getattr(category, name) for name in CATEGORY_VIEW_FIELDS}
    )
    view["labels"] = [
        {name: getattr(label, name) for name in LABEL_VIEW_FIELDS} for label in task.labels
    ]
    return view


# One statement per combination of filters, built on first use and then reused: building
# a SELECT and its cache key costs more CPU than PostgreSQL spends answering a page.
@lru_cache(maxsize=8)
def _count_statement(active: tuple[ListFilter, ...]) -> Select[Any]:
    return _where(select(func.count()).select_from(_TASKS), active)


# ─────────────────────────────────────────────
# Keyset pages: continuing after the last row shown
# ─────────────────────────────────────────────


@dataclass(frozen=True, slots=True, eq=False)
class Keyset:
    """An order of SORTS as keyset pagination reads it: its key expressions (the ORDER BY
    terms without their direction), which all go one way and are never NULL. So the rows
    after one whose keys are (k1, ..., id) are those with (key1, ..., id) > (k1, ..., id)
    (< when descending): ONE row comparison, which a btree index on the same keys serves
    as a range, however deep the page."""

    keys: tuple[ColumnElement[Any], ...]
    descending: bool

    @property
    def types(self) -> tuple[TypeEngine[Any], ...]:
        """The SQL type of each key: what a cursor's values must be read back as."""
        return tuple(key.type for key in self.keys)

    def after(self) -> ColumnElement[bool]:
        """The rows after the one whose keys are bound as after_0, after_1, ..."""
        row = tuple_(*self.keys)
        last = tuple_(*(bindparam(f"after_{i}", type_=key.type) for i, key in enumerate(self.keys)))
        return row < last if self.descending else row > last


@cache
def keyset(sort: str) -> Keyset:
    """The keyset of SORTS[sort]; a ValueError if that order cannot be one (mixed
    directions, NULLS FIRST/LAST, a nullable column): a new sort must be written as keys
    that all go one way, like "due" is."""
    keys: list[ColumnElement[Any]] = []
    directions: set[bool] = set()
    for term in SORTS[sort]:
        if not (
            isinstance(term, UnaryExpression)
            and term.modifier in (operators.asc_op, operators.desc_op)
            and not isinstance(term.element, UnaryExpression)
        ):
            raise ValueError(f"sort {sort!r}: {term} is not a plain ASC or DESC key")
        key = term.element
        if isinstance(key, Column) and key.nullable:
            raise ValueError(f"sort {sort!r}: {key} may be NULL (coalesce it)")
        keys.append(key)
        directions.add(term.modifier is operators.desc_op)
    if len(directions) != 1:
        raise ValueError(f"sort {sort!r}: its keys go different directions")
    return Keyset(keys=tuple(keys), descending=directions.pop())


# ─────────────────────────────────────────────
# The list statements
# ─────────────────────────────────────────────


# One statement per combination of filters, sort, counting and continuing, built on first
# use and then reused: building a SELECT and its cache key costs more CPU than PostgreSQL
# spends answering a page. A page selects the sort's keys after the view's columns, so the
# cursor of the next page is read, typed, from the last row instead of recomputed.
@lru_cache(maxsize=256)
def _page_statement(
    active: tuple[ListFilter, ...],
    sort: str = DEFAULT_SORT,
    *,
    counted: bool = True,
    after: bool = False,
    counted_by: tuple[ListFilter, ...] | None = None,
) -> Select[Any]:
    """`counted_by`: the filters the total counts with, when the page's differ (a walking
    search or label filter: tested task by task, which suits a page, not a count of all)."""
    order = keyset(sort)
    columns = [*_VIEW_COLUMNS, *(key.label(f"key_{i}") for i, key in enumerate(order.keys))]
    if counted:
        total = _count_statement(counted_by or active).correlate(None).scalar_subquery()
        columns.append(total.label("total"))
    statement = _where(select(*columns), active).select_from(_WITH_CATEGORY)
    if after:
        statement = statement.where(order.after())
    return statement.order_by(*SORTS[sort]).limit(bindparam("limit")).offset(bindparam("offset"))


def _keys(row: Sequence[Any], sort: str) -> tuple[Any, ...]:
    """The sort keys a page row carries after the view's columns."""
    return tuple(row[len(_VIEW_COLUMNS) : len(_VIEW_COLUMNS) + len(keyset(sort).keys)])


@lru_cache(maxsize=16)
def _empty_search_statement(active: tuple[ListFilter, ...], counted: bool) -> Select[Any]:
    """Whether q has no word, and how many tasks match (0 unless `counted`)."""
    total = _count_statement(active).scalar_subquery() if counted else literal(0)
    return select(total.label("total"), _Q_HAS_NO_WORDS.label("no_words"))


@lru_cache(maxsize=8)
def _all_statement(active: tuple[ListFilter, ...]) -> Select[Any]:
    return (
        _where(select(Task), active)
        .options(joinedload(Task.category))
        .order_by(*_NEWEST_FIRST)
        .limit(bindparam("limit"))
        .offset(bindparam("offset"))
    )


_VIEW_BY_ID = (
    select(*_VIEW_COLUMNS)
    .select_from(_WITH_CATEGORY)
    .where(_TASKS.c.id == bindparam("task_id"), _IN_SCOPE)
)


# Replacing a task's labels: the rows of labels no longer wanted go, the wanted ones not
# there yet come (the two sets are disjoint, so the CTEs cannot conflict); the answer is
# how many rows changed.
_WANTED_LABEL_IDS = bindparam("label_ids", type_=ARRAY(Integer))
_GONE = (
    delete(TaskLabel)
    .where(
        _TASK_LABELS.c.task_id == bindparam("task_id"),
        _TASK_LABELS.c.label_id != all_(_WANTED_LABEL_IDS),
    )
    .returning(_TASK_LABELS.c.label_id)
    .cte("gone")
)
_ADDED = (
    pg_insert(TaskLabel)
    .from_select(
        ["task_id", "label_id", "workspace_id"],
        select(
            bindparam("task_id", type_=Integer),
            func.unnest(_WANTED_LABEL_IDS),
            bindparam("workspace_id", type_=Integer),
        ),
    )
    .on_conflict_do_nothing(index_elements=["task_id", "label_id"])
    .returning(_TASK_LABELS.c.label_id)
    .cte("added")
)
_REPLACE_LABELS = select(
    select(func.count()).select_from(_GONE).scalar_subquery()
    + select(func.count()).select_from(_ADDED).scalar_subquery()
)
_LABELS_OF = (
    select(Label)
    .join(TaskLabel, TaskLabel.label_id == Label.id)
    .where(TaskLabel.task_id == bindparam("task_id"))
    .order_by(*LABEL_ORDER)
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
        self._in_scope = {"workspace_ids": list(scope.workspace_ids)}

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
        row = (await self.session.execute(_VIEW_BY_ID, parameters)).one_or_none()
        return None if row is None else _task_view(row)

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
        active = _active_filters(filters)
        parameters = {
            **_filter_parameters(filters, active),
            **self._in_scope,
            "limit": limit,
            "offset": offset,
        }
        result = await self.session.execute(_all_statement(active), parameters)
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
        """A page of tasks in `sort` order with their categories, in ONE statement.

        `after`: the sort keys of the last task of the previous page (a cursor's); the page
        starts after it, by a row comparison an index serves, instead of skipping `offset`
        rows. `counted`: the total rides along as an uncorrelated scalar subquery (PostgreSQL
        evaluates it once, but it reads every matching row); only a page past the end then
        needs a second statement. One row more than `limit` is read, to know whether
        another page follows. Label ids that are not all the caller's labels match no task,
        which is answered from the labels alone."""
        filters = filters or TaskFilters()
        active = listed = _active_filters(filters)
        if sort in SORTS_NEEDING_Q and not filters.q:
            raise ValueError(f"sort={sort} needs q")
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
            **_filter_parameters(filters, active),
            **self._in_scope,
            "limit": limit + 1,
            "offset": offset,
        }
        if after is not None:
            parameters.update({f"after_{i}": value for i, value in enumerate(after)})
        statement = _page_statement(
            active,
            sort,
            counted=counted,
            after=after is not None,
            counted_by=None if active is listed else listed,
        )
        rows = (await self.session.execute(statement, parameters)).all()
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
            items=[_task_view(row) for row in shown],
            total=total,
            next_after=_keys(shown[-1], sort) if len(rows) > limit else None,
        )

    async def _search_way(
        self, q: str, active: tuple[ListFilter, ...], limit: int
    ) -> tuple[ListFilter, ...]:
        """`active` with the search done the way that finds the page sooner (one statement:
        a count of q's matches through the GIN index, as far as the answer needs)."""
        parameters = {"q": q, "page_rows": limit + 1}
        if not await self._walk_finds_the_page_sooner(_SEARCH_WALKS, parameters):
            return active
        return tuple(_SEARCH_BY_WALKING if f is _SEARCH_BY_ID else f for f in active)

    async def _labels_way(
        self, label_ids: Sequence[int], active: tuple[ListFilter, ...], limit: int
    ) -> tuple[ListFilter, ...]:
        """`active` with the label filter done the way that finds the page sooner (one
        statement: the carriers of the first label counted, as far as the answer needs)."""
        parameters = {"first_label": label_ids[0], "page_rows": limit + 1, **self._in_scope}
        if not await self._walk_finds_the_page_sooner(_LABELS_WALK, parameters):
            return active
        return tuple(_LABELS_BY_WALKING if f is _LABELS_BY_ID else f for f in active)

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
        parameters = {**_filter_parameters(filters, active), **self._in_scope}
        statement = _empty_search_statement(active, counted and past_the_start)
        row = (await self.session.execute(statement, parameters)).one()
        if row.no_words:
            raise SearchWordsMissingError(filters.q)
        return TaskPage(items=[], total=row.total if counted else None)

    async def count(self, filters: TaskFilters | None = None) -> int:
        """How many tasks match `filters` (for X-Total-Count)."""
        filters = filters or TaskFilters()
        active = _active_filters(filters)
        result = await self.session.execute(
            _count_statement(active), {**_filter_parameters(filters, active), **self._in_scope}
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
        changed = (await self.session.execute(_REPLACE_LABELS, parameters)).scalar_one()
        return bool(changed)

    async def _labels_of(self, task_id: int) -> list[Label]:
        """The task's labels in label order (one statement)."""
        result = await self.session.execute(_LABELS_OF, {"task_id": task_id})
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
            .where(Task.workspace_id == bindparam("workspace_id"), _IN_SCOPE)
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
        them, picked in SQL from its id (see _BULK_LABELS): nothing more crosses the wire."""
        if not rows:
            return 0
        driver = await driver_connection(self.session)
        columns = ", ".join(BULK_TASK_COLUMNS)
        arrays = ", ".join(
            f"${position}::{kind}[]" for position, kind in enumerate(_BULK_TASK_TYPES, start=3)
        )
        insert_tasks = (
            f"INSERT INTO tasks ({columns}, completed_at) "
            f"SELECT {columns}, CASE WHEN completed THEN updated_at END FROM unnest({arrays}) "
            f"AS bulk ({columns}) WHERE workspace_id = ANY($1::integer[])"
        )
        values = [list(column) for column in zip(*rows, strict=True)]
        workspace_ids = list(self.scope.workspace_ids)
        inserted = await driver.fetchval(
            f"WITH inserted AS ({insert_tasks} RETURNING id, workspace_id), "
            f"labelled AS ({_BULK_LABELS}) SELECT count(*) FROM inserted",
            workspace_ids,
            list(label_ids),
            *values,
        )
        return int(inserted)


# The labels of tasks inserted in bulk (the CTE `inserted`), from the labels $2: a task
# gets 0 to 3 of them, distinct, picked by a hash of its id (deterministic, and spread
# unlike the ids themselves). How many: none 50%, one 30%, two 15%, three 5% (0.75 per
# task: each row costs two foreign-key checks and two index entries, which made a seed
# 40-60% slower at about one label per task). The k-th pick is first + k * stride
# (mod n), with stride small enough that the picks never wrap onto each other. No labels
# ($2 empty): no pick.
_BULK_LABELS = """
    INSERT INTO task_labels (task_id, label_id, workspace_id)
    SELECT i.id, ($2::integer[])[1 + (pick.first + k * pick.stride) % pick.n], i.workspace_id
    FROM inserted i
    CROSS JOIN LATERAL (
        SELECT hashint4(i.id)::bigint + 2147483648 AS h, cardinality($2::integer[]) AS n
    ) hashed
    CROSS JOIN LATERAL (
        SELECT hashed.n,
               least(hashed.n, CASE WHEN hashed.h % 20 < 10 THEN 0 WHEN hashed.h % 20 < 16 THEN 1
                                    WHEN hashed.h % 20 < 19 THEN 2 ELSE 3 END) AS count,
               (hashed.h / 20) % greatest(hashed.n, 1) AS first, hashed.h / 640 AS spread
    ) base
    CROSS JOIN LATERAL (
        SELECT base.n, base.count, base.first,
               1 + base.spread % greatest((base.n - 1) / greatest(base.count - 1, 1), 1)
                   AS stride
    ) pick
    CROSS JOIN LATERAL generate_series(0, pick.count - 1) AS k
"""


# Column order of the rows TaskRepository.bulk_insert takes.
BULK_TASK_COLUMNS = (
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
# Their types, as bulk_insert's arrays are cast.
_BULK_TASK_TYPES = (
    "integer",
    "text",
    "text",
    "boolean",
    "integer",
    "timestamptz",
    "timestamptz",
    "timestamptz",
    "task_priority",
)


async def driver_connection(session: AsyncSession) -> Any:
    """The asyncpg connection under `session` (for arrays of many rows, sent as they are)."""
    connection = await session.connection()
    raw = await connection.get_raw_connection()
    return raw.driver_connection
