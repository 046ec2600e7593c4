"""The cache's connection to Redis: optional, and never a single point of failure.

Every command is bounded by a short socket timeout (TASKMANAGER_CACHE_TIMEOUT_MS). A command
that fails or times out is a miss for the caller, counted in
`taskmanager_cache_errors_total` and logged once per outage; for the next
`RETRY_AFTER_SECONDS` no command is sent at all (the database path answers), then the next
one tries again, and the cache resumes by itself.

Invalidations are sent even during that pause (see `CacheClient.invalidate`), and even to
a Redis full under `noeviction` (they only overwrite keys). An invalidation that could not
be delivered (Redis went away just then, or the request was cancelled) leaves this process
unsure whether Redis still holds entries the change made stale. Before this process uses the
cache again it gives the namespace a new epoch (a random token), which every entry is checked
against, so every entry stored before is void; entries also expire by themselves after
TASKMANAGER_CACHE_TTL_SECONDS, which bounds how long another process could read such an
entry should Redis come back before this one does.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from taskmanager.cache import scripts
from taskmanager.cache.metrics import CacheKind, record_error

log = logging.getLogger(__name__)

T = TypeVar("T")

# After a failed command, how long the database alone answers before the cache is tried
# again.
RETRY_AFTER_SECONDS = 1.0
# The longest a login session's caller facts stay cached (at most the TTL): one that runs
# out by time, which no request ends, is refused from the cache within this long.
CALLER_SECONDS = 60
# How many command timeouts opening a connection may take.
CONNECT_TIMEOUTS = 4
# What a command can fail with: Redis's own errors, and the socket's.
CACHE_ERRORS = (RedisError, OSError, TimeoutError)


class CacheClient:
    """Redis, as the cache uses it: key names under one namespace, the Lua scripts that
    read and store entries atomically, and the failure handling above."""

    def __init__(
        self,
        redis: Redis,
        namespace: str,
        *,
        ttl_seconds: int,
        caller_seconds: int,
        retry_after_seconds: float = RETRY_AFTER_SECONDS,
    ) -> None:
        self.redis = redis
        self.namespace = namespace
        self.ttl_seconds = ttl_seconds
        # Caller facts live shorter: a login session that runs out by time (not ended by
        # anyone) is refused from the cache within this many seconds.
        self.caller_seconds = min(caller_seconds, ttl_seconds)
        self.retry_after_seconds = retry_after_seconds
        self.epoch_key = self.key("epoch")
        self.gen_prefix = self.key("gen") + ":"
        self.user_prefix = self.key("user") + ":"
        self._down_until = 0.0
        self._down = False
        # Invalidations lost (not delivered, or cut off): void every entry (a new epoch)
        # before the next use. A count, so one lost while the new epoch is on its way is
        # not forgotten when it arrives.
        self._lost = 0
        self.read_entries = redis.register_script(scripts.READ_ENTRIES)
        self.store_entry = redis.register_script(scripts.STORE_ENTRY)
        self.store_facts = redis.register_script(scripts.STORE_FACTS)
        self.overwrite = redis.register_script(scripts.OVERWRITE)

    @classmethod
    def connect(
        cls, url: str, namespace: str, *, timeout_ms: int, ttl_seconds: int, caller_seconds: int
    ) -> CacheClient:
        """A client for the Redis at `url` (no connection is made until the first command).
        No retries: a failed command is a miss at once, never a wait."""
        timeout = timeout_ms / 1000
        redis = Redis.from_url(
            url,
            socket_timeout=timeout,
            # Opening a connection takes longer than a command on a busy machine (a burst
            # opens many at once); a Redis that is down refuses at once anyway.
            socket_connect_timeout=CONNECT_TIMEOUTS * timeout,
            retry=Retry(NoBackoff(), 0),
            retry_on_timeout=False,
            health_check_interval=0,
            decode_responses=False,
        )
        return cls(redis, namespace, ttl_seconds=ttl_seconds, caller_seconds=caller_seconds)

    def key(self, *parts: object) -> str:
        return ":".join((self.namespace, *(str(part) for part in parts)))

    @property
    def available(self) -> bool:
        """False while the cache is left alone after a failure."""
        return time.monotonic() >= self._down_until

    async def call(
        self, kind: CacheKind, work: Callable[[Redis], Awaitable[T]], *, paused_too: bool = False
    ) -> T | None:
        """`work`'s answer, or None when Redis is down, slow or failing (counted, logged once).
        While the cache is paused after a failure nothing is sent, unless `paused_too`."""
        if not self.available and not paused_too:
            return None
        try:
            if lost := self._lost:
                await self._new_epoch(self.redis)
                self._lost -= lost
                log.warning("cache: every entry stored before a lost invalidation is now void")
            answer = await work(self.redis)
        except CACHE_ERRORS as exc:
            self._failed(kind, exc)
            return None
        if self._down:
            self._down = False
            self._down_until = 0.0  # it answered: no need to wait out the pause
            log.warning("cache: Redis answers again; reads use the cache again")
        return answer

    async def invalidate(self, kind: CacheKind, work: Callable[[Redis], Awaitable[Any]]) -> bool:
        """Run an invalidation; if it cannot be delivered, void every entry at the next use
        (see the module's docstring). True when it was delivered.

        Tried even while reads are paused after a failure: one slow answer to one process
        pauses only that process's reads, while the other processes go on reading from
        Redis, so a change this process skipped voiding there would be read stale there (on
        another server, by the very client whose write was acknowledged) until this process
        used the cache again. A Redis that is really down refuses at once; a slow one costs a
        write the cache's timeout (four, to open a connection). An invalidation cut off (the
        request cancelled) counts as lost too."""
        delivered = False
        try:
            delivered = await self.call(kind, work, paused_too=True) is not None
        finally:
            if not delivered:
                self._lost += 1
        return delivered

    def _failed(self, kind: CacheKind, exc: BaseException) -> None:
        record_error(kind)
        self._down_until = time.monotonic() + self.retry_after_seconds
        if not self._down:
            self._down = True
            log.warning(
                "cache: Redis failed (%s: %s); the database answers until it is back",
                type(exc).__name__,
                exc,
            )

    async def bump(self, workspace_ids: set[int], user_ids: set[int]) -> bool:
        """New generations for these workspaces (their tasks, pages and counts) and users
        (their login sessions' caller facts): every entry stored under the old ones is void.
        Random, not counted up, so a generation lost to eviction never comes back."""
        if not workspace_ids and not user_ids:
            return True
        token = new_token()
        generations = {self.gen_prefix + str(id_): token for id_ in workspace_ids} | {
            self.user_prefix + str(id_): token for id_ in user_ids
        }

        async def write(redis: Redis) -> bool:
            return bool(await self.overwrite(keys=list(generations), args=[token], client=redis))

        return await self.invalidate("generation", write)

    async def _new_epoch(self, redis: Redis) -> bool:
        return bool(await self.overwrite(keys=[self.epoch_key], args=[new_token()], client=redis))

    async def flush(self) -> bool:
        """Void every entry of this namespace at once (the epoch)."""

        return await self.invalidate("generation", self._new_epoch)

    async def close(self) -> None:
        with contextlib.suppress(*CACHE_ERRORS):  # a dead connection: nothing left to close
            await self.redis.aclose()


def new_token() -> str:
    return secrets.token_hex(8)
