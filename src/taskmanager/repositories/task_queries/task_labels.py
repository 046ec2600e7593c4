"""A task's labels: replaced in ONE statement, read in label order."""

from __future__ import annotations

from sqlalchemy import Integer, all_, bindparam, delete, func, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert

from taskmanager.models import Label, TaskLabel
from taskmanager.repositories.label_repository import LABEL_ORDER

_TASK_LABELS = TaskLabel.__table__

# Replacing a task's labels: the rows of labels no longer wanted go, the wanted ones not
# there yet come (the two sets are disjoint, so the CTEs cannot conflict); the answer is
# how many rows changed.
_WANTED_LABEL_IDS = bindparam("label_ids", type_=ARRAY(Integer))
_GONE = (
    delete(TaskLabel)
    .where(
        _TASK_LABELS.c.task_id == bindparam("task_id"),
        _TASK_LABELS.c.label_id != all_(_WANTED_LABEL_IDS),
    )
    .returning(_TASK_LABELS.c.label_id)
    .cte("gone")
)
_ADDED = (
    pg_insert(TaskLabel)
    .from_select(
        ["task_id", "label_id", "workspace_id"],
        select(
            bindparam("task_id", type_=Integer),
            func.unnest(_WANTED_LABEL_IDS),
            bindparam("workspace_id", type_=Integer),
        ),
    )
    .on_conflict_do_nothing(index_elements=["task_id", "label_id"])
    .returning(_TASK_LABELS.c.label_id)
    .cte("added")
)
REPLACE_LABELS = select(
    select(func.count()).select_from(_GONE).scalar_subquery()
    + select(func.count()).select_from(_ADDED).scalar_subquery()
)
LABELS_OF = (
    select(Label)
    .join(TaskLabel, TaskLabel.label_id == Label.id)
    .where(TaskLabel.task_id == bindparam("task_id"))
    .order_by(*LABEL_ORDER)
)
