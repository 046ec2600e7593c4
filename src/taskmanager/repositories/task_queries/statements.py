"""The list statements: one per combination of filters, sort, counting and continuing,
built on first use and then reused (building a SELECT and its cache key costs more CPU than
PostgreSQL spends answering a page)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from sqlalchemy import Select, bindparam, func, literal, select
from sqlalchemy.orm import joinedload

from taskmanager.models import Task
from taskmanager.repositories.task_queries.filters import ListFilter, where
from taskmanager.repositories.task_queries.search import Q_HAS_NO_WORDS
from taskmanager.repositories.task_queries.sorts import DEFAULT_SORT, SORTS, keyset
from taskmanager.repositories.task_queries.views import VIEW_COLUMNS, WITH_CATEGORY

_TASKS = Task.__table__
_NEWEST_FIRST = SORTS[DEFAULT_SORT]


@lru_cache(maxsize=8)
def count_statement(active: tuple[ListFilter, ...]) -> Select[Any]:
    return where(select(func.count()).select_from(_TASKS), active)


@lru_cache(maxsize=256)
def page_statement(
    active: tuple[ListFilter, ...],
    sort: str = DEFAULT_SORT,
    *,
    counted: bool = True,
    after: bool = False,
    counted_by: tuple[ListFilter, ...] | None = None,
) -> Select[Any]:
    """A page selects the sort's keys after the view's columns, so the cursor of the next
    page is read, typed, from the last row instead of recomputed. `counted_by`: the filters
    the total counts with, when the page's differ (a walking search or label filter: tested
    task by task, which suits a page, not a count of all)."""
    order = keyset(sort)
    columns = [*VIEW_COLUMNS, *(key.label(f"key_{i}") for i, key in enumerate(order.keys))]
    if counted:
        total = count_statement(counted_by or active).correlate(None).scalar_subquery()
        columns.append(total.label("total"))
    statement = where(select(*columns), active).select_from(WITH_CATEGORY)
    if after:
        statement = statement.where(order.after())
    return statement.order_by(*SORTS[sort]).limit(bindparam("limit")).offset(bindparam("offset"))


def page_keys(row: Sequence[Any], sort: str) -> tuple[Any, ...]:
    """The sort keys a page row carries after the view's columns."""
    return tuple(row[len(VIEW_COLUMNS) : len(VIEW_COLUMNS) + len(keyset(sort).keys)])


@lru_cache(maxsize=16)
def empty_search_statement(active: tuple[ListFilter, ...], counted: bool) -> Select[Any]:
    """Whether q has no word, and how many tasks match (0 unless `counted`)."""
    total = count_statement(active).scalar_subquery() if counted else literal(0)
    return select(total.label("total"), Q_HAS_NO_WORDS.label("no_words"))


@lru_cache(maxsize=8)
def all_statement(active: tuple[ListFilter, ...]) -> Select[Any]:
    return (
        where(select(Task), active)
        .options(joinedload(Task.category))
        .order_by(*_NEWEST_FIRST)
        .limit(bindparam("limit"))
        .offset(bindparam("offset"))
    )
