"""The scenarios the HTTP benchmark drives, and the floors each is compared against.

A floor does the same work as a route without what the app adds; a scenario's `baseline`
names its floor. Each of the app's scenarios is measured against the separate floor
(floor_app.py, its own process), and so are the in-app floors (bench_app.py), whose
differences give each step's cost. `--layers` and `--naive` have lists of their own.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

# The pool defaults before this release (10 + 10 overflow), run beside today's in --tcp.
OLD_POOL = {"TASKMANAGER_POOL_SIZE": "10", "TASKMANAGER_MAX_OVERFLOW": "10"}


@dataclass(frozen=True)
class Scenario:
    name: str
    method: str
    path: str  # may contain {id}: a random seeded task id per request
    body: str | None = None  # may contain {n}: a random number per request
    baseline: str | None = None  # the scenario this one is compared against
    connections: int | None = None  # wrk connections, when not --connections
    pool: str | None = None  # the instrumented pool whose waits are read (--naive)
    # "app" (today's defaults, no cache), "old-pool" (10 + 10 overflow), "floor"
    # (floor_app.py), "cached" (the app with the cache on: the bench's own Redis)
    server: str = "app"
    form: bool = False  # the body is a form (POST /auth/token), not JSON
    tcp_only: bool = False
    # Which task {id} is: a random seeded one per request, always the same one (ONE_TASK
    # of the seeded range), or each request the next one (a walk through the seeded ids).
    ids: Literal["random", "one", "each"] = "random"
    # "hit": the cache is emptied and warmed with this request before each run, so every
    # request of the run is a hit; "miss": emptied before each run, and each request asks
    # what no request of the run asked before (ids="each"). Only on the cached server.
    cache: Literal["hit", "miss"] | None = None
    if_none_match: bool = False  # send If-None-Match with the answer's current ETag


# The separate floor (floor_app.py, a process of its own): the app's statements, body and
# headers, nothing the app adds. Same paths as the app's routes, so the same wrk scripts.
SEPARATE_ONE = "separate floor: GET /tasks/{id}"
SEPARATE_LIST = "separate floor: GET /tasks?limit=50"
SEPARATE_POST = "separate floor: POST /tasks"
SEPARATE_PATCH = "separate floor: PATCH /tasks/{id}"
# The cache (issue 17): the app with the cache on, against the uncached separate floor of
# the same read. Every request a hit; and the misses, against the same requests uncached.
CACHED_ONE_NAME = "GET /tasks/{id}, cached"
NOT_MODIFIED_NAME = "GET /tasks/{id}, 304"
CACHED_LIST_NAME = "GET /tasks?limit=50, cached"
MISS_NAME = "GET /tasks/{id}, every request a miss"
NO_CACHE_EACH_NAME = "GET /tasks/{id}, each a new task, no cache"
# The in-app floors (bench_app.py): routes of the app, behind its middleware, hand-written
# SQL, one level of the work at a time: the differences between them are the steps' costs.
IN_APP = "in-app floor"
FLOOR_ONE = f"{IN_APP} GET one: + RLS (the route's work)"
FLOOR_LIST = f"{IN_APP} list 50: + RLS (the route's work)"
FLOOR_POST = f"{IN_APP} POST: + JWT + scope + RLS (the route's work)"
FLOOR_PATCH = f"{IN_APP} PATCH: + JWT + scope + RLS (the route's work)"
POST_BODY = '{"title": "bench task {n}", "description": "created by bench/run.py"}'
PATCH_BODY = '{"title": "bench patch {n}"}'  # always a change: an UPDATE every time
OLD = ", old pool 10+10"


def with_old_pool(scenario: Scenario) -> Scenario:
    """The same request on the server with the old pool defaults (10 + 10 overflow), --tcp."""
    return replace(scenario, name=scenario.name + OLD, server="old-pool", tcp_only=True)


def separate_floor(name: str, scenario: Scenario) -> Scenario:
    """`scenario`'s request sent to the separate floor instead of the app."""
    return replace(scenario, name=name, server="floor", baseline=None)


