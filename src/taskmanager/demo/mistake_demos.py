"""The lecture's Common Mistakes 1-5, a session shared by two concurrent HTTP requests, and
a commit after `yield` in FastAPI's default dependency scope: each one run against a real
database, next to its fix.

Every demonstration is an async function taking the (migrated) database's asyncpg URL and
returning an `Observation` of what really happened. They clean up after themselves: rows
are rolled back or deleted by a per-run marker in their title/name, and the scratch schema
of the last demonstration is dropped, so a development database is left as it was (only
its id sequences move on).
"""

from __future__ import annotations

import asyncio
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import sqlalchemy
from sqlalchemy import event, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import InvalidRequestError, MissingGreenlet
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import selectinload

from taskmanager.config import DatabaseURLError, normalize_database_url
from taskmanager.database import create_session_factory
from taskmanager.demo import mistake_models as lecture
from taskmanager.demo.mistake_apps import (
    SLOW_QUERY_SECONDS,
    Choreography,
    CommitCounter,
    DependencyOutcome,
    build_commit_after_yield_app,
    build_double_commit_app,
    build_shared_session_app,
    captured_logs,
    describe,
    exception_name,
    first_line,
    serving,
)
from taskmanager.models import Task

Fact = str | int | float | bool | None


@dataclass
class Observation:
    """What one demonstration saw: the mistake's real outcome and the fix's."""

    name: str
    mistake_observed: str
    mistake_failed_as_predicted: bool
    fix_observed: str
    fix_worked: bool
    # `module.Class` of the exception the mistake raised (None when it fails without one).
    mistake_exception: str | None = None
    # A few words on the mistake's outcome, for the summary table.
    summary: str = ""
    # The measured details behind the sentences above, for --json and the tests.
    facts: dict[str, Fact] = field(default_factory=dict)

    @property
    def as_predicted(self) -> bool:
        """The failure showed AND the fix worked: the lecture is right with these libraries."""
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


def _marker() -> str:
    """A prefix for the titles/names this run writes, so cleanup deletes exactly those."""
    return f"demo-mistakes-{uuid.uuid4().hex[:12]}"


@asynccontextmanager
async def _engine(database_url: str, **options: Any) -> AsyncIterator[AsyncEngine]:
    """A new engine (an empty pool: the first statement must open a connection)."""
    engine = create_async_engine(database_url, **options)
    try:
        yield engine
    finally:
        await engine.dispose()


async def _committed_titles(engine: AsyncEngine, marker: str) -> list[str]:
    """Titles of this run's tasks that are committed, as another connection sees them."""
    async with engine.connect() as connection:
        result = await connection.execute(
            text("SELECT title FROM tasks WHERE title LIKE :prefix ORDER BY title"),
            {"prefix": f"{marker}%"},
        )
        return [str(title) for title in result.scalars()]


async def _delete_marked(engine: AsyncEngine, marker: str) -> None:
    async with engine.begin() as connection:
        await connection.execute(
            text("DELETE FROM tasks WHERE title LIKE :prefix"), {"prefix": f"{marker}%"}
        )
        await connection.execute(
            text("DELETE FROM categories WHERE name LIKE :prefix"), {"prefix": f"{marker}%"}
        )


def _abridged(sql: str) -> str:
    """`SELECT … FROM tasks WHERE tasks.id = …`: a statement without its column list."""
    sql = " ".join(sql.split())
    verb, _, rest = sql.partition(" ")
    _, found, source = rest.partition(" FROM ")
    return f"{verb} … FROM {source}" if found else sql


def _json_body(response: httpx.Response) -> dict[str, Any]:
    """The JSON object a response carries, or its text under "message" (a plain 500)."""
    try:
        body = response.json()
    except ValueError:
        return {"message": response.text}
    return body if isinstance(body, dict) else {"message": str(body)}


def _short(title: str, marker: str) -> str:
    return title.removeprefix(marker).strip()


# ─────────────────────────────────────────────
# Mistake 1: a sync driver with an async engine
# ─────────────────────────────────────────────


