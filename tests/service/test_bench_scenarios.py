"""Every request the benchmarks drive answers 2xx on today's app, and the separate floor
answers what the app answers.

bench/run.py counts a non-2xx answer as an error and still prints a req/s figure for it: a
route of the bench app that the app has outgrown (a response model with a new field, a
login that may no longer read the tables) turns into a fast table of errors, not a
failure. This sends each scenario's request once, as its wrk script does, to the bench
app served as the bench serves it (bench/harness.py), with the --naive and --layers routes,
to the separate floor (bench/floor_app.py) for the scenarios measured on it, and to the app
with the cache on (the bench's own Redis) for the cache's scenarios, after the cache is
emptied and warmed as run.py does before each run.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from taskmanager.cache.local_redis import LocalRedisError
from taskmanager.postgres.embedded import EmbeddedPostgres

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load_bench(*names: str) -> list[ModuleType]:
    """bench/NAME.py for each name, loaded by path in that order. The bench modules import
    one another by bare name (harness.py: `from scenarios import Scenario`), so each one
    is in sys.modules under its name while the next loads; afterwards none is, and bench/
    never joins sys.path: no `harness` or `scenarios` for the rest of the test run."""
    before = {name: sys.modules.get(name) for name in names}
    loaded = []
    try:
        for name in names:
            spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
            assert spec is not None, name
            assert spec.loader is not None, name
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
            loaded.append(module)
    finally:
        for name, module in before.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    return loaded


scenarios, harness = _load_bench("scenarios", "harness")
Database = harness.Database
bench_server = harness.bench_server
log_in = harness.log_in
read_pool = harness.read_pool
reset_pool = harness.reset_pool
seed_database = harness.seed_database
seeded = harness.seeded
LAYERS, NAIVE, SCENARIOS = scenarios.LAYERS, scenarios.NAIVE, scenarios.SCENARIOS

pytestmark = pytest.mark.server
DATABASE = "taskmanager_bench_scenarios"


@pytest.fixture(scope="module")
def bench(
    embedded_server: EmbeddedPostgres | None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """The bench app (floors, --naive and --layers routes) on a seeded database of its own,
    the separate floor, and the app with the cache on (the bench's own Redis)."""
    if embedded_server is None:
        pytest.skip("needs the embedded test server to create a database of its own")
    embedded_server.drop_database(DATABASE)
    logins = embedded_server.logins(DATABASE)
    assert logins.owner is not None
    assert logins.superuser is not None
    database = Database(logins.service, logins.owner, logins.superuser, None)
    secret = secrets.token_urlsafe(48)
    seed_database(database, secret, 60, 5)
    ids = seeded(database.admin_url)
    env = {**harness.server_env(database, secret, ids), "BENCH_NAIVE": "1", "BENCH_LAYERS": "1"}
    floor_env = {**harness.floor_env(env), "BENCH_FLOOR_POOL_SIZE": "2"}
    try:
        with (
            _redis(tmp_path_factory.mktemp("bench")) as redis,
            bench_server(database.app_url, 1, env) as (base, _process),
            bench_server(database.app_url, 1, floor_env, app=harness.FLOOR_APP) as (
                floor,
                _floor_process,
            ),
            bench_server(database.app_url, 1, harness.cached_env(env, redis.url)) as (
                cached,
                _cached_process,
            ),
        ):
            yield {
                "base": base,
                "floor": floor,
                "cached": cached,
                "redis_url": redis.url,
                "token": log_in(base),
                "task_id": ids.first_id,
                "ids": ids,
            }
    finally:
        embedded_server.drop_database(DATABASE)


def _redis(directory: Path) -> Any:
    try:
        return harness.bench_redis(directory / "redis")
    except LocalRedisError as exc:  # no redis-server on this machine
        pytest.skip(str(exc))


def _send(
    bench: dict[str, Any], scenario: scenarios.Scenario, n: str = "1", host: str | None = None
) -> httpx.Response:
    """The scenario's request as its wrk script sends it: a seeded task's id, the demo
    account's token (the login form goes without); `host` in the Host header if given."""
    from taskmanager.seed import DEMO_EMAIL, DEMO_PASSWORD

    base = {"floor": bench["floor"], "cached": bench["cached"]}.get(scenario.server, bench["base"])
    ids = bench["ids"]
    task_id = harness.one_task(ids.first_id, ids.last_id) if scenario.ids == "one" else ids.first_id
    url = base + scenario.path.replace("{id}", str(task_id))
    if scenario.form:
        return httpx.post(url, data={"username": DEMO_EMAIL, "password": DEMO_PASSWORD})
    headers = {"Authorization": f"Bearer {bench['token']}"}
    if host is not None:
        headers["Host"] = host
    if scenario.cache is not None:  # emptied and warmed as before each run of run.py
        etag = harness.warm_cache(
            base, scenario, bench["token"], ids.first_id, ids.last_id, bench["redis_url"]
        )
        if scenario.if_none_match:
            headers["If-None-Match"] = etag
    body = scenario.body.replace("{n}", n) if scenario.body else None
    if body is not None:
        headers["Content-Type"] = "application/json"
    return httpx.request(scenario.method, url, content=body, headers=headers, timeout=30)


ALL = {s.name: s for s in (*SCENARIOS, *LAYERS)}


@pytest.mark.parametrize("name", list(ALL))
def test_every_scenario_answers_2xx(bench: dict[str, Any], name: str) -> None:
    """(The 304 scenario: 304, its point.)"""
    response = _send(bench, ALL[name])
    if ALL[name].if_none_match:
        assert response.status_code == 304, (response.status_code, response.text[:500])
        assert response.content == b""
    else:
        assert response.is_success, (response.status_code, response.text[:500])


@pytest.mark.parametrize("name", [s.name for s in scenarios.CACHE_HITS])
def test_a_cached_answer_is_the_uncached_apps(bench: dict[str, Any], name: str) -> None:
    """Hits answer what the app without a cache answers: the same body and headers, the
    same ETag for a task (a page's is a digest of its Link too, which names its server)."""
    cached_scenario = ALL[name]
    uncached = _send(bench, dataclasses.replace(cached_scenario, server="app", cache=None))
    uncached.raise_for_status()
    warmed = _send(bench, dataclasses.replace(cached_scenario, if_none_match=False))
    assert warmed.status_code == 200
    assert warmed.json() == uncached.json()
    assert warmed.headers.get("x-total-count") == uncached.headers.get("x-total-count")
    if "?" in cached_scenario.path:
        assert (
            _route_headers(warmed, bench["cached"])["link"]
            == (_route_headers(uncached, bench["base"])["link"])
        )
    else:
        assert warmed.headers["etag"] == uncached.headers["etag"]


def _wrk_run(
    bench: dict[str, Any], scenario: scenarios.Scenario, tmp_path: Path
) -> tuple[str, dict[str, float], dict[str, float]]:
    """One second of wrk with the scenario's script, after the cache is prepared for it:
    wrk's output, the cached server's counters before and after."""
    wrk = shutil.which("wrk")
    if wrk is None:
        pytest.skip("wrk is not installed")
    ids = bench["ids"]
    etag = harness.warm_cache(
        bench["cached"], scenario, bench["token"], ids.first_id, ids.last_id, bench["redis_url"]
    )
    script = harness.lua_script(scenario, ids.first_id, ids.last_id, bench["token"], tmp_path, etag)
    command = [wrk, "-t1", "-c4", "-d1s", "--latency", "-s", str(script), bench["cached"]]
    before = harness.cache_counters(bench["cached"])
    run = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
    return run.stdout, before, harness.cache_counters(bench["cached"])


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        (scenarios.CACHED_ONE_NAME, "task"),
        (scenarios.NOT_MODIFIED_NAME, "task"),
        (scenarios.CACHED_LIST_NAME, "page"),
    ],
)
def test_under_wrk_every_request_of_a_hit_scenario_hits(
    bench: dict[str, Any], name: str, kind: str, tmp_path: Path
) -> None:
    output, before, after = _wrk_run(bench, ALL[name], tmp_path)
    _rps, _p50, _p99, requests, errors = harness.parse_wrk(output)
    assert errors == 0, output
    assert after[f"misses:{kind}"] == before[f"misses:{kind}"]
    # at least every request wrk counted (one cut off at the end is not in `requests`)
    assert after[f"hits:{kind}"] - before[f"hits:{kind}"] >= requests


