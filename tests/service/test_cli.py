"""The `taskmanager` command, run as a user runs it: a subprocess with its own environment."""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from taskmanager import __version__
from taskmanager.postgres import migrate
from tests.support.databases import database_env, scalar, table_exists
from tests.support.live_app import live_client
from tests.support.processes import clean_env

TIMEOUT = 60


def database_settings(url: str | None) -> dict[str, str | None]:
    """The settings naming `url`: a test database's logins, or the URL as it is."""
    if url is not None and str(make_url(url).query.get("host", "")).startswith("/"):
        return dict(database_env(url))
    return {"DATABASE_URL": url}


def run_cli(
    *args: str, cwd: Path, database_url: str | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m taskmanager ARGS` with DATABASE_URL (or none) and no other settings; a
    test database is given as an operator gives theirs (database_env: the owner's login too)."""
    return subprocess.run(
        [sys.executable, "-m", "taskmanager", *args],
        env=clean_env(**database_settings(database_url)),
        cwd=cwd,  # not the project root: its .env must not leak into the test
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def assert_counts(url: str, *, tasks: int, categories: int, labels: int) -> None:
    """`url`'s database holds that many tasks, categories and labels."""
    counted = {
        table: scalar(url, f"SELECT count(*) FROM {table}")
        for table in ("tasks", "categories", "labels")
    }
    assert counted == {"tasks": tasks, "categories": categories, "labels": labels}


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
    assert {"serve", "db", "users"} <= commands, result.stdout

    db_help = run_cli("db", "--help", cwd=tmp_path)
    assert db_help.returncode == 0, db_help.stderr
    db_commands = listed_commands(db_help.stdout)
    assert {"upgrade", "downgrade", "current", "seed"} <= db_commands, db_help.stdout

    users_help = run_cli("users", "--help", cwd=tmp_path)
    assert users_help.returncode == 0, users_help.stderr
    assert "create" in listed_commands(users_help.stdout), users_help.stdout


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
    assert_counts(url, tasks=2500, categories=3, labels=12)
    rate = (
        r"seeded 2,500 tasks over 3 categories \(with up to 3 of 12 labels each\) "
        r"in [\d.]+s \([\d,]+ tasks/s\)"
    )
    assert re.search(rate, result.stderr), result.stderr
    # The tasks are spread over the seeded categories.
    assert scalar(url, "SELECT count(*) FROM tasks WHERE category_id IS NOT NULL") > 0
    assert scalar(url, "SELECT count(DISTINCT category_id) FROM tasks") == 3
    # Every task carries 0 to 3 of the 12 labels, all of each number occurring, every
    # label used.
    per_task = (
        "SELECT count(DISTINCT n) FILTER (WHERE n BETWEEN 0 AND 3) || '/' || count(DISTINCT n)"
        " FROM (SELECT count(tl.label_id) AS n FROM tasks t"
        " LEFT JOIN task_labels tl ON tl.task_id = t.id GROUP BY t.id) counts"
    )
    assert scalar(url, per_task) == "4/4"
    assert scalar(url, "SELECT count(DISTINCT label_id) FROM task_labels") == 12
    labelled = scalar(url, "SELECT count(*) FROM task_labels")
    assert 1500 < labelled < 2300, labelled  # 0.75 per task on average
    # The API's rule: a completed task has completed_at (after it was made), an open one not.
    assert 500 < scalar(url, "SELECT count(*) FROM tasks WHERE completed") < 1000
    assert (
        scalar(url, "SELECT count(*) FROM tasks WHERE completed <> (completed_at IS NOT NULL)") == 0
    )
    assert scalar(url, "SELECT count(*) FROM tasks WHERE completed_at < created_at") == 0
    assert scalar(url, "SELECT count(*) FROM tasks WHERE completed_at > now()") == 0
    assert "now holds 2,500 tasks" in result.stderr, result.stderr

    # A second seed adds tasks but reuses the existing category and label names, and says so.
    again = run_cli(*seed, "--tasks", "10", cwd=tmp_path, database_url=url)
    assert again.returncode == 0, again.stderr
    assert_counts(url, tasks=2510, categories=3, labels=12)
    assert "now holds 2,510 tasks" in again.stderr, again.stderr
    assert "adds to" in again.stderr, again.stderr
    assert "--fresh" in again.stderr, again.stderr

    # --fresh: the demo account's tasks are deleted first; its categories and labels stay.
    fresh = run_cli(*seed, "--tasks", "20", "--fresh", cwd=tmp_path, database_url=url)
    assert fresh.returncode == 0, fresh.stderr
    assert_counts(url, tasks=20, categories=3, labels=12)
    assert "deleted the demo account's 2,510 tasks first" in fresh.stderr, fresh.stderr
    assert "now holds 20 tasks" in fresh.stderr, fresh.stderr


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


# ─────────────────────────────────────────────
# Accounts from the command line
# ─────────────────────────────────────────────

NEW_PASSWORD = "a long and secret passphrase"


def run_with_input(
    *args: str, stdin: str, cwd: Path, database_url: str
) -> subprocess.CompletedProcess[str]:
    """`python -m taskmanager ARGS` answering its prompts from `stdin`.

    In a session of its own, so it has no controlling terminal: a hidden prompt (getpass)
    then reads stdin instead of this terminal, as it does under a pipe or in CI."""
    return subprocess.run(
        [sys.executable, "-m", "taskmanager", *args],
        env=clean_env(**database_settings(database_url)),
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
        start_new_session=True,
    )


async def log_in(url: str, email: str, password: str) -> dict[str, Any]:
    """POST /auth/token on the app, then GET /users/me and GET /tasks with the token."""
    async with live_client(url) as http:
        token = await http.post("/auth/token", data={"username": email, "password": password})
        if token.status_code != 200:
            return {"status": token.status_code, "body": token.text}
        headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
        me = await http.get("/users/me", headers=headers)
        tasks = await http.get("/tasks", headers=headers)
        return {
            "status": 200,
            "me": me.json(),
            "tasks": int(tasks.headers["X-Total-Count"]),
        }


def test_users_create_makes_an_account_that_can_log_in(
    tmp_path: Path, make_database: Callable[[str], str]
) -> None:
    url = make_database("cli_users")
    answers = f"{NEW_PASSWORD}\n{NEW_PASSWORD}\n"  # the password, then its confirmation
    args = ("users", "create", "New.Person@example.com", "--name", "New Person")
    result = run_with_input(*args, stdin=answers, cwd=tmp_path, database_url=url)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "created account" in output
    assert "New.Person@example.com" in output
    assert NEW_PASSWORD not in output  # prompted for, never echoed
    stored = scalar(url, "SELECT password_hash FROM users WHERE email = 'New.Person@example.com'")
    assert stored.startswith("$argon2id$")
    assert NEW_PASSWORD not in stored

    # The email is the login name, in any case.
    logged_in = asyncio.run(log_in(url, "new.person@example.com", NEW_PASSWORD))
    assert logged_in["status"] == 200, logged_in
    assert logged_in["me"]["email"] == "New.Person@example.com"
    assert logged_in["me"]["display_name"] == "New Person"
    assert logged_in["me"]["personal_workspace_id"] is not None
    # The operator vouches for the address: verified, and no mail recorded.
    assert logged_in["me"]["email_verified"] is True
    assert scalar(url, "SELECT count(*) FROM outbox") == 0
    assert asyncio.run(log_in(url, "new.person@example.com", "not the password"))["status"] == 401

    # The same email again (in another case): refused, nothing created.
    again = run_with_input(
        "users", "create", "new.person@EXAMPLE.com", stdin=answers, cwd=tmp_path, database_url=url
    )
    assert again.returncode == 1, again.stdout + again.stderr
    assert "exists already" in again.stderr
    assert NEW_PASSWORD not in again.stdout + again.stderr
    assert scalar(url, "SELECT count(*) FROM users") == 1


def test_users_create_refuses_a_short_password_without_showing_it(
    tmp_path: Path, make_database: Callable[[str], str]
) -> None:
    url = make_database("cli_users_short")
    short = "7chars!"
    result = run_with_input(
        "users",
        "create",
        "short@example.com",
        stdin=f"{short}\n{short}\n",
        cwd=tmp_path,
        database_url=url,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "password" in output
    assert short not in output
    assert "Traceback" not in output
    assert scalar(url, "SELECT count(*) FROM users") == 0


@pytest.mark.parametrize(
    ("email", "status", "says"),
    [
        pytest.param("not-an-email", 2, "email", id="invalid"),
        pytest.param("Taken@Example.com", 1, "exists already", id="taken"),
    ],
)
def test_users_create_checks_the_email_before_asking_for_a_password(
    tmp_path: Path, make_database: Callable[[str], str], email: str, status: int, says: str
) -> None:
    url = make_database("cli_users_email")
    answers = f"{NEW_PASSWORD}\n{NEW_PASSWORD}\n"
    first = run_with_input(
        "users", "create", "taken@example.com", stdin=answers, cwd=tmp_path, database_url=url
    )
    assert first.returncode == 0, first.stdout + first.stderr

    # No answer on stdin: a password prompt would read nothing and abort.
    result = run_with_input("users", "create", email, stdin="", cwd=tmp_path, database_url=url)

    output = result.stdout + result.stderr
    assert result.returncode == status, output
    assert says in output
    assert "Password" not in output  # never asked
    assert "Aborted" not in output
    assert "Traceback" not in output
    assert scalar(url, "SELECT count(*) FROM users") == 1


def test_seed_prints_how_to_log_in_with_the_demo_account(
    tmp_path: Path, make_database: Callable[[str], str]
) -> None:
    url = make_database("cli_seed_login")
    result = run_cli(
        "db", "seed", "--tasks", "25", "--categories", "2", cwd=tmp_path, database_url=url
    )
    assert result.returncode == 0, result.stderr
    assert "log in as demo@example.com with the password demo-password" in result.stderr
    # The curl command it prints, and the credentials in it, are what logs in.
    curl = re.search(r"curl .*/auth/token -d username=(\S+) -d password=(\S+)", result.stderr)
    assert curl is not None, result.stderr
    email, password = curl.groups()
    logged_in = asyncio.run(log_in(url, email, password))
    assert logged_in["status"] == 200, logged_in
    assert logged_in["me"]["email"] == "demo@example.com"
    assert logged_in["tasks"] == 25  # the seeded tasks are the demo account's

    # Seeding again reuses the account, and says the password may have been changed since.
    again = run_cli("db", "seed", "--tasks", "5", cwd=tmp_path, database_url=url)
    assert again.returncode == 0, again.stderr
    assert "demo-password (unless changed)" in again.stderr
    assert scalar(url, "SELECT count(*) FROM users") == 1
    assert asyncio.run(log_in(url, email, password))["tasks"] == 30


def test_a_short_signing_key_stops_serve_with_one_clear_line(tmp_path: Path) -> None:
    """A signing key under 32 bytes would make every token guessable offline: `serve` stops
    before starting anything, naming the setting, without echoing the key."""
    result = subprocess.run(
        [sys.executable, "-m", "taskmanager", "serve", "--port", "1"],
        env=clean_env(TASKMANAGER_JWT_SECRET="too-short-secret"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Configuration error (jwt_secret)" in result.stderr
    assert "at least 32 bytes" in result.stderr
    assert "too-short-secret" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / ".taskmanager").exists()  # no database was started


@pytest.mark.parametrize("args", [("--help",), ("serve", "--help")])
def test_help_names_the_database_settings(tmp_path: Path, args: tuple[str, ...]) -> None:
    """Where the data lives is the first thing to know: both helps name the two settings."""
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "DATABASE_URL" in result.stdout, result.stdout
    assert "OWNER_DATABASE_URL" in result.stdout, result.stdout


def test_a_port_in_use_stops_serve_with_one_line_naming_it(tmp_path: Path) -> None:
    """Before any database is started: one line naming the port and how to choose another."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("serve", "--port", str(port), cwd=tmp_path)
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 1, output
    assert len(output.splitlines()) == 1, output
    assert f"port {port}" in output
    assert "--port" in output
    assert f"PORT={port + 1}" in output  # the make run spelling too
    assert "Traceback" not in output
    assert not (tmp_path / ".taskmanager").exists()  # no database was started
