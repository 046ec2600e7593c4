"""`taskmanager cache stats` and `cache flush`, run as an operator runs them: a subprocess
with its own environment, against the test run's own Redis."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from redis import Redis

from taskmanager.cache.local_redis import redis_server_binary, start_local_redis
from taskmanager.cache.namespace import cache_namespace, local_redis_directory
from taskmanager.config import Settings
from tests.support.processes import clean_env, free_port
from tests.support.redis import REDIS_MISSING

NAMESPACE = "tm-cli-test"
TOKEN = "metrics-token-for-the-cache-cli-0123456789"


def run_cache(*args: str, cwd: Path, **settings: str | None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "taskmanager", "cache", *args],
        env=clean_env(**settings),
        cwd=cwd,  # not the project root: its .env must not leak into the test
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def fill(redis_url: str, keys: dict[str, str]) -> None:
    with Redis.from_url(redis_url) as client:
        client.mset(keys)


def keys_in(redis_url: str) -> set[str]:
    with Redis.from_url(redis_url) as client:
        return {key.decode() for key in client.scan_iter(count=1000)}


# Ours under NAMESPACE, and keys a flush of NAMESPACE must leave alone: another deployment's,
# one whose prefix merely starts the same, and the bare prefix without its colon.
OURS = {
    f"{NAMESPACE}:task:1:7": "a",
    f"{NAMESPACE}:task:1:8": "b",
    f"{NAMESPACE}:task:2:9": "c",
    f"{NAMESPACE}:page:1:abc": "d",
    f"{NAMESPACE}:page:1:def": "e",
    f"{NAMESPACE}:generation:1": "3",
    f"{NAMESPACE}:lock:1": "x",  # a kind the counters do not know is still ours
}
THEIRS = {
    "tm-other:task:1:7": "a",
    f"{NAMESPACE}x:task:1:7": "b",
    NAMESPACE: "c",
    "unrelated": "d",
}


def stats_rows(stdout: str) -> dict[str, list[str]]:
    """The table's rows: kind -> [keys, hits, misses, errors, invalidations]."""
    rows = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) == 6 and re.fullmatch(r"\d+", parts[1]):
            rows[parts[0]] = parts[1:]
    return rows


# ─── flush


