"""The packaged Alembic migrations: one head, reversible, and in agreement with the models.

The schema of every test database comes from these migrations (never `create_all`), so a
migration that drifts from `models.py` or does not downgrade cleanly fails here first.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from taskmanager import migrate
from taskmanager.config import get_settings
from taskmanager.models import FK_TASKS_CATEGORY, UQ_CATEGORIES_NAME, Base
from tests.support.processes import free_port

APP_TABLES = {"categories", "tasks"}


def _query(url: str, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    """Run one query on a fresh connection (sync wrapper: these tests are plain `def`)."""

    async def run() -> list[tuple[Any, ...]]:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as connection:
                result = await connection.execute(text(sql), params)
                return [tuple(row) for row in result]
        finally:
            await engine.dispose()

    return asyncio.run(run())


def _public_tables(url: str) -> set[str]:
    rows = _query(url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    return {name for (name,) in rows}


def _compare(url: str) -> list[Any]:
    """Alembic's autogenerate diff between the database at `url` and the models."""

    def diff(connection: Connection) -> list[Any]:
        context = MigrationContext.configure(
            connection,
            opts={"compare_type": True, "compare_server_default": True},
        )
        return list(compare_metadata(context, Base.metadata))

    async def run() -> list[Any]:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as connection:
                return await connection.run_sync(diff)
        finally:
            await engine.dispose()

    return asyncio.run(run())


@pytest.fixture(scope="module")
def fresh_url(make_database: Callable[[str], str]) -> str:
    """A database migrated to head by the fixture, untouched by the other tests' writes."""
    return make_database("migrations_fresh")


def test_exactly_one_head() -> None:
    heads = migrate.heads()
    assert len(heads) == 1, f"migration scripts have several heads: {heads}"


def test_upgrade_downgrade_upgrade_round_trip(make_database: Callable[[str], str]) -> None:
    url = make_database("migrations_roundtrip")  # already upgraded to head
    (head,) = migrate.heads()
    assert migrate.current(url) == head
    assert _public_tables(url) >= APP_TABLES

    migrate.downgrade(url, "base")
    assert migrate.current(url) is None
    # Only Alembic's bookkeeping table may remain once everything is downgraded.
    assert _public_tables(url) <= {"alembic_version"}
    # And no type, sequence or index was left behind by the downgrade.
    leftovers = _query(
        url,
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' AND c.relname <> 'alembic_version' "
        "AND c.relname NOT LIKE 'alembic_version%'",
    )
    assert leftovers == []

    migrate.upgrade(url)
    assert migrate.current(url) == head
    assert _public_tables(url) >= APP_TABLES
    # The re-created schema works: a row goes in through the constraints.
    _query(url, "SELECT count(*) FROM tasks")


def test_models_and_migrations_agree(fresh_url: str) -> None:
    """Autogenerate against a freshly migrated database finds nothing to change.

    A difference here means models.py and migrations/versions disagree: the next
    `alembic revision --autogenerate` would emit it, and tests built on the migrated
    schema would not be testing what the models describe.
    """
    differences = _compare(fresh_url)
    assert differences == [], "models and migrations differ:\n" + "\n".join(
        repr(d) for d in differences
    )