async def sync_driver_with_async_engine(database_url: str) -> Observation:
    """`create_async_engine` with psycopg2 (and plain `postgresql://`), then with asyncpg."""
    url = make_url(database_url)
    sqlalchemy_version = sqlalchemy.__version__
    facts: dict[str, Fact] = {}

    async def scalar(engine: AsyncEngine, sql: str) -> str:
        async with asyncio.timeout(15), engine.connect() as connection:
            return str((await connection.execute(text(sql))).scalar_one())

    # The lecture's driver, named explicitly. SQLAlchemy refuses it when building the engine.
    mistake: BaseException | None = None
    raised_at = "nowhere"
    try:
        engine = create_async_engine(url.set(drivername="postgresql+psycopg2"))
    except (ImportError, InvalidRequestError) as exc:
        mistake, raised_at = exc, "create_async_engine()"
    else:
        try:
            facts["psycopg2 query"] = await scalar(engine, "SELECT 1")
        except Exception as exc:
            mistake, raised_at = exc, "the first query"
        finally:
            await engine.dispose()
    facts["psycopg2 raised at"] = raised_at

    # A sync driver that IS installed everywhere (sqlite3 ships with Python) shows the error
    # psycopg2 gives where it is installed.
    installed_sync: BaseException | None = None
    try:
        create_async_engine("sqlite://")
    except InvalidRequestError as exc:
        installed_sync = exc
    facts["sync driver installed (sqlite://)"] = (
        describe(installed_sync) if installed_sync else "no error"
    )

    # What the lecture's literal line does today: `postgresql://` names no driver, and
    # SQLAlchemy 2.1 no longer defaults to psycopg2 for it.
    plain = url.set(drivername="postgresql")
    try:
        engine = create_async_engine(plain)
    except Exception as exc:
        facts["postgresql:// engine"] = describe(exc)
        plain_said = f"create_async_engine('postgresql://…') raised {describe(exc)}"
    else:
        facts["postgresql:// driver"] = engine.dialect.driver
        facts["postgresql:// is_async"] = engine.dialect.is_async
        try:
            facts["postgresql:// SELECT 1"] = await scalar(engine, "SELECT 1")
            query = "SELECT 1 worked"
        except Exception as exc:
            facts["postgresql:// SELECT 1"] = describe(exc)
            query = f"SELECT 1 failed: {describe(exc)}"
        finally:
            await engine.dispose()
        plain_said = (
            f"the lecture's plain postgresql:// does not mean psycopg2 any more: SQLAlchemy "
            f"{sqlalchemy_version} picks the driver {engine.dialect.driver!r} and "
            f"create_async_engine its async mode (is_async={engine.dialect.is_async}); {query}"
        )

    psycopg2_url = "create_async_engine('postgresql+psycopg2://…')"
    if isinstance(mistake, ImportError):
        said = (
            f"{psycopg2_url} raised {describe(mistake)} in {raised_at} itself, before any "
            "query (psycopg2 is not installed here). A sync driver that is installed is "
            "refused at the same place with "
            f"{describe(installed_sync) if installed_sync else 'no error'} (shown with "
            "sqlite://, whose driver ships with Python; psycopg2 gets the same message)"
        )
    elif mistake is not None:
        said = f"{psycopg2_url} raised {describe(mistake)} in {raised_at}"
    else:
        said = f"{psycopg2_url} and its first query succeeded"
    said += f". Note: {plain_said}"

    # The fix: asyncpg; and the project's normalize_database_url, which writes it for the user.
    version = ""
    try:
        async with _engine(database_url) as engine:
            version = " ".join((await scalar(engine, "SELECT version()")).split()[:2])
    except Exception as exc:
        version_error: str | None = describe(exc)
    else:
        version_error = None
    lecture_url = "postgresql://user:pass@localhost/taskdb"
    normalized = normalize_database_url(lecture_url)
    try:
        normalize_database_url("postgresql+psycopg2://user:pass@localhost/taskdb")
    except DatabaseURLError as exc:
        rejected: str | None = str(exc)
    else:
        rejected = None
    facts.update(
        {
            "postgresql+asyncpg:// SELECT version()": version or version_error,
            "normalize_database_url('postgresql://…')": normalized,
            "normalize_database_url('postgresql+psycopg2://…')": rejected,
        }
    )
    fix_worked = bool(version) and normalized.startswith("postgresql+asyncpg://") and bool(rejected)
    fix_said = (
        f"postgresql+asyncpg:// ran SELECT version() → {version or version_error}. "
        f"normalize_database_url({lecture_url!r}) → {normalized!r}; "
        f"with postgresql+psycopg2:// it raised DatabaseURLError: {rejected or 'nothing'}"
    )
    return Observation(
        name="sync-driver",
        summary=f"{type(mistake).__name__} in {raised_at}" if mistake else "no error",
        mistake_observed=said,
        mistake_failed_as_predicted=mistake is not None and raised_at != "nowhere",
        fix_observed=fix_said,
        fix_worked=fix_worked,
        mistake_exception=exception_name(mistake) if mistake else None,
        facts=facts,
    )


# ─────────────────────────────────────────────
# Mistake 2: accessing a lazy-loaded relationship
# ─────────────────────────────────────────────


