"""`taskmanager demo sync-trap`, run for real: a uvicorn server in its own process, on a fresh
migrated database of the test server, driven by concurrent bursts.

One run serves every assertion (10 concurrent requests x 100 ms, one repeat, a 1,5 sweep).
Speeds are only ever compared within that run, with wide margins: the lecture's claim is
a factor of about N (10 here), the assertions ask for 4 and 3.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from sqlalchemy.engine import make_url

from taskmanager.demo.sync_trap import app
from taskmanager.demo.sync_trap.command import (
    SyncTrapError,
    SyncTrapOptions,
    parse_sweep,
    resolve_pool_size,
    run_sync_trap,
)
from taskmanager.demo.sync_trap.measure import VARIANTS, waves
from taskmanager.demo.sync_trap.server import DemoServerError, demo_server
from taskmanager.demo.sync_trap.wiring import sync_database_url
from tests.support.databases import TEST_KEY, logins_of

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CONCURRENCY = 10


@pytest.fixture(scope="module")
def demo_run(
    make_database: Callable[[str], str], tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, Any], Path, str]:
    """results.json, the output directory and the terminal output of one demo run."""
    url = make_database("sync_trap")
    out = tmp_path_factory.mktemp("sync-trap")
    terminal = io.StringIO()
    options = SyncTrapOptions(
        concurrency=CONCURRENCY, delay_ms=100, repeat=1, out_dir=out, sweep=(1, 5)
    )
    outcome = run_sync_trap(
        options, logins_of(url), TEST_KEY, console=Console(file=terminal, width=120)
    )
    results = json.loads((out / "results.json").read_text())
    assert results == json.loads(json.dumps(outcome.results))
    return results, out, terminal.getvalue()


def summary(results: dict[str, Any], variant: str) -> dict[str, float]:
    values: dict[str, float] = results["variants"][variant]["summary"]
    return values


@pytest.mark.server
def test_trap_serialises_the_burst(demo_run: tuple[dict[str, Any], Path, str]) -> None:
    results, _, _ = demo_run
    trap, async_ = summary(results, "trap"), summary(results, "async")
    # One request at a time: the slowest waits for the 9 before it (about 10x).
    assert trap["slowest_ms"] >= 4 * async_["slowest_ms"], (trap, async_)
    # The loop was blocked: even /ping waited for the burst.
    assert trap["ping_ms"] >= 3 * async_["ping_ms"], (trap, async_)
    assert trap["ping_ms"] >= 3 * summary(results, "threadpool")["ping_ms"]


@pytest.mark.server
def test_results_hold_every_request(demo_run: tuple[dict[str, Any], Path, str]) -> None:
    results, _, _ = demo_run
    assert results["parameters"]["concurrency"] == CONCURRENCY
    assert results["server"]["thread_tokens"] >= 1
    assert set(results["variants"]) == {"trap", "threadpool", "async"}
    for name, variant in results["variants"].items():
        (run,) = variant["runs"]
        assert len(run["requests"]) == CONCURRENCY, name
        for request in run["requests"]:
            assert request["sent_ms"] <= request["first_byte_ms"] <= request["end_ms"]
            assert request["latency_ms"] > 0
            assert request["rows"] == 20, "the fresh database was seeded with 20 tasks"
            assert request["server"] is not None
        assert run["ping"]["latency_ms"] > 0
        assert run["clock_shared"], "server and driver should read one monotonic clock"
    # Where each variant's route ran: the trap and async on the event loop's thread.
    assert results["variants"]["trap"]["runs"][0]["threads"] == ["MainThread"]
    assert results["variants"]["async"]["runs"][0]["threads"] == ["MainThread"]
    assert "MainThread" not in results["variants"]["threadpool"]["runs"][0]["threads"]


@pytest.mark.server
def test_pictures_and_report_are_written(demo_run: tuple[dict[str, Any], Path, str]) -> None:
    results, out, terminal = demo_run
    for name in ("timeline.png", "sweep.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE), name
        assert len(data) > 20_000, f"{name} is suspiciously small ({len(data)} bytes)"
    report = (out / "report.md").read_text()
    assert "# The sync trap, measured" in report
    assert "Sweep" in report
    assert [point["concurrency"] for point in results["sweep"]["points"]] == [1, 5]
    # The lecture's diagram in the terminal: one row per request, and the /ping row.
    assert "Req 10" in terminal
    assert "/ping" in terminal


@pytest.mark.server
def test_demo_server_is_stopped(demo_run: tuple[dict[str, Any], Path, str]) -> None:
    results, _, _ = demo_run
    with pytest.raises(ProcessLookupError):
        os.kill(results["server"]["pid"], 0)


@pytest.mark.server
async def test_server_failing_to_start_shows_its_output() -> None:
    # Port 1 on the loopback: nothing listens, so the app's start-up check fails.
    url = "postgresql+asyncpg://nobody@127.0.0.1:1/nowhere"
    with (
        demo_server(url, pool_size=1, max_overflow=0, pool_timeout=1) as server,
        pytest.raises(DemoServerError) as raised,
    ):
        await server.wait_ready(within=30)
    assert "exited with code" in str(raised.value)
    assert "Connect" in str(raised.value) or "connect" in str(raised.value)
    assert server.process.returncode is not None


def test_sweep_is_parsed_sorted_and_bounded() -> None:
    assert parse_sweep("100, 1,10,50,10") == (1, 10, 50, 100)
    assert parse_sweep(None) == ()
    with pytest.raises(Exception, match="between 1 and"):
        parse_sweep("0,5")


def test_waves_name_the_bottleneck() -> None:
    # trap: every request is a wave; threadpool: waves of min(tokens, pool); async: of pool.
    assert waves("trap", 100, pool_total=50, thread_tokens=40) == 100
    assert waves("threadpool", 100, pool_total=50, thread_tokens=40) == 3
    assert waves("threadpool", 100, pool_total=10, thread_tokens=40) == 10
    assert waves("async", 100, pool_total=50, thread_tokens=40) == 2
    assert waves("async", 50, pool_total=50, thread_tokens=40) == 1


def test_pool_size_defaults_fit_the_server() -> None:
    assert resolve_pool_size(SyncTrapOptions(concurrency=10), available=97) == (10, None)
    assert resolve_pool_size(SyncTrapOptions(sweep=(1, 10, 50, 100)), available=97)[0] == 50
    # 100 concurrent: the default shrinks so both engines fit in max_connections.
    size, note = resolve_pool_size(SyncTrapOptions(concurrency=100), available=97)
    assert size == 57
    assert note is not None
    with pytest.raises(SyncTrapError, match="smaller --pool-size"):
        resolve_pool_size(SyncTrapOptions(concurrency=100, pool_size=100), available=97)


def test_sync_url_keeps_the_unix_socket() -> None:
    # SQLAlchemy renders the socket directory as host=%2Ftmp%2Fpg and decodes it on parsing.
    sync = make_url(sync_database_url("postgresql+asyncpg://postgres:@/taskmanager?host=/tmp/pg"))
    assert sync.drivername == "postgresql+psycopg"
    assert sync.database == "taskmanager"
    assert sync.query["host"] == "/tmp/pg"
    with_ssl = make_url(sync_database_url("postgresql+asyncpg://u:p@db/x?ssl=require"))
    assert dict(with_ssl.query) == {"sslmode": "require"}


def test_the_driver_calls_the_routes_the_app_declares() -> None:
    declared = {getattr(route, "path", None) for route in app.router.routes}
    assert {variant.path for variant in VARIANTS} <= declared
