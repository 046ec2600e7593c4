"""Settings and DATABASE_URL normalisation: the lecture's Mistake 1 caught at start-up."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy.engine import make_url

from taskmanager.config import DatabaseURLError, Settings, normalize_database_url


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(
            "postgresql://user:secret@db.example.com:5432/tasks",
            "postgresql+asyncpg://user:secret@db.example.com:5432/tasks",
            id="postgresql",
        ),
        pytest.param(
            "postgres://user:secret@db.example.com/tasks",
            "postgresql+asyncpg://user:secret@db.example.com/tasks",
            id="postgres-heroku-style",
        ),
        pytest.param(
            "postgresql+asyncpg://user:secret@localhost/tasks",
            "postgresql+asyncpg://user:secret@localhost/tasks",
            id="already-asyncpg",
        ),
        pytest.param(
            "  postgresql://user@localhost/tasks\n",
            "postgresql+asyncpg://user@localhost/tasks",
            id="surrounding-whitespace",
        ),
        pytest.param(
            "postgresql://user:secret@db.example.com/tasks?sslmode=require",
            "postgresql+asyncpg://user:secret@db.example.com/tasks?ssl=require",
            id="sslmode-becomes-ssl",
        ),
        pytest.param(
            "postgresql://postgres:@/tasks?host=/tmp/pg",
            "postgresql+asyncpg://postgres:@/tasks?host=%2Ftmp%2Fpg",
            id="unix-socket-host",
        ),
    ],
)
def test_normalize_to_asyncpg(raw: str, expected: str) -> None:
    normalized = normalize_database_url(raw)
    assert make_url(normalized) == make_url(expected)
    assert normalized.startswith("postgresql+asyncpg://")


@pytest.mark.parametrize(
    "password",
    ["p@ss:w/rd", "100%sure", "a#b?c&d=e", "spaces are fine", "ünïcødé", "%40literal"],
)
def test_password_with_special_characters_survives(password: str) -> None:
    raw = make_url("postgresql://user@db.example.com:5432/tasks").set(password=password)
    normalized = normalize_database_url(raw.render_as_string(hide_password=False))
    url = make_url(normalized)
    assert url.password == password
    assert url.username == "user"
    assert url.host == "db.example.com"
    assert url.port == 5432
    assert url.database == "tasks"
    # And it is idempotent: normalising the result changes nothing.
    assert normalize_database_url(normalized) == normalized


def test_sslmode_keeps_other_query_parameters() -> None:
    url = make_url(
        normalize_database_url(
            "postgresql://u:p@h/db?sslmode=verify-full&application_name=taskmanager"
        )
    )
    assert dict(url.query) == {"ssl": "verify-full", "application_name": "taskmanager"}


@pytest.mark.parametrize("driver", ["psycopg2", "psycopg", "pg8000", "psycopg2cffi"])
def test_sync_drivers_are_refused_naming_asyncpg(driver: str) -> None:
    with pytest.raises(DatabaseURLError) as raised:
        normalize_database_url(f"postgresql+{driver}://user:secret@db.example.com/tasks")
    message = str(raised.value)
    assert "postgresql+asyncpg://user:***@db.example.com/tasks" in message
    assert driver in message
    assert "secret" not in message  # no password in an error that ends up in logs


@pytest.mark.parametrize(
    "raw",
    [
        "sqlite:///tasks.db",
        "sqlite+aiosqlite:///tasks.db",
        "mysql://user:secret@localhost/tasks",
        "mysql+aiomysql://user:secret@localhost/tasks",
    ],
)
def test_other_databases_are_refused(raw: str) -> None:
    with pytest.raises(DatabaseURLError, match="needs PostgreSQL") as raised:
        normalize_database_url(raw)
    assert "secret" not in str(raised.value)


@pytest.mark.parametrize(
    "raw",
    ["postgresql://app:pw@secret-part@127.0.0.1:5432/tasks", "postgresql://app:a@b@c@db/tasks"],
)
def test_an_unescaped_at_in_the_password_is_refused_without_echoing_it(raw: str) -> None:
    """The URL ends the password at its first "@": the rest would be shown as the host."""
    with pytest.raises(DatabaseURLError, match="%40") as raised:
        normalize_database_url(raw)
    message = str(raised.value)
    for secret in ("secret-part", "pw", "b@c"):
        assert secret not in message


def test_unknown_postgres_driver_is_refused() -> None:
    with pytest.raises(DatabaseURLError, match="only through asyncpg"):
        normalize_database_url("postgresql+whatever://u:p@h/db")


@pytest.mark.parametrize("raw", ["not a url", "localhost:5432/tasks", "://nothing", ""])
def test_garbage_is_refused(raw: str) -> None:
    with pytest.raises(DatabaseURLError):
        normalize_database_url(raw)


def test_database_url_error_is_a_value_error() -> None:
    # pydantic turns a ValueError raised in a validator into a ValidationError.
    assert issubclass(DatabaseURLError, ValueError)


# ─────────────────────────────── Settings from the environment

SETTINGS_ENV = [
    "DATABASE_URL",
    "TASKMANAGER_DATABASE_URL",
    "OWNER_DATABASE_URL",
    "TASKMANAGER_OWNER_DATABASE_URL",
    "TASKMANAGER_DATA_DIR",
    "TASKMANAGER_POOL_SIZE",
    "TASKMANAGER_MAX_OVERFLOW",
    "TASKMANAGER_POOL_TIMEOUT",
    "TASKMANAGER_STATEMENT_TIMEOUT_MS",
    "TASKMANAGER_CONNECT_TIMEOUT",
    "TASKMANAGER_READY_TIMEOUT",
    "TASKMANAGER_SQL_ECHO",
    "TASKMANAGER_LOG_LEVEL",
    "TASKMANAGER_GC_THRESHOLD",
]


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No taskmanager variable set, and a working directory without a .env file."""
    for name in SETTINGS_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


