"""`taskmanager serve` and the cache: the one line it prints, the Redis it starts for the
embedded default (handed to every worker) and stops by its PID, however serving ends."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from redis import Redis

from taskmanager.cache.local_redis import SOCKET_NAME, redis_server_binary, start_local_redis
from taskmanager.cache.namespace import cache_namespace, local_redis_directory
from taskmanager.cli.serve_cache import NO_REDIS_SERVER, serving_cache
from taskmanager.config import Settings
from tests.support.processes import clean_env, free_port, serve, stop_postgres
from tests.support.redis import REDIS_MISSING

needs_redis = pytest.mark.skipif(redis_server_binary() is None, reason=REDIS_MISSING)
DATABASE = "postgresql+asyncpg://svc@db.example.com/tasks"


def settings(**values: object) -> Settings:
    if "data_dir" not in values:  # the namespace's key, not a key file in the working directory
        values.setdefault("jwt_secret", "k" * 48)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture(autouse=True)
def no_cache_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("TASKMANAGER_") or name == "DATABASE_URL":
            monkeypatch.delenv(name)


def gone(pid: int, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while psutil.pid_exists(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not psutil.pid_exists(pid)


# ─── What serve decides (in-process)


def test_off_when_told() -> None:
    chosen = settings(redis_url="off", database_url=DATABASE)
    with serving_cache(chosen) as cache:
        assert cache.line == "cache: off (TASKMANAGER_REDIS_URL=off)"
        assert cache.environment == {
            "TASKMANAGER_REDIS_URL": "off",
            "TASKMANAGER_CACHE_PREFIX": cache_namespace(chosen),
        }
        assert cache.local is None


def test_off_with_database_url_and_no_redis_url() -> None:
    with serving_cache(settings(database_url=DATABASE)) as cache:
        assert cache.line.startswith("cache: off (TASKMANAGER_REDIS_URL unset")
        assert cache.environment["TASKMANAGER_REDIS_URL"] == "off"


def test_a_configured_redis_is_named_without_its_password(redis_url: str) -> None:
    with serving_cache(settings(database_url=DATABASE, redis_url=redis_url)) as cache:
        assert cache.line == f"cache: Redis at {redis_url}"
        assert cache.environment["TASKMANAGER_REDIS_URL"] == redis_url

    down = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    with serving_cache(settings(database_url=DATABASE, redis_url=down)) as cache:
        shown = down.replace(":hunter2@", "")
        assert cache.line.startswith(f"cache: Redis at {shown} (not answering now: ")
        assert cache.line.endswith("requests run uncached until it does)")
        assert "hunter2" not in cache.line
        assert cache.environment["TASKMANAGER_REDIS_URL"] == down  # the workers need it whole


def test_the_embedded_default_without_redis_server_says_how_to_get_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no redis-server on it
    with serving_cache(settings(data_dir=tmp_path / "pgdata")) as cache:
        assert cache.line == NO_REDIS_SERVER
        assert cache.line == (
            "cache: off: no redis-server on this machine "
            "(apt-get install redis-server, or set TASKMANAGER_REDIS_URL)"
        )
        assert cache.environment["TASKMANAGER_REDIS_URL"] == "off"
    assert not (tmp_path / "redis").exists()


@needs_redis
def test_the_embedded_default_starts_a_redis_and_stops_it(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    chosen = settings(data_dir=tmp_path_factory.mktemp("s") / "pgdata")
    directory = local_redis_directory(chosen)
    with serving_cache(chosen) as cache:
        assert cache.local is not None
        url = f"unix://{directory / SOCKET_NAME}"
        assert cache.line == f"cache: Redis at {url} (started here)"
        assert cache.environment == {
            "TASKMANAGER_REDIS_URL": url,
            "TASKMANAGER_CACHE_PREFIX": cache_namespace(chosen),
        }
        with Redis.from_url(url) as client:
            assert client.ping() is True
        pid = cache.local.pid
    assert gone(pid)
    assert not (directory / SOCKET_NAME).exists()


@needs_redis
def test_the_redis_is_stopped_when_serving_fails(tmp_path_factory: pytest.TempPathFactory) -> None:
    chosen = settings(data_dir=tmp_path_factory.mktemp("s") / "pgdata")
    pids = []

    def serve_and_fail() -> None:
        with serving_cache(chosen) as cache:
            assert cache.local is not None
            pids.append(cache.local.pid)
            raise RuntimeError("the server did not start")

    with pytest.raises(RuntimeError, match="the server did not start"):
        serve_and_fail()
    assert gone(pids[0])


@needs_redis
def test_a_redis_already_on_the_socket_is_left_alone(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    chosen = settings(data_dir=tmp_path_factory.mktemp("s") / "pgdata")
    other = start_local_redis(local_redis_directory(chosen))
    try:
        with serving_cache(chosen) as cache:
            assert cache.line.startswith(
                "cache: off: the local Redis did not start: a Redis is already running on "
            )
            assert f"(PID {other.pid})" in cache.line
            assert cache.environment["TASKMANAGER_REDIS_URL"] == "off"
        with Redis.from_url(other.url) as client:
            assert client.ping() is True  # not ours to stop
    finally:
        other.stop()


# ─── `make run`: a real serve on the embedded default


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """Not under tmp_path: see tests/service/test_serve_restart.py."""
    parent = Path(tempfile.mkdtemp(prefix="taskmanager-cache-serve-"))
    try:
        yield parent / "pgdata"
    finally:
        stop_postgres(parent / "pgdata")
        shutil.rmtree(parent, ignore_errors=True)


@needs_redis
@pytest.mark.server
def test_serve_hands_its_redis_to_every_worker_and_stops_it(data_dir: Path, tmp_path: Path) -> None:
    env = clean_env(
        TASKMANAGER_DATA_DIR=str(data_dir),
        TASKMANAGER_LOG_LEVEL="WARNING",
        TASKMANAGER_METRICS_TOKEN="metrics-token-for-the-serve-cache-test-0123",
    )
    chosen = settings(data_dir=data_dir)
    directory = local_redis_directory(chosen)
    url = f"unix://{directory / SOCKET_NAME}"
    with serve(env, tmp_path, "--workers", "2") as server:
        assert f"cache: Redis at {url} (started here)\n" in server.output()
        pid = int((directory / "redis.pid").read_text())
        redis_process = psutil.Process(pid)
        assert redis_process.name() == "redis-server"
        assert redis_process.ppid() == server.pid  # started by serve, stopped by it
        workers = [child for child in server.children if child.pid != pid]
        assert len(workers) >= 2
        for worker in workers:
            environment = worker.environ()
            assert environment.get("TASKMANAGER_REDIS_URL") == url
            assert environment.get("TASKMANAGER_CACHE_PREFIX") == cache_namespace(chosen)

        # The cache command, run beside it with the same settings, finds the same Redis and
        # namespace, and reads the server's counters.
        stats = subprocess.run(
            [sys.executable, "-m", "taskmanager", "cache", "stats", "--server", server.base_url],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert stats.returncode == 0, stats.stderr
        assert stats.stdout.startswith(f"cache {cache_namespace(chosen)} at {url}\n")
        assert f"app counters: {server.base_url}/metrics (all workers" in stats.stdout

        code = server.interrupt()  # Ctrl-C
        assert code == 0, server.output()
    assert gone(pid), "serve left its Redis running"
    assert not (directory / SOCKET_NAME).exists()
