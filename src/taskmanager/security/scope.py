"""The caller's scope: which workspaces a request may see and the caller's role in each, as a
value repositories receive and cannot build themselves (the `AccessibleWorkspaces` idea of polar's
`AccessibleOrganizationID`).

Only `taskmanager.accounts.callers` mints one, from the memberships the database answers
when a transaction enters as the caller (for a request, once its access token is verified).
A repository that lists or fetches tenant rows takes a `Scope` and filters by it; code that
forgot one would not type-check, and a query that forgot the filter still meets
PostgreSQL's row-level security.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from taskmanager.bad_input import BadInputError
from taskmanager.security.roles import (
    PERMISSIONS,
    Action,
    ActionNotAllowedError,
    Role,
    may_manage,
)

_MINT = object()


@dataclass(frozen=True, slots=True)
class Scope:
    """Who is asking, the workspaces they may see during this request, and their role in
    each (what they may do there: taskmanager.security.roles)."""

    user_id: int
    session_id: uuid.UUID
    workspace_ids: tuple[int, ...]
    # workspace id -> the caller's role there, as the database answered on entering.
    roles: Mapping[int, Role] = field(hash=False)
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

    def role_in(self, workspace_id: int) -> Role | None:
        """The caller's role in `workspace_id`; None where they are no member."""
        return self.roles.get(workspace_id) if self.can_see(workspace_id) else None

    def actions_in(self, workspace_id: int) -> frozenset[Action]:
        """What the caller may do in `workspace_id`: their role's actions. (The one place
        a personal access token's scopes will narrow it, as taskmanager_caller_permissions()
        does in the database.)"""
        role = self.role_in(workspace_id)
        return frozenset() if role is None else PERMISSIONS[role]

    def may(self, workspace_id: int, action: Action) -> bool:
        return action in self.actions_in(workspace_id)

    def require(self, workspace_id: int, action: Action) -> None:
        """ActionNotAllowedError (a 403 naming the roles that would do) unless the caller
        may do `action` in `workspace_id`."""
        if not self.may(workspace_id, action):
            raise ActionNotAllowedError.for_action(action, self.role_in(workspace_id))

    def require_managing(self, workspace_id: int, role: Role) -> None:
        """ActionNotAllowedError unless the caller may give, change or remove a membership
        of `role` in `workspace_id` (taskmanager.security.roles.may_manage)."""
        if not may_manage(self.actions_in(workspace_id), role):
            raise ActionNotAllowedError.for_membership(role, self.role_in(workspace_id))

    def with_workspace(self, workspace_id: int, role: Role) -> Scope:
        """This scope after the caller joined `workspace_id` as `role` in this request."""
        return mint_scope(
            user_id=self.user_id,
            session_id=self.session_id,
            workspace_ids=(*self.workspace_ids, workspace_id),
            roles={**self.roles, workspace_id: role},
            personal_workspace_id=self.personal_workspace_id,
            valid_until=self.valid_until,
        )

    def workspace_for_new_row(self, workspace_id: int | None) -> int:
        """Where a new task, category or label goes: the workspace named, if the caller
        belongs to it (else a BadInputError naming the field) and their role there may
        write (else ActionNotAllowedError), or the caller's personal workspace."""
        chosen = self.personal_workspace_id if workspace_id is None else workspace_id
        if chosen is None or not self.can_see(chosen):
            raise BadInputError(
                "body.workspace_id", "you are not a member of a workspace with this id"
            )
        self.require(chosen, Action.TASKS_WRITE)
        return chosen


def mint_scope(
    *,
    user_id: int,
    session_id: uuid.UUID,
    workspace_ids: tuple[int, ...],
    roles: Mapping[int, Role],
    personal_workspace_id: int | None,
    valid_until: int,
) -> Scope:
    """For taskmanager.accounts.callers only (a test checks no other module calls it)."""
    return Scope(
        user_id=user_id,
        session_id=session_id,
        workspace_ids=workspace_ids,
        roles=MappingProxyType(dict(roles)),
        personal_workspace_id=personal_workspace_id,
        valid_until=valid_until,
        _minted_by=_MINT,
    )
