"""A list of values in a WHERE clause, bound as ONE array parameter: `column = ANY($1)`.

`column.in_(values)` binds one parameter per value, and asyncpg refuses a statement with
more than 32,767 of them: an account in that many workspaces got a 503 from every list that
filtered by its workspaces. An array is one parameter however long it is, and the text of
the statement stays the same for any number of values, so PostgreSQL's prepared statement
and SQLAlchemy's compiled statement are reused instead of one per length.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import ColumnElement, Integer, any_, bindparam, literal
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import QueryableAttribute
from sqlalchemy.types import TypeEngine

from taskmanager.security.scope import Scope

# A table's column, or a mapped class's attribute.
Column = ColumnElement[Any] | QueryableAttribute[Any]


def any_of(
    column: Column,
    values: Iterable[Any],
    element_type: type[TypeEngine[Any]] | TypeEngine[Any] = Integer,
) -> ColumnElement[bool]:
    """`column = ANY(:values)`, the values bound as one array of `element_type`."""
    return column == any_(literal(list(values), ARRAY(element_type)))


def in_scope(workspace_id: Column, scope: Scope) -> ColumnElement[bool]:
    """The row's `workspace_id` is one of the caller's workspaces, the ids bound into the
    statement: for a statement built per call. One built once uses `scoped`."""
    return any_of(workspace_id, scope.workspace_ids)


# The caller's workspaces, bound per request (`scope_parameters`) into statements built once.
WORKSPACE_IDS = bindparam("workspace_ids", type_=ARRAY(Integer))


def scoped(workspace_id: Column) -> ColumnElement[bool]:
    """The row's `workspace_id` is one of the caller's workspaces: `workspace_id =
    ANY(:workspace_ids)`, the ids given at execution by `scope_parameters`. Row-level
    security in PostgreSQL would hide the rest anyway; this is the first line."""
    return workspace_id == any_(WORKSPACE_IDS)


def scope_parameters(scope: Scope) -> dict[str, list[int]]:
    """The parameters of `scoped`: the caller's workspace ids."""
    return {WORKSPACE_IDS.key: list(scope.workspace_ids)}


def distinct_ids(ids: Sequence[int]) -> list[int]:
    """Each id once, in order: one array parameter for any repetition or order of them."""
    return sorted(set(ids))
