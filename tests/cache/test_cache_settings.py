"""The cache's settings: which Redis (`resolved_redis_url`), under which namespace
(`cache_namespace`), and the values start-up refuses with a message naming the setting."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from taskmanager.cache.namespace import (
    cache_namespace,
    local_redis_directory,
    redis_target,
    resolved_redis_url,
    shown_redis_url,
)
from taskmanager.config import Settings
from tests.support.processes import clean_env

DATABASE = "postgresql+asyncpg://svc:secret@db.example.com:5432/tasks"


def settings(**values: object) -> Settings:
    # Only what the test names: nothing from the environment or a .env file.
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture(autouse=True)
def no_cache_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("TASKMANAGER_") or name in ("DATABASE_URL", "OWNER_DATABASE_URL"):
            monkeypatch.delenv(name)


# ─── TASKMANAGER_REDIS_URL


@pytest.mark.parametrize(
    ("raw", "kept"),
    [
        (None, None),
        ("", None),
        ("  ", None),
        ("off", "off"),
        (" OFF ", "off"),
        ("redis://cache.internal:6379/0", "redis://cache.internal:6379/0"),
        ("rediss://:pw@cache.example.com:6380/2", "rediss://:pw@cache.example.com:6380/2"),
        ("unix:///run/redis/redis.sock", "unix:///run/redis/redis.sock"),
    ],
)
def test_redis_url_values_that_are_kept(raw: str | None, kept: str | None) -> None:
    assert settings(redis_url=raw).redis_url == kept


@pytest.mark.parametrize(
    "raw",
    ["localhost:6379", "http://cache:6379", "redis://", "unix://", "yes", "redis:/cache:1/0"],
)
def test_a_redis_url_that_is_not_one_names_the_setting(raw: str) -> None:
    with pytest.raises(ValidationError, match=r"TASKMANAGER_REDIS_URL .* is not a Redis URL"):
        settings(redis_url=raw)


def test_the_refusal_never_shows_the_password() -> None:
    with pytest.raises(ValidationError) as refused:
        settings(redis_url="http://user:hunter2-secret@cache:6379")
    (error,) = refused.value.errors()
    assert "hunter2" not in error["msg"]  # what load_settings prints
    assert "cache:6379" in error["msg"]


def test_a_bad_redis_url_stops_a_command_with_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "taskmanager", "cache", "stats"],
        env=clean_env(TASKMANAGER_REDIS_URL="http://user:hunter2@cache:6379"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("Configuration error (redis_url): TASKMANAGER_REDIS_URL")
    assert "Traceback" not in result.stderr
    assert "hunter2" not in result.stderr


# ─── Timeout, lifetime, prefix


@pytest.mark.parametrize(
    ("field", "low", "high"),
    [("cache_timeout_ms", 1, 5000), ("cache_ttl_seconds", 1, 86_400)],
)
def test_bounds(field: str, low: int, high: int) -> None:
    assert getattr(settings(**{field: low}), field) == low
    assert getattr(settings(**{field: high}), field) == high
    for outside in (low - 1, high + 1):
        with pytest.raises(ValidationError, match=field):
            settings(**{field: outside})


def test_defaults() -> None:
    chosen = settings()
    assert (chosen.redis_url, chosen.cache_timeout_ms, chosen.cache_ttl_seconds) == (None, 250, 300)
    assert chosen.cache_prefix is None


def test_settings_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKMANAGER_REDIS_URL", "redis://cache:6379/1")
    monkeypatch.setenv("TASKMANAGER_CACHE_TIMEOUT_MS", "80")
    monkeypatch.setenv("TASKMANAGER_CACHE_TTL_SECONDS", "60")
    monkeypatch.setenv("TASKMANAGER_CACHE_PREFIX", "tm-staging")
    chosen = settings()
    assert chosen.redis_url == "redis://cache:6379/1"
    assert (chosen.cache_timeout_ms, chosen.cache_ttl_seconds) == (80, 60)
    assert cache_namespace(chosen) == "tm-staging"


@pytest.mark.parametrize(
    ("raw", "kept"),
    [("tm-prod", "tm-prod"), ("tm-prod:", "tm-prod"), ("a.b_c:d-1", "a.b_c:d-1"), (" ", None)],
)
def test_prefixes_that_are_kept(raw: str, kept: str | None) -> None:
    assert settings(cache_prefix=raw).cache_prefix == kept


@pytest.mark.parametrize("raw", ["tm*", "with space", "tm[1]", "é", ":lead", "x" * 65])
def test_prefixes_that_are_refused(raw: str) -> None:
    with pytest.raises(ValidationError, match="TASKMANAGER_CACHE_PREFIX"):
        settings(cache_prefix=raw)


# ─── The namespace


def derived(**values: object) -> str:
    if "data_dir" not in values:  # the key, not a key file made in the working directory
        values.setdefault("jwt_secret", "k" * 48)
    namespace = cache_namespace(settings(**values))
    assert re.fullmatch(r"tm:[0-9a-f]{12}", namespace), namespace
    return namespace


def test_the_prefix_setting_is_the_namespace() -> None:
    assert cache_namespace(settings(database_url=DATABASE, cache_prefix="mine")) == "mine"


def test_the_derived_namespace_follows_the_database_and_never_the_login() -> None:
    base = derived(database_url=DATABASE)
    # Another login or password, the port written out or not, another driver spelling:
    # the same database, so the same namespace (every process of a deployment agrees).
    assert derived(database_url=DATABASE.replace("svc:secret", "other:pw")) == base
    assert derived(database_url=DATABASE.replace(":5432", "")) == base
    assert derived(database_url="postgresql://svc:x@db.example.com/tasks") == base
    # Another database, host or port: another deployment.
    others = {
        derived(database_url=DATABASE.replace("/tasks", "/tasks2")),
        derived(database_url=DATABASE.replace("db.example.com", "db2.example.com")),
        derived(database_url=DATABASE.replace("5432", "5433")),
        derived(database_url="postgresql://svc@/tasks?host=/run/postgresql"),
        derived(database_url="postgresql://svc@/tasks?host=/run/other"),
    }
    assert len(others) == 5
    assert base not in others
    assert "secret" not in base


def test_deployments_on_databases_of_the_same_name_and_address_have_their_own_namespaces() -> None:
    """Two installations of `...@db:5432/taskmanager` on two machines, sharing one Redis:
    their signing keys differ, so do their namespaces (else one's users would read the
    other's cached tasks, whose ids coincide)."""
    one = derived(database_url=DATABASE, jwt_secret="a" * 48)
    other = derived(database_url=DATABASE, jwt_secret="b" * 48)
    assert one != other
    assert derived(database_url=DATABASE, jwt_secret="a" * 48) == one


def test_the_embedded_default_is_named_by_its_data_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    one = derived(data_dir=tmp_path / "one" / "pgdata")
    assert derived(data_dir=tmp_path / "two" / "pgdata") != one
    monkeypatch.chdir(tmp_path)
    assert derived(data_dir=Path("one/pgdata")) == one  # relative or absolute, one server


# ─── Which Redis


def test_which_redis(tmp_path: Path) -> None:
    off = redis_target(settings(redis_url="off"))
    assert off.url is None
    assert "TASKMANAGER_REDIS_URL=off" in off.reason
    assert resolved_redis_url(settings(redis_url="redis://c:6379/0")) == "redis://c:6379/0"
    configured = settings(database_url=DATABASE, redis_url="unix:///run/r.sock")
    assert resolved_redis_url(configured) == "unix:///run/r.sock"

    unset = redis_target(settings(database_url=DATABASE))
    assert unset.url is None
    assert "needs TASKMANAGER_REDIS_URL" in unset.reason


def test_the_embedded_default_uses_its_local_redis_only_while_it_runs(tmp_path: Path) -> None:
    embedded = settings(data_dir=tmp_path / "pgdata")
    directory = local_redis_directory(embedded)
    assert directory == tmp_path.resolve() / "redis"
    idle = redis_target(embedded)
    assert idle.url is None
    assert idle.local
    assert str(directory) in idle.reason

    directory.mkdir()
    (directory / "redis.sock").touch()  # where `serve`'s Redis listens while it runs
    running = redis_target(embedded)
    assert running.url == f"unix://{directory}/redis.sock"
    assert running.local


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("unix:///tmp/x/redis.sock", "unix:///tmp/x/redis.sock"),
        ("redis://:s3cret@cache:6379/0", "redis://cache:6379/0"),
        ("rediss://user:s3cret@cache/1?password=s3cret&db=2", "rediss://user@cache/1?db=2"),
        ("unix:///tmp/r.sock?password=s3cret&db=1", "unix:///tmp/r.sock?db=1"),
    ],
)
def test_urls_are_shown_without_their_password(url: str, shown: str) -> None:
    assert shown_redis_url(url) == shown
