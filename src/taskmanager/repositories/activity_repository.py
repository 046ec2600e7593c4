"""ActivityRepository: reading the activity log, within the caller's Scope.

The log is written by PostgreSQL (migration 0011's trigger), never here: this repository
only reads it, newest first, a page at a time after a cursor's id."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, Integer, Select, bindparam, select, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.types import TypeEngine

from taskmanager.models import Activity
from taskmanager.repositories.array_parameters import in_scope
from taskmanager.security.scope import Scope

# The object type of a task's own changes (its labels' too: migration 0011's LOGGED).
TASK = "task"
# The only delete of the log (migration 0011): for a transaction entered for maintenance.
_PURGE = text("SELECT taskmanager_purge_activity(:kept_days)").bindparams(
    bindparam("kept_days", type_=Integer)
)
# What a page continues after: the last row's id (a cursor's key, as it binds).
CURSOR_KEY_TYPES: tuple[TypeEngine[Any], ...] = (BigInteger(),)


@dataclass(frozen=True, slots=True)
class ActivityFilters:
    """What a page of activity may be limited to; None means "any"."""

    workspace_id: int | None = None
    task_id: int | None = None
    actor_id: int | None = None
    kind: str | None = None


@dataclass(frozen=True, slots=True)
class ActivityPage:
    """Rows newest first; if more follow, the id of the last one shown (the next page
    starts after it)."""

    items: Sequence[Activity]
    next_after: int | None


class ActivityRepository:
    """Encapsulates all reads of the activity log, within the caller's Scope."""

    def __init__(self, session: AsyncSession, scope: Scope) -> None:
        self.session = session
        self.scope = scope

    async def page(
        self, filters: ActivityFilters, *, limit: int, after: int | None = None
    ) -> ActivityPage:
        """Up to `limit` rows matching `filters`, newest first, after the row `after` (a
        cursor's). Each filter reads its own index: a workspace's rows by (workspace_id,
        id), by actor or kind by (workspace_id, actor_id | kind, id), a task's by
        (object_type, object_id, id); so a page deep in the log reads about a page."""
        statement = self._statement(filters)
        if after is not None:
            statement = statement.where(Activity.id < after)
        rows = list((await self.session.scalars(statement.limit(limit + 1))).all())
        shown = rows[:limit]
        next_after = shown[-1].id if len(rows) > limit else None
        return ActivityPage(items=shown, next_after=next_after)

    def _statement(self, filters: ActivityFilters) -> Select[Activity]:
        statement = select(Activity).where(in_scope(Activity.workspace_id, self.scope))
        if filters.workspace_id is not None:
            statement = statement.where(Activity.workspace_id == filters.workspace_id)
        if filters.task_id is not None:
            statement = statement.where(
                Activity.object_type == TASK, Activity.object_id == str(filters.task_id)
            )
        if filters.actor_id is not None:
            statement = statement.where(Activity.actor_id == filters.actor_id)
        if filters.kind is not None:
            statement = statement.where(Activity.kind == filters.kind)
        return statement.order_by(Activity.id.desc())


async def purge_activity(session: AsyncSession, kept_days: int) -> int:
    """Delete the activity older than `kept_days` days (the transaction must have entered
    for maintenance: nothing else may delete a row of the log); returns how many."""
    return int((await session.execute(_PURGE, {"kept_days": kept_days})).scalar_one())


__all__ = [
    "CURSOR_KEY_TYPES",
    "ActivityFilters",
    "ActivityPage",
    "ActivityRepository",
    "purge_activity",
]
