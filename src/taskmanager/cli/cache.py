"""`taskmanager cache ...`: look at or empty this deployment's part of the Redis cache.

Both commands talk to the Redis the server uses (`resolved_redis_url`) and touch only keys
under this deployment's namespace (`cache_namespace`): `<namespace>:<kind>:...`. Keys are
walked with SCAN (never KEYS, which blocks Redis for as long as it takes).
"""

from __future__ import annotations

import re
import secrets
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from taskmanager.cache.namespace import cache_namespace, redis_target, shown_redis_url
from taskmanager.cli.shared import console
from taskmanager.config import Settings, load_settings

if TYPE_CHECKING:
    from redis import Redis

cache_app = typer.Typer(
    help="Look at or empty this deployment's Redis cache (TASKMANAGER_REDIS_URL; the "
    "embedded default's is the one `taskmanager serve` starts).",
    no_args_is_help=True,
)

SCAN_COUNT = 1000  # keys Redis looks at per SCAN step: short steps, Redis stays responsive
UNLINK_BATCH = 500
PROGRESS_EVERY = 10_000
COMMAND_TIMEOUT = 5.0  # seconds: a SCAN step on a busy Redis can take longer than the app's 50 ms
COUNTERS = ("hits", "misses", "errors", "invalidations")


def _fail(message: str) -> typer.Exit:
    console.print(f"[red]{escape(message)}[/red]", highlight=False)
    return typer.Exit(1)


def _connect(settings: Settings) -> tuple[Redis, str]:
    """A client of the deployment's Redis that has answered PING, and its URL fit to print;
    exit code 1 with one line saying why when there is none or it does not answer."""
    from redis import Redis, RedisError

    target = redis_target(settings)
    if target.url is None:
        raise _fail(target.reason)
    shown = shown_redis_url(target.url)
    client = Redis.from_url(
        target.url, socket_timeout=COMMAND_TIMEOUT, socket_connect_timeout=COMMAND_TIMEOUT
    )
    try:
        client.ping()
    except (RedisError, OSError) as exc:
        client.close()
        hint = " (the local Redis of `taskmanager serve`: is the server running?)"
        raise _fail(
            f"cannot reach Redis at {shown}: {_first_line(exc)}" + (hint if target.local else "")
        ) from None
    return client, shown


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _pattern(namespace: str) -> str:
    """SCAN's MATCH pattern for every key under `namespace` (glob characters escaped)."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", namespace) + ":*"


def _keys(client: Redis, namespace: str) -> Iterator[bytes]:
    keys: Iterator[bytes] = client.scan_iter(match=_pattern(namespace), count=SCAN_COUNT)
    return keys


@cache_app.command("stats")
def cache_stats(
    server: Annotated[
        str,
        typer.Option(help="The running server whose /metrics gives the app's cache counters."),
    ] = "http://127.0.0.1:8000",
) -> None:
    """Keys per kind under this deployment's namespace, Redis's memory and its own hit and
    miss counts, and the running server's cache counters (from its /metrics, with
    TASKMANAGER_METRICS_TOKEN)."""
    from redis import RedisError

    settings = load_settings()
    namespace = cache_namespace(settings)
    client, shown = _connect(settings)
    try:
        keys: Counter[str] = Counter()
        for key in _keys(client, namespace):
            segment = key[len(namespace) + 1 :].split(b":", 1)[0]
            keys[segment.decode(errors="replace")] += 1
        info = client.info()
    except (RedisError, OSError) as exc:
        raise _fail(f"Redis at {shown} failed: {_first_line(exc)}") from None
    finally:
        client.close()
    app = _app_counters(server, settings)

    from taskmanager.cache.metrics import CACHE_KINDS

    kinds = [*CACHE_KINDS, *sorted(set(keys) - set(CACHE_KINDS))]
    typer.echo(f"cache {namespace} at {shown}")
    header = f"{'kind':<12}{'keys':>10}" + "".join(f"{name:>15}" for name in COUNTERS)
    typer.echo(header)
    for kind in kinds:
        typer.echo(f"{kind:<12}{keys[kind]:>10}" + app.row(kind))
    typer.echo(f"{'all':<12}{sum(keys.values()):>10}" + app.row(None))
    typer.echo(
        f"Redis: used memory {info.get('used_memory_human', '?')} (limit "
        f"{info.get('maxmemory_human', '?')}, {info.get('maxmemory_policy', '?')}); keyspace "
        f"hits {info.get('keyspace_hits', '?')}, misses {info.get('keyspace_misses', '?')} "
        "(all of this Redis, since it started)"
    )
    typer.echo(f"app counters: {app.note}")


@dataclass
class AppCounters:
    """The server's cache counters by kind (`hits`, ...), or why there are none (`note`)."""

    note: str
    values: dict[str, dict[str, float]] | None = None
    totals: dict[str, float] = field(default_factory=dict)

    def row(self, kind: str | None) -> str:
        if self.values is None:
            return "".join(f"{'-':>15}" for _ in COUNTERS)
        numbers = self.totals if kind is None else self.values.get(kind, {})
        return "".join(f"{numbers.get(name, 0):>15g}" for name in COUNTERS)


