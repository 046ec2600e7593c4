"""A list of values in a WHERE clause, bound as ONE array parameter: `column = ANY($1)`.

`column.in_(values)` binds one parameter per value, and asyncpg refuses a statement with
more than 32,767 of them: an account in that many workspaces got a 503 from every list that
filtered by its workspaces. An array is one parameter however long it is, and the text of
the statement stays the same for any number of values, so PostgreSQL's prepared statement
and SQLAlchemy's compiled statement are reused instead of one per length.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import ColumnElement, Integer, any_, literal
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
    """The row's `workspace_id` is one of the caller's workspaces."""
    return any_of(workspace_id, scope.workspace_ids)
