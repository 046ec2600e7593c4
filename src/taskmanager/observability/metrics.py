"""Numbers for operators: the Prometheus metrics and the `/metrics` route that shows them.

One process (tests, `uvicorn taskmanager.main:app`) keeps its metrics in memory. Under
`taskmanager serve`, PROMETHEUS_MULTIPROC_DIR names a private directory that `serve` made
empty before starting its workers (and removes when it stops): every worker writes its
values there (prometheus_client's multiprocess mode), and whichever worker answers a scrape
adds up all of them, so `--workers N` reports one truth.

The mode is chosen when prometheus_client is first imported, from that variable: `serve` sets
it before anything imports this module (`check_mode` stops start-up if that went wrong).

Labels are bounded: a request is counted under its route template (`/tasks/{task_id}`),
never its path, and a path no route matches under `<unmatched>`.
"""

from __future__ import annotations

import hmac
import os
from contextlib import suppress
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    values,
)
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.types import Scope

from taskmanager.problems import unauthorized_problem

MULTIPROC_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
UNMATCHED = "<unmatched>"

# Where this process's metrics live when there is no multiprocess directory.
REGISTRY = CollectorRegistry(auto_describe=True)

HTTP_REQUESTS = Counter(
    "taskmanager_http_requests",
    "HTTP requests answered, by method, route template and status.",
    ("method", "route", "status"),
    registry=REGISTRY,
)
HTTP_DURATION = Histogram(
    "taskmanager_http_request_duration_seconds",
    "Time from a request's arrival to the end of its answer, by method and route template.",
    ("method", "route"),
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=REGISTRY,
)
# livesum: the sum over the workers alive now (a dead worker's connections are gone).
POOL_CHECKED_OUT = Gauge(
    "taskmanager_db_pool_checked_out",
    "Database connections lent out by the pools right now (all workers).",
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
POOL_SIZE = Gauge(
    "taskmanager_db_pool_size",
    "Database connections the pools keep open at most without overflow (all workers).",
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
LOGIN_FAILURES = Counter(
    "taskmanager_login_failures",
    "Refused logins at POST /auth/token: wrong email or password (401), or too many "
    "attempts (429).",
    ("reason",),
    registry=REGISTRY,
)
DATABASE_ERRORS = Counter(
    "taskmanager_database_errors",
    "Database errors translated into answers, by kind.",
    ("kind",),
    registry=REGISTRY,
)

# Label children made once: the hot path then costs a dict lookup, not a label parse.
_request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_DIR_VARIABLE) or None


def check_mode() -> None:
    """Stop start-up if the multiprocess directory is set but the metrics were made before
    it was (they would stay in memory, and a scrape would show none of them)."""
    if multiprocess_dir() and values.ValueClass is values.MutexValue:
        raise RuntimeError(
            f"{MULTIPROC_DIR_VARIABLE} was set after prometheus_client was imported; "
            "set it before the process starts"
        )


def route_template(scope: Scope) -> str:
    """The template of the route that answered (`/tasks/{task_id}`), or `<unmatched>`."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED


def record_request(method: str, route: str, status: int, seconds: float) -> None:
    """Count one answered request and its duration (the middleware's only metrics call)."""
    key = (method, route, status)
    children = _request_children.get(key)
    if children is None:
        children = (
            HTTP_REQUESTS.labels(method, route, str(status)),
            HTTP_DURATION.labels(method, route),
        )
        _request_children[key] = children
    children[0].inc()
    children[1].observe(seconds)


def count_login_failure(reason: str) -> None:
    LOGIN_FAILURES.labels(reason).inc()


def count_database_error(kind: str) -> None:
    DATABASE_ERRORS.labels(kind).inc()


def instrument_pool(engine: AsyncEngine, pool_size: int) -> None:
    """Keep POOL_CHECKED_OUT and POOL_SIZE up to date from `engine`'s pool events; undone by
    `forget_pool`. Each event costs an increment, nothing on the way to the database."""
    POOL_SIZE.inc(pool_size)
    event.listen(engine.sync_engine, "checkout", _checked_out)
    event.listen(engine.sync_engine, "checkin", _checked_in)


def forget_pool(engine: AsyncEngine, pool_size: int) -> None:
    """After the engine was disposed: its connections no longer count."""
    event.remove(engine.sync_engine, "checkout", _checked_out)
    event.remove(engine.sync_engine, "checkin", _checked_in)
    POOL_SIZE.dec(pool_size)
    directory = multiprocess_dir()
    if directory:  # a worker that stops leaves no live gauge behind
        mark_process_dead(os.getpid(), directory)  # type: ignore[no-untyped-call]


def _checked_out(dbapi_connection: Any, record: Any, proxy: Any) -> None:
    POOL_CHECKED_OUT.inc()


def _checked_in(dbapi_connection: Any, record: Any) -> None:
    POOL_CHECKED_OUT.dec()


def _forget_dead_workers(directory: str) -> None:
    """Live gauges of workers that died without stopping cleanly (killed, crashed): uvicorn
    starts another one, and the dead one's connections must not count any more."""
    for path in Path(directory).glob("gauge_live*_*.db"):
        pid_text = path.stem.rpartition("_")[2]
        if not pid_text.isdigit():
            continue
        try:
            os.kill(int(pid_text), 0)
        except ProcessLookupError:
            mark_process_dead(int(pid_text), directory)  # type: ignore[no-untyped-call]
        except PermissionError:  # alive, someone else's: not ours to judge
            continue


def exposition() -> bytes:
    """Every metric in the Prometheus text format: this process's, or all workers'."""
    directory = multiprocess_dir()
    if directory is None:
        return generate_latest(REGISTRY)
    with suppress(OSError):
        _forget_dead_workers(directory)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    return generate_latest(registry)


def install_metrics_route(app: FastAPI, token: str | None) -> None:
    """GET /metrics behind `Authorization: Bearer <token>`; with no token, no route (404).

    Left out of the OpenAPI document: it is for the operator's scraper, not for clients."""
    if not token:
        return
    expected = f"Bearer {token}".encode()

    async def metrics(request: Request) -> Response:
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            problem, headers = unauthorized_problem(
                "/metrics needs the metrics token as a bearer token", token_given=bool(given)
            )
            return problem.response(headers)
        return Response(exposition(), media_type=CONTENT_TYPE_LATEST)

    app.add_api_route("/metrics", metrics, methods=["GET"], include_in_schema=False)
