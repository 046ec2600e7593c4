"""The tasks a calendar feed shows: those due since a moment (its window's start), in the
caller's workspaces, soonest first, at most a number of them; each as GET shows it (a
view: taskmanager.repositories.task_queries.views).

Served by ix_tasks_due_at_id (migration 0004): a range of it read in order, up to the cap.
"""

from __future__ import annotations

from sqlalchemy import DateTime, Integer, bindparam, select

from taskmanager.models import Task
from taskmanager.repositories.task_queries.filters import IN_SCOPE
from taskmanager.repositories.task_queries.views import VIEW_COLUMNS, WITH_CATEGORY

_TASKS = Task.__table__

DUE_SINCE = (
    select(*VIEW_COLUMNS)
    .select_from(WITH_CATEGORY)
    .where(IN_SCOPE, _TASKS.c.due_at >= bindparam("since", type_=DateTime(timezone=True)))
    .order_by(_TASKS.c.due_at, _TASKS.c.id)
    .limit(bindparam("most", type_=Integer))
)
