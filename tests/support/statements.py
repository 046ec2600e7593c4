"""The SQL a request sends, as the test engine's `before_cursor_execute` listener sees it:
each statement with the values bound to it, told apart into the route's own, the caller's
(`UserRepository.enter`, one per request that needs a caller) and what the rolled-back test
fixture adds (its SAVEPOINT/RELEASE statements, the stand-in for the real transaction, and
the statement that ends the caller's scope after each request, as a real COMMIT would)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

SAVEPOINT_PREFIXES = ("SAVEPOINT ", "RELEASE SAVEPOINT ", "ROLLBACK TO SAVEPOINT ")
# tests/support/rolled_back.py, after every request: what the real COMMIT would undo.
END_OF_REQUEST_PREFIX = "SELECT SET_CONFIG('ROLE', 'NONE'"
CALLER_MARK = "FROM taskmanager_enter("


def is_fixture(statement: str) -> bool:
    start = statement.lstrip().upper()
    return start.startswith(SAVEPOINT_PREFIXES) or start.startswith(END_OF_REQUEST_PREFIX)


def is_caller(statement: str) -> bool:
    return CALLER_MARK in statement


@dataclass
class StatementLog:
    """The statements sent, in order, each with the values bound to it."""

    sent: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)

    def record(self, statement: str, parameters: Any) -> None:
        self.sent.append((statement, tuple(parameters or ())))

    @property
    def statements(self) -> list[str]:
        return [statement for statement, _ in self.sent]

    @property
    def queries(self) -> list[str]:
        """The route's own statements."""
        return [statement for statement, _ in self.queries_sent]

    @property
    def queries_sent(self) -> list[tuple[str, tuple[Any, ...]]]:
        """The route's own statements, each with its values."""
        return [(s, p) for s, p in self.sent if not is_fixture(s) and not is_caller(s)]

    @property
    def caller(self) -> list[str]:
        return [s for s in self.statements if is_caller(s)]

    @property
    def fixture(self) -> list[str]:
        return [s for s in self.statements if is_fixture(s)]


@contextmanager
def count_statements(engine: AsyncEngine) -> Iterator[StatementLog]:
    """Every statement `engine` sends inside the block."""
    log = StatementLog()

    def before_cursor_execute(
        conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool
    ) -> None:
        log.record(statement, parameters)

    event.listen(engine.sync_engine, "before_cursor_execute", before_cursor_execute)
    try:
        yield log
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", before_cursor_execute)
