"""A pytest plugin: the reliability log behind docs/reliability.md.

Fault and bad-input tests take the `reliability` fixture and record what they tried and what
the service answered; at the end of the run the rows are written (merged with earlier runs'
rows of tests that did not run now) for `scripts/reliability_report.py`. Registered in
tests/conftest.py through `pytest_plugins`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

RELIABILITY_RESULTS = Path(
    os.environ.get("TASKMANAGER_RELIABILITY_RESULTS", "build/reliability-results.json")
)
_reliability_entries: list[dict[str, object]] = []


class ReliabilityRecorder:
    """Records one row of docs/reliability.md: what was tried and what the service did."""

    def __init__(self, nodeid: str) -> None:
        self.nodeid = nodeid

    def record(self, area: str, case: str, answer: str, *, lost: bool | None = None) -> None:
        """`area` groups rows (e.g. "Faults"); `answer` is what the service answered;
        `lost` says whether any acknowledged write went missing (None: nothing written)."""
        _reliability_entries.append(
            {"test": self.nodeid, "area": area, "case": case, "answer": answer, "lost": lost}
        )


@pytest.fixture
def reliability(request: pytest.FixtureRequest) -> ReliabilityRecorder:
    return ReliabilityRecorder(request.node.nodeid)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    report = yield
    if report.when == "call" or (report.when == "setup" and report.failed):  # type: ignore[attr-defined]
        outcome = "passed" if report.passed else "failed"  # type: ignore[attr-defined]
        for entry in _reliability_entries:
            if entry["test"] == item.nodeid:
                entry["outcome"] = outcome
    return report


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Write what the reliability tests saw (merged with earlier runs' other tests)."""
    if not _reliability_entries:
        return
    merged: dict[str, list[dict[str, object]]] = {}
    if RELIABILITY_RESULTS.exists():
        for entry in json.loads(RELIABILITY_RESULTS.read_text()):
            merged.setdefault(str(entry["test"]), []).append(entry)
    fresh: dict[str, list[dict[str, object]]] = {}
    for entry in _reliability_entries:
        fresh.setdefault(str(entry["test"]), []).append(entry)
    merged.update(fresh)  # a test that ran now replaces its rows from earlier runs
    RELIABILITY_RESULTS.parent.mkdir(parents=True, exist_ok=True)
    rows = [entry for entries in merged.values() for entry in entries]
    RELIABILITY_RESULTS.write_text(json.dumps(rows, indent=2))
