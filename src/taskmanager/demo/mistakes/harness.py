"""What every demonstration shares: the Observation it returns, and the few helpers that run
its code against the database and clean up afterwards.

Each demonstration writes only rows whose title (or name) starts with a marker of its own run
and deletes them again, so a development database is left as it was (only its id sequences
move on).

Every task and category now lives in a workspace, which the lecture's code (Week 6 has no
accounts) never names: each engine from `fresh_engine` comes with a workspace of its own,
which the tasks and categories written through it are put in (`demo_workspace`).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import event, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Mapper
from sqlalchemy.pool import NullPool

from taskmanager import models
from taskmanager.demo.mistakes import lecture

Fact = str | int | float | bool | None
T = TypeVar("T")
SessionFactory = async_sessionmaker[AsyncSession]

# Seconds each "slow" query sleeps in PostgreSQL: long enough for two requests to overlap.
SLOW_QUERY_SECONDS = 0.1


@dataclass
class Observation:
    """What one demonstration saw: the mistake's real outcome and the fix's."""

    mistake_observed: str
    mistake_failed_as_predicted: bool
    fix_observed: str
    fix_worked: bool
    # `module.Class` of the exception the mistake raised (None when it fails without one).
    mistake_exception: str | None = None
    # A few words on the mistake's outcome, for the summary table.
    summary: str = ""
    # Where the lecture's wording is not what happens with today's libraries.
    corrections: list[str] = field(default_factory=list)
    # The measured details behind the sentences above, for --json and the tests.
    facts: dict[str, Fact] = field(default_factory=dict)

    @property
    def as_predicted(self) -> bool:
        """The failure showed AND the fix worked."""
        return self.mistake_failed_as_predicted and self.fix_worked


@dataclass(frozen=True)
class Demonstration:
    number: int
    name: str
    title: str  # in the lecture's words
    source: str  # where the lecture says it
    lecture_says: str
    fix: str
    run: Callable[[str], Awaitable[Observation]]

    @property
    def code(self) -> str:
        """The file whose first screen holds the mistake and its fix."""
        return self.run.__module__.replace(".", "/") + ".py"


async def run_demonstration(demonstration: Demonstration, database_url: str) -> Observation:
    """Run one demonstration; if the demonstration itself breaks, say so as its observation."""
    try:
        return await demonstration.run(database_url)
    except Exception as exc:
        return Observation(
            mistake_observed=f"the demonstration itself failed: {describe(exc)}",
            mistake_failed_as_predicted=False,
            fix_observed="not run",
            fix_worked=False,
            facts={"error": describe(exc)},
        )


def exception_name(exc: BaseException) -> str:
    """`module.Class` of an exception (`builtins.` left out), as a reader would import it."""
    cls = type(exc)
    return (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )


def describe(exc: BaseException) -> str:
    """`Type: first line of the message`: what a reader needs to recognise the error."""
    lines = str(exc).strip().splitlines()
    return f"{exception_name(exc)}: {lines[0] if lines else ''}"


def outcome(exc: BaseException | None) -> str:
    return describe(exc) if exc else "no error"


async def caught(awaitable: Awaitable[T]) -> tuple[T | None, BaseException | None]:
    """The awaitable's result, or the exception it raised (a demonstration expects some)."""
    try:
        return await awaitable, None
    except Exception as exc:
        return None, exc


# -- the database ------------------------------------------------------------------------------


def new_marker() -> str:
    """A prefix for the titles/names this run writes, so cleanup deletes exactly those."""
    return f"demo-mistakes-{uuid.uuid4().hex[:12]}"


@asynccontextmanager
async def fresh_engine(database_url: str, **options: Any) -> AsyncIterator[AsyncEngine]:
    """A new engine (an empty pool: the first statement must open a connection), whose new
    tasks and categories go to a workspace of its own (`demo_workspace`)."""
    engine = create_async_engine(database_url, **options)
    try:
        async with demo_workspace(database_url, engine):
            yield engine
    finally:
        await engine.dispose()


# The models the demonstrations write: the project's and the lecture's own (lecture.py).
_WORKSPACE_ROWS = (models.Task, models.Category, lecture.Task, lecture.Category)


