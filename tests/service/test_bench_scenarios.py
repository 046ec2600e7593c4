"""Every request the benchmarks drive answers 2xx on today's app.

bench/run.py counts a non-2xx answer as an error and still prints a req/s figure for it: a
route of the bench app that the app has outgrown (a response model with a new field, a
login that may no longer read the tables) turns into a fast table of errors, not a
failure. This sends each scenario's request once, as its wrk script does, to the bench
app served as the bench serves it (bench/harness.py), with the --naive and --layers routes.
"""

from __future__ import annotations

import secrets
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from taskmanager.postgres.embedded import EmbeddedPostgres

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

from harness import (  # noqa: E402
    Database,
    bench_server,
    log_in,
    read_pool,
    reset_pool,
    seed_database,
    seeded,
)
from scenarios import LAYERS, NAIVE, SCENARIOS, Scenario  # noqa: E402

pytestmark = pytest.mark.server
DATABASE = "taskmanager_bench_scenarios"


@pytest.fixture(scope="module")
def bench(embedded_server: EmbeddedPostgres | None) -> Iterator[dict[str, Any]]:
    """The bench app (floors, --naive and --layers routes) on a seeded database of its own."""
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
    env = {
        "TASKMANAGER_JWT_SECRET": secret,
        "BENCH_WORKSPACE_ID": str(ids.workspace_id),
        "BENCH_FLOOR_DATABASE_URL": database.admin_url,
        "BENCH_NAIVE": "1",
        "BENCH_LAYERS": "1",
    }
    try:
        with bench_server(database.app_url, 1, env) as (base, _process):
            yield {"base": base, "token": log_in(base), "task_id": ids.first_id}
    finally:
        embedded_server.drop_database(DATABASE)


def _send(bench: dict[str, Any], scenario: Scenario) -> httpx.Response:
    """The scenario's request as its wrk script sends it: a seeded task's id, the demo
    account's token (the login form goes without)."""
    from taskmanager.seed import DEMO_EMAIL, DEMO_PASSWORD

    url = bench["base"] + scenario.path.replace("{id}", str(bench["task_id"]))
    if scenario.form:
        return httpx.post(url, data={"username": DEMO_EMAIL, "password": DEMO_PASSWORD})
    headers = {"Authorization": f"Bearer {bench['token']}"}
    body = scenario.body.replace("{n}", "1") if scenario.body else None
    if body is not None:
        headers["Content-Type"] = "application/json"
    return httpx.request(scenario.method, url, content=body, headers=headers, timeout=30)


ALL = {s.name: s for s in (*SCENARIOS, *LAYERS)}


@pytest.mark.parametrize("name", list(ALL))
def test_every_scenario_answers_2xx(bench: dict[str, Any], name: str) -> None:
    response = _send(bench, ALL[name])
    assert response.is_success, (response.status_code, response.text[:500])


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
