"""`taskmanager db explain` names each list query the way the API spells it: the label of
a ListQuery is GET /tasks's query string (`label_id=1&label_id=2`, as the API takes a
repeated parameter), so a row of its table can be tried as it reads."""

from __future__ import annotations

from dataclasses import fields
from datetime import UTC, datetime
from urllib.parse import parse_qsl

from fastapi import FastAPI

from taskmanager.explain import ListQuery, Samples
from taskmanager.repositories.task_queries.filters import TaskFilters

SAMPLES = Samples(
    {
        "completed": False,
        "category_id": 3,
        "q": "milk",
        "workspace_id": 2,
        "due_before": datetime(2026, 12, 24, tzinfo=UTC),
        "due_after": datetime(2026, 12, 1, tzinfo=UTC),
        "overdue": True,
        "priority": "urgent",
        "label_ids": (1, 2),
    }
)


def test_every_filter_is_named_as_the_api_names_it(app: FastAPI) -> None:
    every = ListQuery(SAMPLES.filters(*(f.name for f in fields(TaskFilters))), "newest")
    parameters = parse_qsl(every.label)
    list_tasks = app.openapi()["paths"]["/tasks"]["get"]
    query = {p["name"] for p in list_tasks["parameters"] if p["in"] == "query"}
    assert {name for name, _ in parameters} <= query, every.label
    assert ("label_id", "1") in parameters
    assert ("label_id", "2") in parameters


def test_labels_are_repeated_as_the_api_takes_them() -> None:
    query = ListQuery(SAMPLES.filters("label_ids"), "due", "cursor")
    assert query.label == "sort=due&label_id=1&label_id=2 (cursor page)"