def test_flush_deletes_this_namespace_and_nothing_else(redis_url: str, tmp_path: Path) -> None:
    fill(redis_url, OURS | THEIRS)
    result = run_cache(
        "flush", cwd=tmp_path, TASKMANAGER_REDIS_URL=redis_url, TASKMANAGER_CACHE_PREFIX=NAMESPACE
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"flushed {len(OURS)} keys of {NAMESPACE} at {redis_url}"
    # Left: the others' keys, and this namespace's new epoch, which voided every entry at once.
    assert keys_in(redis_url) == {*THEIRS, f"{NAMESPACE}:epoch"}

    again = run_cache(
        "flush", cwd=tmp_path, TASKMANAGER_REDIS_URL=redis_url, TASKMANAGER_CACHE_PREFIX=NAMESPACE
    )
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("flushed 0 keys")


def test_flush_of_a_big_namespace_shows_progress(redis_url: str, tmp_path: Path) -> None:
    many = 25_000
    with Redis.from_url(redis_url) as client:
        for start in range(0, many, 5000):
            client.mset({f"{NAMESPACE}:task:1:{n}": "v" for n in range(start, start + 5000)})
        client.set("tm-other:task:1:1", "kept")
    result = run_cache(
        "flush", cwd=tmp_path, TASKMANAGER_REDIS_URL=redis_url, TASKMANAGER_CACHE_PREFIX=NAMESPACE
    )
    assert result.returncode == 0, result.stderr
    assert f"flushed {many} keys" in result.stdout
    assert "10,000 keys deleted so far" in result.stderr
    assert "20,000 keys deleted so far" in result.stderr
    assert keys_in(redis_url) == {"tm-other:task:1:1", f"{NAMESPACE}:epoch"}


# ─── stats


def test_stats_counts_keys_by_kind_in_this_namespace(redis_url: str, tmp_path: Path) -> None:
    fill(redis_url, OURS | THEIRS)
    port = free_port()  # nobody serves there: the app's counters are said to be missing
    result = run_cache(
        "stats",
        "--server",
        f"http://127.0.0.1:{port}",
        cwd=tmp_path,
        TASKMANAGER_REDIS_URL=redis_url,
        TASKMANAGER_CACHE_PREFIX=NAMESPACE,
        TASKMANAGER_METRICS_TOKEN=TOKEN,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"cache {NAMESPACE} at {redis_url}\n")
    rows = stats_rows(result.stdout)
    keys = {kind: int(row[0]) for kind, row in rows.items()}
    assert keys == {
        "task": 3,
        "page": 2,
        "count": 0,
        "caller": 0,
        "generation": 1,
        "calendar": 0,
        "lock": 1,
        "all": len(OURS),
    }
    assert rows["task"][1:] == ["-"] * 4
    assert re.search(r"^Redis: used memory \S+ \(limit 64\.00M, allkeys-lru\)", result.stdout, re.M)
    assert f"http://127.0.0.1:{port}/metrics unreachable" in result.stdout
    assert "Traceback" not in result.stderr
    assert keys_in(redis_url) == set(OURS) | set(THEIRS)  # looking changes nothing


class MetricsServer:
    """A stand-in for a running server's /metrics: canned cache counters behind a token."""

    BODY = "\n".join(
        [
            "# TYPE taskmanager_cache_hits counter",
            'taskmanager_cache_hits_total{kind="task"} 7.0',
            'taskmanager_cache_hits_created{kind="task"} 1.7e9',
            'taskmanager_cache_hits_total{kind="page"} 2.0',
            "# TYPE taskmanager_cache_misses counter",
            'taskmanager_cache_misses_total{kind="task"} 3.0',
            "# TYPE taskmanager_cache_errors counter",
            'taskmanager_cache_errors_total{kind="caller"} 1.0',
            "# TYPE taskmanager_cache_invalidations counter",
            'taskmanager_cache_invalidations_total{kind="generation"} 4.0',
            "# TYPE taskmanager_http_requests counter",
            'taskmanager_http_requests_total{method="GET",route="/tasks",status="200"} 99.0',
            "",
        ]
    ).encode()

    def __init__(self) -> None:
        self.authorizations: list[str | None] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.authorizations.append(self.headers.get("Authorization"))
                ok = self.path == "/metrics" and self.headers.get("Authorization") == (
                    f"Bearer {TOKEN}"
                )
                self.send_response(200 if ok else 401)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.end_headers()
                if ok:
                    self.wfile.write(outer.BODY)

            def log_message(self, *args: object) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"


@pytest.fixture
def metrics_server() -> Iterator[MetricsServer]:
    server = MetricsServer()
    thread = threading.Thread(target=server.http.serve_forever, daemon=True)
    thread.start()
    yield server
    server.http.shutdown()
    server.http.server_close()
    thread.join(5)


def test_stats_show_the_servers_counters(
    redis_url: str, tmp_path: Path, metrics_server: MetricsServer
) -> None:
    fill(redis_url, OURS)
    result = run_cache(
        "stats",
        "--server",
        metrics_server.url,
        cwd=tmp_path,
        TASKMANAGER_REDIS_URL=redis_url,
        TASKMANAGER_CACHE_PREFIX=NAMESPACE,
        TASKMANAGER_METRICS_TOKEN=TOKEN,
    )
    assert result.returncode == 0, result.stderr
    assert metrics_server.authorizations == [f"Bearer {TOKEN}"]
    rows = stats_rows(result.stdout)
    # kind: keys, hits, misses, errors, invalidations
    assert rows["task"] == ["3", "7", "3", "0", "0"]
    assert rows["page"] == ["2", "2", "0", "0", "0"]
    assert rows["caller"] == ["0", "0", "0", "1", "0"]
    assert rows["generation"] == ["1", "0", "0", "0", "4"]
    assert rows["all"] == [str(len(OURS)), "9", "3", "1", "4"]
    assert f"app counters: {metrics_server.url}/metrics (all workers" in result.stdout


def test_stats_say_why_the_counters_are_missing(
    redis_url: str, tmp_path: Path, metrics_server: MetricsServer
) -> None:
    common = {"TASKMANAGER_REDIS_URL": redis_url, "TASKMANAGER_CACHE_PREFIX": NAMESPACE}
    no_token = run_cache("stats", "--server", metrics_server.url, cwd=tmp_path, **common)
    assert no_token.returncode == 0, no_token.stderr
    assert "needs TASKMANAGER_METRICS_TOKEN" in no_token.stdout
    assert metrics_server.authorizations == []  # nothing was sent without a token

    wrong = run_cache(
        "stats",
        "--server",
        metrics_server.url,
        cwd=tmp_path,
        TASKMANAGER_METRICS_TOKEN="not-the-servers-token",
        **common,
    )
    assert wrong.returncode == 0, wrong.stderr
    assert "the server refused TASKMANAGER_METRICS_TOKEN" in wrong.stdout
    assert "not-the-servers-token" not in wrong.stdout + wrong.stderr


# ─── When there is no Redis to talk to: one line, exit code 1, no traceback


@pytest.mark.parametrize("command", ["stats", "flush"])
def test_a_stopped_redis_is_one_line(
    command: str,
    redis_url: str,
    tmp_path: Path,
    stopped_redis: Callable[[], AbstractContextManager[None]],
) -> None:
    with stopped_redis():
        result = run_cache(command, cwd=tmp_path, TASKMANAGER_REDIS_URL=redis_url)
    assert result.returncode == 1
    assert result.stderr.startswith(f"cannot reach Redis at {redis_url}: ")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("command", ["stats", "flush"])
@pytest.mark.parametrize(
    ("settings", "said"),
    [
        ({"TASKMANAGER_REDIS_URL": "off"}, "the cache is off (TASKMANAGER_REDIS_URL=off)"),
        (
            {"DATABASE_URL": "postgresql://svc@db.example.com/tasks"},
            "no cache: with DATABASE_URL set, the cache needs TASKMANAGER_REDIS_URL",
        ),
    ],
)
def test_no_redis_configured_is_one_line(
    command: str, settings: dict[str, str], said: str, tmp_path: Path
) -> None:
    result = run_cache(command, cwd=tmp_path, **settings)
    assert result.returncode == 1
    assert result.stderr.strip() == said


def test_the_embedded_default_without_its_redis_says_so(tmp_path: Path) -> None:
    data_dir = tmp_path / "pgdata"
    result = run_cache("flush", cwd=tmp_path, TASKMANAGER_DATA_DIR=str(data_dir))
    assert result.returncode == 1
    assert result.stderr.startswith(f"no local Redis is running in {tmp_path.resolve()}/redis")
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(redis_server_binary() is None, reason=REDIS_MISSING)
def test_the_embedded_default_finds_the_redis_serve_starts(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Where `serve` starts it (beside the data directory), under the namespace of that
    data directory, with nothing set but TASKMANAGER_DATA_DIR."""
    parent = tmp_path_factory.mktemp("e")
    data_dir = parent / "pgdata"
    settings = Settings(_env_file=None, data_dir=data_dir)  # type: ignore[call-arg]
    local = start_local_redis(local_redis_directory(settings))
    try:
        namespace = cache_namespace(settings)
        fill(local.url, {f"{namespace}:task:1:1": "a", "tm-other:task:1:1": "b"})
        stats = run_cache("stats", cwd=parent, TASKMANAGER_DATA_DIR=str(data_dir))
        assert stats.returncode == 0, stats.stderr
        assert stats.stdout.startswith(f"cache {namespace} at {local.url}\n")
        assert stats_rows(stats.stdout)["task"][0] == "1"
        flushed = run_cache("flush", cwd=parent, TASKMANAGER_DATA_DIR=str(data_dir))
        assert flushed.returncode == 0, flushed.stderr
        assert flushed.stdout.startswith("flushed 1 key of")
        assert keys_in(local.url) == {"tm-other:task:1:1", f"{namespace}:epoch"}
    finally:
        local.stop()


def test_help_lists_both_commands(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "taskmanager", "--help"],
        env=clean_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert re.search(r"^\W*cache\s{2,}\S", result.stdout, re.M), result.stdout
    cache_help = run_cache("--help", cwd=tmp_path)
    assert cache_help.returncode == 0, cache_help.stderr
    for command in ("stats", "flush"):
        assert re.search(rf"^\W*{command}\s{{2,}}\S", cache_help.stdout, re.M), cache_help.stdout
