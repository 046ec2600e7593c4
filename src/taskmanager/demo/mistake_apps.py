"""The tiny FastAPI apps the HTTP mistakes run in, and a real server to call them over.

Each app is built with the mistake or with its fix, differing in that one place only. No
`from __future__ import annotations` here: FastAPI reads the route and dependency
annotations at run time, and they refer to dependencies local to each builder.
"""

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Request, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import event, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from taskmanager.models import Task

# Seconds each "slow" query sleeps in PostgreSQL: long enough for requests to overlap.
SLOW_QUERY_SECONDS = 0.1


def exception_name(exc: BaseException) -> str:
    """`module.Class` of an exception (`builtins.` left out), as a reader would import it."""
    cls = type(exc)
    return (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )


def first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else ""


def describe(exc: BaseException) -> str:
    """`Type: first line of the message`: what a reader needs to recognise the error."""
    return f"{exception_name(exc)}: {first_line(exc)}"


def _report_database_errors(app: FastAPI) -> None:
    """Answer a database error with its real type and message (500), so the client sees it."""

    async def handler(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(
            {"exception": exception_name(exc), "message": first_line(exc)},
            status_code=status.HTTP_500_INTERNAL_SERVER_ERROR,
        )

    app.add_exception_handler(SQLAlchemyError, handler)


# ─────────────────────────────────────────────
# A session shared across two concurrent requests
# ─────────────────────────────────────────────


class NewTask(BaseModel):
    title: str
    reject: bool = False  # the route fails after adding its task (a validation it runs late)


@dataclass
class Choreography:
    """Makes the lecture's interleaving happen on every run (under load it happens by chance):
    request B adds its task, request A adds and commits, then request B fails."""

    b_added: asyncio.Event = field(default_factory=asyncio.Event)
    release_b: asyncio.Event = field(default_factory=asyncio.Event)


def build_shared_session_app(
    async_session_factory: async_sessionmaker[AsyncSession],
    choreography: Choreography,
    *,
    global_session: bool,
) -> FastAPI:
    """The lecture's dependency (commit after the route, rollback on error), handing every
    request either ONE global session (the mistake) or a session of its own (the fix).
    The global session, if any, is `app.state.global_session`: the caller closes it."""
    app = FastAPI()
    _report_database_errors(app)
    shared = async_session_factory() if global_session else None  # created once, at startup
    app.state.global_session = shared

    async def get_async_session() -> AsyncIterator[AsyncSession]:
        session = shared if shared is not None else async_session_factory()
        try:
            yield session
            await session.commit()
        except Exception:
            await session.rollback()
            raise
        finally:
            if session is not shared:  # a request's own session is closed; the global one lives
                await session.close()

    session_dependency = Depends(get_async_session, scope="function")

    @app.get("/slow")
    async def slow(session: Annotated[AsyncSession, session_dependency]) -> dict[str, float]:
        await session.execute(text("SELECT pg_sleep(:s)"), {"s": SLOW_QUERY_SECONDS})
        return {"slept": SLOW_QUERY_SECONDS}

    @app.post("/tasks", status_code=status.HTTP_201_CREATED)
    async def create_task(
        body: NewTask, session: Annotated[AsyncSession, session_dependency]
    ) -> dict[str, str]:
        session.add(Task(title=body.title))
        if body.reject:
            choreography.b_added.set()
            await choreography.release_b.wait()
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "rejected: nothing saved")
        await choreography.b_added.wait()
        return {"title": body.title}

    return app


# ─────────────────────────────────────────────
# Committing inside the route AND the dependency
# ─────────────────────────────────────────────


@dataclass
class CommitCounter:
    """`session.commit()` calls that ended a session transaction, and COMMITs sent to PostgreSQL
    (the second is counted by the caller, with an engine `commit` listener)."""

    session_commits: int = 0
    database_commits: int = 0

    def reset(self) -> None:
        self.session_commits = self.database_commits = 0


def build_double_commit_app(
    async_session_factory: async_sessionmaker[AsyncSession],
    counter: CommitCounter,
    *,
    commit_in_route: bool,
) -> FastAPI:
    """POST /tasks as in lecture 3.3: add, commit (the mistake) or flush (the fix), refresh,
    then an optional later step (attach a category) that can fail."""
    app = FastAPI()
    _report_database_errors(app)

    def count_commit(session: Session) -> None:
        counter.session_commits += 1

    async def get_async_session() -> AsyncIterator[AsyncSession]:
        async with async_session_factory() as session:
            event.listen(session.sync_session, "after_commit", count_commit)
            try:
                yield session
                await session.commit()
            except Exception:
                await session.rollback()
                raise

    # scope="function": the dependency's commit is over when the response (and our count) is.
    session_dependency = Depends(get_async_session, scope="function")

    @app.post("/tasks", status_code=status.HTTP_201_CREATED)
    async def create_task(
        title: str,
        session: Annotated[AsyncSession, session_dependency],
        category_id: int | None = None,
        refresh: bool = True,
    ) -> dict[str, int]:
        task = Task(title=title)
        session.add(task)
        if commit_in_route:
            await session.commit()  # ❌ commits here; the dependency commits again
        else:
            await session.flush()  # ✅ sends the INSERT; the dependency commits once
        if refresh:
            await session.refresh(task)
        if category_id is not None:
            task.category_id = category_id  # a later step: fails if the category is missing
            await session.flush()
        return {"id": task.id}

    return app


# ─────────────────────────────────────────────
# Commit after `yield` with FastAPI's default dependency scope
# ─────────────────────────────────────────────


@dataclass
class DependencyOutcome:
    """What the session dependency's code after `yield` did, seen from inside the server."""

    finished: asyncio.Event = field(default_factory=asyncio.Event)
    error: BaseException | None = None


def build_commit_after_yield_app(
    async_session_factory: async_sessionmaker[AsyncSession],
    table: str,
    outcome: DependencyOutcome,
    *,
    scope: Literal["function"] | None,
) -> FastAPI:
    """POST /notes inserts a row whose foreign key is checked only at COMMIT; the session
    dependency is the lecture's, declared `Depends(get_async_session)` (default scope) or
    `Depends(get_async_session, scope="function")`. No error handlers: what a client gets
    for an unhandled error is exactly what the server does with it."""
    app = FastAPI()

    async def get_async_session() -> AsyncIterator[AsyncSession]:
        try:
            async with async_session_factory() as session:
                try:
                    yield session
                    await session.commit()
                except Exception as exc:
                    outcome.error = exc  # the one line added to the lecture's dependency
                    await session.rollback()
                    raise
        finally:
            outcome.finished.set()

    session_dependency = (
        Depends(get_async_session) if scope is None else Depends(get_async_session, scope=scope)
    )

    @app.post("/notes", status_code=status.HTTP_201_CREATED)
    async def create_note(session: Annotated[AsyncSession, session_dependency]) -> dict[str, int]:
        # parent_id -1 never exists; the DEFERRABLE INITIALLY DEFERRED foreign key only
        # notices at COMMIT, so the INSERT (and anything the route does) succeeds.
        result = await session.execute(
            text(f"INSERT INTO {table} (parent_id) VALUES (-1) RETURNING id")
        )
        return {"id": int(result.scalar_one())}

    return app


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
    port = sock.getsockname()[1]
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
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        try:
            # wait_for cancels (and waits for) a server that does not stop in time.
            await asyncio.wait_for(task, timeout=10)
        except TimeoutError:
            pass
        finally:
            sock.close()