async def lazy_loaded_relationship(database_url: str) -> Observation:
    """task.category after a plain select, with the default lazy="select" mapping."""
    marker = _marker()
    facts: dict[str, Fact] = {}
    async with _engine(database_url) as engine, AsyncSession(engine) as session:
        try:  # everything below is rolled back: nothing is ever committed
            category = lecture.Category(name=f"{marker} Work")
            session.add(lecture.Task(title=f"{marker} Write report", category=category))
            await session.flush()
            task_id = (
                await session.execute(
                    select(lecture.Task.id).where(lecture.Task.title.startswith(marker))
                )
            ).scalar_one()
            # A new request: nothing loaded yet (otherwise the identity map would answer).
            session.expunge_all()

            result = await session.execute(select(lecture.Task).where(lecture.Task.id == task_id))
            task = result.scalar_one()
            mistake: BaseException | None = None
            try:
                facts["lazy category.name"] = task.category.name if task.category else None
            except MissingGreenlet as exc:
                mistake = exc
            except Exception as exc:  # a different error would be a behaviour change
                mistake = exc

            session.expunge_all()
            stmt = (
                select(lecture.Task)
                .where(lecture.Task.id == task_id)
                .options(selectinload(lecture.Task.category))
            )
            task = (await session.execute(stmt)).scalar_one()
            loaded = task.category.name if task.category else None

            # The project's own models declare lazy="raise": the same access fails loudly,
            # without trying any IO.
            session.expunge_all()
            own = (await session.execute(select(Task).where(Task.id == task_id))).scalar_one()
            own_error: BaseException | None = None
            try:
                _ = own.category
            except InvalidRequestError as exc:
                own_error = exc
        finally:
            await session.rollback()

    facts["selectinload category.name"] = _short(loaded or "", marker) or None
    facts["taskmanager.models Task.category"] = describe(own_error) if own_error else "no error"
    facts["taskmanager.models exception"] = exception_name(own_error) if own_error else None
    said = (
        f"task.category after select(Task) raised {describe(mistake)}"
        if mistake
        else "task.category loaded without an error"
    )
    if own_error is not None:
        said += (
            f". The project's models (lazy='raise') raise instead {describe(own_error)} — "
            "loud and immediate, with the attribute's name"
        )
    return Observation(
        name="lazy-load",
        summary=type(mistake).__name__ if mistake else "no error",
        mistake_observed=said,
        mistake_failed_as_predicted=isinstance(mistake, MissingGreenlet),
        fix_observed=(
            f"select(Task).options(selectinload(Task.category)): task.category.name → "
            f"{_short(loaded or '', marker)!r}, no error"
        ),
        fix_worked=loaded == f"{marker} Work",
        mistake_exception=exception_name(mistake) if mistake else None,
        facts=facts,
    )


# ─────────────────────────────────────────────
# Mistake 3: forgetting expire_on_commit=False
# ─────────────────────────────────────────────


async def expire_on_commit_default(database_url: str) -> Observation:
    """task.title after commit, with async_sessionmaker's default expire_on_commit=True."""
    marker = _marker()
    facts: dict[str, Fact] = {}
    statements: list[str] = []
    async with _engine(database_url) as engine:

        @event.listens_for(engine.sync_engine, "before_cursor_execute")
        def count(*args: Any) -> None:
            statements.append(str(args[2]))

        try:
            # ❌ The lecture's default factory.
            default_factory = async_sessionmaker(bind=engine, class_=AsyncSession)
            mistake: BaseException | None = None
            async with default_factory() as session:
                task = Task(title=f"{marker} Test")
                session.add(task)
                await session.commit()  # a real COMMIT: the row is deleted in `finally`
                statements.clear()
                try:
                    facts["expired title"] = task.title
                except MissingGreenlet as exc:
                    mistake = exc
                except Exception as exc:  # a different error would be a behaviour change
                    mistake = exc
                # The refresh's SELECT reaches the driver, which cannot await it there:
                # MissingGreenlet is raised before anything goes to PostgreSQL.
                attempted = [_abridged(sql) for sql in statements]
                facts["statements the failed read attempted"] = "; ".join(attempted) or None

            # ✅ The project's factory: expire_on_commit=False.
            fixed_factory = create_session_factory(engine)
            async with fixed_factory() as session:
                task = Task(title=f"{marker} Test")
                session.add(task)
                await session.commit()
                statements.clear()
                title, task_id = task.title, task.id
                sent_by_reads = len(statements)
                facts["title after commit"] = _short(title, marker)
                facts["id after commit"] = task_id
                facts["statements sent by the reads after commit"] = sent_by_reads
        finally:
            await _delete_marked(engine, marker)

    return Observation(
        name="expire-on-commit",
        summary=type(mistake).__name__ if mistake else "no error",
        mistake_observed=(
            f"task.title right after await session.commit() raised {describe(mistake)} "
            "(the commit expired every attribute; reading one started a refresh "
            f"({'; '.join(attempted) or 'no statement'}), i.e. IO without await)"
            if mistake
            else "task.title was readable after commit"
        ),
        mistake_failed_as_predicted=isinstance(mistake, MissingGreenlet),
        fix_observed=(
            f"with expire_on_commit=False (taskmanager.database.create_session_factory): "
            f"task.title → {_short(title, marker)!r}, task.id → {task_id}, "
            f"{sent_by_reads} SQL statements sent to read them"
        ),
        fix_worked=title == f"{marker} Test" and sent_by_reads == 0,
        mistake_exception=exception_name(mistake) if mistake else None,
        facts=facts,
    )


