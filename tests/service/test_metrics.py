"""/metrics: Prometheus numbers for operators, one truth across `serve --workers N`.

In-process (one process, metrics in memory): the route is absent without
TASKMANAGER_METRICS_TOKEN, refuses a missing or wrong token, stays out of the OpenAPI
document, and counts failed logins and database errors. Over a real socket: requests spread
over two `serve` workers are counted exactly once each, under route templates only.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from taskmanager.config import Settings
from taskmanager.main import create_app
from taskmanager.observability.metrics import REGISTRY, UNMATCHED
from tests.support.accounts import (
    PASSWORD,
    TEST_SECRET,
    Account,
    ServedLogin,
    register_over_http,
)
from tests.support.problems import assert_problem
from tests.support.processes import ServeProcess, clean_env, serve

METRICS_TOKEN = "metrics-token-for-the-tests-0123456789"
POOL_SIZE = 3
TASK_ROUTE = "/tasks/{task_id}"


def scrape(base_url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of GET /metrics, by name and labels."""
    response = httpx.get(
        f"{base_url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, timeout=30
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def route_templates(app: FastAPI) -> set[str]:
    """The app's route templates: the documented ones and those left out of the document."""
    undocumented = {"/metrics", "/openapi.json", "/docs", "/redoc", "/docs-assets"}
    return set(app.openapi()["paths"]) | undocumented


# ─── In-process: exposure, protection, what is counted


async def test_no_metrics_route_without_the_token_setting(
    app: FastAPI, client: AsyncClient
) -> None:
    assert app.state.settings.metrics_token is None
    response = await client.get("/metrics", headers={"Authorization": "Bearer anything"})
    assert_problem(response, 404)
    assert "/metrics" not in app.openapi()["paths"]


async def test_metrics_need_the_token_and_stay_out_of_the_openapi_document(
    settings: Settings,
) -> None:
    app = create_app(settings.model_copy(update={"metrics_token": SecretStr(METRICS_TOKEN)}))
    assert "/metrics" not in app.openapi()["paths"]
    async with AsyncClient(transport=ASGITransport(app=app), base_url="http://test") as http:
        missing = await http.get("/metrics")
        assert_problem(missing, 401)
        assert missing.headers["WWW-Authenticate"] == "Bearer"
        for wrong in (f"Bearer {METRICS_TOKEN}x", f"Bearer {METRICS_TOKEN[:-1]}", METRICS_TOKEN):
            refused = await http.get("/metrics", headers={"Authorization": wrong})
            assert_problem(refused, 401)
            assert METRICS_TOKEN not in refused.text
        await http.get("/health/live")
        await http.get("/no/such/path/42")
        shown = await http.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert shown.status_code == 200, shown.text
    samples = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(shown.text)
        for sample in family.samples
    }
    labels = {"method": "GET", "route": "/health/live", "status": "200"}
    assert value(samples, "taskmanager_http_requests_total", **labels) >= 1
    # The refused scrapes count under the route's template, with their status.
    refused_labels = {"method": "GET", "route": "/metrics", "status": "401"}
    assert value(samples, "taskmanager_http_requests_total", **refused_labels) >= 4
    unmatched = {"method": "GET", "route": UNMATCHED, "status": "404"}
    assert value(samples, "taskmanager_http_requests_total", **unmatched) >= 1
    assert not any(
        "/no/such" in dict(key)["route"] for name, key in samples if "route" in dict(key)
    )


