"""What the repositories of rows a workspace owns share (categories, labels, and the next).

Such a row is found only within the caller's Scope, created in one of the caller's
workspaces (the personal one by default), named uniquely in its workspace ignoring case,
listed by that name, and versioned for If-Match: a change that changes something bumps
`version`, a new ETag. The repository of one is a short subclass that names its model and
the columns a client may change; the tasks' repository stays hand-written, as the lecture
shows it. Flushes, never commits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Generic, TypeVar

from sqlalchemy import Text, func, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from taskmanager.models import Category, Label
from taskmanager.repositories.array_parameters import any_of, in_scope
from taskmanager.security.scope import Scope

# The models whose rows a workspace owns, each with an id, a workspace_id, a name unique in
# its workspace ignoring case, and a version: the next such model joins this list.
Row = TypeVar("Row", Category, Label)


class WorkspaceOwnedRepository(Generic[Row]):
    """All database operations for one kind of workspace-owned row, within the caller's
    Scope."""

    model: type[Row]
    # Columns a client may change through update().
    updatable_fields: ClassVar[frozenset[str]] = frozenset({"name"})

    def __init__(self, session: AsyncSession, scope: Scope) -> None:
        self.session = session
        self.scope = scope

    async def get_by_id(self, row_id: int, *, for_update: bool = False) -> Row | None:
        """Fetch one; `for_update=True` locks its row until the transaction ends."""
        stmt = select(self.model).where(
            self.model.id == row_id, in_scope(self.model.workspace_id, self.scope)
        )
        if for_update:
            stmt = stmt.with_for_update()
        result = await self.session.execute(stmt)
        return result.scalar_one_or_none()

    async def get_all(self, workspace_id: int | None = None) -> list[Row]:
        """The caller's rows (of one workspace, if given) by name, ignoring case."""
        stmt = (
            select(self.model)
            .where(in_scope(self.model.workspace_id, self.scope))
            .order_by(func.lower(self.model.name), self.model.id)
        )
        if workspace_id is not None:
            stmt = stmt.where(self.model.workspace_id == workspace_id)
        result = await self.session.execute(stmt)
        return list(result.scalars().all())

    async def _add(self, workspace_id: int | None, **values: Any) -> Row:
        """A new row in `workspace_id` (default: the caller's personal workspace); a name
        taken there in any case fails the unique index at flush."""
        row = self.model(workspace_id=self.scope.workspace_for_new_row(workspace_id), **values)
        self.session.add(row)
        await self.session.flush()
        return row

    async def update(self, row: Row, changes: Mapping[str, Any]) -> Row:
        """Apply `changes` (field -> new value); a name taken by another row of the
        workspace (any case) fails the unique index."""
        unknown = set(changes) - self.updatable_fields
        if unknown:
            raise ValueError(f"cannot update {', '.join(sorted(unknown))}")
        for key, value in changes.items():
            setattr(row, key, value)
        if self.session.is_modified(row):
            row.version += 1  # a new state, a new ETag
        await self.session.flush()
        return row

    async def delete(self, row: Row) -> None:
        """Delete a row (what PostgreSQL does to the rows that refer to it, the subclass
        says)."""
        await self.session.delete(row)
        await self.session.flush()

    async def _ensure_named(
        self, rows: Sequence[Mapping[str, Any]], workspace_id: int
    ) -> list[int]:
        """Create the rows (column -> value, a name among them) whose names do not exist
        yet (any case) in `workspace_id`, one of the caller's; the ids of all of them. For
        seeding."""
        workspace_id = self.scope.workspace_for_new_row(workspace_id)
        if rows:
            stmt = (
                insert(self.model)
                .values([{**row, "workspace_id": workspace_id} for row in rows])
                .on_conflict_do_nothing(
                    index_elements=[self.model.workspace_id, text("lower(name)")]
                )
            )
            await self.session.execute(stmt)
        lowered = [str(row["name"]).lower() for row in rows]
        result = await self.session.execute(
            select(self.model.id)
            .where(
                self.model.workspace_id == workspace_id,
                any_of(func.lower(self.model.name), lowered, Text),
            )
            .order_by(self.model.id)
        )
        return list(result.scalars().all())