# ─────────────────────────────────────────────
# Mistake 4: sharing a session between requests (two concurrent coroutines)
# ─────────────────────────────────────────────


async def _slow_query(session: AsyncSession) -> None:
    await session.execute(text("SELECT pg_sleep(:s)"), {"s": SLOW_QUERY_SECONDS})


async def _add_and_flush(session: AsyncSession, title: str) -> None:
    session.add(Task(title=title))
    await session.flush()


async def _lecture_interleaving(
    session_a: AsyncSession, session_b: AsyncSession, marker: str
) -> None:
    """The lecture's diagram, in this order every time: A adds, B adds, A commits, B rolls
    back. Events fix the order that concurrent requests produce by chance."""

    b_added, a_committed = asyncio.Event(), asyncio.Event()

    async def request_a() -> None:
        try:
            session_a.add(Task(title=f"{marker} task A"))
            await b_added.wait()
            await session_a.commit()
        finally:
            a_committed.set()

    async def request_b() -> None:
        try:
            session_b.add(Task(title=f"{marker} task B"))
        finally:
            b_added.set()
        await a_committed.wait()
        await session_b.rollback()  # request B failed: "undo what I did"

    async with asyncio.timeout(15):
        await asyncio.gather(request_a(), request_b())


async def shared_session_between_tasks(database_url: str) -> Observation:
    """Two coroutines (two requests' worth of work) on ONE AsyncSession, then one each."""
    marker = _marker()
    facts: dict[str, Fact] = {}
    async with _engine(database_url, pool_size=4) as engine:
        async_session_factory = create_session_factory(engine)
        try:
            # 1. Both start a query on a session that has no connection yet.
            async with async_session_factory() as shared:
                outcomes = await asyncio.gather(
                    _slow_query(shared), _slow_query(shared), return_exceptions=True
                )
                errors = [o for o in outcomes if isinstance(o, BaseException)]
                facts["concurrent queries, new session"] = "; ".join(
                    describe(o) if isinstance(o, BaseException) else "ok" for o in outcomes
                )
                # 2. Now it holds a connection: the asyncpg adapter's lock queues one query
                # behind the other instead of failing (asyncpg alone would raise
                # "another operation is in progress"). No error, no concurrency.
                started = time.perf_counter()
                queued = await asyncio.gather(
                    _slow_query(shared), _slow_query(shared), return_exceptions=True
                )
                facts["concurrent queries, session holding a connection"] = "; ".join(
                    describe(o) if isinstance(o, BaseException) else "ok" for o in queued
                )
                facts["two 0.1 s queries on one session took (s)"] = round(
                    time.perf_counter() - started, 2
                )
                await shared.rollback()

            # 3. Both add and flush.
            async with async_session_factory() as shared:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    flushed = await asyncio.gather(
                        _add_and_flush(shared, f"{marker} flush 1"),
                        _add_and_flush(shared, f"{marker} flush 2"),
                        return_exceptions=True,
                    )
                await shared.rollback()
            flush_errors = [o for o in flushed if isinstance(o, BaseException)]
            facts["concurrent add+flush"] = "; ".join(
                describe(o) if isinstance(o, BaseException) else "ok" for o in flushed
            )
            facts["warnings"] = "; ".join(str(w.message).split(". ")[0] for w in caught) or None

            # 4. The lecture's diagram with one session.
            async with async_session_factory() as shared:
                await _lecture_interleaving(shared, shared, marker)
            leaked = [_short(t, marker) for t in await _committed_titles(engine, marker)]
            facts["committed with one shared session"] = ", ".join(leaked) or "nothing"
            await _delete_marked(engine, marker)

            # The fix: a session each.
            async with async_session_factory() as one, async_session_factory() as two:
                started = time.perf_counter()
                separate = await asyncio.gather(
                    _slow_query(one), _slow_query(two), return_exceptions=True
                )
                facts["two 0.1 s queries on two sessions took (s)"] = round(
                    time.perf_counter() - started, 2
                )
            async with async_session_factory() as session_a, async_session_factory() as session_b:
                await _lecture_interleaving(session_a, session_b, marker)
            kept = [_short(t, marker) for t in await _committed_titles(engine, marker)]
            facts["committed with a session each"] = ", ".join(kept) or "nothing"
        finally:
            await _delete_marked(engine, marker)

    first_error: BaseException | None = next(iter(errors + flush_errors), None)
    if any(isinstance(o, BaseException) for o in queued):
        held = (
            f"with a connection held: {facts['concurrent queries, session holding a connection']}"
        )
    else:
        held = (
            "once the session holds a connection, concurrent queries queue silently "
            f"({facts['two 0.1 s queries on one session took (s)']} s for two 0.1 s queries)"
        )
    said = (
        f"two concurrent queries on one new session: {describe(errors[0]) if errors else 'ok'}; "
        f"two concurrent add+flush: {describe(flush_errors[0]) if flush_errors else 'ok'}; "
        f"{held}. Lecture's diagram (A adds, B adds, A commits, B rolls back): committed → "
        f"{', '.join(leaked) or 'nothing'}"
        + (
            " — A's commit committed B's task and B's rollback undid nothing"
            if "task B" in leaked
            else ""
        )
    )
    separate_ok = not any(isinstance(o, BaseException) for o in separate)
    return Observation(
        name="shared-session",
        summary=(
            f"{type(first_error).__name__ if first_error else 'no error'}; "
            f"A's commit committed {' + '.join(leaked) or 'nothing'}"
        ),
        mistake_observed=said,
        mistake_failed_as_predicted=(
            bool(errors)
            and all(isinstance(e, InvalidRequestError) for e in errors + flush_errors)
            and leaked == ["task A", "task B"]
        ),
        fix_observed=(
            f"a session each: concurrent queries {'both ran' if separate_ok else 'failed'} "
            f"({facts['two 0.1 s queries on two sessions took (s)']} s); same interleaving "
            f"committed → {', '.join(kept) or 'nothing'} (B's rollback discarded only B)"
        ),
        fix_worked=separate_ok and kept == ["task A"],
        mistake_exception=exception_name(first_error) if first_error else None,
        facts=facts,
    )


