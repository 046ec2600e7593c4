"""The `taskmanager` command, run as a user runs it: a subprocess with its own environment."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from taskmanager import __version__, migrate
from tests.support.processes import clean_env

TIMEOUT = 60


def run_cli(
    *args: str, cwd: Path, database_url: str | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m taskmanager ARGS` with DATABASE_URL (or none) and no other settings."""
    return subprocess.run(
        [sys.executable, "-m", "taskmanager", *args],
        env=clean_env(DATABASE_URL=database_url),
        cwd=cwd,  # not the project root: its .env must not leak into the test
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def scalar(url: str, sql: str) -> Any:
    async def run() -> Any:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as connection:
                return (await connection.execute(text(sql))).scalar_one()
        finally:
            await engine.dispose()

    return asyncio.run(run())


def table_exists(url: str, name: str) -> bool:
    return scalar(url, f"SELECT to_regclass('public.{name}') IS NOT NULL") is True


def listed_commands(help_text: str) -> set[str]:
    """First word of each help line that is followed by a description (box drawing or not)."""
    return set(re.findall(r"^\W*?(\w+)\s{2,}\S", help_text, flags=re.MULTILINE))


def test_version(tmp_path: Path) -> None:
    result = run_cli("--version", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"taskmanager {__version__}"
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", __version__)


def test_help_lists_the_commands(tmp_path: Path) -> None:
    # The installed console script, as a user types it (python -m is used everywhere else).
    script = Path(sys.executable).with_name("taskmanager")
    assert script.exists(), f"no taskmanager console script next to {sys.executable}"
    result = subprocess.run(
        [str(script), "--help"],
        env=clean_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    commands = listed_commands(result.stdout)
    assert {"serve", "db"} <= commands, result.stdout

    db_help = run_cli("db", "--help", cwd=tmp_path)
    assert db_help.returncode == 0, db_help.stderr
    db_commands = listed_commands(db_help.stdout)
    assert {"upgrade", "downgrade", "current", "seed"} <= db_commands, db_help.stdout


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        pytest.param(
            "postgresql+psycopg2://u:p@h/db", "postgresql+asyncpg://u:***@h/db", id="psycopg2"
        ),
        pytest.param("mysql://u:p@h/db", "needs PostgreSQL", id="mysql"),
    ],
)
def test_unusable_database_url_is_one_clear_error(tmp_path: Path, url: str, expected: str) -> None:
    """Caught before any connection attempt: exit code 2, a message, no traceback.
    (Every other kind of URL is covered by test_config; this is the CLI's side of it.)"""
    result = run_cli("db", "current", cwd=tmp_path, database_url=url)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Configuration error" in result.stderr
    assert expected in result.stderr, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    # The password is not echoed back into a terminal or a CI log.
    assert ":p@" not in result.stderr


def test_seed_inserts_exactly_what_was_asked(
    tmp_path: Path, make_database: Callable[[str], str]
) -> None:
    url = make_database("cli_seed")
    seed = ("db", "seed", "--categories", "3")
    result = run_cli(*seed, "--tasks", "2500", cwd=tmp_path, database_url=url)
    assert result.returncode == 0, result.stderr
    assert scalar(url, "SELECT count(*) FROM tasks") == 2500
    assert scalar(url, "SELECT count(*) FROM categories") == 3
    rate = r"seeded 2,500 tasks over 3 categories in [\d.]+s \([\d,]+ tasks/s\)"
    assert re.search(rate, result.stderr), result.stderr
    # The tasks are spread over the seeded categories.
    assert scalar(url, "SELECT count(*) FROM tasks WHERE category_id IS NOT NULL") > 0
    assert scalar(url, "SELECT count(DISTINCT category_id) FROM tasks") == 3

    # A second seed adds tasks but reuses the existing category names.
    again = run_cli(*seed, "--tasks", "10", cwd=tmp_path, database_url=url)
    assert again.returncode == 0, again.stderr
    assert scalar(url, "SELECT count(*) FROM tasks") == 2510
    assert scalar(url, "SELECT count(*) FROM categories") == 3


def test_current_downgrade_upgrade(tmp_path: Path, make_database: Callable[[str], str]) -> None:
    url = make_database("cli_migrations")
    (head,) = migrate.heads()

    current = run_cli("db", "current", cwd=tmp_path, database_url=url)
    assert current.returncode == 0, current.stderr
    assert current.stdout.strip() == f"{head} (at head)"

    down = run_cli("db", "downgrade", "base", cwd=tmp_path, database_url=url)
    assert down.returncode == 0, down.stderr
    assert not table_exists(url, "tasks")
    assert not table_exists(url, "categories")
    empty = run_cli("db", "current", cwd=tmp_path, database_url=url)
    assert empty.returncode == 0, empty.stderr
    assert empty.stdout.strip() == f"empty (no migrations applied) (head is {head})"

    up = run_cli("db", "upgrade", cwd=tmp_path, database_url=url)
    assert up.returncode == 0, up.stderr
    assert table_exists(url, "tasks")
    assert table_exists(url, "categories")
    assert migrate.current(url) == head
    again = run_cli("db", "current", cwd=tmp_path, database_url=url)
    assert again.stdout.strip() == f"{head} (at head)"