def in_memory(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_failed_logins_are_counted_by_reason(
    client: AsyncClient, settings: Settings, account: Account
) -> None:
    failures = "taskmanager_login_failures_total"
    bad_before = in_memory(failures, reason="bad_credentials")
    limited_before = in_memory(failures, reason="too_many_attempts")
    wrong = {"username": "counted@example.com", "password": "not the password"}
    for _ in range(settings.login_failures_per_account_and_address):
        assert_problem(await client.post("/auth/token", data=wrong), 401)
    assert_problem(await client.post("/auth/token", data=wrong), 429)
    # A good login is not a failure.
    good = {"username": account.email, "password": PASSWORD}
    assert (await client.post("/auth/token", data=good)).status_code == 200

    assert in_memory(failures, reason="bad_credentials") - bad_before == (
        settings.login_failures_per_account_and_address
    )
    assert in_memory(failures, reason="too_many_attempts") - limited_before == 1


async def test_database_errors_are_counted_by_kind(client: AsyncClient, account: Account) -> None:
    errors = "taskmanager_database_errors_total"
    before = in_memory(errors, kind="integrity")
    assert (await client.post("/categories", json={"name": "Counted"})).status_code == 201
    again = await client.post("/categories", json={"name": "COUNTED"})
    assert_problem(again, 409, field="body.name")
    assert in_memory(errors, kind="integrity") - before == 1


# ─── Over a real socket: two workers, one truth


@dataclass(frozen=True)
class MetricsServer:
    server: ServeProcess
    metrics_dir: Path
    user: ServedLogin
    task_ids: list[int]


def metrics_dir_of(server: ServeProcess) -> Path:
    """The directory `serve` handed its workers (read from a worker's environment)."""
    server.remember_children()
    for child in server.children:
        directory = child.environ().get("PROMETHEUS_MULTIPROC_DIR")
        if directory:
            return Path(directory)
    raise AssertionError("no worker has PROMETHEUS_MULTIPROC_DIR:\n" + server.output())


def per_worker_requests(directory: Path, route: str) -> dict[int, float]:
    """GET `route` requests answered 200, as each worker wrote them in its own file."""
    counts = {}
    for path in directory.glob("counter_*.db"):
        pid = int(path.stem.rpartition("_")[2])
        total = 0.0
        for metric in MultiProcessCollector.merge([str(path)]):
            for sample in metric.samples:
                if sample.name == "taskmanager_http_requests_total" and sample.labels == {
                    "method": "GET",
                    "route": route,
                    "status": "200",
                }:
                    total += sample.value
        counts[pid] = total
    return counts


@pytest.fixture(scope="module")
def two_workers(
    make_database: Callable[[str], str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MetricsServer]:
    env = clean_env(
        DATABASE_URL=make_database("service_metrics_serve"),
        TASKMANAGER_JWT_SECRET=TEST_SECRET,
        TASKMANAGER_METRICS_TOKEN=METRICS_TOKEN,
        TASKMANAGER_POOL_SIZE=str(POOL_SIZE),
        TASKMANAGER_LOG_LEVEL="WARNING",
    )
    with serve(env, tmp_path_factory.mktemp("metrics"), "--workers", "2") as server:
        directory = metrics_dir_of(server)
        user = register_over_http(server.base_url, "counted@example.com")
        with httpx.Client(base_url=server.base_url, headers=user.headers, timeout=30) as http:
            task_ids = []
            for title in ("one", "two", "three"):
                created = http.post("/tasks", json={"title": title})
                assert created.status_code == 201, created.text
                task_ids.append(created.json()["id"])
        yield MetricsServer(server, directory, user, task_ids)
    assert not directory.exists(), "serve left its metrics directory behind"


def get_on_a_new_connection(base_url: str, path: str, headers: dict[str, str]) -> int:
    with httpx.Client(base_url=base_url, headers=headers, timeout=30) as http:
        return http.get(path).status_code


@pytest.mark.server
def test_requests_over_two_workers_are_counted_exactly_once(two_workers: MetricsServer) -> None:
    base_url = two_workers.server.base_url
    paths = [f"/tasks/{task_id}" for task_id in two_workers.task_ids]
    sent = 0
    # Fresh connections, 8 at a time: the kernel hands them to both workers. Batches go on
    # until each worker's own file shows some (almost always after the first).
    with ThreadPoolExecutor(max_workers=8) as pool:
        for _ in range(10):
            batch = [paths[i % len(paths)] for i in range(30)]
            statuses = list(
                pool.map(
                    lambda path: get_on_a_new_connection(base_url, path, two_workers.user.headers),
                    batch,
                )
            )
            assert statuses == [200] * len(batch)
            sent += len(batch)
            per_worker = per_worker_requests(two_workers.metrics_dir, TASK_ROUTE)
            if sum(1 for count in per_worker.values() if count > 0) >= 2:
                break
    assert sum(1 for count in per_worker.values() if count > 0) == 2, per_worker
    # A request is counted when the app has finished with it, after its last byte went out:
    # the client can hold the answer a moment before the worker's file shows it. Counts
    # settle to exactly what was sent (never more).
    deadline = time.monotonic() + 5
    while sum(per_worker.values()) < sent and time.monotonic() < deadline:
        time.sleep(0.05)
        per_worker = per_worker_requests(two_workers.metrics_dir, TASK_ROUTE)
    assert sum(per_worker.values()) == sent

    # Whichever worker answers the scrape reports them all: ask several times.
    for _ in range(6):
        samples = scrape(base_url)
        labels = {"method": "GET", "route": TASK_ROUTE, "status": "200"}
        assert value(samples, "taskmanager_http_requests_total", **labels) == sent
        histogram = {"method": "GET", "route": TASK_ROUTE}
        assert value(samples, "taskmanager_http_request_duration_seconds_count", **histogram) == (
            sent
        )
        # Both workers' pools, and no connection left lent out between requests.
        assert value(samples, "taskmanager_db_pool_size") == 2 * POOL_SIZE
        assert value(samples, "taskmanager_db_pool_checked_out") == 0


@pytest.mark.server
def test_route_labels_are_templates_never_paths(two_workers: MetricsServer) -> None:
    base_url = two_workers.server.base_url
    headers = two_workers.user.headers
    with httpx.Client(base_url=base_url, headers=headers, timeout=30) as http:
        assert http.get("/tasks/987654321").status_code == 404
        assert http.get("/no/such/thing/123456").status_code == 404
        assert http.request("BREW", "/tasks").status_code in (400, 405)
    samples = scrape(base_url)
    routes = {dict(labels)["route"] for _, labels in samples if "route" in dict(labels)}
    app = create_app(Settings(jwt_secret=TEST_SECRET, metrics_token=METRICS_TOKEN))
    assert routes <= route_templates(app) | {UNMATCHED}, routes
    assert not [route for route in routes if re.search(r"/\d", route)]
    missing_task = {"method": "GET", "route": TASK_ROUTE, "status": "404"}
    assert value(samples, "taskmanager_http_requests_total", **missing_task) >= 1
    unmatched = {"method": "GET", "route": UNMATCHED, "status": "404"}
    assert value(samples, "taskmanager_http_requests_total", **unmatched) >= 1
    methods = {dict(labels).get("method") for _, labels in samples} - {None}
    assert methods <= {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "OTHER"}


@pytest.mark.server
def test_metrics_refuse_a_wrong_token_and_count_failed_logins(
    two_workers: MetricsServer,
) -> None:
    base_url = two_workers.server.base_url
    assert_problem(httpx.get(f"{base_url}/metrics", timeout=30), 401)
    wrong = httpx.get(
        f"{base_url}/metrics", headers={"Authorization": "Bearer not-the-token"}, timeout=30
    )
    assert_problem(wrong, 401)
    assert wrong.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'

    failures = "taskmanager_login_failures_total"
    before = value(scrape(base_url), failures, reason="bad_credentials")
    attempt = {"username": two_workers.user.email, "password": "not the password"}
    for _ in range(3):  # under the limit of 5 per account and address: 401 each time
        assert_problem(httpx.post(f"{base_url}/auth/token", data=attempt, timeout=30), 401)
    after = value(scrape(base_url), failures, reason="bad_credentials")
    assert after - before == 3


@pytest.mark.server
def test_a_single_worker_serves_metrics_too(
    make_database: Callable[[str], str], tmp_path: Path
) -> None:
    """`serve` with one worker runs the app in its own process: the directory is set before
    prometheus_client is imported there too, so nothing goes uncounted."""
    temp = tmp_path / "tmp"  # where serve makes its metrics directory (tempfile: TMPDIR)
    temp.mkdir()
    env = clean_env(
        DATABASE_URL=make_database("service_metrics_one"),
        TASKMANAGER_JWT_SECRET=TEST_SECRET,
        TASKMANAGER_METRICS_TOKEN=METRICS_TOKEN,
        TASKMANAGER_LOG_LEVEL="WARNING",
        TMPDIR=str(temp),
    )
    with serve(env, tmp_path) as server:
        for _ in range(5):
            assert httpx.get(f"{server.base_url}/health/live", timeout=30).status_code == 200
        samples = scrape(server.base_url)
        labels = {"method": "GET", "route": "/health/live", "status": "200"}
        assert value(samples, "taskmanager_http_requests_total", **labels) == 5
        made = list(temp.glob("taskmanager-metrics-*"))
        assert len(made) == 1, made
        assert any(made[0].glob("counter_*.db")), "the worker wrote no metrics file"
    assert not made[0].exists(), "serve left its metrics directory behind"