# ─────────────────────────────────────────────
# Mistake 5: committing inside the route AND the dependency
# ─────────────────────────────────────────────


async def double_commit(database_url: str) -> Observation:
    """POST /tasks committing in the route, under the lecture's committing dependency."""
    marker = _marker()
    facts: dict[str, Fact] = {}
    counter = CommitCounter()
    results: dict[bool, dict[str, Any]] = {}
    bare_commits = (0, 0)
    async with _engine(database_url) as engine:

        @event.listens_for(engine.sync_engine, "commit")
        def count_database_commit(connection: Any) -> None:
            counter.database_commits += 1

        try:
            for commit_in_route in (True, False):
                variant = "route commits" if commit_in_route else "route flushes"
                app = build_double_commit_app(
                    create_session_factory(engine), counter, commit_in_route=commit_in_route
                )
                transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
                async with httpx.AsyncClient(transport=transport, base_url="http://demo") as client:
                    counter.reset()
                    ok = await client.post("/tasks", params={"title": f"{marker} {variant}"})
                    commits = (counter.session_commits, counter.database_commits)
                    # A later step of the same request fails (the category does not exist).
                    failing_title = f"{marker} {variant}, then fails"
                    counter.reset()
                    failed = await client.post(
                        "/tasks", params={"title": failing_title, "category_id": -1}
                    )
                    titles = await _committed_titles(engine, marker)
                    results[commit_in_route] = {
                        "status": ok.status_code,
                        "commits": commits,
                        "failed status": failed.status_code,
                        "failed body": _json_body(failed),
                        "failed row kept": failing_title in titles,
                    }
                    facts[f"{variant}: session commits, COMMITs sent"] = (
                        f"{commits[0]}, {commits[1]}"
                    )
                    facts[f"{variant}: later failure → status"] = failed.status_code
                    facts[f"{variant}: row of the failed request committed"] = (
                        failing_title in titles
                    )
                    if commit_in_route:
                        # The lecture's Mistake 5 exactly: commit, then return (no refresh).
                        counter.reset()
                        await client.post(
                            "/tasks",
                            params={"title": f"{marker} no refresh", "refresh": "false"},
                        )
                        bare_commits = (counter.session_commits, counter.database_commits)
                        facts["route commits, no refresh: session commits, COMMITs sent"] = (
                            f"{bare_commits[0]}, {bare_commits[1]}"
                        )
        finally:
            await _delete_marked(engine, marker)

    wrong, right = results[True], results[False]
    error = wrong["failed body"].get("exception")
    said = (
        f"POST /tasks (add, commit, refresh, return; lecture 3.3) → {wrong['status']}: "
        f"session.commit() ran {wrong['commits'][0]} times and PostgreSQL received "
        f"{wrong['commits'][1]} COMMITs, the 2nd closing a transaction that held only "
        "refresh()'s SELECT. With Mistake 5's code exactly (add, commit, return) commit() ran "
        f"{bare_commits[0]} times and {bare_commits[1]} COMMIT was sent: the 2nd commit() had "
        "no transaction to end, so no round trip. When a later step of the request failed "
        f"({error}: {str(wrong['failed body'].get('message', ''))[:100]}…) the client got "
        f"{wrong['failed status']}, yet the task row "
        f"{'stayed committed' if wrong['failed row kept'] else 'is gone'}: the dependency's "
        "rollback came after the route's commit and had nothing left to undo"
    )
    return Observation(
        name="double-commit",
        summary=(
            f"{wrong['commits'][1]} COMMITs; failed request's row "
            f"{'kept' if wrong['failed row kept'] else 'gone'}"
        ),
        mistake_observed=said,
        mistake_failed_as_predicted=(
            wrong["commits"] == (2, 2)
            and wrong["failed status"] >= 400
            and wrong["failed row kept"]
        ),
        fix_observed=(
            f"flush() in the route: POST /tasks → {right['status']} with "
            f"{right['commits'][0]} commit() and {right['commits'][1]} COMMIT; the failing "
            f"request → {right['failed status']} and its row "
            f"{'stayed committed' if right['failed row kept'] else 'was rolled back'}"
        ),
        fix_worked=(
            right["status"] == 201
            and right["commits"] == (1, 1)
            and right["failed status"] >= 400
            and not right["failed row kept"]
        ),
        mistake_exception=str(error) if error else None,
        facts=facts,
    )