@pytest.mark.parametrize(
    ("drift", "undo", "expected"),
    [
        pytest.param(
            "ALTER TABLE tasks ADD COLUMN drift_probe integer",
            "ALTER TABLE tasks DROP COLUMN drift_probe",
            ("remove_column", "drift_probe"),
            id="extra-column",
        ),
        pytest.param(
            f"DROP INDEX {UQ_CATEGORIES_NAME}",
            f"CREATE UNIQUE INDEX {UQ_CATEGORIES_NAME} ON categories (lower(name))",
            ("add_index", UQ_CATEGORIES_NAME),
            id="missing-functional-unique-index",
        ),
        pytest.param(
            "ALTER TABLE tasks ALTER COLUMN completed SET DEFAULT true",
            "ALTER TABLE tasks ALTER COLUMN completed SET DEFAULT false",
            ("modify_default", "completed"),
            id="server-default",
        ),
    ],
)
def test_compare_detects_drift(
    fresh_url: str, drift: str, undo: str, expected: tuple[str, str]
) -> None:
    """The comparison above can fail: a schema the models do not describe is reported."""

    async def execute(statement: str) -> None:
        engine = create_async_engine(fresh_url)
        try:
            async with engine.begin() as connection:
                await connection.execute(text(statement))
        finally:
            await engine.dispose()

    asyncio.run(execute(drift))
    try:
        found = {_describe(d) for d in _flatten(_compare(fresh_url))}
        assert expected in found, found
    finally:
        asyncio.run(execute(undo))
    assert _compare(fresh_url) == []


def _flatten(differences: list[Any]) -> list[tuple[Any, ...]]:
    # Column modifications come grouped in a list per column; everything else is a tuple.
    out: list[tuple[Any, ...]] = []
    for difference in differences:
        out.extend(difference if isinstance(difference, list) else [difference])
    return out


def _describe(difference: tuple[Any, ...]) -> tuple[str, str]:
    """(operation, name of the column or index it is about)."""
    operation = difference[0]
    if operation in ("add_column", "remove_column"):
        return operation, difference[3].name
    if operation.startswith("modify_"):
        return operation, difference[3]
    return operation, getattr(difference[1], "name", str(difference[1]))


def test_naming_convention_applied(fresh_url: str) -> None:
    constraints = dict(
        _query(
            fresh_url,
            "SELECT c.conname, c.contype::text FROM pg_constraint c "
            "JOIN pg_class t ON t.oid = c.conrelid "
            "JOIN pg_namespace n ON n.oid = t.relnamespace "
            "WHERE n.nspname = 'public' AND t.relname IN ('tasks', 'categories') "
            # PostgreSQL 18 also lists NOT NULL constraints (contype 'n'), named by itself.
            "AND c.contype IN ('p', 'f', 'c', 'u', 'x')",
        )
    )
    assert constraints == {
        "pk_tasks": "p",
        "pk_categories": "p",
        FK_TASKS_CATEGORY: "f",
        "ck_tasks_title_not_blank": "c",
        "ck_categories_name_not_blank": "c",
    }
    assert FK_TASKS_CATEGORY == "fk_tasks_category_id_categories"

    indexes = dict(
        _query(
            fresh_url,
            "SELECT indexname, indexdef FROM pg_indexes "
            "WHERE schemaname = 'public' AND tablename IN ('tasks', 'categories')",
        )
    )
    assert set(indexes) == {
        "pk_tasks",
        "pk_categories",
        UQ_CATEGORIES_NAME,
        "ix_tasks_created_at_id",
        "ix_tasks_completed_created_at_id",
        "ix_tasks_category_id_created_at_id",
    }
    # errors.py maps this name to 409: it must be a UNIQUE index on lower(name).
    assert "UNIQUE" in indexes[UQ_CATEGORIES_NAME]
    assert "lower((name)::text)" in indexes[UQ_CATEGORIES_NAME]


def test_printing_the_sql_needs_no_server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`alembic upgrade head --sql` (offline mode) renders the migrations for a DATABASE_URL
    that nothing answers: it needs the dialect, not a connection."""
    monkeypatch.chdir(tmp_path)  # no .env of the project's
    monkeypatch.setenv("DATABASE_URL", f"postgresql://app:pw@127.0.0.1:{free_port()}/tasks")
    get_settings.cache_clear()
    config = Config(output_buffer=(output := io.StringIO()))
    config.set_main_option("script_location", migrate.SCRIPT_LOCATION)
    try:
        command.upgrade(config, "head", sql=True)
    finally:
        get_settings.cache_clear()
    assert "CREATE TABLE tasks" in output.getvalue()
