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
from taskmanager.security.access_tokens import TokenGrant, TokenScope
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
    # The personal access token the request came with (then session_id is its id); None
    # for a login session.
    token: TokenGrant | None = None
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
        """What the caller may do in `workspace_id`: their role's actions, and for a
        personal access token only those its scopes allow too (as
        taskmanager_caller_permissions() says in the database; the token's workspace is
        the only one it can see)."""
        actions = self._role_actions_in(workspace_id)
        return actions if self.token is None else actions & self.token.actions()

    def _role_actions_in(self, workspace_id: int) -> frozenset[Action]:
        role = self.role_in(workspace_id)
        return frozenset() if role is None else PERMISSIONS[role]

    def allows(self, scope: TokenScope) -> bool:
        """Whether the request's credential allows `scope`: a login allows everything, a
        personal access token its scopes."""
        return self.token is None or self.token.allows(scope)

    def may(self, workspace_id: int, action: Action) -> bool:
        return action in self.actions_in(workspace_id)

    def require(self, workspace_id: int, action: Action) -> None:
        """ActionNotAllowedError (a 403 naming the roles that would do) unless the caller
        may do `action` in `workspace_id`."""
        if not self.may(workspace_id, action):
            if action in self._role_actions_in(workspace_id):  # the token's scopes refuse
                raise ActionNotAllowedError.for_scopes([TokenScope(action.value)])
            raise ActionNotAllowedError.for_action(action, self.role_in(workspace_id))

    def require_managing(self, workspace_id: int, role: Role) -> None:
        """ActionNotAllowedError unless the caller may give, change or remove a membership
        of `role` in `workspace_id` (taskmanager.security.roles.may_manage)."""
        if not may_manage(self.actions_in(workspace_id), role):
            role_actions = self._role_actions_in(workspace_id)
            if may_manage(role_actions, role):  # the token's scopes refuse
                missing = (PERMISSIONS[role] | {Action.MEMBERS_WRITE}) - self.actions_in(
                    workspace_id
                )
                raise ActionNotAllowedError.for_scopes(
                    [TokenScope(action.value) for action in missing], f"a membership as {role}"
                )
            raise ActionNotAllowedError.for_membership(role, self.role_in(workspace_id))

    def require_unbound(self, what: str) -> None:
        """ActionNotAllowedError for a personal access token bound to a workspace: it acts
        in that one only (`what` is refused)."""
        if self.token is not None and self.token.workspace_id is not None:
            raise ActionNotAllowedError(
                f"{what}: this access token is bound to workspace {self.token.workspace_id} "
                "and acts in no other"
            )

    def with_workspace(self, workspace_id: int, role: Role) -> Scope:
        """This scope after the caller joined `workspace_id` as `role` in this request."""
        return mint_scope(
            user_id=self.user_id,
            session_id=self.session_id,
            workspace_ids=(*self.workspace_ids, workspace_id),
            roles={**self.roles, workspace_id: role},
            personal_workspace_id=self.personal_workspace_id,
            valid_until=self.valid_until,
            token=self.token,
        )

    def workspace_for_new_row(self, workspace_id: int | None) -> int:
        """Where a new task, category or label goes: the workspace named, if the caller
        belongs to it (else a BadInputError naming the field) and their role there may
        write (else ActionNotAllowedError), or by default the caller's personal workspace
        (for a personal access token bound to a workspace, that one)."""
        if workspace_id is not None:
            chosen: int | None = workspace_id
        elif self.token is not None and self.token.workspace_id is not None:
            chosen = self.token.workspace_id
        else:
            chosen = self.personal_workspace_id
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
    token: TokenGrant | None = None,
) -> Scope:
    """For taskmanager.accounts.callers only (a test checks no other module calls it)."""
    return Scope(
        user_id=user_id,
        session_id=session_id,
        workspace_ids=workspace_ids,
        roles=MappingProxyType(dict(roles)),
        personal_workspace_id=personal_workspace_id,
        valid_until=valid_until,
        token=token,
        _minted_by=_MINT,
    )
