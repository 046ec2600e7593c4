"""The local redis-server (taskmanager.cache.local_redis): what it listens on, what it
keeps, and that it is stopped by its PID, cleans up, and refuses a socket in use."""

from __future__ import annotations

import os
import signal
import stat
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from taskmanager.cache.local_redis import (
    LOG_NAME,
    PID_NAME,
    SOCKET_NAME,
    LocalRedis,
    LocalRedisError,
    redis_server_binary,
    start_local_redis,
)
from tests.support.redis import REDIS_MISSING, RedisServer

pytestmark = pytest.mark.skipif(redis_server_binary() is None, reason=REDIS_MISSING)


@pytest.fixture
def directory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Short: a Unix socket's path has room for about 100 bytes.
    return Path(os.path.realpath(tmp_path_factory.mktemp("r"))) / "redis"


@pytest.fixture
def started(directory: Path) -> Iterator[Callable[..., LocalRedis]]:
    """`start_local_redis`, with whatever it started stopped after the test."""
    servers: list[LocalRedis] = []

    def start(**options: str) -> LocalRedis:
        server = start_local_redis(directory, **options)  # type: ignore[arg-type]
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_it_answers_on_a_private_unix_socket_only(
    started: Callable[..., LocalRedis], directory: Path
) -> None:
    server = started()
    assert server.url == f"unix://{directory / SOCKET_NAME}"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_ISSOCK((directory / SOCKET_NAME).stat().st_mode)
    assert stat.S_IMODE((directory / SOCKET_NAME).stat().st_mode) == 0o700
    with Redis.from_url(server.url) as client:
        assert client.ping() is True
        assert client.info("server")["process_id"] == server.pid
        config = client.config_get("*")
    assert config["port"] == "0"  # no TCP at all
    assert config["save"] == ""  # no snapshots
    assert config["appendonly"] == "no"
    assert config["maxmemory-policy"] == "allkeys-lru"
    assert int(config["maxmemory"]) == 128 * 1024 * 1024
    assert Path(config["logfile"]) == directory / LOG_NAME
    assert (directory / LOG_NAME).stat().st_size > 0
    assert int((directory / PID_NAME).read_text()) == server.pid


def test_stop_ends_the_process_and_removes_its_socket(
    started: Callable[..., LocalRedis], directory: Path
) -> None:
    server = started()
    with Redis.from_url(server.url) as client:
        client.set("k", "v")
    server.stop()
    assert not alive(server.pid)
    assert server.process.returncode == 0  # SIGTERM: a clean shutdown
    assert not (directory / SOCKET_NAME).exists()
    assert not (directory / PID_NAME).exists()
    server.stop()  # twice is fine

    # Started again on the same socket: the same URL, empty (nothing was kept on disk).
    again = started()
    assert again.url == server.url
    assert again.pid != server.pid
    with Redis.from_url(again.url) as client:
        assert client.get("k") is None
    assert not list(directory.glob("*.rdb"))
    assert not list(directory.glob("appendonly*"))


def test_a_redis_ignoring_sigterm_is_killed(started: Callable[..., LocalRedis]) -> None:
    server = started()
    os.kill(server.pid, signal.SIGSTOP)  # a stopped process acts on no signal but SIGKILL
    server.stop(within=0.5)
    assert server.process.returncode == -signal.SIGKILL
    assert not alive(server.pid)


def test_a_socket_in_use_is_refused_and_left_alone(
    started: Callable[..., LocalRedis], directory: Path
) -> None:
    first = started()
    with pytest.raises(LocalRedisError, match=rf"already running on .*\(PID {first.pid}\)"):
        start_local_redis(directory)
    with Redis.from_url(first.url) as client:
        assert client.ping() is True


def test_what_a_killed_redis_left_behind_is_cleared(
    started: Callable[..., LocalRedis], directory: Path
) -> None:
    dead = started()
    dead.process.kill()
    dead.process.wait()
    assert (directory / SOCKET_NAME).exists()
    assert (directory / PID_NAME).exists()

    fresh = started()
    assert fresh.pid != dead.pid
    assert int((directory / PID_NAME).read_text()) == fresh.pid
    with Redis.from_url(fresh.url) as client:
        assert client.ping() is True


def test_a_redis_that_cannot_start_says_why(directory: Path) -> None:
    with pytest.raises(LocalRedisError, match=r"exited with .*maxmemory"):
        start_local_redis(directory, maxmemory="plenty")
    assert not (directory / SOCKET_NAME).exists()


def test_a_socket_path_too_long_is_refused_before_starting(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 120)
    with pytest.raises(LocalRedisError, match="too long for a Unix socket"):
        start_local_redis(deep)
    assert not deep.exists()


def test_without_redis_server_it_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert redis_server_binary() is None
    with pytest.raises(LocalRedisError, match="apt-get install redis-server"):
        start_local_redis(tmp_path / "redis")


# ─── The tests' own Redis (tests/conftest.py)


@pytest.mark.parametrize("attempt", [1, 2])
def test_each_test_starts_from_an_empty_redis(redis_url: str, attempt: int) -> None:
    with Redis.from_url(redis_url) as client:
        assert client.dbsize() == 0
        assert client.set("left:by:a:test", attempt, nx=True) is True


def test_redis_can_go_down_mid_test_and_come_back_at_the_same_url(
    redis_url: str,
    redis_server: RedisServer,
    stopped_redis: Callable[[], AbstractContextManager[None]],
) -> None:
    client = Redis.from_url(redis_url, socket_timeout=1)
    try:
        client.set("before", "1")
        before = redis_server.pid
        with stopped_redis():
            assert not redis_server.running
            with pytest.raises(RedisConnectionError):
                client.get("before")
        assert redis_server.running
        assert redis_server.pid != before
        assert redis_server.url == redis_url
        assert client.get("before") is None  # the same client reconnects; Redis is empty
        assert client.set("after", "1") is True
    finally:
        client.close()
