"""LabelRepository: how labels are found, stored and changed, and which labels a task
may carry. Flushes, never commits."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Integer, Text, any_, bindparam, func, select, text
from sqlalchemy.dialects.postgresql import ARRAY, insert
from sqlalchemy.ext.asyncio import AsyncSession

from taskmanager.bad_input import BadInputError
from taskmanager.models import Label
from taskmanager.repositories.array_parameters import any_of, in_scope
from taskmanager.security.scope import Scope

# Columns a client may change through LabelRepository.update.
UPDATABLE_FIELDS = frozenset({"name", "colour"})

# A label's order wherever labels are listed: by name ignoring case, then by id.
LABEL_ORDER = (func.lower(Label.name), Label.id)


LABELS_NOT_IN_WORKSPACE = "no label of the task's workspace has this id"


class LabelsNotInWorkspaceError(BadInputError):
    """Some label ids name no label of the task's workspace (another workspace's, one the
    caller cannot see, or none at all): bad input about `body.label_ids`."""

    def __init__(self, label_ids: Sequence[int]) -> None:
        ids = ", ".join(str(label_id) for label_id in label_ids)
        super().__init__(
            "body.label_ids", f"{LABELS_NOT_IN_WORKSPACE}: {ids}", "label_not_in_workspace"
        )
        self.label_ids = list(label_ids)


# The labels among some ids that belong to one workspace, in label order: what a task in
# that workspace may carry, and what its answer shows.
_IN_WORKSPACE = (
    select(Label)
    .where(
        Label.id == any_(bindparam("label_ids", type_=ARRAY(Integer))),
        Label.workspace_id == bindparam("workspace_id"),
        # The caller's workspaces only (row-level security would hide the rest anyway).
        Label.workspace_id == any_(bindparam("workspace_ids", type_=ARRAY(Integer))),
    )
    .order_by(*LABEL_ORDER)
)


# How many of some (distinct) label ids name a label in the caller's workspaces: probes of
# the labels' primary key, nothing else read.
_COUNT_IN_SCOPE = (
    select(func.count())
    .select_from(Label.__table__)
    .where(
        Label.__table__.c.id == any_(bindparam("label_ids", type_=ARRAY(Integer))),
        Label.__table__.c.workspace_id == any_(bindparam("workspace_ids", type_=ARRAY(Integer))),
    )
)


class LabelRepository:
    """Encapsulates all database operations for Labels, within the caller's Scope."""

    def __init__(self, session: AsyncSession, scope: Scope) -> None:
        self.session = session
        self.scope = scope

    async def get_by_id(self, label_id: int, *, for_update: bool = False) -> Label | None:
        """Fetch a label; `for_update=True` locks its row until the transaction ends."""
        stmt = select(Label).where(Label.id == label_id, in_scope(Label.workspace_id, self.scope))
        if for_update:
            stmt = stmt.with_for_update()
        result = await self.session.execute(stmt)
        return result.scalar_one_or_none()

    async def get_all(self, workspace_id: int | None = None) -> list[Label]:
        """The caller's labels (of one workspace, if given) by name, ignoring case."""
        stmt = select(Label).where(in_scope(Label.workspace_id, self.scope)).order_by(*LABEL_ORDER)
        if workspace_id is not None:
            stmt = stmt.where(Label.workspace_id == workspace_id)
        result = await self.session.execute(stmt)
        return list(result.scalars().all())

    async def create(
        self, name: str, colour: str | None = None, workspace_id: int | None = None
    ) -> Label:
        """Create a label in `workspace_id` (default: the caller's personal workspace); a
        name taken there in any case fails the unique index at flush."""
        label = Label(
            name=name, colour=colour, workspace_id=self.scope.workspace_for_new_row(workspace_id)
        )
        self.session.add(label)
        await self.session.flush()
        return label

    async def update(self, label: Label, changes: Mapping[str, Any]) -> Label:
        """Apply `changes` (field -> new value); a name taken by another label of the
        workspace (any case) fails the unique index."""
        unknown = set(changes) - UPDATABLE_FIELDS
        if unknown:
            raise ValueError(f"cannot update {', '.join(sorted(unknown))}")
        for key, value in changes.items():
            setattr(label, key, value)
        if self.session.is_modified(label):
            label.version += 1  # a new state, a new ETag
        await self.session.flush()
        return label

    async def delete(self, label: Label) -> None:
        """Delete a label; PostgreSQL takes it off every task (ON DELETE CASCADE)."""
        await self.session.delete(label)
        await self.session.flush()

    async def in_workspace(self, label_ids: Sequence[int], workspace_id: int) -> list[Label]:
        """The labels `label_ids` name, in label order, if every one is a label of
        `workspace_id` the caller can see (one statement); else LabelsNotInWorkspaceError."""
        if not label_ids:
            return []
        result = await self.session.execute(
            _IN_WORKSPACE,
            {
                "label_ids": list(label_ids),
                "workspace_id": workspace_id,
                "workspace_ids": list(self.scope.workspace_ids),
            },
        )
        labels = list(result.scalars().all())
        if len(labels) != len(set(label_ids)):
            found = {label.id for label in labels}
            raise LabelsNotInWorkspaceError([i for i in label_ids if i not in found])
        return labels

    async def all_in_scope(self, label_ids: Sequence[int]) -> bool:
        """Whether every id names a label in one of the caller's workspaces (one statement,
        reading labels only)."""
        distinct = sorted(set(label_ids))
        parameters = {"label_ids": distinct, "workspace_ids": list(self.scope.workspace_ids)}
        found = (await self.session.execute(_COUNT_IN_SCOPE, parameters)).scalar_one()
        return bool(found == len(distinct))

    async def ensure_names(
        self, labels: Sequence[tuple[str, str | None]], workspace_id: int
    ) -> list[int]:
        """Create the labels (name, colour) that do not exist yet (any case) in
        `workspace_id`, one of the caller's; return the ids of all of them. For seeding."""
        workspace_id = self.scope.workspace_for_new_row(workspace_id)
        if labels:
            stmt = (
                insert(Label)
                .values(
                    [
                        {"name": name, "colour": colour, "workspace_id": workspace_id}
                        for name, colour in labels
                    ]
                )
                .on_conflict_do_nothing(index_elements=[Label.workspace_id, text("lower(name)")])
            )
            await self.session.execute(stmt)
        lowered = [name.lower() for name, _ in labels]
        result = await self.session.execute(
            select(Label.id)
            .where(
                Label.workspace_id == workspace_id, any_of(func.lower(Label.name), lowered, Text)
            )
            .order_by(Label.id)
        )
        return list(result.scalars().all())
