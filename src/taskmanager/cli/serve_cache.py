"""The cache `taskmanager serve` gives its workers: decided once, said in one line.

Redis is optional: whatever happens here, serving goes on (uncached, when there is no Redis).
With the embedded default and TASKMANAGER_REDIS_URL unset, `serve` starts a Redis of its own
on a Unix socket beside the data directory when the machine has `redis-server`, and stops it
(by its PID) when serving ends, however it ends.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from taskmanager.cache.local_redis import (
    LocalRedis,
    LocalRedisError,
    redis_server_binary,
    start_local_redis,
)
from taskmanager.cache.namespace import cache_namespace, local_redis_directory, shown_redis_url
from taskmanager.config import REDIS_OFF, Settings

REDIS_URL_VARIABLE = "TASKMANAGER_REDIS_URL"
CACHE_PREFIX_VARIABLE = "TASKMANAGER_CACHE_PREFIX"
NO_REDIS_SERVER = (
    "cache: off: no redis-server on this machine "
    "(apt-get install redis-server, or set TASKMANAGER_REDIS_URL)"
)
PING_WITHIN = 1.0  # seconds: a configured Redis that is down delays start-up no longer


@dataclass(frozen=True)
class ServingCache:
    """What `serve` says about the cache (`line`) and hands its workers (`environment`)."""

    line: str
    environment: dict[str, str]
    local: LocalRedis | None = field(default=None)


@contextmanager
def serving_cache(settings: Settings) -> Iterator[ServingCache]:
    """The cache to serve with, for as long as the block runs: a local Redis started here is
    stopped when it ends (also by an exception: a server that failed to start)."""
    # The workers see DATABASE_URL (the service's login), not the data directory the
    # namespace of the embedded default is derived from: they are told it.
    prefix = {CACHE_PREFIX_VARIABLE: cache_namespace(settings)}
    off = {REDIS_URL_VARIABLE: REDIS_OFF, **prefix}
    if settings.redis_url == REDIS_OFF:
        yield ServingCache("cache: off (TASKMANAGER_REDIS_URL=off)", off)
        return
    if settings.redis_url:
        url = settings.redis_url
        line = f"cache: Redis at {shown_redis_url(url)}" + _not_answering(url)
        yield ServingCache(line, {REDIS_URL_VARIABLE: url, **prefix})
        return
    if not settings.uses_embedded_database:
        line = "cache: off (TASKMANAGER_REDIS_URL unset; with DATABASE_URL, set it to use Redis)"
        yield ServingCache(line, off)
        return
    if redis_server_binary() is None:
        yield ServingCache(NO_REDIS_SERVER, off)
        return
    try:
        local = start_local_redis(local_redis_directory(settings))
    except LocalRedisError as exc:
        not_started = f"cache: off: the local Redis did not start: {exc}"
    else:
        not_started = ""
    if not_started:
        yield ServingCache(not_started, off)
        return
    try:
        yield ServingCache(
            f"cache: Redis at {local.url} (started here)",
            {REDIS_URL_VARIABLE: local.url, **prefix},
            local,
        )
    finally:
        local.stop()


def _not_answering(url: str) -> str:
    """'' when the Redis at `url` answers PING now; else a note that serving goes on
    uncached until it does."""
    from redis import Redis, RedisError

    client = Redis.from_url(url, socket_timeout=PING_WITHIN, socket_connect_timeout=PING_WITHIN)
    try:
        client.ping()
    except (RedisError, OSError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f" (not answering now: {reason}; requests run uncached until it does)"
    finally:
        client.close()
    return ""
