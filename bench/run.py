"""What our stack costs, against the limit: one command, ratios measured side by side.

    .venv/bin/python bench/run.py                 # HTTP benchmark (wrk), ~2 minutes
    .venv/bin/python bench/run.py --deep-offset   # db seed rate + offset 0 vs deep, 1M tasks
    .venv/bin/python bench/run.py --naive         # why the naive route's p99 is seconds

The HTTP benchmark starts ONE uvicorn server with the real app plus the baseline routes of
bench_app.py, seeds data, and drives every scenario with wrk, alternating the order over
at least two rounds so drift on a noisy machine hits every scenario alike. It prints a
markdown table and writes bench/results/latest.{md,json}. Only 127.0.0.1 is targeted and
every run is bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
POOL_SIZE = 20


@dataclass(frozen=True)
class Scenario:
    name: str
    method: str
    path: str  # may contain {id}: a random seeded task id per request
    body: str | None = None
    baseline: str | None = None  # the scenario this one is compared against
    connections: int | None = None  # wrk connections, when not --connections (--naive)
    pool: str | None = None  # the instrumented pool whose waits are read (--naive)


SCENARIOS = [
    Scenario("raw asyncpg GET one", "GET", "/bench/raw/tasks/{id}"),
    Scenario("naive ORM GET one", "GET", "/bench/naive/tasks/{id}", baseline="raw asyncpg GET one"),
    Scenario("GET /tasks/{id}", "GET", "/tasks/{id}", baseline="raw asyncpg GET one"),
    Scenario("raw asyncpg list 50", "GET", "/bench/raw/tasks?limit=50"),
    Scenario(
        "raw asyncpg list 50 + total",
        "GET",
        "/bench/raw/tasks-with-total?limit=50",
        baseline="raw asyncpg list 50",
    ),
    Scenario("GET /tasks?limit=50", "GET", "/tasks?limit=50", baseline="raw asyncpg list 50"),
    Scenario(
        "POST /tasks",
        "POST",
        "/tasks",
        body='{"title": "bench task", "description": "created by bench/run.py"}',
        baseline="raw asyncpg GET one",
    ),
    Scenario(
        "PATCH /tasks/{id}",
        "PATCH",
        "/tasks/{id}",
        body='{"completed": true}',
        baseline="raw asyncpg GET one",
    ),
]

# GET /tasks/{id} built up one layer at a time (`--layers`): what each layer costs.
LAYERS = [
    Scenario("raw asyncpg GET one", "GET", "/bench/raw/tasks/{id}"),
    Scenario(
        "+ SQLAlchemy Core (AsyncConnection)",
        "GET",
        "/bench/layers/connection/tasks/{id}",
        baseline="raw asyncpg GET one",
    ),
    Scenario(
        "+ AsyncSession",
        "GET",
        "/bench/layers/session/tasks/{id}",
        baseline="raw asyncpg GET one",
    ),
    Scenario(
        "+ session-per-request dependency",
        "GET",
        "/bench/layers/dependency/tasks/{id}",
        baseline="raw asyncpg GET one",
    ),
    Scenario(
        "+ repository dependency = GET /tasks/{id}",
        "GET",
        "/tasks/{id}",
        baseline="raw asyncpg GET one",
    ),
]
LAYER_NOTES = {
    "raw asyncpg GET one": "asyncpg pool, the same SQL and response model",
    "+ SQLAlchemy Core (AsyncConnection)": "the repository's statement via engine.connect()",
    "+ AsyncSession": "the same in an AsyncSession the route opens and closes",
    "+ session-per-request dependency": 'the session from get_async_session (scope="function")',
    "+ repository dependency = GET /tasks/{id}": "TaskRepositoryDep, get_view: the real route "
    "(routed past the bench's 7 routes, which FastAPI tries first)",
}

# Why the naive route's p99 is seconds (`--naive`, routes of bench_naive.py): the lecture's
# route beside variants that each change one thing, with the pool's waits recorded.
NAIVE = [
    Scenario("GET /tasks/{id}", "GET", "/tasks/{id}", pool="app"),
    Scenario("naive ORM GET one", "GET", "/bench/naive/tasks/{id}", pool="app"),
    Scenario(
        'naive, scope="function"', "GET", "/bench/naive-scope-function/tasks/{id}", pool="app"
    ),
    Scenario("naive, autocommit", "GET", "/bench/naive-autocommit/tasks/{id}", pool="app"),
    Scenario("naive, FIFO pool queue", "GET", "/bench/naive-pool/fifo/tasks/{id}", pool="fifo"),
    Scenario("naive, pool_size 32", "GET", "/bench/naive-pool/pool32/tasks/{id}", pool="pool32"),
    Scenario("naive, pool_size 40", "GET", "/bench/naive-pool/pool40/tasks/{id}", pool="pool40"),
    Scenario("naive, wrk -c16", "GET", "/bench/naive/tasks/{id}", connections=16, pool="app"),
    Scenario("GET /tasks/{id}, wrk -c64", "GET", "/tasks/{id}", connections=64, pool="app"),
    Scenario("naive, wrk -c64", "GET", "/bench/naive/tasks/{id}", connections=64, pool="app"),
]
NAIVE_NOTES = {
    "GET /tasks/{id}": 'our route: scope="function", autocommit read',
    "naive ORM GET one": "the lecture's route: default scope, BEGIN ... COMMIT",
    'naive, scope="function"': "the same dependency, committed and closed before the response",
    "naive, autocommit": "default scope, no BEGIN/COMMIT (the app's read sessions)",
    "naive, FIFO pool queue": "default scope, a pool queue that hands a returned connection "
    "to the longest waiter",
    "naive, pool_size 32": "default scope, as many pooled connections as wrk connections",
    "naive, pool_size 40": "default scope, more pooled connections than wrk connections",
    "naive, wrk -c16": "default scope, fewer wrk connections than pooled ones",
    "GET /tasks/{id}, wrk -c64": "our route, twice the usual load",
    "naive, wrk -c64": "the lecture's route, twice the usual load",
}

# Targets from the project's issue: ratio of req/s to the baseline.
TARGETS = {"GET /tasks/{id}": 0.6, "GET /tasks?limit=50": 0.5}
# The list endpoint also counts (X-Total-Count); the raw list does not. This second
# comparison is against a raw implementation of the endpoint's whole contract.
SECOND_BASELINES = {"GET /tasks?limit=50": "raw asyncpg list 50 + total"}


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
    postgres_cpu_us: float  # CPU time of PostgreSQL per request (embedded server only)


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
    rounds: list[float] = field(default_factory=list)


# ─────────────────────────────────────────────── helpers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ensure_wrk() -> str:
    """The wrk binary; installed from Debian's packages when missing (as root)."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("wrk is missing: installing it with apt-get ...", file=sys.stderr)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True, env=env)
        found = shutil.which("wrk")
    if not found:
        sys.exit("wrk is needed: install it (Debian: apt-get install wrk) and run again")
    return found