# ─────────────────────────────────────────────
# A session shared across two concurrent HTTP requests
# ─────────────────────────────────────────────


async def shared_session_across_requests(database_url: str) -> Observation:
    """A FastAPI app with ONE global session, called by concurrent requests, then the same
    app with a session per request."""

    marker = _marker()
    facts: dict[str, Fact] = {}
    results: dict[bool, dict[str, Any]] = {}
    try:
        for global_session in (True, False):
            variant = "global session" if global_session else "session per request"
            # A new engine each time: the first query must open a connection, as at startup.
            async with _engine(database_url, pool_size=4) as engine:
                choreography = Choreography()
                app = build_shared_session_app(
                    create_session_factory(engine), choreography, global_session=global_session
                )
                transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
                try:
                    async with (
                        httpx.AsyncClient(transport=transport, base_url="http://demo") as client,
                        asyncio.timeout(15),
                    ):
                        reads = await asyncio.gather(client.get("/slow"), client.get("/slow"))
                        # B adds its task and waits; A adds and commits; then B fails.
                        request_b = asyncio.create_task(
                            client.post("/tasks", json={"title": f"{marker} B", "reject": True})
                        )
                        try:
                            response_a = await client.post("/tasks", json={"title": f"{marker} A"})
                        finally:
                            choreography.release_b.set()
                        response_b = await request_b
                finally:
                    if app.state.global_session is not None:
                        await app.state.global_session.close()
                committed = [_short(t, marker) for t in await _committed_titles(engine, marker)]
                await _delete_marked(engine, marker)
            failed_reads = [_json_body(r) for r in reads if r.status_code != 200]
            results[global_session] = {
                "reads": [r.status_code for r in reads],
                "read error": failed_reads[0] if failed_reads else None,
                "a": response_a.status_code,
                "b": response_b.status_code,
                "committed": committed,
            }
            facts[f"{variant}: two concurrent GET /slow"] = ", ".join(
                str(r.status_code) for r in reads
            )
            if failed_reads:
                facts[f"{variant}: error"] = (
                    f"{failed_reads[0].get('exception')}: {failed_reads[0].get('message')}"
                )
            facts[f"{variant}: POST A, POST B (fails)"] = (
                f"{response_a.status_code}, {response_b.status_code}"
            )
            facts[f"{variant}: committed"] = ", ".join(committed) or "nothing"
    finally:
        async with _engine(database_url) as engine:
            await _delete_marked(engine, marker)

    wrong, right = results[True], results[False]
    read_error = wrong["read error"]
    said = (
        "two concurrent GET /slow → "
        + ", ".join(map(str, wrong["reads"]))
        + (
            f" ({read_error.get('exception')}: {read_error.get('message')})"
            if read_error
            else " (no error)"
        )
        + f". POST A → {wrong['a']}, POST B → {wrong['b']} (B is told its task was not "
        f"saved); committed: {', '.join(wrong['committed']) or 'nothing'}"
        + (" — A's commit saved B's task" if "B" in wrong["committed"] else "")
    )
    return Observation(
        name="shared-session-http",
        summary=(
            f"GETs {'/'.join(map(str, wrong['reads']))}; B got {wrong['b']} yet committed: "
            f"{' + '.join(wrong['committed']) or 'nothing'}"
        ),
        mistake_observed=said,
        mistake_failed_as_predicted=(
            read_error is not None
            and read_error.get("exception") == "sqlalchemy.exc.InvalidRequestError"
            and wrong["b"] == 422
            and wrong["committed"] == ["A", "B"]
        ),
        fix_observed=(
            "session per request: GET /slow → "
            + ", ".join(map(str, right["reads"]))
            + f"; POST A → {right['a']}, POST B → {right['b']}; committed: "
            + (", ".join(right["committed"]) or "nothing")
        ),
        fix_worked=(
            right["reads"] == [200, 200]
            and (right["a"], right["b"]) == (201, 422)
            and right["committed"] == ["A"]
        ),
        mistake_exception=read_error.get("exception") if read_error else None,
        facts=facts,
    )


