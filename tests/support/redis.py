"""The test run's own Redis: a `redis-server` on a Unix socket in a scratch directory, one
per test process (each pytest-xdist worker starts its own), stopped at the end of the run.

`redis_url` (tests/conftest.py) hands a test its URL with the server emptied first; a test
that needs Redis to go away mid-test (the cache's "Redis down" behaviour) stops and starts
it on the same socket with `redis_server.down()` (or the `stopped_redis` fixture), so a
client that held the URL reconnects to the same address afterwards.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from redis import Redis

from taskmanager.cache.local_redis import SOCKET_NAME, LocalRedis, start_local_redis

REDIS_MISSING = (
    "redis-server is not installed (scripts/install-system-deps.sh installs Debian's "
    "redis-server; or apt-get install redis-server)"
)


class RedisServer:
    """A local redis-server that can be stopped and started again on the same socket."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._server: LocalRedis | None = None

    @property
    def url(self) -> str:
        """The same before and after a restart."""
        return f"unix://{self.directory / SOCKET_NAME}"

    @property
    def running(self) -> bool:
        return self._server is not None and self._server.running

    @property
    def pid(self) -> int:
        assert self._server is not None, "the test Redis is not running"
        return self._server.pid

    def start(self) -> None:
        if not self.running:
            self._server = start_local_redis(self.directory, maxmemory="64mb")

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    @contextmanager
    def down(self) -> Iterator[None]:
        """Redis is stopped inside the block (connections refused) and running after it."""
        self.stop()
        try:
            yield
        finally:
            self.start()

    def client(self) -> Redis:
        """A synchronous client, for a test to look at or prepare what Redis holds."""
        return Redis.from_url(self.url, socket_timeout=5)

    def flushall(self) -> None:
        with self.client() as client:
            client.flushall()


@contextmanager
def redis_server_in_scratch_directory() -> Iterator[RedisServer]:
    """A running RedisServer in a directory of its own, stopped and removed afterwards.

    A short path under the system's temporary directory: a Unix socket's path is limited to
    about 100 bytes."""
    directory = Path(tempfile.mkdtemp(prefix="taskmanager-test-redis-"))
    server = RedisServer(directory / "redis")
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)
