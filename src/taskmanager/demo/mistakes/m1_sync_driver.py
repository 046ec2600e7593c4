"""Mistake 1: using a sync driver with the async engine (lecture, Common Mistakes).

`where` is the `user:pass@host/db` part of the demo database's URL.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import sqlalchemy
from sqlalchemy import create_mock_engine, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import InvalidRequestError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from taskmanager.config import DatabaseURLError, normalize_database_url
from taskmanager.demo.mistakes import harness
from taskmanager.demo.mistakes.harness import Demonstration, Observation


# ❌ WRONG: psycopg2 is sync — it blocks the event loop!
def engine_with_psycopg2(where: str) -> AsyncEngine:
    return create_async_engine(f"postgresql+psycopg2://{where}")


# ❌ The lecture's line as written: no driver named (it meant psycopg2, SQLAlchemy 2.0's default)
def engine_with_bare_url(where: str) -> AsyncEngine:
    return create_async_engine(f"postgresql://{where}")


# ✅ CORRECT: asyncpg is async
def engine_with_asyncpg(where: str) -> AsyncEngine:
    return create_async_engine(f"postgresql+asyncpg://{where}")


# ✅ What this project does with DATABASE_URL (taskmanager/config.py): postgresql:// becomes
# postgresql+asyncpg://, and a sync driver named in the URL stops start-up with a message.
def engine_like_the_project(where: str) -> AsyncEngine:
    return create_async_engine(normalize_database_url(f"postgresql://{where}"))


# ── Below: the machinery that runs the code above and says what it did ──────────────────────

LECTURE_URL = "postgresql://user:pass@localhost/taskdb"


@dataclass
class Attempt:
    """Building one engine and running SELECT 1 on it."""

    raised_at: str  # "create_async_engine()", "the first query" or "nowhere"
    error: BaseException | None
    result: str  # SELECT 1's answer, or the error
    driver: str | None = None
    is_async: bool | None = None


async def attempt(build: Callable[[str], AsyncEngine], where: str) -> Attempt:
    try:
        engine = build(where)
    except Exception as exc:
        return Attempt("create_async_engine()", exc, harness.describe(exc))
    driver, is_async = engine.dialect.driver, engine.dialect.is_async
    try:
        async with asyncio.timeout(15), engine.connect() as connection:
            answer = str((await connection.execute(text("SELECT 1"))).scalar_one())
    except Exception as exc:
        return Attempt("the first query", exc, harness.describe(exc), driver, is_async)
    finally:
        await engine.dispose()
    return Attempt("nowhere", None, answer, driver, is_async)


def refusal_without_the_driver(dialect_url: str) -> BaseException | None:
    """What create_async_engine says to a sync dialect whose driver is not installed: its own
    check (AsyncEngine takes no dialect with is_async False), run on a mock engine, which
    loads the dialect without importing the driver."""
    mock = create_mock_engine(dialect_url, executor=lambda *args, **kwargs: None)
    try:
        AsyncEngine(cast(Engine, mock))
    except InvalidRequestError as exc:
        return exc
    return None


async def observe(database_url: str) -> Observation:
    where = make_url(database_url).render_as_string(hide_password=False).partition("://")[2]
    psycopg2 = await attempt(engine_with_psycopg2, where)
    bare = await attempt(engine_with_bare_url, where)
    asyncpg = await attempt(engine_with_asyncpg, where)
    project = await attempt(engine_like_the_project, where)
    sqlite = await attempt(lambda _: create_async_engine("sqlite://"), "")
    refusal = refusal_without_the_driver("postgresql+psycopg2://")
    normalized = normalize_database_url(LECTURE_URL)
    try:
        normalize_database_url(LECTURE_URL.replace("postgresql:", "postgresql+psycopg2:"))
        rejected = "nothing"
    except DatabaseURLError as exc:
        rejected = str(exc)
    facts: dict[str, harness.Fact] = {
        "psycopg2 raised at": psycopg2.raised_at,
        "psycopg2": psycopg2.result,
        "psycopg2 where installed (its dialect, is_async=False)": harness.outcome(refusal),
        "sync driver installed (sqlite://)": sqlite.result,
        "postgresql:// driver": bare.driver,
        "postgresql:// is_async": bare.is_async,
        "postgresql:// SELECT 1": bare.result,
        "postgresql+asyncpg:// SELECT 1": asyncpg.result,
        "normalize_database_url('postgresql://…')": normalized,
        "normalize_database_url('postgresql+psycopg2://…')": rejected,
        "normalized engine SELECT 1": project.result,
    }

    said = (
        f"create_async_engine('postgresql+psycopg2://…') raised {psycopg2.result} "
        f"in {psycopg2.raised_at}"
    )
    if isinstance(psycopg2.error, ModuleNotFoundError):
        said += (
            f". psycopg2 is not installed here; where it is, the same call refuses it with "
            f"{harness.outcome(refusal)} (SQLAlchemy's check, run on its psycopg2 dialect)"
        )
    version = sqlalchemy.__version__
    if bare.error is None:
        said += (
            f". The lecture's line as written, create_async_engine('postgresql://…'), got "
            f"SQLAlchemy {version}'s default driver {bare.driver!r} in its async mode "
            f"(is_async={bare.is_async}): SELECT 1 → {bare.result}, no error"
        )
    else:
        said += f". create_async_engine('postgresql://…') raised {bare.result} in {bare.raised_at}"

    corrections = []
    if psycopg2.raised_at == "create_async_engine()":
        corrections.append(
            '"Might not even error immediately — but will crash on first query": the sync '
            "driver is refused at once, by create_async_engine() itself, before any connection."
        )
    if bare.error is None and bare.is_async:
        corrections.append(
            f"A bare postgresql:// no longer means psycopg2: SQLAlchemy {version} picks "
            f"{bare.driver!r} (psycopg 3) for it, and create_async_engine its async mode, so the "
            "lecture's line runs without error and without blocking the event loop. This "
            "project switches a bare postgresql:// to asyncpg itself (normalize_database_url)."
        )
    return Observation(
        summary=(
            f"psycopg2: {type(psycopg2.error).__name__} in {psycopg2.raised_at}; "
            f"postgresql:// → {bare.driver or 'no driver'} "
            f"{'async, works' if bare.error is None else 'failed'}"
        ),
        mistake_observed=said,
        mistake_failed_as_predicted=psycopg2.error is not None,
        fix_observed=(
            f"create_async_engine('postgresql+asyncpg://…'): SELECT 1 → {asyncpg.result}. "
            f"normalize_database_url({LECTURE_URL!r}) → {normalized!r}, whose engine ran "
            f"SELECT 1 → {project.result}; for postgresql+psycopg2:// it raised "
            f"DatabaseURLError: {rejected}"
        ),
        fix_worked=(
            asyncpg.result == project.result == "1"
            and normalized.startswith("postgresql+asyncpg://")
            and "psycopg2" in rejected
        ),
        mistake_exception=harness.exception_name(psycopg2.error) if psycopg2.error else None,
        corrections=corrections,
        facts=facts,
    )


DEMONSTRATION = Demonstration(
    1,
    "sync-driver",
    "Using a sync driver with async engine",
    "Common Mistakes, Mistake 1",
    'create_async_engine("postgresql://user:pass@localhost/db") — "psycopg2 is sync — it blocks '
    'the event loop! Might not even error immediately — but will crash on first query."',
    'create_async_engine("postgresql+asyncpg://…"); taskmanager.config.normalize_database_url '
    "turns postgresql:// into postgresql+asyncpg:// and refuses sync drivers by name.",
    observe,
)
