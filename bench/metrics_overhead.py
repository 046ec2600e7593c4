"""What the metrics cost a request: RequestContextMiddleware around a do-nothing ASGI app,
with the metrics bookkeeping (route template, counter, histogram) on and off, in memory and in
prometheus_client's multiprocess mode (what `taskmanager serve` uses).

    .venv/bin/python bench/metrics_overhead.py            # in memory, then multiprocess
    .venv/bin/python bench/metrics_overhead.py --requests 200000

Each mode runs in a fresh interpreter (the mode is chosen when prometheus_client is imported).
No socket, no database: the difference between the two timings is what the middleware adds
per request for metrics (medians of 7 alternating rounds), and the bookkeeping alone is
timed in a tight loop too. Prints microseconds per request.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

ROUNDS = 7


def measure(requests: int) -> None:
    import logging

    from starlette.routing import Route

    from taskmanager import middleware
    from taskmanager.middleware import RequestContextMiddleware
    from taskmanager.observability import metrics

    logging.getLogger("taskmanager.access").setLevel(logging.WARNING)  # time metrics, not logs
    route = Route("/tasks/{task_id}", endpoint=lambda request: None)

    async def endpoint(scope: Any, receive: Any, send: Any) -> None:
        scope["route"] = route  # what the router leaves in the scope
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    app = RequestContextMiddleware(endpoint)

    async def receive() -> Any:
        return {"type": "http.request", "body": b""}

    async def send(message: Any) -> None:
        return None

    async def run(n: int) -> float:
        started = time.perf_counter()
        for i in range(n):
            scope = {
                "type": "http",
                "method": "GET",
                "path": f"/tasks/{i % 100}",
                "headers": [(b"authorization", b"Bearer x")],
                "client": ("127.0.0.1", 1234),
            }
            await app(scope, receive, send)
        return (time.perf_counter() - started) / n * 1e6

    real_record = metrics.record_request

    def no_record(method: str, route: str, status: int, seconds: float) -> None:
        return None

    # Rounds alternate which side goes first, so drift on a busy machine hits both alike.
    without: list[float] = []
    with_metrics: list[float] = []
    for round_number in range(ROUNDS):
        for on in (True, False) if round_number % 2 else (False, True):
            middleware.record_request = real_record if on else no_record  # type: ignore[assignment]
            (with_metrics if on else without).append(asyncio.run(run(requests)))
    middleware.record_request = real_record

    # The bookkeeping alone, in a tight loop: the part of the difference that is metrics.
    started = time.perf_counter()
    for i in range(requests):
        real_record("GET", metrics.route_template({"route": route}), 200, i * 1e-6)
    alone = (time.perf_counter() - started) / requests * 1e6

    mode = "multiprocess" if os.environ.get("PROMETHEUS_MULTIPROC_DIR") else "in memory"
    off, on = statistics.median(without), statistics.median(with_metrics)
    print(
        f"{mode:>12}: middleware {off:6.2f} µs/request without metrics, {on:6.2f} µs with "
        f"(+{on - off:.2f} µs); the bookkeeping alone: {alone:.2f} µs per request"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        measure(args.requests)
        return
    command = [sys.executable, __file__, "--child", "--requests", str(args.requests)]
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    subprocess.run(command, env=env, check=True)
    directory = tempfile.mkdtemp(prefix="taskmanager-metrics-bench-")
    try:
        subprocess.run(command, env=env | {"PROMETHEUS_MULTIPROC_DIR": directory}, check=True)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