def _app_counters(server: str, settings: Settings) -> AppCounters:
    """The cache counters of the server at `server`, from its /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    url = server.rstrip("/") + "/metrics"
    if settings.metrics_token is None:
        return AppCounters(
            f"not read: {url} needs TASKMANAGER_METRICS_TOKEN (the server's own) in this "
            "command's settings"
        )
    request = urllib.request.Request(
        url, headers={"Authorization": f"Bearer {settings.metrics_token.get_secret_value()}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=COMMAND_TIMEOUT) as response:
            text = response.read().decode("utf-8", errors="replace")
    except urllib.error.HTTPError as exc:
        why = {
            401: "the server refused TASKMANAGER_METRICS_TOKEN (not its token)",
            404: "the server has no /metrics (no TASKMANAGER_METRICS_TOKEN there)",
        }.get(exc.code, f"HTTP {exc.code}")
        return AppCounters(f"not read from {url}: {why}")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return AppCounters(f"not read: {url} unreachable ({reason})")
    values: dict[str, dict[str, float]] = {}
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = sample.name.removeprefix("taskmanager_cache_").removesuffix("_total")
            if not sample.name.startswith("taskmanager_cache_") or name not in COUNTERS:
                continue
            if not sample.name.endswith("_total"):
                continue  # the `_created` timestamps
            kind = sample.labels.get("kind", "?")
            values.setdefault(kind, {})[name] = sample.value
            totals[name] = totals.get(name, 0.0) + sample.value
    return AppCounters(f"{url} (all workers, since the server started)", values, totals)


@cache_app.command("flush")
def cache_flush() -> None:
    """Delete every key of this deployment's namespace (SCAN, then UNLINK in batches), and
    no other: safe at any time, the cache refills from the database."""
    from redis import RedisError

    settings = load_settings()
    namespace = cache_namespace(settings)
    client, shown = _connect(settings)
    deleted = 0
    next_report = PROGRESS_EVERY
    epoch = f"{namespace}:epoch".encode()
    try:
        # First void every entry at once (a new epoch: taskmanager.cache.scripts); deleting
        # the keys one batch at a time then frees the memory.
        client.set(epoch, secrets.token_hex(8))
        batch: list[bytes] = []
        for key in _keys(client, namespace):
            if key == epoch:
                continue
            batch.append(key)
            if len(batch) >= UNLINK_BATCH:
                deleted += int(client.unlink(*batch))
                batch.clear()
                if deleted >= next_report:
                    console.print(f"  {deleted:,} keys deleted so far", highlight=False)
                    next_report += PROGRESS_EVERY
        if batch:
            deleted += int(client.unlink(*batch))
    except (RedisError, OSError) as exc:
        raise _fail(
            f"Redis at {shown} failed after {deleted} keys were deleted: {_first_line(exc)}"
        ) from None
    finally:
        client.close()
    typer.echo(f"flushed {deleted} key{'' if deleted == 1 else 's'} of {namespace} at {shown}")


def void_cache_after(settings: Settings, what: str) -> None:
    """After a change made outside any request (`what`, e.g. `db seed`): void this
    deployment's cached entries, if it has a cache and Redis answers (one line either way)."""
    from redis import Redis, RedisError

    target = redis_target(settings)
    if target.url is None:
        return
    client = Redis.from_url(
        target.url, socket_timeout=COMMAND_TIMEOUT, socket_connect_timeout=COMMAND_TIMEOUT
    )
    try:
        client.set(f"{cache_namespace(settings)}:epoch", secrets.token_hex(8))
    except (RedisError, OSError) as exc:
        console.print(
            f"cache: could not void the cached reads after {what} ({_first_line(exc)}): "
            "run `taskmanager cache flush` once Redis answers",
            highlight=False,
        )
        return
    finally:
        client.close()
    console.print(f"cache: voided the cached reads after {what}", highlight=False)
