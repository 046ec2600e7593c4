"""A migration that fails leaves the database at the revision it was at before the command.

`taskmanager db upgrade` (and `serve`, which migrates the same way) applies every pending
migration in ONE transaction: when one of them fails, PostgreSQL rolls back all of them, and
the command says why in one line. The failing migration here is a copy of the packaged
scripts with one more revision on top, which needs a privilege the owner lacks (only a
superuser may create an event trigger), after changing the schema. Upgrading from nothing
through every packaged revision and into it also shows that every packaged migration runs inside one
transaction (CREATE INDEX CONCURRENTLY, say, would refuse to).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from importlib.resources import as_file, files
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncConnection

from taskmanager.postgres import deployment, migrate
from taskmanager.postgres.deployment import DeploymentError
from taskmanager.security.caller_key import CallerKey
from tests.support.databases import (
    TEST_KEY,
    DatabaseAt,
    database_env,
    logins_of,
    owner_url,
    scalar,
    table_exists,
)
from tests.support.processes import clean_env

TIMEOUT = 120
# Beyond any packaged revision's number, so the next one added never collides with it.
FAILING = "9999"

FAILING_REVISION = f'''"""Changes the schema, then needs a privilege the owner lacks."""

from alembic import op

revision = "{FAILING}"
down_revision = "{{head}}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE TABLE half_done (id integer)")
    op.execute("ALTER TABLE tasks ADD COLUMN half_done integer")
    op.execute(
        "CREATE EVENT TRIGGER half_done ON ddl_command_start "
        "EXECUTE FUNCTION pg_catalog.pg_event_trigger_ddl_commands()"
    )


def downgrade() -> None:
    pass
'''

# The CLI, with its migrations taken from SCRIPTS (the first argument) instead of the package.
CLI_WITH_SCRIPTS = (
    "import sys, taskmanager.postgres.migrate as m; m.SCRIPT_LOCATION = sys.argv.pop(1); "
    "from taskmanager.cli import main; main()"
)


@pytest.fixture(scope="module")
def failing_scripts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The packaged migration scripts, and on top of them one that fails part-way."""
    directory = tmp_path_factory.mktemp("failing-migrations") / "migrations"
    with as_file(files("taskmanager") / "migrations") as packaged:
        shutil.copytree(packaged, directory, ignore=shutil.ignore_patterns("__pycache__"))
    (head,) = migrate.heads()
    revision = FAILING_REVISION.replace("{head}", head)
    (directory / "versions" / f"{FAILING}_fails.py").write_text(revision, encoding="utf-8")
    return directory


def cli(
    *args: str, url: str, cwd: Path, scripts: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """`taskmanager ARGS` as an operator runs it on `url`'s database (with `scripts`, the
    migrations of that directory), from `cwd`: not the project root, whose .env must not
    leak into the test."""
    command = [sys.executable, "-m", "taskmanager", *args]
    if scripts is not None:
        command = [sys.executable, "-c", CLI_WITH_SCRIPTS, str(scripts), *args]
    return subprocess.run(
        command,
        env=clean_env(**database_env(url)),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def column_exists(url: str, table: str, column: str) -> bool:
    count = scalar(
        url,
        "SELECT count(*) FROM information_schema.columns "
        "WHERE table_name = :table AND column_name = :column",
        table=table,
        column=column,
    )
    return bool(count)


def assert_refused_in_one_line(result: subprocess.CompletedProcess[str], stays_at: str) -> None:
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 1, output
    assert len(output.splitlines()) == 1, output
    assert "Traceback" not in output
    # What is missing, in PostgreSQL's words, and where the database stays.
    assert "permission denied to create event trigger" in output, output
    assert stays_at in output, output


def test_a_failing_upgrade_from_nothing_leaves_an_empty_database(
    database_at: DatabaseAt, failing_scripts: Path, tmp_path: Path
) -> None:
    url = database_at("rollback_from_nothing", None)

    result = cli("db", "upgrade", url=url, cwd=tmp_path, scripts=failing_scripts)

    assert_refused_in_one_line(result, "stays empty")
    current = cli("db", "current", url=url, cwd=tmp_path)
    assert current.returncode == 0, current.stderr
    assert current.stdout.startswith("empty (no migrations applied)"), current.stdout
    assert migrate.current(owner_url(url)) is None
    # Nothing of the packaged revisions either: they were all in the transaction that was
    # rolled back.
    assert not table_exists(url, "tasks")
    assert not table_exists(url, "half_done")


def test_a_failing_upgrade_leaves_the_database_at_the_revision_it_was_at(
    database_at: DatabaseAt, failing_scripts: Path, tmp_path: Path
) -> None:
    url = database_at("rollback_from_0007", "0007")
    assert not table_exists(url, "caller_key")  # made by 0008

    result = cli("db", "upgrade", url=url, cwd=tmp_path, scripts=failing_scripts)

    assert_refused_in_one_line(result, "stays at 0007")
    current = cli("db", "current", url=url, cwd=tmp_path)
    assert current.returncode == 0, current.stderr
    assert current.stdout.startswith("0007"), current.stdout
    assert not table_exists(url, "caller_key")  # 0008 was rolled back with the rest
    assert not table_exists(url, "half_done")
    assert not column_exists(url, "tasks", "half_done")

    # Without the failing revision, the same database migrates to head.
    up = cli("db", "upgrade", url=url, cwd=tmp_path)
    assert up.returncode == 0, up.stderr
    assert migrate.current(owner_url(url)) == migrate.heads()[0]


def test_a_deployment_that_cannot_be_prepared_is_not_migrated_either(
    database_at: DatabaseAt, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The owner's check, the migrations and the preparation of the deployment (its caller
    key, its service login's grants) are one transaction: when the last step fails, the
    database is not left at head without its key."""
    url = database_at("rollback_prepare", "0007")

    async def refuse(owner: AsyncConnection, service_login: str, key: CallerKey) -> None:
        raise DeploymentError("the owner may not grant what the service needs")

    monkeypatch.setattr(deployment, "prepare_deployment", refuse)
    with pytest.raises(DeploymentError, match="may not grant"):
        migrate.upgrade_deployment(logins_of(url), TEST_KEY)

    assert migrate.current(owner_url(url)) == "0007"
    assert not table_exists(url, "caller_key")
