"""The cache's counters: counted by kind, shown on GET /metrics from the start, and added up
over the processes of `serve --workers N` like the service's other metrics."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from httpx import ASGITransport, AsyncClient
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from taskmanager.cache.metrics import (
    CACHE_KINDS,
    record_error,
    record_hit,
    record_invalidation,
    record_miss,
)
from taskmanager.config import Settings
from taskmanager.main import create_app
from taskmanager.observability.metrics import REGISTRY
from tests.support.accounts import TEST_SECRET
from tests.support.processes import clean_env

TOKEN = "metrics-token-for-the-cache-tests-0123456789"
COUNTERS = {
    "taskmanager_cache_hits_total": record_hit,
    "taskmanager_cache_misses_total": record_miss,
    "taskmanager_cache_errors_total": record_error,
    "taskmanager_cache_invalidations_total": record_invalidation,
}


def in_memory(name: str, kind: str) -> float:
    return REGISTRY.get_sample_value(name, {"kind": kind}) or 0.0


def test_kinds_are_the_fixed_set() -> None:
    assert CACHE_KINDS == ("task", "page", "count", "caller", "generation", "calendar")


@pytest.mark.parametrize("name", COUNTERS)
def test_each_call_counts_once_under_its_kind_only(name: str) -> None:
    record = COUNTERS[name]
    before = {kind: in_memory(name, kind) for kind in CACHE_KINDS}
    record("task")
    record("task")
    record("generation")
    after = {kind: in_memory(name, kind) for kind in CACHE_KINDS}
    assert {kind: after[kind] - before[kind] for kind in CACHE_KINDS} == {
        "task": 2,
        "page": 0,
        "count": 0,
        "caller": 0,
        "generation": 1,
        "calendar": 0,
    }


def test_an_unknown_kind_is_refused() -> None:
    with pytest.raises(KeyError):
        record_hit("tasks")  # type: ignore[arg-type]


async def test_they_are_on_get_metrics() -> None:
    app = create_app(Settings(jwt_secret=TEST_SECRET, metrics_token=TOKEN))
    record_miss("caller")
    async with AsyncClient(transport=ASGITransport(app=app), base_url="http://test") as http:
        first = await http.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        record_miss("caller")
        second = await http.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert first.status_code == second.status_code == 200

    def samples(text: str) -> dict[tuple[str, str], float]:
        return {
            (sample.name, sample.labels.get("kind", "")): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name.startswith("taskmanager_cache_")
        }

    shown = samples(first.text)
    # Every counter with every kind, from the start (at 0 until something is counted).
    for name in COUNTERS:
        for kind in CACHE_KINDS:
            assert (name, kind) in shown, (name, kind)
    miss = ("taskmanager_cache_misses_total", "caller")
    assert shown[miss] >= 1
    assert samples(second.text)[miss] - shown[miss] == 1


def test_counts_from_several_processes_add_up(tmp_path: Path) -> None:
    """As under `serve --workers 2`: each process writes its own file, a scrape sums them."""
    directory = tmp_path / "metrics"
    directory.mkdir()
    worker = textwrap.dedent(
        """
        from taskmanager.cache.metrics import record_error, record_hit
        for _ in range(3):
            record_hit("page")
        record_error("count")
        """
    )
    for _ in range(2):
        subprocess.run(
            [sys.executable, "-c", worker],
            env=clean_env(PROMETHEUS_MULTIPROC_DIR=str(directory)),
            check=True,
            timeout=60,
        )
    assert len(list(directory.glob("counter_*.db"))) == 2
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]

    def total(name: str, kind: str) -> float | None:
        return registry.get_sample_value(name, {"kind": kind})

    assert total("taskmanager_cache_hits_total", "page") == 6
    assert total("taskmanager_cache_errors_total", "count") == 2
    assert total("taskmanager_cache_invalidations_total", "task") == 0  # shown, at 0