@contextmanager
def bench_database() -> Iterator[str]:
    """BENCH_DATABASE_URL, else a throwaway embedded PostgreSQL (deleted afterwards)."""
    explicit = os.environ.get("BENCH_DATABASE_URL")
    if explicit:
        from taskmanager.config import normalize_database_url

        yield normalize_database_url(explicit)
        return
    from taskmanager.embedded import EmbeddedPostgres

    data_dir = Path(tempfile.mkdtemp(prefix="taskmanager-bench-")) / "pgdata"
    server = EmbeddedPostgres(data_dir, database="taskmanager_bench", delete=True)
    try:
        yield server.start()
    finally:
        server.stop()


def seed_database(url: str, tasks: int, categories: int) -> dict[str, float]:
    """Migrate and seed; returns the seed rate."""
    from taskmanager.config import Settings
    from taskmanager.database import create_engine
    from taskmanager.migrate import upgrade
    from taskmanager.seed import seed

    upgrade(url)

    async def run() -> float:
        engine = create_engine(Settings(database_url=url), url)
        try:
            started = time.perf_counter()
            await seed(engine, tasks, categories)
            return time.perf_counter() - started
        finally:
            await engine.dispose()

    elapsed = asyncio.run(run())
    return {"tasks": tasks, "seconds": elapsed, "tasks_per_second": tasks / elapsed}