def test_defaults_mean_embedded(env: pytest.MonkeyPatch) -> None:
    settings = Settings()
    assert settings.database_url is None
    assert settings.uses_embedded_database
    assert settings.data_dir == Path(".taskmanager/pgdata")
    assert settings.log_level == "INFO"


@pytest.mark.parametrize("value", ["", "   "])
def test_empty_database_url_means_embedded(env: pytest.MonkeyPatch, value: str) -> None:
    env.setenv("DATABASE_URL", value)
    settings = Settings()
    assert settings.database_url is None
    assert settings.uses_embedded_database


def test_reads_database_url_and_normalizes_it(env: pytest.MonkeyPatch) -> None:
    env.setenv("DATABASE_URL", "postgres://app:s3cr%40t@db:6543/tasks?sslmode=require")
    settings = Settings()
    assert not settings.uses_embedded_database
    assert settings.database_url is not None
    url = make_url(settings.database_url)
    assert url.drivername == "postgresql+asyncpg"
    assert url.password == "s3cr@t"
    assert (url.host, url.port, url.database) == ("db", 6543, "tasks")
    assert dict(url.query) == {"ssl": "require"}


def test_prefixed_database_url_is_accepted_too(env: pytest.MonkeyPatch) -> None:
    env.setenv("TASKMANAGER_DATABASE_URL", "postgresql://u@h/db")
    assert Settings().database_url == "postgresql+asyncpg://u@h/db"


def test_sync_driver_in_environment_fails_validation(env: pytest.MonkeyPatch) -> None:
    env.setenv("DATABASE_URL", "postgresql+psycopg2://u:p@h/db")
    with pytest.raises(ValidationError, match=r"postgresql\+asyncpg"):
        Settings()


def test_the_owners_url_is_refused_in_its_own_name(env: pytest.MonkeyPatch) -> None:
    env.setenv("DATABASE_URL", "postgresql://app@db/tasks")
    env.setenv("OWNER_DATABASE_URL", "mysql://owner@db/tasks")
    with pytest.raises(ValidationError) as raised:
        Settings()
    message = str(raised.value)
    assert "OWNER_DATABASE_URL points at 'mysql'" in message, message
    assert "or unset DATABASE_URL to use the embedded PostgreSQL" in message, message


def test_reads_taskmanager_variables(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env.setenv("TASKMANAGER_DATA_DIR", str(tmp_path / "pg"))
    env.setenv("TASKMANAGER_POOL_SIZE", "3")
    env.setenv("TASKMANAGER_MAX_OVERFLOW", "0")
    env.setenv("TASKMANAGER_POOL_TIMEOUT", "2.5")
    env.setenv("TASKMANAGER_STATEMENT_TIMEOUT_MS", "0")
    env.setenv("TASKMANAGER_CONNECT_TIMEOUT", "1")
    env.setenv("TASKMANAGER_READY_TIMEOUT", "0.5")
    env.setenv("TASKMANAGER_SQL_ECHO", "true")
    env.setenv("TASKMANAGER_LOG_LEVEL", "warning")
    env.setenv("TASKMANAGER_GC_THRESHOLD", "0")
    settings = Settings()
    assert settings.data_dir == tmp_path / "pg"
    assert settings.pool_size == 3
    assert settings.max_overflow == 0
    assert settings.pool_timeout == 2.5
    assert settings.statement_timeout_ms == 0
    assert settings.connect_timeout == 1.0
    assert settings.ready_timeout == 0.5
    assert settings.sql_echo is True
    assert settings.log_level == "WARNING"  # case-insensitive
    assert settings.gc_threshold == 0


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TASKMANAGER_POOL_SIZE", "0"),
        ("TASKMANAGER_POOL_SIZE", "many"),
        ("TASKMANAGER_MAX_OVERFLOW", "-1"),
        ("TASKMANAGER_POOL_TIMEOUT", "0"),
        ("TASKMANAGER_LOG_LEVEL", "LOUD"),
        ("TASKMANAGER_GC_THRESHOLD", "-1"),
    ],
)
def test_invalid_values_are_refused(env: pytest.MonkeyPatch, name: str, value: str) -> None:
    env.setenv(name, value)
    with pytest.raises(ValidationError):
        Settings()


def test_dotenv_file_in_working_directory_is_read(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("DATABASE_URL=postgresql://from:dotenv@h/db\n")
    assert Settings().database_url == "postgresql+asyncpg://from:dotenv@h/db"
    env.setenv("DATABASE_URL", "postgresql://from:environment@h/db")
    assert Settings().database_url == "postgresql+asyncpg://from:environment@h/db"


def test_explicit_arguments_win(env: pytest.MonkeyPatch) -> None:
    env.setenv("TASKMANAGER_POOL_SIZE", "3")
    settings = Settings(database_url="postgres://u@h/db", pool_size=7)
    assert settings.pool_size == 7
    assert settings.database_url == "postgresql+asyncpg://u@h/db"
