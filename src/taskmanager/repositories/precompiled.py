"""Statements every request sends, sent as the SQL SQLAlchemy compiled for them once:
`await precompiled(statement).execute(session, parameters)`.

`session.execute(statement)` builds the statement's cache key by walking the whole
statement tree, looks it up in the compiled cache, and sets up the ORM's execution around
it, every time: ~27 µs of CPU per statement, and every request enters its caller with one
statement before it does anything else (UserRepository.enter). Used for that statement and
for the reads of GET /tasks/{id} and GET /tasks. A `Precompiled` statement
is compiled once per dialect and sent with `AsyncConnection.exec_driver_sql` on the
session's own connection: the same SQL text, the same transaction (the session begins it
as for any statement), the same events (the slow-statement log, the tests' statement
counts), the same errors.

Only for statements whose values need no conversion in Python on the way back (plain
columns, JSON decoded by the driver): their rows are the driver's values as they come.
The bound values go through the types' bind processors as SQLAlchemy's own execution does.
tests/repositories/test_precompiled.py compares both ways on real rows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from weakref import WeakKeyDictionary

from sqlalchemy.engine import CursorResult, Dialect
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ClauseElement


@dataclass(frozen=True, slots=True)
class _Form:
    """A statement as one dialect runs it: its SQL, and how named values become the
    positional ones it takes."""

    compiled: SQLCompiler
    sql: str
    order: Sequence[str]
    processors: Mapping[str, Callable[[Any], Any]]

    def arguments(self, parameters: Mapping[str, Any]) -> tuple[Any, ...]:
        # The literal values rendered as parameters (json_build_object's keys, say) come
        # from the statement itself; a required value missing is an error, as in execute().
        values = dict(self.compiled.construct_params(dict(parameters)) or {})
        for name, process in self.processors.items():
            values[name] = process(values[name])
        return tuple(values[name] for name in self.order)


class Precompiled:
    """`statement`, compiled on first use for the dialect of the session's connection."""

    def __init__(self, statement: ClauseElement) -> None:
        self.statement = statement
        # Per dialect (an engine's: its server's version may change what it compiles to).
        self._forms: WeakKeyDictionary[Dialect, _Form] = WeakKeyDictionary()

    def _form(self, dialect: Dialect) -> _Form:
        form = self._forms.get(dialect)
        if form is None:
            compiled = self.statement.compile(dialect=dialect)
            order = getattr(compiled, "positiontup", None)
            if not isinstance(compiled, SQLCompiler) or order is None:
                raise TypeError(f"{dialect.name} does not bind parameters by position")
            processors = {
                name: process
                for name, bind in compiled.binds.items()
                if (process := bind.type.dialect_impl(dialect).bind_processor(dialect))
            }
            form = _Form(compiled, compiled.string, tuple(order), processors)
            self._forms[dialect] = form
        return form

    async def execute(
        self, session: AsyncSession, parameters: Mapping[str, Any]
    ) -> CursorResult[Any]:
        """The statement's result in the session's transaction (begun if it was not)."""
        connection = await session.connection()
        form = self._form(connection.dialect)
        return await connection.exec_driver_sql(form.sql, form.arguments(parameters))


# Statement object -> its Precompiled (the statement kept with it, so its id stays its own):
# module constants and the task list's cached statements. Keyed by identity: a statement's
# `==` builds SQL.
_PRECOMPILED: dict[int, tuple[ClauseElement, Precompiled]] = {}


# Bounded all the same: the task list's statements are cached by an LRU of their own, which
# may build one again after dropping it.
PRECOMPILED_KEPT = 1024


def precompiled(statement: ClauseElement) -> Precompiled:
    """The Precompiled form of `statement`, made on first use."""
    found = _PRECOMPILED.get(id(statement))
    if found is None:
        if len(_PRECOMPILED) >= PRECOMPILED_KEPT:
            _PRECOMPILED.pop(next(iter(_PRECOMPILED)))
        found = _PRECOMPILED[id(statement)] = (statement, Precompiled(statement))
    return found[1]
