"""Which Redis the cache talks to, and the namespace its keys live under.

Every key of a deployment starts with `cache_namespace(settings) + ":"`: by default a hash of
the database the deployment uses (host, port and database name; never a password) and of its
signing key, so two deployments sharing one Redis never read each other's entries, and
`taskmanager cache flush` empties one deployment's only.

`resolved_redis_url` is the one answer to "which Redis, if any": the app's lifespan, `serve`
and the `cache` commands all ask here.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

from sqlalchemy.engine import make_url

from taskmanager.config import REDIS_OFF, Settings

DERIVED_PREFIX = "tm:"
LOCAL_SOCKET_NAME = "redis.sock"
_POSTGRES_PORT = 5432


# The shape of what the cache keeps: a release that changes it changes every namespace, so
# no process reads entries of another shape (a rolling deploy, a downgrade).
ENTRY_FORMAT = "1"


def cache_namespace(settings: Settings) -> str:
    """TASKMANAGER_CACHE_PREFIX, or `tm:` + 12 hex digits of a hash of the database's
    address and of the deployment's signing key (never either itself): the same for every
    process of one deployment, different between deployments, also between two that use
    databases of the same address and name on different machines (a signing key is each
    deployment's own). The entries' format is part of it too."""
    if settings.cache_prefix:
        return settings.cache_prefix
    from taskmanager.security.signing_key import signing_key

    key = hmac.new(signing_key(settings).encode(), b"taskmanager cache namespace", "sha256")
    identity = "\0".join((ENTRY_FORMAT, _database_identity(settings), key.hexdigest()))
    return DERIVED_PREFIX + hashlib.sha256(identity.encode()).hexdigest()[:12]


def _database_identity(settings: Settings) -> str:
    if settings.database_url is None:
        from taskmanager.postgres.embedded import DEFAULT_DATABASE

        # The embedded server's socket may live outside its data directory (a long path
        # moves it to /tmp), so the data directory is what names it.
        data_dir = settings.data_dir.expanduser().resolve()
        return "\0".join(("embedded", str(data_dir), DEFAULT_DATABASE))
    url = make_url(settings.database_url)
    host = url.host or _query_host(url.query.get("host"))
    return "\0".join((host, str(url.port or _POSTGRES_PORT), url.database or ""))


def _query_host(value: str | tuple[str, ...] | None) -> str:
    if isinstance(value, tuple):
        return ",".join(value)
    return value or ""


def local_redis_directory(settings: Settings) -> Path:
    """Where the embedded default's own Redis keeps its socket, log and pid file: `redis`
    beside the embedded PostgreSQL's data directory (`.taskmanager/redis` under `make run`)."""
    return settings.data_dir.expanduser().resolve().parent / "redis"


def local_redis_url(settings: Settings) -> str:
    return f"unix://{local_redis_directory(settings) / LOCAL_SOCKET_NAME}"


@dataclass(frozen=True)
class RedisTarget:
    """The Redis to use (`url`), or None and why not (`reason`, one sentence)."""

    url: str | None
    reason: str = ""
    # The embedded default's own Redis (the one `taskmanager serve` starts).
    local: bool = False


def redis_target(settings: Settings) -> RedisTarget:
    """The Redis this deployment uses, or why there is none."""
    if settings.redis_url == REDIS_OFF:
        return RedisTarget(None, "the cache is off (TASKMANAGER_REDIS_URL=off)")
    if settings.redis_url:
        return RedisTarget(settings.redis_url)
    if not settings.uses_embedded_database:
        return RedisTarget(
            None, "no cache: with DATABASE_URL set, the cache needs TASKMANAGER_REDIS_URL"
        )
    directory = local_redis_directory(settings)
    if not (directory / LOCAL_SOCKET_NAME).exists():
        return RedisTarget(
            None,
            f"no local Redis is running in {directory} (`taskmanager serve` starts one "
            "there when redis-server is installed)",
            local=True,
        )
    return RedisTarget(local_redis_url(settings), local=True)


def resolved_redis_url(settings: Settings) -> str | None:
    """The URL of the Redis the app should use; None: run uncached."""
    return redis_target(settings).url


def shown_redis_url(url: str) -> str:
    """`url` fit to print or log: without its password (in the address or the query)."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        user_info, _, address = netloc.rpartition("@")
        user = user_info.partition(":")[0]
        netloc = f"{user}@{address}" if user else address
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    kept = [(key, value) for key, value in pairs if key.lower() != "password"]
    query = urlencode(kept)
    # Written out, not urlunsplit: that drops unix:///'s empty host ("unix:/path").
    return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")
