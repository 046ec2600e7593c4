"""Views: a task as GET shows it, read as plain rows (no ORM objects).

The fields are the response models' own (schemas.py), selected by name: the page, GET one
and the cached statements all read exactly what the answer shows, in ONE statement.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import JSON, bindparam, func, literal_column, select
from sqlalchemy.dialects.postgresql import aggregate_order_by

from taskmanager.models import Category, Label, Task, TaskLabel
from taskmanager.repositories.task_queries.filters import IN_SCOPE
from taskmanager.schemas import CategoryResponse, LabelResponse, TaskWithCategoryResponse

_TASKS = Task.__table__
_CATEGORIES = Category.__table__
_LABELS = Label.__table__
_TASK_LABELS = TaskLabel.__table__

# The fields a task answer shows are declared once, by the response models in schemas.py;
# a view reads exactly those columns, by name, and is a dict of them: {"id": ..., ...,
# "category": {"id": ..., "name": ...} or None, "labels": [{"id": ..., ...}, ...]}.
TASK_VIEW_FIELDS = tuple(
    name for name in TaskWithCategoryResponse.model_fields if name not in ("category", "labels")
)
CATEGORY_VIEW_FIELDS = tuple(CategoryResponse.model_fields)
LABEL_VIEW_FIELDS = tuple(LabelResponse.model_fields)
TaskView = dict[str, Any]

# A task's labels as one JSON array, in label order, computed per row by a correlated
# subquery (a probe of task_labels' primary key): the page and GET one stay ONE statement
# whatever the page size and the number of labels. Row-level security applies to
# task_labels and labels here too.
_LABELS_COLUMN = (
    select(
        func.coalesce(
            func.json_agg(
                aggregate_order_by(
                    func.json_build_object(
                        *(part for name in LABEL_VIEW_FIELDS for part in (name, _LABELS.c[name]))
                    ),
                    func.lower(_LABELS.c.name),
                    _LABELS.c.id,
                )
            ),
            literal_column("'[]'::json"),
            type_=JSON,
        )
    )
    .select_from(_TASK_LABELS.join(_LABELS, _LABELS.c.id == _TASK_LABELS.c.label_id))
    .where(_TASK_LABELS.c.task_id == _TASKS.c.id)
    .correlate(_TASKS)
    .scalar_subquery()
    .label("labels")
)

# Nothing that is only shown gets changed, so ORM objects, the identity map and the ORM's
# per-statement loading machinery would be pure overhead (~60 µs of CPU per request for one
# task): a view statement selects table columns and returns Core rows.
VIEW_COLUMNS = (
    *(_TASKS.c[name] for name in TASK_VIEW_FIELDS),
    *(_CATEGORIES.c[name].label(f"category_{name}") for name in CATEGORY_VIEW_FIELDS),
    _LABELS_COLUMN,
)
WITH_CATEGORY = _TASKS.outerjoin(_CATEGORIES, _CATEGORIES.c.id == _TASKS.c.category_id)
_CATEGORY_AT = len(TASK_VIEW_FIELDS)  # where the category's columns start in a view row
_LABELS_AT = _CATEGORY_AT + len(CATEGORY_VIEW_FIELDS)  # where the labels' JSON array is


def row_view(row: Sequence[Any]) -> TaskView:
    """A row of VIEW_COLUMNS (and maybe more after them) as a view: the names are the
    ones the columns were selected by, zipped with the row's values."""
    view = dict(zip(TASK_VIEW_FIELDS, row, strict=False))
    category = row[_CATEGORY_AT : _CATEGORY_AT + len(CATEGORY_VIEW_FIELDS)]
    view["category"] = (
        None if category[0] is None else dict(zip(CATEGORY_VIEW_FIELDS, category, strict=True))
    )
    view["labels"] = row[_LABELS_AT]
    return view


def shown_digest(view: TaskView) -> str | None:
    """A digest of the rows a task's answer shows besides its own (its category and its
    labels), or None when it shows none: a task's ETag carries it after its version, so a
    category or label renamed changes the ETag of every task that shows it (their versions
    stay: a task's version counts changes of the task)."""
    category = view["category"]
    labels = sorted(view["labels"], key=lambda label: label["id"])
    if category is None and not labels:
        return None
    shown = json.dumps([category, labels], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(shown.encode()).hexdigest()[:12]


def task_view(task: Task) -> TaskView:
    """The view of an ORM task (its category and labels loaded): what GET would show."""
    view = {name: getattr(task, name) for name in TASK_VIEW_FIELDS}
    category = task.category
    view["category"] = (
        None
        if category is None
        else {name: getattr(category, name) for name in CATEGORY_VIEW_FIELDS}
    )
    view["labels"] = [
        {name: getattr(label, name) for name in LABEL_VIEW_FIELDS} for label in task.labels
    ]
    return view


VIEW_BY_ID = (
    select(*VIEW_COLUMNS)
    .select_from(WITH_CATEGORY)
    .where(_TASKS.c.id == bindparam("task_id"), IN_SCOPE)
)