# ─────────────────────────────────────────────
# Commit after `yield` with FastAPI's default dependency scope
# ─────────────────────────────────────────────


async def commit_after_yield_default_scope(database_url: str) -> Observation:
    """A commit that fails (deferred foreign key), with the dependency in the default scope
    and in scope="function", called over a real socket."""

    # A scratch schema of this run: created here, dropped in `finally`.
    schema = f"taskmanager_mistakes_{uuid.uuid4().hex[:12]}"
    table = f"{schema}.notes"
    facts: dict[str, Fact] = {}
    results: dict[str, dict[str, Any]] = {}
    async with _engine(database_url) as engine:
        try:
            async with engine.begin() as connection:
                await connection.execute(text(f"CREATE SCHEMA {schema}"))
                await connection.execute(
                    text(
                        f"CREATE TABLE {table} (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
                        f" parent_id int REFERENCES {table} (id)"
                        " DEFERRABLE INITIALLY DEFERRED)"
                    )
                )
            for scope in ("default", "function"):
                outcome = DependencyOutcome()
                app = build_commit_after_yield_app(
                    create_session_factory(engine),
                    table,
                    outcome,
                    scope=None if scope == "default" else "function",
                )
                with captured_logs("uvicorn.error") as logged:
                    async with (
                        serving(app) as base_url,
                        # trust_env=False: no HTTP(S)_PROXY between us and 127.0.0.1
                        httpx.AsyncClient(trust_env=False) as client,
                    ):
                        response = await client.post(f"{base_url}/notes", timeout=15)
                        # The code after `yield` may still be running: wait for its outcome.
                        async with asyncio.timeout(15):
                            await outcome.finished.wait()
                async with engine.connect() as connection:
                    rows = (
                        await connection.execute(text(f"SELECT count(*) FROM {table}"))
                    ).scalar_one()
                server_logged = [
                    describe(record.exc_info[1])
                    for record in logged
                    if record.exc_info and record.exc_info[1]
                ]
                results[scope] = {
                    "status": response.status_code,
                    "body": response.text[:80],
                    "rows": int(rows),
                    "commit error": outcome.error,
                }
                facts[f"{scope} scope: status"] = response.status_code
                facts[f"{scope} scope: rows in the table"] = int(rows)
                facts[f"{scope} scope: commit raised"] = (
                    describe(outcome.error) if outcome.error else None
                )
                facts[f"{scope} scope: server logged"] = "; ".join(server_logged) or None

            # What an in-process test client (httpx.ASGITransport) makes of the default scope.
            app = build_commit_after_yield_app(
                create_session_factory(engine), table, DependencyOutcome(), scope=None
            )
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://demo") as client:
                try:
                    asgi = await client.post("/notes")
                    facts["default scope over httpx.ASGITransport"] = f"status {asgi.status_code}"
                except Exception as exc:
                    facts["default scope over httpx.ASGITransport"] = (
                        f"the client call raised {exception_name(exc)} instead of returning "
                        "the 201 a real client gets"
                    )
        finally:
            async with engine.begin() as connection:
                await connection.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))

    wrong, right = results["default"], results["function"]
    error: BaseException | None = wrong["commit error"]
    commit_raised = describe(error) if error else "nothing"
    if wrong["status"] < 300 and error is not None:
        said = (
            f"over a real socket (uvicorn on 127.0.0.1) the client got {wrong['status']} "
            f"{wrong['body']}; the commit after `yield` ran only after the response had been "
            f"sent, and raised {commit_raised}; "
            f"rows in the table: {wrong['rows']}"
            + (
                " — the client was told 'created' for a row that does not exist"
                if not wrong["rows"]
                else ""
            )
        )
    else:
        said = (
            f"over a real socket (uvicorn on 127.0.0.1) the client got {wrong['status']} "
            f"{wrong['body']}; the commit raised {commit_raised}; "
            f"rows in the table: {wrong['rows']}"
        )
    return Observation(
        name="commit-after-yield",
        summary=(
            f"client got {wrong['status']}, "
            f"{type(error).__name__ + ' at commit' if error else 'no error'}, rows: {wrong['rows']}"
        ),
        mistake_observed=said,
        mistake_failed_as_predicted=(
            wrong["status"] == 201 and wrong["rows"] == 0 and error is not None
        ),
        fix_observed=(
            f'Depends(get_async_session, scope="function"): the client got {right["status"]} '
            f"{right['body']!r} and rows in the table: {right['rows']} — the failed commit "
            "became the response"
        ),
        fix_worked=right["status"] >= 400 and right["rows"] == 0,
        mistake_exception=exception_name(error) if error else None,
        facts=facts,
    )


