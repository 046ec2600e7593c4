"""The cache's counters on /metrics: hits, misses, errors and invalidations, by kind.

Registered with the service's other metrics (taskmanager.observability.metrics), so they
follow its mode: in memory in one process, added up over the workers under `serve`. The
kinds are a small fixed set, and each counter's child for each kind is made once here: a
call on the hot path is a dict lookup and an increment. Made at import, every kind shows on
/metrics from the start (at 0), so a dashboard need not wait for the first miss.
"""

from __future__ import annotations

from typing import Any, Final, Literal, get_args

from prometheus_client import Counter

from taskmanager.observability.metrics import REGISTRY

CacheKind = Literal["task", "page", "count", "caller", "generation", "calendar"]
CACHE_KINDS: Final[tuple[CacheKind, ...]] = get_args(CacheKind)

CACHE_HITS = Counter(
    "taskmanager_cache_hits",
    "Reads answered from the cache, by kind of entry.",
    ("kind",),
    registry=REGISTRY,
)
CACHE_MISSES = Counter(
    "taskmanager_cache_misses",
    "Reads the cache could not answer (absent, stale or too slow), by kind of entry.",
    ("kind",),
    registry=REGISTRY,
)
CACHE_ERRORS = Counter(
    "taskmanager_cache_errors",
    "Cache commands that failed (Redis down, timed out, refused): the request went to the "
    "database instead, by kind of entry.",
    ("kind",),
    registry=REGISTRY,
)
CACHE_INVALIDATIONS = Counter(
    "taskmanager_cache_invalidations",
    "Entries or generations dropped because what they hold changed, by kind of entry.",
    ("kind",),
    registry=REGISTRY,
)


def _children(counter: Counter) -> dict[str, Any]:
    return {kind: counter.labels(kind) for kind in CACHE_KINDS}


_hits = _children(CACHE_HITS)
_misses = _children(CACHE_MISSES)
_errors = _children(CACHE_ERRORS)
_invalidations = _children(CACHE_INVALIDATIONS)


def record_hit(kind: CacheKind) -> None:
    _hits[kind].inc()


def record_miss(kind: CacheKind) -> None:
    _misses[kind].inc()


def record_error(kind: CacheKind) -> None:
    _errors[kind].inc()


def record_invalidation(kind: CacheKind) -> None:
    _invalidations[kind].inc()
