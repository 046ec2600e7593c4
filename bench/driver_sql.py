"""The app's own statements as asyncpg takes them, for the bench's floors and layers and
scope_step.py, which talk to the driver themselves.

`ENTER_SQL`: the first statement of a transaction ($1 ... $7, the text as written).
`compiled()`: any statement of the app compiled once, by SQLAlchemy's asyncpg dialect, to the
text the app sends (its casts, its parameters in the order the dialect numbers them), so
that a floor sends PostgreSQL exactly what the app sends and runs no SQLAlchemy per request.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
from sqlalchemy.sql import ClauseElement

from taskmanager.repositories.user_repository import _ENTER

# taskmanager_enter's arguments and the request's id, in the order the placeholders number
# them.
ENTER_PARAMETERS = (
    "user_id",
    "session_id",
    "purpose",
    "valid_until",
    "proof",
    "subject",
    "request_id",
)


def _positional(sql: str) -> str:
    for position, name in enumerate(ENTER_PARAMETERS, start=1):
        sql = sql.replace(f":{name}", f"${position}")
    return sql


ENTER_SQL = _positional(_ENTER.text)


@dataclass(frozen=True)
class Compiled:
    """A statement's text as the app sends it, and its parameters' names in $n order; the
    values the statement carries itself (a literal the dialect binds, such as the keys of
    a json_build_object) are filled in by `arguments`."""

    sql: str
    names: tuple[str, ...]
    fixed: Mapping[str, Any]

    def arguments(self, **values: Any) -> list[Any]:
        return [values[name] if name in values else self.fixed[name] for name in self.names]


def compiled(statement: ClauseElement) -> Compiled:
    """`statement` compiled as the app's engine compiles it (SQLAlchemy's asyncpg dialect)."""
    result = statement.compile(dialect=asyncpg_dialect())
    assert result.positiontup is not None, "the asyncpg dialect numbers its parameters"
    fixed = {name: value for name, value in result.params.items() if value is not None}
    return Compiled(result.string, tuple(result.positiontup), fixed)
