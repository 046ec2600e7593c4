"""The cache's client on its own: what it does when Redis is full, or a lookup answers
something it cannot read."""

from __future__ import annotations

import pytest
from redis.exceptions import ResponseError

from taskmanager.cache.client import CacheClient
from tests.support.redis import RedisServer

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_invalidations_go_through_a_redis_full_under_noeviction(
    redis_server: RedisServer,
) -> None:
    """A full Redis under `noeviction` refuses new entries but still answers lookups: an
    invalidation refused there would leave every other worker reading what it voids."""
    cache = CacheClient.connect(
        redis_server.url, "full", timeout_ms=1000, ttl_seconds=60, caller_seconds=60
    )
    with redis_server.client() as redis:
        redis.mset({"full:gen:1": "old", "full:user:7": "old", "full:epoch": "old"})
        policy = redis.config_get("maxmemory-policy")["maxmemory-policy"]
        limit = redis.config_get("maxmemory")["maxmemory"]
        redis.config_set("maxmemory-policy", "noeviction")
        redis.config_set("maxmemory", str(redis.info("memory")["used_memory"]))
        try:
            with pytest.raises(ResponseError, match="maxmemory"):
                redis.set("full:page:new", "x" * 10_000)  # a new entry: refused
            assert await cache.bump({1}, {7})
            assert await cache.flush()
            after = redis.mget("full:gen:1", "full:user:7", "full:epoch")
        finally:
            redis.config_set("maxmemory", limit)
            redis.config_set("maxmemory-policy", policy)
    await cache.close()
    assert b"old" not in after
    assert len(set(after)) == 2  # one token for the bump, another for the epoch
