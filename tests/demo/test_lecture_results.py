"""docs/lecture-results.md and .json, the committed record of `make lecture-results`, agree
with the demonstrations as they are now: every one listed, every verdict as predicted, and
the page rendered from the JSON it sits beside. (Regenerate with `make lecture-results`.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from taskmanager.demo.mistakes import record
from taskmanager.demo.mistakes.command import all_demonstrations
from taskmanager.demo.mistakes.report import AS_PREDICTED

DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((DOCS / "lecture-results.json").read_text("utf-8"))
    return loaded


def test_every_demonstration_is_recorded_as_predicted(document: dict[str, Any]) -> None:
    demonstrations = all_demonstrations()
    observations = document["observations"]
    assert [(o["number"], o["name"], o["title"], o["code"]) for o in observations] == [
        (d.number, d.name, d.title, d.code) for d in demonstrations
    ]
    assert document["all_as_predicted"] is True
    for observation in observations:
        assert observation["as_predicted"] is True, observation["name"]
        assert observation["verdict"] == AS_PREDICTED, observation["name"]
    # Mistake 1 says what happens today: psycopg2 refused at once, postgresql:// works.
    sync_driver = observations[0]
    assert sync_driver["facts"]["psycopg2 raised at"] == "create_async_engine()"
    assert (
        "requires an async driver"
        in sync_driver["facts"]["psycopg2 where installed (its dialect, is_async=False)"]
    )
    assert sync_driver["facts"]["postgresql:// SELECT 1"] == "1"
    assert len(sync_driver["corrections"]) == 2


def test_the_page_is_rendered_from_the_json_beside_it(document: dict[str, Any]) -> None:
    page = (DOCS / "lecture-results.md").read_text("utf-8")
    printed = record.printed_part(page)
    assert record.render(document, printed, "docs/lecture-results.json") == page
    # ... and quotes a run of the command that showed every panel and the summary.
    for demonstration in all_demonstrations():
        assert f"{demonstration.number}. {demonstration.title}" in printed
    assert printed.count(AS_PREDICTED) == len(all_demonstrations())
    assert "Summary" in printed
    for name, found in document["versions"].items():
        assert f"{name} {found}" in page