GET_ONE = Scenario("GET /tasks/{id}", "GET", "/tasks/{id}", baseline=SEPARATE_ONE)
LIST_50 = Scenario("GET /tasks?limit=50", "GET", "/tasks?limit=50", baseline=SEPARATE_LIST)
POST_ONE = Scenario("POST /tasks", "POST", "/tasks", POST_BODY, baseline=SEPARATE_POST)
PATCH_ONE = Scenario(
    "PATCH /tasks/{id}", "PATCH", "/tasks/{id}", PATCH_BODY, baseline=SEPARATE_PATCH
)
APP_SCENARIOS = [GET_ONE, LIST_50, POST_ONE, PATCH_ONE]
CACHED_ONE = Scenario(
    CACHED_ONE_NAME, "GET", "/tasks/{id}", baseline=SEPARATE_ONE, server="cached", ids="one",
    cache="hit",
)  # fmt: skip
NOT_MODIFIED = replace(CACHED_ONE, name=NOT_MODIFIED_NAME, if_none_match=True)
CACHED_LIST = Scenario(
    CACHED_LIST_NAME, "GET", "/tasks?limit=50", baseline=SEPARATE_LIST, server="cached",
    cache="hit",
)  # fmt: skip
# Every request a miss (the cache on, emptied before each run, a new task each request)
# against the same requests on the app without a cache: what a miss costs over no cache.
NO_CACHE_EACH = Scenario(NO_CACHE_EACH_NAME, "GET", "/tasks/{id}", ids="each")
MISS = Scenario(
    MISS_NAME, "GET", "/tasks/{id}", baseline=NO_CACHE_EACH_NAME, server="cached", ids="each",
    cache="miss",
)  # fmt: skip
# The rows of the floor table: each of the app's scenarios against its separate floor.
FLOOR_ROWS = [GET_ONE, CACHED_ONE, NOT_MODIFIED, LIST_50, CACHED_LIST, POST_ONE, PATCH_ONE]
CACHE_HITS = [CACHED_ONE, NOT_MODIFIED, CACHED_LIST]
# With their separate floor, what the cache scenarios are compared with uncached (the app's
# GET one and list), and the miss pair.
CACHE_SCENARIOS = [*CACHE_HITS, NO_CACHE_EACH, MISS]


def _in_app(name: str, method: str, path: str, body: str | None, baseline: str) -> Scenario:
    return Scenario(name, method, path, body, baseline=baseline)


SCENARIOS = [
    separate_floor(SEPARATE_ONE, GET_ONE),
    _in_app(f"{IN_APP} GET one: statement", "GET", "/bench/raw/plain/tasks/{id}", None,
            SEPARATE_ONE),
    _in_app(f"{IN_APP} GET one: + transaction", "GET", "/bench/raw/tx/tasks/{id}", None,
            SEPARATE_ONE),
    _in_app(f"{IN_APP} GET one: + JWT", "GET", "/bench/raw/jwt/tasks/{id}", None, SEPARATE_ONE),
    _in_app(f"{IN_APP} GET one: + scope statement", "GET", "/bench/raw/scope/tasks/{id}", None,
            SEPARATE_ONE),
    _in_app(FLOOR_ONE, "GET", "/bench/raw/rls/tasks/{id}", None, SEPARATE_ONE),
    GET_ONE,
    with_old_pool(GET_ONE),
    separate_floor(SEPARATE_LIST, LIST_50),
    _in_app(f"{IN_APP} list 50: page + total", "GET", "/bench/raw/tx/tasks?limit=50", None,
            SEPARATE_LIST),
    _in_app(f"{IN_APP} list 50: + JWT + scope statement", "GET",
            "/bench/raw/scope/tasks?limit=50", None, SEPARATE_LIST),
    _in_app(FLOOR_LIST, "GET", "/bench/raw/rls/tasks?limit=50", None, SEPARATE_LIST),
    LIST_50,
    with_old_pool(LIST_50),
    *CACHE_SCENARIOS,
    separate_floor(SEPARATE_POST, POST_ONE),
    _in_app(f"{IN_APP} POST: INSERT in a transaction", "POST", "/bench/raw/tx/tasks", POST_BODY,
            SEPARATE_POST),
    _in_app(FLOOR_POST, "POST", "/bench/raw/rls/tasks", POST_BODY, SEPARATE_POST),
    POST_ONE,
    with_old_pool(POST_ONE),
    separate_floor(SEPARATE_PATCH, PATCH_ONE),
    _in_app(f"{IN_APP} PATCH: SELECT FOR UPDATE + UPDATE in a transaction", "PATCH",
            "/bench/raw/tx/tasks/{id}", PATCH_BODY, SEPARATE_PATCH),
    _in_app(FLOOR_PATCH, "PATCH", "/bench/raw/rls/tasks/{id}", PATCH_BODY, SEPARATE_PATCH),
    PATCH_ONE,
    with_old_pool(PATCH_ONE),
    Scenario("login: POST /auth/token, 1 client", "POST", "/auth/token", connections=1, form=True),
    Scenario("login: POST /auth/token, 4 clients", "POST", "/auth/token", connections=4, form=True),
]  # fmt: skip
# `--vs-floor`: each of the app's four scenarios and its separate floor, and the cache's
# scenarios (the app with the cache on, every request a hit; the misses against no cache).
VS_FLOOR = [
    s for s in SCENARIOS if s in APP_SCENARIOS or s.server == "floor" or s in CACHE_SCENARIOS
]