@asynccontextmanager
async def demo_workspace(database_url: str, engine: AsyncEngine) -> AsyncIterator[int]:
    """A workspace for `engine`'s rows while the block runs; deleted afterwards, with
    whatever is still in it.

    It is inserted (and deleted) by the connecting role, which owns the tables and, on the
    embedded server, is a superuser that row-level security does not restrict, like the
    demonstrations' own statements; over a connection of its own, so `engine`'s pool stays
    empty. A task or category that `engine` inserts without a workspace is put in it.
    """
    async with fresh_connection(database_url) as connection:
        workspace_id = await connection.scalar(
            text("INSERT INTO workspaces (name) VALUES (:name) RETURNING id"),
            {"name": f"{new_marker()} (the lecture's demonstrations)"},
        )
    assert isinstance(workspace_id, int)

    def into_workspace(mapper: Mapper[Any], connection: Connection, row: Any) -> None:
        if connection.engine is engine.sync_engine and row.workspace_id is None:
            row.workspace_id = workspace_id

    for model in _WORKSPACE_ROWS:
        event.listen(model, "before_insert", into_workspace)
    try:
        yield workspace_id
    finally:
        for model in _WORKSPACE_ROWS:
            event.remove(model, "before_insert", into_workspace)
        async with fresh_connection(database_url) as connection:
            await connection.execute(
                text("DELETE FROM workspaces WHERE id = :id"), {"id": workspace_id}
            )


@asynccontextmanager
async def fresh_connection(database_url: str) -> AsyncIterator[Any]:
    """One connection of its own, in a transaction committed at the end of the block."""
    engine = create_async_engine(database_url, poolclass=NullPool)
    try:
        async with engine.begin() as connection:
            yield connection
    finally:
        await engine.dispose()


async def committed_titles(engine: AsyncEngine, marker: str) -> list[str]:
    """This run's committed task titles without the marker, as another connection sees them."""
    async with engine.connect() as connection:
        result = await connection.execute(
            text("SELECT title FROM tasks WHERE title LIKE :prefix ORDER BY title"),
            {"prefix": f"{marker}%"},
        )
        return [str(title).removeprefix(marker).strip() for title in result.scalars()]


async def delete_marked(engine: AsyncEngine, marker: str) -> None:
    async with engine.begin() as connection:
        for table, column in (("tasks", "title"), ("categories", "name")):
            await connection.execute(
                text(f"DELETE FROM {table} WHERE {column} LIKE :prefix"), {"prefix": f"{marker}%"}
            )


async def slow_query(session: AsyncSession) -> None:
    await session.execute(text("SELECT pg_sleep(:s)"), {"s": SLOW_QUERY_SECONDS})


# -- HTTP --------------------------------------------------------------------------------------


def app_serving(
    async_session_factory: SessionFactory, *routers: APIRouter, errors_as_json: bool = False
) -> FastAPI:
    """A FastAPI app with `routers`, whose session dependency uses `async_session_factory`.

    errors_as_json: a database error is answered as a 500 naming the exception, so the client
    sees it (otherwise a plain 500, exactly what the server does with an unhandled error)."""
    app = FastAPI()
    app.state.async_session_factory = async_session_factory
    for router in routers:
        app.include_router(router)

    async def database_error(request: Request, exc: Exception) -> JSONResponse:
        lines = str(exc).strip().splitlines()
        body = {"exception": exception_name(exc), "message": lines[0] if lines else ""}
        return JSONResponse(body, status_code=500)

    if errors_as_json:
        app.add_exception_handler(SQLAlchemyError, database_error)
    return app


def json_body(response: Any) -> dict[str, Any]:
    """The JSON object an httpx response carries, or its text under "message" (a plain 500)."""
    try:
        body = response.json()
    except ValueError:
        return {"message": response.text}
    return body if isinstance(body, dict) else {"message": str(body)}


@contextmanager
def captured_logs(logger_name: str) -> Iterator[list[logging.LogRecord]]:
    """The errors `logger_name` logs meanwhile, kept out of the terminal."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger(logger_name)
    handler = Keep()
    # Whatever configured this logger before (another server's log_level, say) is put back.
    saved = (logger.propagate, logger.level, logger.disabled)
    logger.addHandler(handler)
    logger.propagate, logger.disabled = False, False
    logger.setLevel(logging.ERROR)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.propagate, _, logger.disabled = saved
        logger.setLevel(saved[1])


@asynccontextmanager
async def serving(app: Any, *, start_within: float = 10.0) -> AsyncIterator[str]:
    """Serve `app` with uvicorn on a free port of 127.0.0.1 in this event loop; yield its base
    URL; stop it afterwards. A real socket: the client sees exactly what a browser would."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))  # port 0: the kernel picks a free port, no race
    config = uvicorn.Config(app, lifespan="off", log_config=None, access_log=False)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(start_within):
            while not server.started:
                if task.done():
                    task.result()  # re-raise why it could not start
                    raise RuntimeError("uvicorn stopped before it started")
                await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        try:
            # wait_for cancels (and waits for) a server that does not stop in time.
            await asyncio.wait_for(task, timeout=10)
        except TimeoutError:
            pass
        finally:
            sock.close()
