"""A new user's first run against their own PostgreSQL, when DATABASE_URL is not right yet.

A wrong password, a database that does not exist, a server that is not running, a host
that does not answer, a host name that does not resolve, a socket with no server: each
makes `taskmanager serve` and `taskmanager db upgrade` exit non-zero with one line that
names the server, the database and the user (never the password), the cause and what to
check - not a driver traceback.

The wrong password needs a server that checks passwords: a throwaway embedded PostgreSQL
whose pg_hba.conf asks every user but the test's own admin for a SCRAM password.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from typer.testing import CliRunner

from taskmanager.cli import app
from taskmanager.config import get_settings
from taskmanager.postgres.deployment import check_service_login_when_reachable
from taskmanager.postgres.embedded import EmbeddedPostgres
from taskmanager.postgres.logins import (
    ConnectionTarget,
    DatabaseUnreachableError,
    explain_connection_error,
)
from taskmanager.security.caller_key import CallerKey
from tests.support.accounts import TEST_SECRET
from tests.support.faults import connect, scratch_dir
from tests.support.processes import clean_env, free_port

RIGHT_PASSWORD = "right-horse-battery"
WRONG_PASSWORD = "wrong-staple-7"
TIMEOUT = 60

# Everyone but the test's own admin connection (postgres, over the socket) needs a password.
PG_HBA = """\
local all postgres trust
local all all scram-sha-256
host all all 127.0.0.1/32 scram-sha-256
"""

COMMANDS = {
    "serve": lambda: ("serve", "--host", "127.0.0.1", "--port", str(free_port())),
    "db upgrade": lambda: ("db", "upgrade"),
}


@dataclass(frozen=True)
class PasswordServer:
    """A PostgreSQL reached over its Unix socket, with user "app" owning database "tasks"."""

    socket_dir: str

    def url(self, password: str, database: str = "tasks", user: str = "app") -> str:
        return f"postgresql://{user}:{password}@/{database}?host={self.socket_dir}"

    @property
    def socket(self) -> str:
        return f"the Unix socket {self.socket_dir}/.s.PGSQL."


@pytest.fixture(scope="module")
def password_server() -> Iterator[PasswordServer]:
    with scratch_dir("taskmanager-setup-errors-") as parent:
        server = EmbeddedPostgres(parent / "pgdata", delete=True)
        admin_url = server.start().superuser
        assert admin_url is not None
        try:
            asyncio.run(require_passwords(admin_url, parent / "pgdata" / "pg_hba.conf"))
            yield PasswordServer(str(make_url(admin_url).query["host"]))
        finally:
            server.stop()


async def require_passwords(admin_url: str, pg_hba: Path) -> None:
    connection = await connect(admin_url)
    try:
        # As docs/security.md, "Your own PostgreSQL", says: an owner that runs the
        # migrations, the service's login "app" that owns nothing, the caller role.
        await connection.execute(f"CREATE ROLE tasks_owner LOGIN PASSWORD '{RIGHT_PASSWORD}'")
        await connection.execute(f"CREATE ROLE app LOGIN NOINHERIT PASSWORD '{RIGHT_PASSWORD}'")
        await connection.execute("CREATE ROLE tasks_caller NOLOGIN")
        await connection.execute("GRANT tasks_caller TO app")
        await connection.execute("CREATE DATABASE tasks OWNER tasks_owner")
        # In place: the file keeps its owner, the server's user.
        await asyncio.to_thread(pg_hba.write_text, PG_HBA)
        await connection.execute("SELECT pg_reload_conf()")
        broken = await connection.fetchval(
            "SELECT count(*) FROM pg_hba_file_rules WHERE error IS NOT NULL"
        )
        assert broken == 0, "the test's pg_hba.conf has errors"
    finally:
        await connection.close(timeout=5)


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections (the kernel does) but never answers a word."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        port: int = listener.getsockname()[1]
        yield port


def run(
    command: str, database_url: str, cwd: Path, **settings: str
) -> subprocess.CompletedProcess[str]:
    """`python -m taskmanager COMMAND` with this DATABASE_URL and no other settings."""
    return subprocess.run(
        [sys.executable, "-m", "taskmanager", *COMMANDS[command]()],
        # The signing key from the environment: no key file is written for `serve`.
        env=clean_env(DATABASE_URL=database_url, TASKMANAGER_JWT_SECRET=TEST_SECRET, **settings),
        cwd=cwd,  # not the project root: its .env must not leak into the test
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def assert_one_clear_line(
    result: subprocess.CompletedProcess[str], *expected: str, secret: str
) -> str:
    """Non-zero exit, one line naming `expected`, no traceback, no password; the line."""
    output = (result.stdout + result.stderr).strip()
    assert result.returncode != 0, output
    assert "Traceback" not in output, output
    lines = output.splitlines()
    assert 1 <= len(lines) <= 2, output
    assert secret not in output, output
    assert lines[0].startswith("cannot connect to PostgreSQL at "), output
    for text in expected:
        assert text in output, output
    return output


@pytest.mark.parametrize("command", COMMANDS)
def test_wrong_password(password_server: PasswordServer, tmp_path: Path, command: str) -> None:
    result = run(command, password_server.url(WRONG_PASSWORD), tmp_path)
    assert_one_clear_line(
        result,
        password_server.socket,
        '(database "tasks", user "app")',
        "the password was refused",
        "Check the user name and password in DATABASE_URL.",
        secret=WRONG_PASSWORD,
    )


def test_right_password_migrates(password_server: PasswordServer, tmp_path: Path) -> None:
    """The control: the same server and URL with the right password work (and the owner's
    login, which migrations run as)."""
    owner = password_server.url(RIGHT_PASSWORD, user="tasks_owner")
    result = run(
        "db upgrade", password_server.url(RIGHT_PASSWORD), tmp_path, OWNER_DATABASE_URL=owner
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_url_without_a_user_name_logs_in_as_the_driver_does(
    password_server: PasswordServer, tmp_path: Path
) -> None:
    """DATABASE_URL may leave the user name out: the driver takes PGUSER (else the user
    running the command), and the deployment is checked for that login."""
    owner = password_server.url(RIGHT_PASSWORD, user="tasks_owner")
    result = run(
        "db upgrade",
        f"postgresql:///tasks?host={password_server.socket_dir}",
        tmp_path,
        OWNER_DATABASE_URL=owner,
        PGUSER="app",
        PGPASSWORD=RIGHT_PASSWORD,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "requests run as the caller role tasks_caller" in result.stderr, result.stderr


@pytest.mark.parametrize("command", COMMANDS)
def test_unknown_database(password_server: PasswordServer, tmp_path: Path, command: str) -> None:
    result = run(command, password_server.url(RIGHT_PASSWORD, "no_such_database"), tmp_path)
    assert_one_clear_line(
        result,
        password_server.socket,
        '(database "no_such_database", user "app")',
        'there is no database "no_such_database" on this server',
        "createdb no_such_database",
        secret=RIGHT_PASSWORD,
    )


@pytest.mark.parametrize("command", COMMANDS)
def test_server_not_running(tmp_path: Path, command: str) -> None:
    port = free_port()
    url = f"postgresql://app:{RIGHT_PASSWORD}@127.0.0.1:{port}/tasks"
    assert_one_clear_line(
        run(command, url, tmp_path),
        f"at 127.0.0.1:{port} ",
        '(database "tasks", user "app")',
        "the connection was refused",
        "Check that PostgreSQL is running",
        secret=RIGHT_PASSWORD,
    )


@pytest.mark.parametrize("command", COMMANDS)
def test_host_that_does_not_answer(silent_port: int, tmp_path: Path, command: str) -> None:
    url = f"postgresql://app:{RIGHT_PASSWORD}@127.0.0.1:{silent_port}/tasks"
    result = run(command, url, tmp_path, TASKMANAGER_CONNECT_TIMEOUT="1")
    assert_one_clear_line(
        result,
        f"at 127.0.0.1:{silent_port} ",
        '(database "tasks", user "app")',
        "no answer within 1 s",
        secret=RIGHT_PASSWORD,
    )


@pytest.mark.parametrize("command", COMMANDS)
def test_no_server_on_the_socket(tmp_path: Path, command: str) -> None:
    url = f"postgresql://app:{RIGHT_PASSWORD}@/tasks?host={tmp_path}"
    assert_one_clear_line(
        run(command, url, tmp_path),
        f"at the Unix socket {tmp_path}/.s.PGSQL.5432 ",
        "no server is running on that socket",
        secret=RIGHT_PASSWORD,
    )


def test_host_name_that_does_not_resolve(tmp_path: Path) -> None:
    url = f"postgresql://app:{RIGHT_PASSWORD}@no-such-host.invalid:5432/tasks"
    output = assert_one_clear_line(
        run("db upgrade", url, tmp_path, TASKMANAGER_CONNECT_TIMEOUT="3"),
        "at no-such-host.invalid:5432 ",
        secret=RIGHT_PASSWORD,
    )
    # Where the resolver itself does not answer, the wait ends first: still one clear line.
    assert "cannot be resolved" in output or "no answer within 3 s" in output, output


# ─── The messages for causes that are hard to stage, from the driver's own exceptions


URL = f"postgresql+asyncpg://app:{RIGHT_PASSWORD}@db.example.com:5433/tasks"


@pytest.mark.parametrize(
    ("error", "cause"),
    [
        pytest.param(
            asyncpg.InvalidAuthorizationSpecificationError(
                'no pg_hba.conf entry for host "10.0.0.7", user "app", database "tasks"'
            ),
            "no pg_hba.conf entry",
            id="pg_hba",
        ),
        pytest.param(
            asyncpg.InvalidAuthorizationSpecificationError('role "app" does not exist'),
            'there is no user "app" on this server',
            id="no-such-user",
        ),
        pytest.param(
            asyncpg.TooManyConnectionsError("sorry, too many clients already"),
            "no connection slot left",
            id="too-many-connections",
        ),
        pytest.param(
            asyncpg.CannotConnectNowError("the database system is starting up"),
            "starting up or shutting down",
            id="starting-up",
        ),
        pytest.param(
            OSError(113, "No route to host"),
            "no route to host. Check the host and port",
            id="no-route",
        ),
        pytest.param(
            ConnectionError('PostgreSQL server at "db.example.com:5433" rejected SSL upgrade'),
            "does not speak PostgreSQL's protocol",
            id="not-postgres",
        ),
    ],
)
def test_explained_causes(error: BaseException, cause: str) -> None:
    wrapped = RuntimeError("what SQLAlchemy raised")
    wrapped.__cause__ = error
    message = explain_connection_error(URL, wrapped, timeout=5)
    assert message.startswith(
        'cannot connect to PostgreSQL at db.example.com:5433 (database "tasks", user "app"): '
    ), message
    assert cause in message, message
    assert "\n" not in message
    assert RIGHT_PASSWORD not in message


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(asyncpg.TooManyConnectionsError("sorry, too many clients"), id="no-slot"),
        pytest.param(asyncpg.CannotConnectNowError("starting up"), id="starting-up"),
        pytest.param(ConnectionRefusedError(111, "refused"), id="refused"),
    ],
)
async def test_a_database_that_cannot_be_connected_to_at_start_up_is_a_warning(
    error: BaseException, caplog: pytest.LogCaptureFixture
) -> None:
    """The app starts and answers 503 until the database takes connections again."""

    async def fail() -> asyncpg.Connection:
        raise error

    engine = create_async_engine("postgresql+asyncpg://", async_creator=fail)
    try:
        with caplog.at_level(logging.WARNING, logger="taskmanager.postgres.deployment"):
            await check_service_login_when_reachable(engine, CallerKey(TEST_SECRET))
    finally:
        await engine.dispose()
    assert "the service's login could not be checked" in caplog.text


def test_a_password_echoed_by_the_driver_is_masked() -> None:
    error = asyncpg.PostgresError(f"something about {RIGHT_PASSWORD}")
    message = explain_connection_error(URL, error, timeout=5)
    assert RIGHT_PASSWORD not in message
    assert "something about ***" in message


def test_the_owners_url_is_named_in_its_own_failures() -> None:
    message = explain_connection_error(
        URL, asyncpg.InvalidPasswordError("no"), timeout=5, setting="OWNER_DATABASE_URL"
    )
    assert message.endswith("Check the user name and password in OWNER_DATABASE_URL."), message


def test_a_short_password_leaves_the_rest_of_the_message_alone() -> None:
    url = "postgresql+asyncpg://app:a@db.example.com/tasks"
    message = explain_connection_error(url, ConnectionRefusedError(111, "refused"), timeout=5)
    assert '(database "tasks", user "app")' in message


@pytest.mark.parametrize(
    "args",
    [
        ("db", "downgrade", "base"),
        ("db", "current"),
        ("db", "seed", "--tasks", "1"),
        ("db", "purge-keys"),
        ("demo", "mistakes"),
        ("demo", "sync-trap", "--repeat", "1"),
    ],
)
def test_every_command_that_connects_checks_first(args: tuple[str, ...]) -> None:
    """In-process, the error each command raises for `main()` to print as one line."""
    url = f"postgresql://app:{RIGHT_PASSWORD}@127.0.0.1:{free_port()}/tasks"
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, list(args), env={"DATABASE_URL": url})
    finally:
        get_settings.cache_clear()
    assert isinstance(result.exception, DatabaseUnreachableError), result.output
    assert "the connection was refused" in str(result.exception)


@pytest.mark.parametrize(
    ("url", "where"),
    [
        ("postgresql+asyncpg://u:p@[::1]:5433/d", "[::1]:5433"),
        ("postgresql+asyncpg://u:p@/d?host=/run/postgresql", "the Unix socket /run/postgresql"),
        (
            "postgresql+asyncpg://u:p@/d?host=a.example:5432&host=b.example:5433",
            "a.example:5432 or b.example:5433",
        ),
    ],
)
def test_where_the_url_points(url: str, where: str) -> None:
    assert ConnectionTarget.from_url(url).where.startswith(where)


def test_what_the_url_leaves_out_is_the_driver_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("PGHOST", "PGPORT", "PGUSER", "PGDATABASE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr("getpass.getuser", lambda: "alice")
    target = ConnectionTarget.from_url("postgresql+asyncpg://")
    assert (target.where, target.user, target.database) == ("localhost:5432", "alice", "alice")
    monkeypatch.setenv("PGUSER", "bob")
    assert ConnectionTarget.from_url("postgresql+asyncpg:///tasks?host=/run/pg").user == "bob"


def test_a_user_in_the_query_is_the_one_the_driver_logs_in_as() -> None:
    url = "postgresql+asyncpg://alice@db.example.com/tasks?user=bob"
    assert ConnectionTarget.from_url(url).user == "bob"