# What each step of the floors adds, read off the table: (step, scenario, the one before).
COST_STEPS = [
    ("GET one", "READ ONLY transaction (BEGIN, COMMIT)", f"{IN_APP} GET one: + transaction",
     f"{IN_APP} GET one: statement"),
    ("GET one", "JWT verified", f"{IN_APP} GET one: + JWT", f"{IN_APP} GET one: + transaction"),
    ("GET one", "user + session + memberships, caller set (one statement)",
     f"{IN_APP} GET one: + scope statement", f"{IN_APP} GET one: + JWT"),
    ("GET one", "request role: row-level security on", FLOOR_ONE,
     f"{IN_APP} GET one: + scope statement"),
    ("GET one", "the app's middleware and routing (the in-app floor over the separate one)",
     FLOOR_ONE, SEPARATE_ONE),
    ("GET one", "the app over its separate floor (middleware, FastAPI, SQLAlchemy, the "
     "dependencies)", "GET /tasks/{id}", SEPARATE_ONE),
    ("list 50", "JWT + scope statement", f"{IN_APP} list 50: + JWT + scope statement",
     f"{IN_APP} list 50: page + total"),
    ("list 50", "request role: row-level security on", FLOOR_LIST,
     f"{IN_APP} list 50: + JWT + scope statement"),
    ("list 50", "the app's middleware and routing", FLOOR_LIST, SEPARATE_LIST),
    ("list 50", "the app over its separate floor", "GET /tasks?limit=50", SEPARATE_LIST),
    ("POST", "JWT + scope statement + RLS", FLOOR_POST, f"{IN_APP} POST: INSERT in a transaction"),
    ("POST", "the app's middleware and routing", FLOOR_POST, SEPARATE_POST),
    ("POST", "the app over its separate floor", "POST /tasks", SEPARATE_POST),
    ("PATCH", "JWT + scope statement + RLS", FLOOR_PATCH,
     f"{IN_APP} PATCH: SELECT FOR UPDATE + UPDATE in a transaction"),
    ("PATCH", "the app's middleware and routing", FLOOR_PATCH, SEPARATE_PATCH),
    ("PATCH", "the app over its separate floor", "PATCH /tasks/{id}", SEPARATE_PATCH),
]  # fmt: skip


# GET /tasks/{id} built up one layer at a time (`--layers`): what each layer costs. Every
# layer does the route's whole work (token, scope statement, view, READ ONLY transaction).
def _layer(name: str, path: str) -> Scenario:
    return Scenario(name, "GET", path, baseline=SEPARATE_ONE)