def test_under_wrk_every_request_of_the_miss_scenario_misses(
    bench: dict[str, Any], tmp_path: Path
) -> None:
    """Each request asks the next task (60 seeded: the walk wraps, so the cache is emptied
    first and only the first 60 requests are counted as misses for sure)."""
    output, before, after = _wrk_run(bench, ALL[scenarios.MISS_NAME], tmp_path)
    _rps, _p50, _p99, requests, errors = harness.parse_wrk(output)
    assert errors == 0, output
    misses = after["misses:task"] - before["misses:task"]
    assert misses >= min(requests, 60)


@pytest.mark.parametrize("name", [s.name for s in NAIVE])
def test_every_naive_scenario_answers_2xx_on_its_instrumented_pool(
    bench: dict[str, Any], name: str
) -> None:
    scenario = next(s for s in NAIVE if s.name == name)
    reset_pool(bench["base"], scenario)
    response = _send(bench, scenario)
    assert response.is_success, (response.status_code, response.text[:500])
    pool = read_pool(bench["base"], scenario)
    assert pool is not None
    assert len(pool["waits_ms"]) >= 1  # the request's checkout went through the queue


def test_the_layers_answer_what_the_real_route_answers(bench: dict[str, Any]) -> None:
    real = _send(bench, ALL["GET /tasks/{id}"]).json()
    for layer in LAYERS:
        assert _send(bench, layer).json() == real, layer.name