DEMONSTRATIONS: tuple[Demonstration, ...] = (
    Demonstration(
        1,
        "sync-driver",
        "Using a sync driver with async engine",
        "Common Mistakes, Mistake 1",
        'create_async_engine("postgresql://user:pass@localhost/db") — "psycopg2 is sync — it '
        'blocks the event loop! Might not even error immediately — but will crash on first query."',
        'create_async_engine("postgresql+asyncpg://…"); taskmanager.config.normalize_database_url '
        "turns postgresql:// into postgresql+asyncpg:// and refuses sync drivers by name.",
        sync_driver_with_async_engine,
    ),
    Demonstration(
        2,
        "lazy-load",
        "Accessing a lazy-loaded relationship",
        "Common Mistakes, Mistake 2",
        '"CRASH: MissingGreenlet error" — print(task.category.name) after a plain select: '
        '"Lazy load attempt in async!"',
        "select(Task).options(selectinload(Task.category)): eagerly load what you need. "
        "(The project also declares every relationship lazy='raise'.)",
        lazy_loaded_relationship,
    ),
    Demonstration(
        3,
        "expire-on-commit",
        "Forgetting expire_on_commit=False",
        "Common Mistakes, Mistake 3; 2.3",
        'With the default expire_on_commit=True, print(task.title) after commit: "Attribute '
        'expired, triggers lazy load → crash!" (MissingGreenlet).',
        "async_sessionmaker(bind=engine, class_=AsyncSession, expire_on_commit=False).",
        expire_on_commit_default,
    ),
    Demonstration(
        4,
        "shared-session",
        "Sharing a session between requests",
        "Common Mistakes, Mistake 4; 3.1",
        '"Race conditions, data leaking between requests, chaos." Request 1: commit() "COMMITS '
        'BOTH!"; Request 2: rollback() "ROLLS BACK BOTH!"',
        "A session per request (per task): Request 1's commit only commits task_A, Request 2's "
        "rollback only rolls back task_B.",
        shared_session_between_tasks,
    ),
    Demonstration(
        5,
        "double-commit",
        "Committing inside the route AND the dependency",
        "Common Mistakes, Mistake 5; 3.3",
        '"Double commit: wastes a round-trip, can mask errors"; "What if the next line fails? '
        '[…] commit already happened!"',
        "flush() (and refresh()) in the route; the dependency commits once, after the route "
        "succeeded, and rolls back on any error.",
        double_commit,
    ),
    Demonstration(
        6,
        "shared-session-http",
        "A session shared across two concurrent requests",
        "3.1, Why not share sessions? — over HTTP",
        '"NEVER: Global session" — "global_session = async_session_factory() ← ONE session"; '
        '"Result: Data corruption. Race conditions. Nightmares."',
        "session: AsyncSession = Depends(get_async_session): each request its own session.",
        shared_session_across_requests,
    ),
    Demonstration(
        7,
        "commit-after-yield",
        "Commit after `yield` with FastAPI's default dependency scope",
        "3.2-3.3, the yield dependency's lifecycle",
        'get_async_session commits after `yield`: "No exception? → await session.commit()", '
        'then "RESPONSE SENT" — the lifecycle diagram puts the commit before the response.',
        'Depends(get_async_session, scope="function") (FastAPI >= 0.121), as '
        "taskmanager.database.SessionDep does: the commit finishes before the response is sent.",
        commit_after_yield_default_scope,
    ),
)


async def run_demonstration(demonstration: Demonstration, database_url: str) -> Observation:
    """Run one demonstration; if the demonstration itself breaks, say so as its observation."""
    try:
        return await demonstration.run(database_url)
    except Exception as exc:
        return Observation(
            name=demonstration.name,
            mistake_observed=f"the demonstration itself failed: {describe(exc)}",
            mistake_failed_as_predicted=False,
            fix_observed="not run",
            fix_worked=False,
            facts={"error": f"{exception_name(exc)}: {first_line(exc)}"},
        )