def _autocommit(url: str, *statements: str) -> list[Any]:
    """Run statements outside a transaction (VACUUM needs that); the first column of each
    statement's first row, or None."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    async def run() -> list[Any]:
        engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
        try:
            async with engine.connect() as connection:
                results = []
                for statement in statements:
                    result = await connection.execute(text(statement))
                    results.append(result.scalar() if result.returns_rows else None)
                return results
        finally:
            await engine.dispose()

    return asyncio.run(run())


def newest_task_id(url: str) -> int:
    return int(_autocommit(url, "SELECT coalesce(max(id), 0) FROM tasks")[0])


def restore_seeded_tasks(url: str, newest_seeded_id: int) -> None:
    """Delete the rows write scenarios added and vacuum, so every read scenario (and every
    round) reads the same number of rows on a vacuumed table: POSTs add rows, which a count
    must then scan, and PATCHes leave dead row versions that index-only scans must check.
    (PATCH's `completed: true` stays: no scenario filters on it.)"""
    _autocommit(
        url,
        f"DELETE FROM tasks WHERE id > {int(newest_seeded_id)}",
        "VACUUM (ANALYZE) tasks",
    )


@contextmanager
def bench_server(
    url: str, workers: int, extra_env: dict[str, str] | None = None
) -> Iterator[tuple[str, psutil.Process]]:
    """uvicorn with the bench app on a free 127.0.0.1 port; stopped by PID afterwards."""
    port = free_port()
    env = {
        **os.environ,
        **(extra_env or {}),
        "DATABASE_URL": url,
        "TASKMANAGER_LOG_LEVEL": "WARNING",
        # Same pool capacity on both sides: 20 connections kept open. (With overflow, SQLAlchemy
        # closes every connection above pool_size on return and reconnects under load.)
        "TASKMANAGER_POOL_SIZE": str(POOL_SIZE),
        "TASKMANAGER_MAX_OVERFLOW": "0",
        # PYTHONPATH from the caller comes first: `PYTHONPATH=<old checkout>/src` measures
        # an earlier version of the service with this same bench (bench/README.md's steps).
        "PYTHONPATH": os.pathsep.join(
            p for p in (os.environ.get("PYTHONPATH"), str(BENCH_DIR)) if p
        ),
    }
    command = [
        sys.executable, "-m", "uvicorn", "bench_app:create_bench_app", "--factory",
        "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
        "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip
    # The server's log goes to a file: an unread pipe would fill up and stall the server.
    log = tempfile.NamedTemporaryFile(prefix="bench-server-", suffix=".log", delete=False)  # noqa: SIM115
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    log.close()  # the child holds its own descriptor
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                sys.exit(f"the bench server exited; its log:\n{Path(log.name).read_text()[-3000:]}")
            try:
                if httpx.get(f"{base}/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                sys.exit("the bench server did not become ready within 60 s")
            time.sleep(0.2)
        yield base, psutil.Process(process.pid)
        tail = Path(log.name).read_text()[-2000:]
        if tail.strip():
            print(f"bench server log ({log.name}), last lines:\n{tail}", file=sys.stderr)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def cpu_seconds(process: psutil.Process) -> float:
    """User + system CPU time of `process` and its children (workers)."""
    total = 0.0
    for proc in (process, *process.children(recursive=True)):
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


def postgres_cpu_seconds() -> float:
    """CPU time of every PostgreSQL process on this machine (the bench's server is the only
    busy one while it runs; 0 when PostgreSQL runs elsewhere)."""
    total = 0.0
    for proc in psutil.process_iter(["name", "cpu_times"]):
        if proc.info["name"] == "postgres" and proc.info["cpu_times"] is not None:
            total += proc.info["cpu_times"].user + proc.info["cpu_times"].system
    return total


class PeakRSS:
    """Samples the server's resident memory (with its workers) in a background thread."""

    def __init__(self, process: psutil.Process) -> None:
        self.process = process
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                procs = [self.process, *self.process.children(recursive=True)]
                self.peak = max(self.peak, sum(p.memory_info().rss for p in procs))
            except psutil.Error:
                pass
            self._stop.wait(0.1)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def lua_script(scenario: Scenario, max_id: int, directory: Path) -> Path:
    path = directory / (re.sub(r"\W+", "_", scenario.name).strip("_") + ".lua")
    body = json.dumps(scenario.body) if scenario.body else "nil"
    path_expr = json.dumps(scenario.path).replace("{id}", '" .. math.random(1, max_id) .. "')
    path.write_text(
        f"""
max_id = {max_id}
math.randomseed(os.time())
wrk.method = "{scenario.method}"
wrk.headers["Content-Type"] = "application/json"
local body = {body}
request = function()
  return wrk.format("{scenario.method}", {path_expr}, nil, body)
end
"""
    )
    return path


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not match:
        raise ValueError(f"cannot parse a wrk latency: {text!r}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def parse_wrk(output: str) -> tuple[float, float, float, int, int]:
    """req/s, p50 ms, p99 ms, requests, non-2xx/3xx + socket errors."""
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", output, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", output, re.M).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    errors = 0
    if match := re.search(r"Non-2xx or 3xx responses: (\d+)", output):
        errors += int(match.group(1))
    if match := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    ):
        errors += sum(int(g) for g in match.groups())
    return rps, p50, p99, requests, errors


def wrk_max_ms(output: str) -> float:
    """The slowest request of a wrk run (its Latency line's Max column)."""
    return _ms(re.search(r"^\s+Latency\s+\S+\s+\S+\s+(\S+)", output, re.M).group(1))  # type: ignore[union-attr]


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


def run_wrk(wrk: str, base: str, script: Path, connections: int, duration: int) -> str:
    command = [
        wrk, "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "--timeout", "10s",
        "-s", str(script), base,
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=duration + 30)
    if result.returncode != 0:
        raise RuntimeError(f"wrk failed: {result.stderr}")
    return result.stdout


def chosen_scenarios(only: list[str], scenarios: list[Scenario] = SCENARIOS) -> list[Scenario]:
    """The scenarios whose names contain one of `only` (all if empty), with their baselines."""
    if not only:
        return scenarios
    names = {s.name for s in scenarios if any(part.lower() in s.name.lower() for part in only)}
    names |= {s.baseline for s in scenarios if s.name in names and s.baseline}
    return [s for s in scenarios if s.name in names]


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
        baseline = scenario.baseline
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
                rounds=[round(m.requests_per_second, 1) for m in ms],
            )
        )
    return summaries


