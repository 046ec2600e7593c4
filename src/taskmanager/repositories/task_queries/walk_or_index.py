"""The walk-or-index rule: how a page of a search or a label filter is found sooner.

Either every matching task is read by id (the GIN index for `q`, the label index for
labels) and the page sorted out of them, or the order's own index is walked and each task
tested as it comes, stopping at the page. Walking wins when the matches are many; one
statement counts them, only as far as the answer needs (TaskRepository.get_page asks).
"""

from __future__ import annotations

from sqlalchemy import (
    ColumnElement,
    Integer,
    any_,
    bindparam,
    column,
    func,
    literal_column,
    select,
    table,
)
from sqlalchemy.dialects.postgresql import ARRAY

from taskmanager.models import Task, TaskLabel
from taskmanager.repositories.array_parameters import distinct_ids, scoped
from taskmanager.repositories.task_queries.filters import LIST_FILTERS, ListFilter
from taskmanager.repositories.task_queries.search import SEARCH_QUERY, SEARCH_WORDS

_TASKS = Task.__table__
_TASK_LABELS = TaskLabel.__table__


# The search, tested on each task in turn (`@@` on its own search_vector): a word most tasks
# hold costs the GIN index way a read of every match (83,000 of a million tasks: seconds);
# walking the order's index and testing each task reads about limit x tasks / matches rows
# (600 there) and stops at the page.
WALKING_SEARCH = _TASKS.c.search_vector.bool_op("@@")(SEARCH_QUERY)


def carries_all_labels() -> ColumnElement[bool]:
    """The label filter's test (filters.has_all_labels), asked of each task in turn: how
    many of its rows are among the labels (probes of task_labels' primary key). A
    correlated subquery PostgreSQL cannot turn into a join, so walking an order's index it
    stops at the page; for labels many tasks carry, that reads a few hundred tasks where
    the other shape reads every carrier."""
    wanted = bindparam("label_ids", type_=ARRAY(Integer))
    carried = (
        select(func.count())
        .where(_TASK_LABELS.c.task_id == _TASKS.c.id, _TASK_LABELS.c.label_id == any_(wanted))
        .correlate(_TASKS)
        .scalar_subquery()
    )
    return carried == func.cardinality(wanted)


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
SEARCH_WALKS = select(func.taskmanager_matches_at_least(SEARCH_WORDS, _ENOUGH_TO_WALK))
_FIRST_LABEL_CARRIERS = (
    select(_TASK_LABELS.c.task_id)
    .where(
        _TASK_LABELS.c.label_id == bindparam("first_label", type_=Integer),
        scoped(_TASK_LABELS.c.workspace_id),
    )
    .limit(_ENOUGH_TO_WALK)
    .subquery()
)
LABELS_WALK = select(
    select(func.count()).select_from(_FIRST_LABEL_CARRIERS).scalar_subquery() >= _ENOUGH_TO_WALK
)

_SEARCH_BY_ID = next(f for f in LIST_FILTERS if f.name == "q")
_SEARCH_BY_WALKING = ListFilter("q", WALKING_SEARCH)
_LABELS_BY_ID = next(f for f in LIST_FILTERS if f.name == "label_ids")
_LABELS_BY_WALKING = ListFilter("label_ids", carries_all_labels(), distinct_ids)


def search_by_walking(active: tuple[ListFilter, ...]) -> tuple[ListFilter, ...]:
    """`active` with the search done by walking the order's index."""
    return tuple(_SEARCH_BY_WALKING if f is _SEARCH_BY_ID else f for f in active)


def labels_by_walking(active: tuple[ListFilter, ...]) -> tuple[ListFilter, ...]:
    """`active` with the label filter done by walking the order's index."""
    return tuple(_LABELS_BY_WALKING if f is _LABELS_BY_ID else f for f in active)
