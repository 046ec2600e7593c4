"""`taskmanager demo mistakes`: every demonstration fails as the lecture predicts, and its
fix works, with the libraries installed today.

Each test pins the exact exception type (or wrong result) observed, so a library upgrade
that changes the behaviour fails here first. They run against a database of their own
(`make_database("mistakes")`) because several demonstrations need the real COMMIT, which
the rolled-back test session cannot give.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import typer
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError, InvalidRequestError, MissingGreenlet
from sqlalchemy.ext.asyncio import create_async_engine

from taskmanager.demo.mistakes import (
    m1_sync_driver,
    m2_lazy_load,
    m3_expire_on_commit,
    m4_shared_session,
    m5_double_commit,
    m6_shared_session_http,
    m7_commit_after_yield,
)
from taskmanager.demo.mistakes.command import all_demonstrations, select_demonstrations
from tests.support.databases import database_env, superuser_url


def qualified(cls: type[BaseException]) -> str:
    return (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )


@pytest.fixture(scope="module")
def mistakes_url(make_database: Callable[[str], str]) -> str:
    """The lecture's code runs as the superuser (no accounts in Week 6), as `demo mistakes`
    runs it on the embedded server."""
    return superuser_url(make_database("mistakes"))


async def assert_left_clean(url: str) -> None:
    """Nothing a demonstration wrote is left behind: no rows, no workspace of its own, no
    scratch schema."""
    engine = create_async_engine(superuser_url(url))
    try:
        async with engine.connect() as connection:
            tasks = await connection.scalar(
                text("SELECT count(*) FROM tasks WHERE title LIKE 'demo-mistakes-%'")
            )
            categories = await connection.scalar(
                text("SELECT count(*) FROM categories WHERE name LIKE 'demo-mistakes-%'")
            )
            workspaces = await connection.scalar(
                text("SELECT count(*) FROM workspaces WHERE name LIKE 'demo-mistakes-%'")
            )
            schemas = await connection.scalar(
                text(
                    "SELECT count(*) FROM pg_namespace "
                    "WHERE nspname LIKE 'taskmanager\\_mistakes\\_%'"
                )
            )
    finally:
        await engine.dispose()
    assert (tasks, categories, workspaces, schemas) == (0, 0, 0, 0)


async def test_sync_driver_with_async_engine(mistakes_url: str) -> None:
    observation = await m1_sync_driver.observe(mistakes_url)

    # psycopg2 is refused when the engine is built: ImportError where it is missing,
    # InvalidRequestError where it is installed (as for sqlite://, whose driver always is).
    psycopg2_installed = importlib.util.find_spec("psycopg2") is not None
    expected = InvalidRequestError if psycopg2_installed else ModuleNotFoundError
    assert observation.mistake_exception == qualified(expected)
    assert observation.facts["psycopg2 raised at"] == "create_async_engine()"
    refused = "sqlalchemy.exc.InvalidRequestError: The asyncio extension requires an async driver"
    assert str(observation.facts["sync driver installed (sqlite://)"]).startswith(refused)
    # psycopg2's own refusal, as create_async_engine gives it where psycopg2 is installed.
    where_installed = str(
        observation.facts["psycopg2 where installed (its dialect, is_async=False)"]
    )
    assert where_installed.startswith(refused)
    assert "The loaded 'psycopg2' is not async" in where_installed
    # SQLAlchemy 2.1: plain postgresql:// means psycopg 3, whose async mode just works.
    assert observation.facts["postgresql:// driver"] == "psycopg"
    assert observation.facts["postgresql:// is_async"] is True
    assert observation.facts["postgresql:// SELECT 1"] == "1"
    # ... and the panel says both ways the lecture's wording is out of date.
    (immediately, bare_url) = observation.corrections
    assert "create_async_engine() itself" in immediately
    assert "no longer means psycopg2" in bare_url

    assert str(observation.facts["normalize_database_url('postgresql://…')"]).startswith(
        "postgresql+asyncpg://"
    )
    assert "psycopg2" in str(observation.facts["normalize_database_url('postgresql+psycopg2://…')"])
    assert observation.mistake_failed_as_predicted
    assert observation.fix_worked


async def test_lazy_loaded_relationship(mistakes_url: str) -> None:
    observation = await m2_lazy_load.observe(mistakes_url)

    assert observation.mistake_exception == qualified(MissingGreenlet)
    assert observation.facts["taskmanager.models exception"] == qualified(InvalidRequestError)
    assert "'Task.category' is not available due to lazy='raise'" in str(
        observation.facts["taskmanager.models Task.category"]
    )
    assert observation.facts["selectinload category.name"] == "Work"
    assert observation.as_predicted
    await assert_left_clean(mistakes_url)


async def test_expire_on_commit_default(mistakes_url: str) -> None:
    observation = await m3_expire_on_commit.observe(mistakes_url)

    assert observation.mistake_exception == qualified(MissingGreenlet)
    assert observation.facts["title after commit"] == "Test"
    assert observation.facts["statements sent by the reads after commit"] == 0
    assert observation.as_predicted
    await assert_left_clean(mistakes_url)


async def test_shared_session_between_tasks(mistakes_url: str) -> None:
    observation = await m4_shared_session.observe(mistakes_url)

    assert observation.mistake_exception == qualified(InvalidRequestError)
    assert "This session is provisioning a new connection" in str(
        observation.facts["concurrent queries, new session"]
    )
    assert "Session is already flushing" in str(observation.facts["concurrent add+flush"])
    # Request A's commit committed request B's task; B's rollback undid nothing.
    assert observation.facts["committed with one shared session"] == "task A, task B"
    assert observation.facts["committed with a session each"] == "task A"
    assert observation.as_predicted
    await assert_left_clean(mistakes_url)


async def test_double_commit(mistakes_url: str) -> None:
    observation = await m5_double_commit.observe(mistakes_url)

    facts = observation.facts
    assert facts["route commits: session commits, COMMITs sent"] == "2, 2"
    # The lecture's exact code (commit, return): the 2nd commit() sends nothing.
    assert facts["route commits, no refresh: session commits, COMMITs sent"] == "2, 1"
    assert facts["route commits: row of the failed request committed"] is True
    assert observation.mistake_exception == qualified(IntegrityError)
    assert facts["route flushes: session commits, COMMITs sent"] == "1, 1"
    assert facts["route flushes: row of the failed request committed"] is False
    assert observation.as_predicted
    await assert_left_clean(mistakes_url)


async def test_shared_session_across_requests(mistakes_url: str) -> None:
    observation = await m6_shared_session_http.observe(mistakes_url)

    facts = observation.facts
    assert observation.mistake_exception == qualified(InvalidRequestError)
    assert facts["global session: two concurrent GET /tasks"] == "200, 500"
    assert facts["global session: POST A, POST B (fails)"] == "201, 422"
    assert facts["global session: committed"] == "A, B"
    assert facts["session per request: two concurrent GET /tasks"] == "200, 200"
    assert facts["session per request: committed"] == "A"
    assert observation.as_predicted
    await assert_left_clean(mistakes_url)


@pytest.mark.server
async def test_commit_after_yield_default_scope(mistakes_url: str) -> None:
    observation = await m7_commit_after_yield.observe(mistakes_url)

    facts = observation.facts
    # Default scope: the client is told 201 for a row whose commit failed afterwards.
    assert facts["default scope: status"] == 201
    assert facts["default scope: rows in the table"] == 0
    assert observation.mistake_exception == qualified(IntegrityError)
    assert "ForeignKeyViolationError" in str(facts["default scope: commit raised"])
    # scope="function": the failed commit is the response.
    assert facts["function scope: status"] == 500
    assert facts["function scope: rows in the table"] == 0
    # An in-process ASGITransport client does not see the 201: the exception reaches it.
    assert "raised sqlalchemy.exc.IntegrityError" in str(
        facts["default scope over httpx.ASGITransport"]
    )
    assert observation.as_predicted
    await assert_left_clean(mistakes_url)


def test_only_selects_by_number_and_name() -> None:
    chosen = select_demonstrations(["2", "commit-after-yield,4"])
    assert [d.number for d in chosen] == [2, 4, 7]
    assert len(select_demonstrations(None)) == 7
    with pytest.raises(typer.BadParameter, match="unknown 9"):
        select_demonstrations(["9"])


@pytest.mark.server
def test_command_end_to_end(mistakes_url: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKMANAGER_")}
    env |= database_env(mistakes_url) | {"COLUMNS": "120", "XDG_RUNTIME_DIR": "/tmp"}
    # The lecture's code runs as the owner given: here the superuser, as on the embedded
    # server (row-level security binds neither).
    env["OWNER_DATABASE_URL"] = mistakes_url
    report = tmp_path / "mistakes.json"
    completed = subprocess.run(
        [sys.executable, "-m", "taskmanager", "demo", "mistakes", "--json", str(report)],
        env=env,
        cwd=tmp_path,  # no stray .env
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "Summary" in completed.stdout
    document = json.loads(report.read_text(encoding="utf-8"))
    assert document["all_as_predicted"] is True
    assert [o["name"] for o in document["observations"]] == [d.name for d in all_demonstrations()]
