"""LabelRepository: how labels are found, stored and changed, and which labels a task
may carry. Flushes, never commits."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Integer, any_, bindparam, func, select
from sqlalchemy.dialects.postgresql import ARRAY

from taskmanager.bad_input import BadInputError
from taskmanager.models import Label
from taskmanager.repositories.array_parameters import distinct_ids, scoped
from taskmanager.repositories.workspace_owned import WorkspaceOwnedRepository

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
        scoped(Label.workspace_id),
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
        scoped(Label.__table__.c.workspace_id),
    )
)


class LabelRepository(WorkspaceOwnedRepository[Label]):
    """Encapsulates all database operations for Labels, within the caller's Scope, and
    which labels a task may carry. Deleting a label takes it off every task that carried
    it (ON DELETE CASCADE)."""

    model = Label
    updatable_fields = frozenset({"name", "colour"})

    async def create(
        self, name: str, colour: str | None = None, workspace_id: int | None = None
    ) -> Label:
        """Create a label in `workspace_id` (default: the caller's personal workspace); a
        name taken there in any case fails the unique index at flush."""
        return await self._add(workspace_id, name=name, colour=colour)

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
                **self._in_scope,
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
        distinct = distinct_ids(label_ids)
        parameters = {"label_ids": distinct, **self._in_scope}
        found = (await self.session.execute(_COUNT_IN_SCOPE, parameters)).scalar_one()
        return bool(found == len(distinct))

    async def ensure_names(
        self, labels: Sequence[tuple[str, str | None]], workspace_id: int
    ) -> list[int]:
        """Create the labels (name, colour) that do not exist yet (any case) in
        `workspace_id`, one of the caller's; return the ids of all of them. For seeding."""
        return await self._ensure_named(
            [{"name": name, "colour": colour} for name, colour in labels], workspace_id
        )