LAYERS = [
    separate_floor(SEPARATE_ONE, GET_ONE),
    _layer(FLOOR_ONE, "/bench/raw/rls/tasks/{id}"),
    _layer("+ SQLAlchemy Core (AsyncConnection)", "/bench/layers/connection/tasks/{id}"),
    _layer("+ AsyncSession", "/bench/layers/session/tasks/{id}"),
    _layer("+ read-session dependency", "/bench/layers/dependency/tasks/{id}"),
    _layer("+ current-reader dependency", "/bench/layers/reader/tasks/{id}"),
    _layer("+ repository dependency = GET /tasks/{id}", "/tasks/{id}"),
    _layer(
        "alternative: the statements on the driver connection", "/bench/layers/driver/tasks/{id}"
    ),
]
LAYER_NOTES = {
    SEPARATE_ONE: "floor_app.py, a process of its own: the app's statements on asyncpg, "
    "no middleware",
    FLOOR_ONE: "asyncpg: token, scope statement, the same response model, as a route of the "
    "app (its middleware)",
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
    Scenario("naive ORM GET one", "GET", "/bench/naive/tasks/{id}", pool="lecture"),
    Scenario(
        'naive, scope="function"', "GET", "/bench/naive-scope-function/tasks/{id}", pool="lecture"
    ),
    Scenario("naive, autocommit", "GET", "/bench/naive-autocommit/tasks/{id}", pool="lecture"),
    Scenario("naive, FIFO pool queue", "GET", "/bench/naive-pool/fifo/tasks/{id}", pool="fifo"),
    Scenario("naive, pool_size 32", "GET", "/bench/naive-pool/pool32/tasks/{id}", pool="pool32"),
    Scenario("naive, pool_size 40", "GET", "/bench/naive-pool/pool40/tasks/{id}", pool="pool40"),
    Scenario("naive, wrk -c16", "GET", "/bench/naive/tasks/{id}", connections=16, pool="lecture"),
    Scenario("GET /tasks/{id}, wrk -c64", "GET", "/tasks/{id}", connections=64, pool="app"),
    Scenario("naive, wrk -c64", "GET", "/bench/naive/tasks/{id}", connections=64, pool="lecture"),
]
NAIVE_NOTES = {
    "GET /tasks/{id}": 'our route: scope="function", a READ ONLY transaction',
    "naive ORM GET one": "the lecture's route: default scope, BEGIN ... COMMIT",
    'naive, scope="function"': "the same dependency, committed and closed before the response",
    "naive, autocommit": "default scope, an autocommit connection: no BEGIN, no COMMIT",
    "naive, FIFO pool queue": "default scope, a pool queue that hands a returned connection "
    "to the longest waiter",
    "naive, pool_size 32": "default scope, as many pooled connections as wrk connections",
    "naive, pool_size 40": "default scope, more pooled connections than wrk connections",
    "naive, wrk -c16": "default scope, fewer wrk connections than pooled ones",
    "GET /tasks/{id}, wrk -c64": "our route, twice the usual load",
    "naive, wrk -c64": "the lecture's route, twice the usual load",
}


# Targets from the project's issue: ratio of req/s to the floor doing the same work.
TARGETS = {
    "GET /tasks/{id}": 0.5,
    "GET /tasks?limit=50": 0.6,
    # issue 17: every endpoint at least half its separate floor, writes included
    "POST /tasks": 0.5,
    "PATCH /tasks/{id}": 0.5,
    # the cache against the uncached separate floor (issue 17): it must beat the database
    # path, not just the app's own slow path
    CACHED_ONE_NAME: 1.2,
    NOT_MODIFIED_NAME: 1.5,
    CACHED_LIST_NAME: 1.0,
}


def chosen_scenarios(only: list[str], scenarios: list[Scenario] = SCENARIOS) -> list[Scenario]:
    """The scenarios whose names contain one of `only` (all if empty), with their baselines."""
    if not only:
        return scenarios
    names = {s.name for s in scenarios if any(part.lower() in s.name.lower() for part in only)}
    names |= {s.baseline for s in scenarios if s.name in names and s.baseline}
    return [s for s in scenarios if s.name in names]
