"""Engine, session factories and the session-per-request dependencies.

One AsyncSession per request (one visit, one library card). Routes and repositories
flush; only `get_async_session` commits, and it does so BEFORE the response is sent:
`SessionDep` declares the dependency with `scope="function"`, so the code after `yield`
runs when the route function (and its response serialization) has finished, not after
the response went out. With FastAPI's default scope a failed commit would still have
shown the client a 2xx.

Routes that only read ask for an `AsyncReadSession` (`ReadSessionDep`) instead: the same
pool, in a READ ONLY transaction, so a route that only reads cannot write by mistake. It is
a transaction, not autocommit, because the caller's row-level-security settings are
transaction-local (`set_config(..., true)`), which is what keeps them correct behind
PgBouncer's transaction pooling."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from sqlalchemy import event, text
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import NullPool

from taskmanager.cache.invalidation import forget_changes, void_after_commit
from taskmanager.config import Settings

T = TypeVar("T")


def create_engine(settings: Settings, database_url: str) -> AsyncEngine:
    """The async engine (asyncpg driver) with the pool and timeouts from settings."""
    connect_args: dict[str, Any] = {"timeout": settings.connect_timeout}
    if settings.statement_timeout_ms:
        # The server's statement_timeout answers first (57014 -> 503) whenever it can; this
        # client-side bound ends the wait when it cannot answer at all (frozen, cut off),
        # where a request would otherwise hang forever on its pooled connection.
        connect_args["command_timeout"] = settings.statement_timeout_ms / 1000 + 1.0
    if settings.pgbouncer:
        # Transaction pooling hands each transaction any server connection: statements
        # prepared and cached on one are missing (or clash by name) on the next, and
        # PgBouncer refuses unknown startup parameters. So: no statement caches, only the
        # unnamed statement, no server_settings (set statement_timeout on the database role).
        connect_args |= pooler_safe_connect_args()
    else:
        server_settings = {"application_name": "taskmanager"}
        if settings.statement_timeout_ms:
            server_settings["statement_timeout"] = str(settings.statement_timeout_ms)
        connect_args["server_settings"] = server_settings
    engine = create_async_engine(
        database_url,
        echo=settings.sql_echo,
        pool_size=settings.pool_size,
        max_overflow=settings.max_overflow,
        pool_timeout=settings.pool_timeout,
        # No pre-ping (a round trip per checkout). A connection the server closed (a
        # restart) is known closed by asyncpg already and is replaced at checkout
        # (_replace_a_closed_connection); one found dead only by using it answers one 503,
        # and SQLAlchemy then invalidates the whole pool so the next requests reconnect.
        pool_pre_ping=False,
        # Errors carry no parameters (an email, a password hash) into the logs; SQL echo,
        # asked for explicitly while developing, still shows them.
        hide_parameters=not settings.sql_echo,
        connect_args=connect_args,
    )
    event.listen(engine.sync_engine, "handle_error", _drop_a_tampered_connection)
    event.listen(engine.sync_engine, "checkout", _replace_a_closed_connection)
    return engine


def _replace_a_closed_connection(
    dbapi_connection: Any, connection_record: Any, connection_proxy: Any
) -> None:
    """A pooled connection the server closed (PostgreSQL restarted, or ended the backend)
    is one asyncpg has seen close: the pool replaces it now instead of handing it to a
    request that would answer 503. An attribute read, not a round trip."""
    driver = getattr(dbapi_connection, "driver_connection", None)
    if driver is not None and driver.is_closed():
        raise DisconnectionError("the server closed this pooled connection")


# What makes a pooled connection unfit for the next request: taskmanager_enter refused it
# because SQL prepared a statement on it (migration 0008), or one of the statements cached
# on it was deallocated by SQL. Either way the session is not the service's own any more.
TAMPERED_SQLSTATES = frozenset({"42T01", "26000"})  # 26000: invalid_sql_statement_name


def _drop_a_tampered_connection(context: ExceptionContext) -> None:
    """Close that connection instead of returning it to the pool (only it: the others are
    fine). The request answers 503 with Retry-After; a retry gets a clean connection."""
    error: Any = context.original_exception
    sqlstate = getattr(error, "sqlstate", None) or getattr(
        getattr(error, "__cause__", None), "sqlstate", None
    )
    if sqlstate in TAMPERED_SQLSTATES:
        context.is_disconnect = True
        context.invalidate_pool_on_disconnect = False


def pooler_safe_connect_args() -> dict[str, Any]:
    """asyncpg connect arguments that work behind PgBouncer in transaction pooling mode."""
    return {
        "statement_cache_size": 0,  # asyncpg's own cache
        "prepared_statement_cache_size": 0,  # SQLAlchemy's asyncpg dialect cache
        "prepared_statement_name_func": _unnamed_statement,
    }


@asynccontextmanager
async def one_connection(
    url: str, *, begin: bool = False, connect_timeout: float | None = None
) -> AsyncIterator[AsyncConnection]:
    """One connection to `url` on an engine made for it (no pool; safe through PgBouncer),
    disposed of afterwards; with `begin`, in a transaction committed at the end (rolled
    back on an error). `connect_timeout` bounds opening the connection."""
    connect_args = pooler_safe_connect_args()
    if connect_timeout is not None:
        connect_args["timeout"] = connect_timeout
    engine = create_async_engine(url, poolclass=NullPool, connect_args=connect_args)
    try:
        async with engine.begin() if begin else engine.connect() as connection:
            yield connection
    finally:
        await engine.dispose()


def run_on_one_connection(
    url: str, work: Callable[[AsyncConnection], Awaitable[T]], *, begin: bool = False
) -> T:
    """`work` on `one_connection(url, begin=begin)`, on an event loop of its own: it blocks
    (for commands, and for code that runs in a worker thread)."""

    async def run() -> T:
        async with one_connection(url, begin=begin) as connection:
            return await work(connection)

    return asyncio.run(run())


def _unnamed_statement() -> str:
    """The unnamed statement: with statement_cache_size=0 asyncpg re-sends its Parse with
    the Bind, so the execution never depends on which server connection ran the prepare.

    Unique names are not enough: outside a transaction (the autocommit read sessions) the
    prepare and the execution are two round trips PgBouncer may send to two servers
    ("prepared statement ... does not exist"), and inside one, the statement closed at the
    next transaction's first prepare stays behind on the first server connection.
    """
    return ""


def create_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """The lecture's async_session_factory; expire_on_commit=False so loaded objects stay
    readable after commit instead of triggering a lazy load (MissingGreenlet)."""
    return async_sessionmaker(bind=engine, class_=AsyncSession, expire_on_commit=False)


class AsyncReadSession(AsyncSession):
    """A session for requests that only read (polar's AsyncReadSession): its transaction is
    READ ONLY, so PostgreSQL refuses any write made through it (SQLSTATE 25006). A route
    that only reads says so by asking for this type."""


def create_read_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncReadSession]:
    """The factory of AsyncReadSession: the same engine (and pool), read-only transactions."""
    return async_sessionmaker(
        bind=engine.execution_options(postgresql_readonly=True),
        class_=AsyncReadSession,
        expire_on_commit=False,
    )


# A key of `session.info`: this transaction recorded an outbox row (a mail to send). The
# session dependency wakes the outbox worker once the transaction has committed.
OUTBOX_RECORDED = "outbox_recorded"


def note_outbox_recorded(session: AsyncSession) -> None:
    """Called by a repository that recorded an outbox row in `session`'s transaction."""
    session.info[OUTBOX_RECORDED] = True


def wake_outbox_after_commit(request: Request, session: AsyncSession) -> None:
    """After the request's commit: if it recorded outbox rows, the worker sends them now
    rather than at its next look (none runs where the lifespan did not start one)."""
    if session.info.pop(OUTBOX_RECORDED, False):
        wake = getattr(request.app.state, "outbox_wake", None)
        if wake is not None:
            wake()


async def get_async_session(request: Request) -> AsyncIterator[AsyncSession]:
    """One session per request: commit when the route succeeded, roll back on any error."""
    async_session_factory: async_sessionmaker[AsyncSession] = (
        request.app.state.async_session_factory
    )
    async with async_session_factory() as session:
        try:
            yield session
            await session.commit()
        except Exception:
            session.info.pop(OUTBOX_RECORDED, None)  # rolled back: nothing to send
            forget_changes(session)
            await session.rollback()
            raise
        wake_outbox_after_commit(request, session)
        # Before the response: the next read, the writer's own included, sees the change.
        await void_after_commit(request, session)
        # session.close() is called by `async with`: the connection goes back to the pool.


async def get_read_session(request: Request) -> AsyncIterator[AsyncReadSession]:
    """One read session per request: its read-only transaction ends (and the connection
    goes back to the pool) when the route has finished."""
    read_session_factory: async_sessionmaker[AsyncReadSession] = (
        request.app.state.read_session_factory
    )
    async with read_session_factory() as session:
        try:
            yield session
            if session.in_transaction():  # not for a read answered from the cache
                await session.commit()  # nothing was written; ends the transaction cleanly
        except Exception:
            await session.rollback()
            raise


async def end_read_session(session: AsyncSession) -> None:
    """End a read session's transaction now and give its connection back to the pool, for
    a request that goes on to wait on the network (a calendar's fetch): what it loaded
    stays readable (expire_on_commit=False; nothing is loaded lazily), and the dependency
    finds no transaction left to end. A writing session is left alone: its commit is the
    dependency's, before the response."""
    if isinstance(session, AsyncReadSession):
        await session.close()


# The one way to ask for a session. scope="function" makes the commit finish before the
# response is sent; using this alias everywhere keeps one session (one transaction) per
# request, since dependencies declared with different scopes would not be shared.
SessionDep = Annotated[AsyncSession, Depends(get_async_session, scope="function")]
# The one way for a route that only reads. Tests that swap the session (lecture 6.3)
# override both dependencies: tests/support/rolled_back.py does.
ReadSessionDep = Annotated[AsyncReadSession, Depends(get_read_session, scope="function")]
SESSION_DEPENDENCIES = (get_async_session, get_read_session)


async def driver_connection(session: AsyncSession) -> Any:
    """The asyncpg connection under `session` (for arrays of many rows, sent as they are)."""
    connection = await session.connection()
    raw = await connection.get_raw_connection()
    return raw.driver_connection


async def check_database(engine: AsyncEngine, within_seconds: float) -> None:
    """Raise if the database cannot answer `SELECT 1` within `within_seconds`.

    Never later: a probe that timed out is cancelled and left to finish in the background,
    because giving up a connection to a hung server takes SQLAlchemy up to 2 s more (it
    tries to close it gracefully), and a health check must answer in the time it promised.
    """
    probe = asyncio.ensure_future(_select_one(engine))
    try:
        done, _ = await asyncio.wait({probe}, timeout=within_seconds)
    finally:
        if not probe.done():
            probe.cancel()
            _closing_probes.add(probe)
            probe.add_done_callback(_forget_probe)
    if not done:
        raise TimeoutError(f"no answer to SELECT 1 within {within_seconds} s")
    probe.result()


async def _select_one(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        await connection.execute(text("SELECT 1"))


# Cancelled probes still closing their connection: referenced so they are not collected.
_closing_probes: set[asyncio.Future[None]] = set()


def _forget_probe(probe: asyncio.Future[None]) -> None:
    _closing_probes.discard(probe)
    if not probe.cancelled():
        probe.exception()  # retrieved: its error was already answered as a 503
