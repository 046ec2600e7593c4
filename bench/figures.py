"""From wrk runs to figures: one measurement per run, medians over rounds, pool waits."""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from harness import wrk_max_ms
from scenarios import Scenario


@dataclass
class Measurement:
    scenario: str
    round: int
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    server_cpu_us: float  # CPU time of the uvicorn process(es) per request
    postgres_cpu_us: float  # CPU time of the bench's PostgreSQL per request
    new_connections: int  # connections the server's pools opened during the run
    server_logins: int | None = None  # logins PostgreSQL's log recorded (--tcp only)
    redis_cpu_us: float = 0.0  # CPU time of the bench's Redis per request
    # The cached server's counters for the scenario's kind of entry (task or page) over
    # the run; None on a server without the cache.
    cache_hits: int | None = None
    cache_misses: int | None = None
    # Cache commands that failed or timed out (TASKMANAGER_CACHE_TIMEOUT_MS): each is a
    # miss, and for a second after it the server does not use the cache at all.
    cache_errors: int | None = None


@dataclass
class Summary:
    scenario: str
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    ratio_to_baseline: float | None
    baseline: str | None
    errors: int
    server_cpu_us: float
    postgres_cpu_us: float
    connections_per_1000: float  # new connections per 1,000 requests, all rounds
    connections_per_run: list[int] = field(default_factory=list)
    server_logins_per_run: list[int] = field(default_factory=list)
    rounds: list[float] = field(default_factory=list)
    redis_cpu_us: float = 0.0  # (runs saved before the cache have none: 0)
    cache_hits: int | None = None  # all rounds; None: no cache on this scenario's server
    cache_misses: int | None = None
    cache_errors: int | None = None


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (wrk's own kind); 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def starved_clients(checkouts_per_client: list[int], connections: int) -> int:
    """wrk connections that got fewer than a tenth of the mean number of connections from
    the pool in one run (a wrk connection that never got one is not in the list at all)."""
    mean = sum(checkouts_per_client) / connections
    return connections - sum(n >= mean / 10 for n in checkouts_per_client)


def corrected_like_wrk(latencies_ms: list[float], interval_ms: float) -> list[float]:
    """The latencies as wrk 4.1 reports them. wrk corrects for coordinated omission
    (src/stats.c stats_correct, called in src/wrk.c with interval = run time / (requests
    per connection)): a request that took L >= 2 * interval adds the samples
    L - interval, L - 2 * interval, ... down to interval, the requests its connection would
    have sent meanwhile. A few requests of several seconds thus become many samples."""
    corrected = list(latencies_ms)
    for latency in latencies_ms:
        if latency >= 2 * interval_ms:
            synthetic = latency - interval_ms
            while synthetic > interval_ms:
                corrected.append(synthetic)
                synthetic -= interval_ms
    return corrected


def run_figures(
    pool: dict[str, Any], output: str, connections: int, requests: int, duration: int
) -> dict[str, Any]:
    """--naive, one wrk run: the requests' own latencies (timed in the app), the same
    corrected as wrk corrects them, the slowest request wrk saw, starved wrk connections."""
    own: list[float] = pool["latencies_ms"]
    interval_ms = duration * 1000 / max(requests // connections, 1)
    return {
        "wrk_max_ms": wrk_max_ms(output),
        "own_requests": len(own),
        "own_p50_ms": percentile(own, 0.50),
        "own_p99_ms": percentile(own, 0.99),
        "own_max_ms": max(own, default=0.0),
        "own_over_1s": sum(latency > 1000 for latency in own),
        "wrk_interval_ms": interval_ms,
        "own_corrected_p99_ms": percentile(corrected_like_wrk(own, interval_ms), 0.99),
        "starved_clients": starved_clients(pool["checkouts_per_client"], connections),
    }


def summarise_waits(pool: dict[str, Any]) -> dict[str, Any]:
    """Pool waits of one or more runs (bench_naive's /bench/pools/{name}/stats): how many
    checkouts waited, how long, how many were re-queued (joined the waiters' line more than
    once) and what that cost, how many took a connection put back for a woken waiter, and
    how many were asked for while the same client still held a connection."""
    waits_ms: list[float] = pool["waits_ms"]
    joins: list[int] = pool["joins"]
    waited = [w for w, j in zip(waits_ms, joins, strict=True) if j > 0]

    def bucket(low: int, high: int) -> dict[str, Any]:
        ws = [w for w, j in zip(waits_ms, joins, strict=True) if low <= j <= high]
        return {
            "checkouts": len(ws),
            "median_ms": statistics.median(ws) if ws else 0.0,
            "max_ms": max(ws, default=0.0),
        }

    return {
        "checkouts": len(waits_ms),
        "waited": len(waited),
        "waited_share": len(waited) / max(len(waits_ms), 1),
        "wait_p50_ms": percentile(waits_ms, 0.50),
        "wait_p99_ms": percentile(waits_ms, 0.99),
        "wait_max_ms": max(waits_ms, default=0.0),
        "waits_over_1s": sum(w > 1000 for w in waits_ms),
        "requeued": sum(j > 1 for j in joins),
        "requeues": sum(max(j - 1, 0) for j in joins),
        "most_requeues": max((max(j - 1, 0) for j in joins), default=0),
        "steals": pool["steals"],
        "steals_by_releasing_client": pool["steals_by_releasing_client"],
        "overlaps": pool["overlaps"],
        "overlap_share": pool["overlaps"] / max(len(waits_ms), 1),
        # by times in line: 1 = waited once, 2-5 = re-queued 1-4 times, 6+ = 5 or more
        "in_line_once": bucket(1, 1),
        "requeued_1_to_4": bucket(2, 5),
        "requeued_5_plus": bucket(6, 10**9),
    }


def summarise(measurements: list[Measurement], scenarios: list[Scenario]) -> list[Summary]:
    by_name: dict[str, list[Measurement]] = {}
    for m in measurements:
        by_name.setdefault(m.scenario, []).append(m)
    medians = {
        name: statistics.median(m.requests_per_second for m in ms) for name, ms in by_name.items()
    }
    summaries = []
    for scenario in scenarios:
        ms = by_name[scenario.name]
        baseline = scenario.baseline if scenario.baseline in medians else None
        summaries.append(
            Summary(
                scenario=scenario.name,
                requests_per_second=medians[scenario.name],
                p50_ms=statistics.median(m.p50_ms for m in ms),
                p99_ms=statistics.median(m.p99_ms for m in ms),
                ratio_to_baseline=medians[scenario.name] / medians[baseline] if baseline else None,
                baseline=baseline,
                errors=sum(m.errors for m in ms),
                server_cpu_us=statistics.median(m.server_cpu_us for m in ms),
                postgres_cpu_us=statistics.median(m.postgres_cpu_us for m in ms),
                connections_per_1000=1000
                * sum(m.new_connections for m in ms)
                / max(sum(m.requests for m in ms), 1),
                connections_per_run=[m.new_connections for m in ms],
                server_logins_per_run=[m.server_logins for m in ms if m.server_logins is not None],
                rounds=[round(m.requests_per_second, 1) for m in ms],
                redis_cpu_us=statistics.median(m.redis_cpu_us for m in ms),
                cache_hits=_total(m.cache_hits for m in ms),
                cache_misses=_total(m.cache_misses for m in ms),
                cache_errors=_total(m.cache_errors for m in ms),
            )
        )
    return summaries


def _total(counts: Iterable[int | None]) -> int | None:
    known = [c for c in counts if c is not None]
    return sum(known) if known else None
