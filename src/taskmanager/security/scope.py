"""The caller's scope: which workspaces a request may see, as a value repositories receive
and cannot build themselves (the `AccessibleWorkspaces` idea of polar's
`AccessibleOrganizationID`).

Only `taskmanager.accounts.callers` mints one, from the memberships the database answers
when a transaction enters as the caller (for a request, once its access token is verified).
A repository that lists or fetches tenant rows takes a `Scope` and filters by it; code that
forgot one would not type-check, and a query that forgot the filter still meets
PostgreSQL's row-level security.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from taskmanager.bad_input import BadInputError

_MINT = object()


@dataclass(frozen=True, slots=True)
class Scope:
    """Who is asking, and the workspaces they may see (and own) during this request."""

    user_id: int
    session_id: uuid.UUID
    workspace_ids: tuple[int, ...]
    owned_workspace_ids: frozenset[int]
    personal_workspace_id: int | None
    # Until when the database lets this caller act (the access token's expiry): a flow
    # that ends its transaction early enters again with it (accounts.sessions'
    # change_password).
    valid_until: int
    _minted_by: object = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self._minted_by is not _MINT:
            raise TypeError("a Scope comes from the authenticated request, not from code")

    def can_see(self, workspace_id: int) -> bool:
        return workspace_id in self.workspace_ids

    def owns(self, workspace_id: int) -> bool:
        return workspace_id in self.owned_workspace_ids

    def with_workspace(self, workspace_id: int, *, owner: bool) -> Scope:
        """This scope after the caller joined `workspace_id` in this request."""
        return mint_scope(
            user_id=self.user_id,
            session_id=self.session_id,
            workspace_ids=(*self.workspace_ids, workspace_id),
            owned_workspace_ids=self.owned_workspace_ids | {workspace_id}
            if owner
            else self.owned_workspace_ids,
            personal_workspace_id=self.personal_workspace_id,
            valid_until=self.valid_until,
        )

    def workspace_for_new_row(self, workspace_id: int | None) -> int:
        """Where a new task or category goes: the workspace named, if the caller belongs to
        it (else a BadInputError naming the field), or the caller's personal workspace."""
        chosen = self.personal_workspace_id if workspace_id is None else workspace_id
        if chosen is None or not self.can_see(chosen):
            raise BadInputError(
                "body.workspace_id", "you are not a member of a workspace with this id"
            )
        return chosen


def mint_scope(
    *,
    user_id: int,
    session_id: uuid.UUID,
    workspace_ids: tuple[int, ...],
    owned_workspace_ids: frozenset[int],
    personal_workspace_id: int | None,
    valid_until: int,
) -> Scope:
    """For taskmanager.accounts.callers only (a test checks no other module calls it)."""
    return Scope(
        user_id=user_id,
        session_id=session_id,
        workspace_ids=workspace_ids,
        owned_workspace_ids=owned_workspace_ids,
        personal_workspace_id=personal_workspace_id,
        valid_until=valid_until,
        _minted_by=_MINT,
    )