def markdown(summaries: list[Summary], meta: dict[str, Any]) -> str:
    lines = [
        f"Measured {meta['date']} on {meta['machine']}: 1 uvicorn worker (uvloop, httptools), "
        f"wrk -t1 -c{meta['connections']} -d{meta['duration']}s x {meta['rounds']} rounds "
        f"(order alternating), {meta['tasks']:,} seeded tasks. Server peak RSS "
        f"{meta['peak_rss_mib']:.0f} MiB.",
        "",
        "| scenario | req/s | p50 ms | p99 ms | server CPU µs/req | PostgreSQL CPU µs/req "
        "| ratio | vs | target |",
        "|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for s in summaries:
        ratio = f"{s.ratio_to_baseline:.2f}x" if s.ratio_to_baseline is not None else "1.00x"
        target = TARGETS.get(s.scenario)
        verdict = ""
        if target is not None and s.ratio_to_baseline is not None:
            verdict = f"≥ {target}x {'✅' if s.ratio_to_baseline >= target else '❌'}"
        errors = f" ({s.errors} errors)" if s.errors else ""
        lines.append(
            f"| {s.scenario}{errors} | {s.requests_per_second:,.0f} | {s.p50_ms:.2f} | "
            f"{s.p99_ms:.2f} | {s.server_cpu_us:,.0f} | {s.postgres_cpu_us:,.0f} | {ratio} | "
            f"{s.baseline or 'itself'} | {verdict} |"
        )
    by_name = {s.scenario: s for s in summaries}
    for name, baseline in SECOND_BASELINES.items():
        if name in by_name and baseline in by_name:
            ratio = by_name[name].requests_per_second / by_name[baseline].requests_per_second
            lines.append(f"\n{name} against {baseline} (the same work, raw): {ratio:.2f}x")
    return "\n".join(lines) + "\n"


def layers_markdown(summaries: list[Summary], meta: dict[str, Any]) -> str:
    lines = [
        f"Measured {meta['date']} on {meta['machine']}, like the main table (1 worker, "
        f"wrk -t1 -c{meta['connections']} -d{meta['duration']}s x {meta['rounds']} rounds, "
        "order alternating). Each row adds one layer to the row above it.",
        "",
        "| GET one task | req/s | ratio | server CPU µs/req | this layer µs/req | what it is |",
        "|---|---:|---:|---:|---:|---|",
    ]
    previous: float | None = None
    for s in summaries:
        ratio = f"{s.ratio_to_baseline:.2f}x" if s.ratio_to_baseline is not None else "1.00x"
        step = "" if previous is None else f"{s.server_cpu_us - previous:+,.0f}"
        errors = f" ({s.errors} errors)" if s.errors else ""
        lines.append(
            f"| {s.scenario}{errors} | {s.requests_per_second:,.0f} | {ratio} | "
            f"{s.server_cpu_us:,.0f} | {step} | {LAYER_NOTES.get(s.scenario, '')} |"
        )
        previous = s.server_cpu_us
    return "\n".join(lines) + "\n"


def naive_markdown(
    summaries: list[Summary],
    runs: list[dict[str, Any]],
    waits: dict[str, dict[str, Any]],
    scenarios: list[Scenario],
    meta: dict[str, Any],
) -> str:
    connections = {s.name: s.connections or meta["connections"] for s in scenarios}
    per_run: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        per_run.setdefault(run["scenario"], []).append(run)

    def median(name: str, key: str) -> float:
        return statistics.median(run[key] for run in per_run[name])

    def each(name: str, key: str) -> str:
        return ", ".join(f"{run[key]:,.0f}" for run in per_run[name])

    lines = [
        f"Measured {meta['date']} on {meta['machine']}: 1 uvicorn worker, "
        f"wrk -t1 -d{meta['duration']}s x {meta['rounds']} rounds (order alternating), "
        f"pool_size {POOL_SIZE}, max_overflow 0 unless the row says otherwise. Medians over "
        "the rounds unless a cell lists each round.",
        "",
        "Latency: wrk's figures, then each request's own time in the app, and the same "
        "corrected for coordinated omission as wrk 4.1 corrects its own:",
        "",
        "| scenario | wrk -c | req/s | wrk p50 ms | wrk p99 ms | wrk max ms | own p50 ms "
        "| own p99 ms | own max ms | requests > 1 s | own p99 corrected like wrk |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summaries:
        name = s.scenario
        errors = f" ({s.errors} errors)" if s.errors else ""
        lines.append(
            f"| {name}{errors} | {connections[name]} | {s.requests_per_second:,.0f} | "
            f"{s.p50_ms:.2f} | {s.p99_ms:.2f} | {each(name, 'wrk_max_ms')} | "
            f"{median(name, 'own_p50_ms'):.2f} | {median(name, 'own_p99_ms'):.2f} | "
            f"{each(name, 'own_max_ms')} | {each(name, 'own_over_1s')} | "
            f"{median(name, 'own_corrected_p99_ms'):.2f} |"
        )
    lines += [
        "",
        "The pool (every checkout of all rounds, timed inside the pool's queue). A steal is a "
        "checkout that took at once a connection just put back for a waiter that had been "
        "woken but had not run yet; that waiter then goes to the back of the line:",
        "",
        "| scenario | checkouts that waited | wait p99 ms | wait max ms | waits > 1 s "
        "| re-queued checkouts | most re-queues | steals (by the client that put it back) "
        "| asked while the same client held one | starved wrk connections |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summaries:
        w = waits[s.scenario]
        lines.append(
            f"| {s.scenario} | {w['waited_share']:.1%} | {w['wait_p99_ms']:.2f} | "
            f"{w['wait_max_ms']:,.0f} | {w['waits_over_1s']} | "
            f"{w['requeued']} of {w['checkouts']:,} | {w['most_requeues']} | "
            f"{w['steals']:,} ({w['steals_by_releasing_client']:,}) | "
            f"{w['overlap_share']:.0%} | {each(s.scenario, 'starved_clients')} |"
        )
    lines += [
        "",
        "Pool waits by how many times the checkout joined the waiters' line "
        "(checkouts, median / max ms):",
        "",
        "| scenario | waited once | re-queued 1-4 times | re-queued 5+ times |",
        "|---|---:|---:|---:|",
    ]

    def cell(b: dict[str, Any]) -> str:
        if not b["checkouts"]:
            return "0"
        return f"{b['checkouts']:,} ({b['median_ms']:.1f} / {b['max_ms']:,.0f})"

    for s in summaries:
        w = waits[s.scenario]
        lines.append(
            f"| {s.scenario} | {cell(w['in_line_once'])} | {cell(w['requeued_1_to_4'])} | "
            f"{cell(w['requeued_5_plus'])} |"
        )
    lines += ["", "| scenario | what it is |", "|---|---|"]
    lines += [f"| {s.scenario} | {NAIVE_NOTES.get(s.scenario, '')} |" for s in summaries]
    return "\n".join(lines) + "\n"


# ─────────────────────────────────────────────── the benchmarks


def reset_pool(base: str, scenario: Scenario) -> None:
    """--naive: open the scenario's pool (with all its connections) and forget its waits."""
    if scenario.pool:
        httpx.post(f"{base}/bench/pools/{scenario.pool}/reset", timeout=60).raise_for_status()


def read_pool(base: str, scenario: Scenario) -> dict[str, Any] | None:
    """--naive: the waits the scenario's pool recorded; a pool of its own is then closed
    (PostgreSQL's max_connections is 100)."""
    if not scenario.pool:
        return None
    response = httpx.get(
        f"{base}/bench/pools/{scenario.pool}/stats",
        params={"close": str(scenario.pool != "app").lower()},
        timeout=60,
    )
    response.raise_for_status()
    stats: dict[str, Any] = response.json()
    return stats


def http_benchmark(args: argparse.Namespace) -> int:
    if args.layers:
        scenarios = LAYERS
    else:
        scenarios = chosen_scenarios(args.only, NAIVE if args.naive else SCENARIOS)
    if not scenarios:
        names = ", ".join(s.name for s in (NAIVE if args.naive else SCENARIOS))
        print(f"--only matched no scenario; the scenarios are: {names}", file=sys.stderr)
        return 2
    wrk = ensure_wrk()
    with bench_database() as url:
        print(f"seeding {args.tasks:,} tasks ...", file=sys.stderr)
        seed_rate = seed_database(url, args.tasks, 20)
        newest_seeded_id = newest_task_id(url)
        extra_env = {"BENCH_NAIVE": "1"} if args.naive else None
        server = bench_server(url, args.workers, extra_env)
        with server as (base, process), PeakRSS(process) as rss:
            measurements: list[Measurement] = []
            # --naive: the pool's figures and the requests' own latencies, per run
            pool_runs: list[dict[str, Any]] = []
            pools: dict[str, dict[str, Any]] = {
                s.name: {
                    "waits_ms": [],
                    "joins": [],
                    "steals": 0,
                    "steals_by_releasing_client": 0,
                    "overlaps": 0,
                }
                for s in scenarios
            }
            with tempfile.TemporaryDirectory() as scripts:
                scripts_dir = Path(scripts)
                for scenario in scenarios:  # warm-up: caches, prepared statements, pool
                    script = lua_script(scenario, args.tasks, scripts_dir)
                    reset_pool(base, scenario)
                    run_wrk(wrk, base, script, scenario.connections or args.connections, 1)
                    read_pool(base, scenario)
                restore_seeded_tasks(url, newest_seeded_id)
                for round_number in range(1, args.rounds + 1):
                    order = scenarios if round_number % 2 else list(reversed(scenarios))
                    for scenario in order:
                        script = lua_script(scenario, args.tasks, scripts_dir)
                        connections = scenario.connections or args.connections
                        reset_pool(base, scenario)
                        server_before, pg_before = cpu_seconds(process), postgres_cpu_seconds()
                        output = run_wrk(wrk, base, script, connections, args.duration)
                        server_cpu = cpu_seconds(process) - server_before
                        pg_cpu = postgres_cpu_seconds() - pg_before
                        rps, p50, p99, requests, errors = parse_wrk(output)
                        pool = read_pool(base, scenario)
                        if pool is not None:
                            for key, total in pools[scenario.name].items():
                                pools[scenario.name][key] = total + pool[key]
                            figures = run_figures(
                                pool, output, connections, requests, args.duration
                            )
                            pool_runs.append(
                                {
                                    "scenario": scenario.name,
                                    "round": round_number,
                                    **figures,
                                    **summarise_waits(pool),
                                }
                            )
                        if scenario.method != "GET":
                            restore_seeded_tasks(url, newest_seeded_id)
                        measurements.append(
                            Measurement(
                                scenario.name,
                                round_number,
                                rps,
                                p50,
                                p99,
                                requests,
                                errors,
                                server_cpu_us=1e6 * server_cpu / max(requests, 1),
                                postgres_cpu_us=1e6 * pg_cpu / max(requests, 1),
                            )
                        )
                        print(
                            f"round {round_number}  {scenario.name:<24} {rps:>8,.0f} req/s  "
                            f"p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  "
                            f"CPU/request: server {measurements[-1].server_cpu_us:5.0f} us, "
                            f"PostgreSQL {measurements[-1].postgres_cpu_us:5.0f} us"
                            + (f"  {errors} errors" if errors else ""),
                            file=sys.stderr,
                        )
    summaries = summarise(measurements, scenarios)
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": (
            f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
        ),
        "connections": args.connections,
        "duration": args.duration,
        "rounds": args.rounds,
        "workers": args.workers,
        "tasks": args.tasks,
        "peak_rss_mib": rss.peak / 2**20,
        "seed": seed_rate,
    }
    extra: dict[str, Any] = {}
    if args.naive:
        pooled = {name: summarise_waits(pool) for name, pool in pools.items()}
        table = naive_markdown(summaries, pool_runs, pooled, scenarios, meta)
        extra = {"pool_waits": pooled, "pool_runs": pool_runs}
    elif args.layers:
        table = layers_markdown(summaries, meta)
    else:
        table = markdown(summaries, meta)
    print(table)
    if args.only:
        print("(--only: bench/results/ left as it was)", file=sys.stderr)
        return 0
    name = "naive" if args.naive else "layers" if args.layers else "latest"
    RESULTS_DIR.mkdir(exist_ok=True)
    (RESULTS_DIR / f"{name}.md").write_text(table)
    (RESULTS_DIR / f"{name}.json").write_text(
        json.dumps(
            {
                "meta": meta,
                "summary": [asdict(s) for s in summaries],
                "measurements": [asdict(m) for m in measurements],
                **extra,
            },
            indent=2,
        )
    )
    print(f"wrote {RESULTS_DIR / name}.md and {name}.json", file=sys.stderr)
    return 0


def deep_offset_benchmark(args: argparse.Namespace) -> int:
    """`db seed` rate on 1,000,000 tasks, then the list endpoint at offset 0 vs deep."""
    tasks = args.deep_tasks
    with bench_database() as url:
        print(f"seeding {tasks:,} tasks ...", file=sys.stderr)
        seed_rate = seed_database(url, tasks, 50)
        print(f"seed: {seed_rate['tasks_per_second']:,.0f} tasks/s", file=sys.stderr)
        with bench_server(url, 1) as (base, _):
            results = {}
            with httpx.Client(base_url=base, timeout=60) as client:
                for label, offset in (("offset 0", 0), ("offset deep", tasks - 50)):
                    path = f"/tasks?limit=50&offset={offset}"
                    client.get(path).raise_for_status()  # warm-up
                    timings = []
                    for _ in range(args.offset_samples):
                        started = time.perf_counter()
                        response = client.get(path)
                        timings.append((time.perf_counter() - started) * 1000)
                        response.raise_for_status()
                    results[label] = {
                        "offset": offset,
                        "median_ms": statistics.median(timings),
                        "min_ms": min(timings),
                        "max_ms": max(timings),
                        "samples": len(timings),
                    }
    deep, shallow = results["offset deep"], results["offset 0"]
    table = (
        f"`db seed`: {tasks:,} tasks in {seed_rate['seconds']:.1f} s "
        f"({seed_rate['tasks_per_second']:,.0f} tasks/s)\n\n"
        "| GET /tasks?limit=50 | median ms | min ms | max ms |\n|---|---:|---:|---:|\n"
        + "".join(
            f"| {label} ({r['offset']:,}) | {r['median_ms']:.1f} | {r['min_ms']:.1f} | "
            f"{r['max_ms']:.1f} |\n"
            for label, r in results.items()
        )
        + f"\nDeep offset costs {deep['median_ms'] / shallow['median_ms']:.1f}x offset 0.\n"
    )
    print(table)
    RESULTS_DIR.mkdir(exist_ok=True)
    (RESULTS_DIR / "deep-offset.md").write_text(table)
    (RESULTS_DIR / "deep-offset.json").write_text(
        json.dumps({"seed": seed_rate, "list": results}, indent=2)
    )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=2, help="rounds (order alternates)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers")
    parser.add_argument("--tasks", type=int, default=10_000, help="seeded tasks")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="TEXT",
        help="only scenarios whose name contains TEXT (repeatable), with their baselines; "
        "prints the table without writing bench/results/",
    )
    parser.add_argument(
        "--layers",
        action="store_true",
        help="GET /tasks/{id} built up one layer at a time: what each layer costs "
        "(writes bench/results/layers.md)",
    )
    parser.add_argument(
        "--naive",
        action="store_true",
        help="why the lecture's naive route has a multi-second p99: the route beside "
        "variants that each change one thing, with the pool's figures "
        "(writes bench/results/naive.md)",
    )
    parser.add_argument("--deep-offset", action="store_true", help="seed + deep offset bench")
    parser.add_argument("--deep-tasks", type=int, default=1_000_000)
    parser.add_argument("--offset-samples", type=int, default=30)
    args = parser.parse_args()
    if args.rounds < 2 and not args.deep_offset:
        parser.error("--rounds must be at least 2 (the order alternates between rounds)")
    if args.naive and (args.layers or args.deep_offset or args.workers != 1):
        parser.error("--naive runs its own scenarios in one worker (the pools are per process)")
    return deep_offset_benchmark(args) if args.deep_offset else http_benchmark(args)


if __name__ == "__main__":
    raise SystemExit(main())
