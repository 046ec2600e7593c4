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
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

from sqlalchemy import Select, Text, bindparam, func, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from taskmanager.models import Category, Label
from taskmanager.repositories.array_parameters import any_of, scope_parameters, scoped
from taskmanager.security.scope import Scope

# The models whose rows a workspace owns, each with an id, a workspace_id, a name unique in
# its workspace ignoring case, and a version: the next such model joins this list.
Row = TypeVar("Row", Category, Label)


@dataclass(frozen=True, slots=True)
class _Reads:
    """One model's reads, built once (so a request skips statement construction and
    cache-key generation): :row_id, :workspace_id and the Scope's ids bound per call."""

    by_id: Select[Any]
    by_id_for_update: Select[Any]
    # The caller's rows by name ignoring case, then by id; of one workspace.
    all: Select[Any]
    all_in_workspace: Select[Any]


def _build_reads(model: type[Category] | type[Label]) -> _Reads:
    by_id = select(model).where(model.id == bindparam("row_id"), scoped(model.workspace_id))
    listed = (
        select(model).where(scoped(model.workspace_id)).order_by(func.lower(model.name), model.id)
    )
    return _Reads(
        by_id=by_id,
        by_id_for_update=by_id.with_for_update(),
        all=listed,
        all_in_workspace=listed.where(model.workspace_id == bindparam("workspace_id")),
    )


class WorkspaceOwnedRepository(Generic[Row]):
    """All database operations for one kind of workspace-owned row, within the caller's
    Scope."""

    model: type[Row]
    # Columns a client may change through update().
    updatable_fields: ClassVar[frozenset[str]] = frozenset({"name"})
    # The model's reads, built once per subclass (when it is defined).
    _reads: ClassVar[_Reads]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "model" in cls.__dict__:
            cls._reads = _build_reads(cls.model)

    def __init__(self, session: AsyncSession, scope: Scope) -> None:
        self.session = session
        self.scope = scope
        self._in_scope = scope_parameters(scope)

    async def get_by_id(self, row_id: int, *, for_update: bool = False) -> Row | None:
        """Fetch one; `for_update=True` locks its row until the transaction ends."""
        reads = self._reads
        stmt = reads.by_id_for_update if for_update else reads.by_id
        result = await self.session.execute(stmt, {"row_id": row_id, **self._in_scope})
        row: Row | None = result.scalar_one_or_none()
        return row

    async def get_all(self, workspace_id: int | None = None) -> list[Row]:
        """The caller's rows (of one workspace, if given) by name, ignoring case."""
        if workspace_id is None:
            result = await self.session.execute(self._reads.all, self._in_scope)
        else:
            parameters = {"workspace_id": workspace_id, **self._in_scope}
            result = await self.session.execute(self._reads.all_in_workspace, parameters)
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
