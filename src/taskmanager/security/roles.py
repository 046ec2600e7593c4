"""The roles of a workspace and what each may do: the one matrix both layers read.

The routes ask the caller's `Scope` (`Scope.may`), which looks a role up here; PostgreSQL's
policies read the same matrix from the table `role_permissions`, which a migration seeds
with these values (a test compares the two, so the matrix cannot change here without a
migration that changes the table).

The action names are what personal access tokens carry as their scopes
(taskmanager.security.access_tokens): what a token may do in a workspace is its role's
actions and the token's scopes together (the one place for that in Python is
`Scope.actions_in`; in SQL, `taskmanager_caller_permissions()`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum
from types import MappingProxyType


class Role(StrEnum):
    """A member's role in a workspace, weakest first."""

    VIEWER = "viewer"
    MEMBER = "member"
    ADMIN = "admin"
    OWNER = "owner"


class Action(StrEnum):
    """What a role may do in its workspace."""

    # See the workspace, its members, its tasks, categories and labels.
    TASKS_READ = "tasks:read"
    # Create, change and delete tasks, categories, labels and which labels a task carries.
    TASKS_WRITE = "tasks:write"
    # Add members, change their roles, remove them (and, later, invite).
    MEMBERS_WRITE = "members:write"
    # Rename, delete and transfer the workspace.
    WORKSPACES_WRITE = "workspaces:write"


PERMISSIONS: Mapping[Role, frozenset[Action]] = MappingProxyType(
    {
        Role.VIEWER: frozenset({Action.TASKS_READ}),
        Role.MEMBER: frozenset({Action.TASKS_READ, Action.TASKS_WRITE}),
        Role.ADMIN: frozenset({Action.TASKS_READ, Action.TASKS_WRITE, Action.MEMBERS_WRITE}),
        Role.OWNER: frozenset(Action),
    }
)
ROLES: tuple[Role, ...] = tuple(Role)


def actions_of(role: Role) -> frozenset[Action]:
    return PERMISSIONS[role]


def roles_allowing(action: Action) -> tuple[Role, ...]:
    """The roles that may do `action`, weakest first."""
    return tuple(role for role in ROLES if action in PERMISSIONS[role])


def owns(role: Role) -> bool:
    """Whether `role` is an owner's: it may rename, delete and transfer the workspace."""
    return Action.WORKSPACES_WRITE in actions_of(role)


def may_manage(actions: frozenset[Action], role: Role) -> bool:
    """Whether someone who may do `actions` in a workspace may give a membership `role`
    there, or change or remove a membership that has it: with members:write, and only a
    role that can do nothing they cannot (so an admin never makes, unmakes or removes an
    owner; an owner manages every role)."""
    return Action.MEMBERS_WRITE in actions and PERMISSIONS[role] <= actions


def roles_managing(role: Role) -> tuple[Role, ...]:
    """The roles that may manage memberships of `role` (see may_manage), weakest first."""
    return tuple(r for r in ROLES if may_manage(PERMISSIONS[r], role))


def _either(names: Iterable[str], joined_by: str = "or") -> str:
    listed = [str(name) for name in names]
    return listed[0] if len(listed) == 1 else f"{', '.join(listed[:-1])} {joined_by} {listed[-1]}"


def needs_role(roles: Iterable[Role], yours: Role | None) -> str:
    """What a refusal says: which roles would do, and the caller's."""
    return f"this needs the role {_either(roles)} in this workspace; yours is {yours or 'none'}"


class ActionNotAllowedError(Exception):
    """The caller's role in a workspace they can see does not allow what they asked: a 403
    naming the roles that would."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    @classmethod
    def for_action(cls, action: Action, yours: Role | None) -> ActionNotAllowedError:
        return cls(needs_role(roles_allowing(action), yours))

    @classmethod
    def for_scopes(cls, scopes: Iterable[str], what: str = "this") -> ActionNotAllowedError:
        """Refused because the request's personal access token lacks `scopes` (its role
        would allow it)."""
        names = sorted(scopes)
        noun = "scope" if len(names) == 1 else "scopes"
        return cls(f"{what} needs an access token with the {noun} {_either(names, 'and')}")

    @classmethod
    def for_membership(cls, role: Role, yours: Role | None) -> ActionNotAllowedError:
        """Refused to give, change or remove a membership of `role`."""
        return cls(f"a membership as {role}: {needs_role(roles_managing(role), yours)}")
