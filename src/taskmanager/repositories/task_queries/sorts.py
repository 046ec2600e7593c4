"""The orders GET /tasks offers, and the keysets that continue a page after its last row."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

from sqlalchemy import Column, ColumnElement, bindparam, tuple_
from sqlalchemy.sql import operators
from sqlalchemy.sql.elements import UnaryExpression
from sqlalchemy.types import TypeEngine

from taskmanager.models import Task
from taskmanager.repositories.task_queries.search import RELEVANCE

_TASKS = Task.__table__

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