# The headers the app's middleware adds to every answer: the separate floor has none of it.
_MIDDLEWARE_HEADERS = {"x-request-id", "x-content-type-options", "cache-control", "date"}


def _route_headers(response: httpx.Response, base: str) -> dict[str, str]:
    """The headers a route sets, with the server's own address taken out of URLs."""
    return {
        name: value.replace(base, "<base>")
        for name, value in response.headers.items()
        if name not in _MIDDLEWARE_HEADERS
    }


@pytest.mark.parametrize("app_name", [s.name for s in scenarios.APP_SCENARIOS])
def test_the_separate_floor_answers_what_the_app_answers(
    bench: dict[str, Any], app_name: str
) -> None:
    """Same status, body and route headers (ETag, X-Total-Count, Link, Location), for the
    same request (sent with the same Host: the URLs in Link and Location, and so a page's
    ETag, name it). PATCH: the floor changes the title first, then the app is sent the same
    title (no change): both answer the task as the floor left it."""
    app = ALL[app_name]
    floor = ALL[app.baseline]
    assert floor.server == "floor", app.baseline
    host = "bench.test"
    if app.method == "PATCH":
        floor_answer = _send(bench, floor, n="by the floor", host=host)
        app_answer = _send(bench, app, n="by the floor", host=host)
    else:
        app_answer, floor_answer = _send(bench, app, host=host), _send(bench, floor, host=host)
    assert floor_answer.status_code == app_answer.status_code
    app_body, floor_body = app_answer.json(), floor_answer.json()
    app_headers = _route_headers(app_answer, f"http://{host}")
    floor_headers = _route_headers(floor_answer, f"http://{host}")
    if app.method == "POST":  # two new tasks: their own ids and times
        assert floor_headers.pop("location") == f"<base>/tasks/{floor_body['id']}"
        assert app_headers.pop("location") == f"<base>/tasks/{app_body['id']}"
        for body in (app_body, floor_body):
            for name in ("id", "created_at", "updated_at"):
                body.pop(name)
        for headers in (app_headers, floor_headers):
            headers.pop("content-length")
    assert floor_body == app_body
    assert floor_headers == app_headers
