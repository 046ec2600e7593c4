"""WorkspaceRepository: workspaces and memberships, always within the caller's Scope.

Flushes, never commits. Inserts name no RETURNING: the row-level policy lets a caller see a
workspace only through a membership, which does not exist yet while the workspace is being
inserted, so the new id is taken from the sequence first.

A new membership is counted first against MembershipLimits (workspaces per account, members
per workspace), with the rows it depends on locked, so that concurrent requests queue and
each one counts what the one before it committed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import cast

from sqlalchemy import (
    Integer,
    String,
    Table,
    bindparam,
    delete,
    func,
    insert,
    literal,
    select,
    text,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from taskmanager.cache.invalidation import note_callers_changed
from taskmanager.models import Membership, UnclaimedWorkspace, User, Workspace
from taskmanager.repositories.array_parameters import in_scope
from taskmanager.security.roles import Action, Role, roles_allowing
from taskmanager.security.scope import Scope


@dataclass(frozen=True, slots=True)
class WorkspaceView:
    id: int
    name: str
    personal: bool
    role: str
    created_at: datetime
    version: int


@dataclass(frozen=True, slots=True)
class MemberView:
    user_id: int
    email: str
    display_name: str
    role: str
    joined_at: datetime


_MY_WORKSPACES = select(
    Workspace.id,
    Workspace.name,
    Workspace.personal,
    Membership.role,
    Workspace.created_at,
    Workspace.version,
).join(Membership, Membership.workspace_id == Workspace.id)

_MEMBERS = select(
    Membership.user_id,
    User.email,
    User.display_name,
    Membership.role,
    Membership.created_at,
).join(User, User.id == Membership.user_id)


@dataclass(frozen=True, slots=True)
class MembershipLimits:
    """How many workspaces an account may belong to, and how many members a workspace may
    have (Settings.max_workspaces_per_user, Settings.max_members_per_workspace)."""

    workspaces_per_user: int
    members_per_workspace: int


class Limit(Enum):
    """Which cap a new membership would pass."""

    CALLERS_WORKSPACES = "workspaces per account (the caller's)"
    WORKSPACE_MEMBERS = "members per workspace"


class MembershipLimitError(Exception):
    """A new membership would pass `limit`: `count` rows are there already, `maximum` may
    be. Answered as a 409 (errors.py)."""

    def __init__(self, limit: Limit, count: int, maximum: int) -> None:
        super().__init__(f"{limit.value}: {count} of at most {maximum}")
        self.limit = limit
        self.count = count
        self.maximum = maximum


# Locks taken before counting, each in a statement of its own: under READ COMMITTED the
# count that follows then sees whatever the transaction that held the lock committed (a
# count in the locking statement would use the snapshot taken before the wait).
# FOR NO KEY UPDATE: it queues the counters, but not the foreign-key checks of rows
# inserted meanwhile (a task in the workspace, a login of the account).
_LOCK_USER = select(User.id).where(User.id == bindparam("user_id")).with_for_update(key_share=True)
_WORKSPACES_OF_USER = (
    select(func.count()).select_from(Membership).where(Membership.user_id == bindparam("user_id"))
)
# An invitee cannot see the workspace they are joining (nor lock its row): a database
# function (migration 0014) locks it and counts its members, for an invitee of it only.
_INVITEE_MEMBER_COUNT = text("SELECT taskmanager_invitee_member_count(:workspace_id)").bindparams(
    bindparam("workspace_id", type_=Integer)
)


# Claiming the workspaces nobody owns, for :claimant, in two statements: memberships first
# (the policy lets an operator's caller own a workspace only while it is still listed as
# unclaimed), then the list loses the workspaces the account now owns, their ids returned.
# The INSERT returns nothing: RETURNING would have to show the new memberships through the
# policy on reading them, which sees the caller's workspaces as they were before it ran.
# (The table, not the mapped class: an ORM INSERT would take the parameters as a row.)
_MEMBERSHIPS = cast(Table, Membership.__table__)
_OWN_UNCLAIMED = insert(_MEMBERSHIPS).from_select(
    [_MEMBERSHIPS.c.workspace_id, _MEMBERSHIPS.c.user_id, _MEMBERSHIPS.c.role],
    select(
        UnclaimedWorkspace.workspace_id,
        bindparam("claimant", type_=Integer),
        literal(str(Role.OWNER), String),
    ),
)
_UNLIST_CLAIMED = (
    delete(UnclaimedWorkspace)
    .where(
        UnclaimedWorkspace.workspace_id.in_(
            select(Membership.workspace_id).where(
                Membership.user_id == bindparam("claimant", type_=Integer)
            )
        )
    )
    .returning(UnclaimedWorkspace.workspace_id)
)


class WorkspaceRepository:
    """Encapsulates all database operations for workspaces and memberships."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    # ── creating (registration and POST /workspaces) ──

    async def create(self, creator_id: int, name: str, limits: MembershipLimits) -> int:
        """A workspace owned by `creator_id`, who must be the caller the transaction acts
        as (the row-level policies check it); MembershipLimitError if they belong to as
        many workspaces as an account may. Returns its id."""
        # The caller's own row and memberships: row-level security shows them all.
        await self.session.execute(_LOCK_USER, {"user_id": creator_id})
        joined = (
            await self.session.execute(_WORKSPACES_OF_USER, {"user_id": creator_id})
        ).scalar_one()
        if joined >= limits.workspaces_per_user:
            raise MembershipLimitError(Limit.CALLERS_WORKSPACES, joined, limits.workspaces_per_user)
        return await self._insert(creator_id, name, personal=False)

    async def create_personal(self, creator_id: int, name: str) -> int:
        """The personal workspace of an account being opened: its first membership, so
        no cap is counted."""
        return await self._insert(creator_id, name, personal=True)

    async def _insert(self, creator_id: int, name: str, *, personal: bool) -> int:
        workspace_id = int(
            (await self.session.execute(text("SELECT nextval('workspaces_id_seq')"))).scalar_one()
        )
        await self.session.execute(
            insert(Workspace).values(
                id=workspace_id, name=name, created_by=creator_id, personal=personal
            )
        )
        await self.session.execute(
            insert(Membership).values(
                workspace_id=workspace_id, user_id=creator_id, role=str(Role.OWNER)
            )
        )
        note_callers_changed(self.session, creator_id)
        return workspace_id

    async def claim_unclaimed(self, user_id: int) -> list[int]:
        """Make `user_id` the owner of every workspace left without members (the data from
        before accounts existed); returns their ids. Not counted against a cap: only an
        operator's `taskmanager users create` claims, for an account being opened, and the
        only such workspace is the one migration 0003 made. Two statements."""
        await self.session.execute(_OWN_UNCLAIMED, {"claimant": user_id})
        note_callers_changed(self.session, user_id)
        result = await self.session.execute(_UNLIST_CLAIMED, {"claimant": user_id})
        return sorted(int(workspace_id) for workspace_id in result.scalars())

    # ── reading, within the scope ──

    async def list_mine(self, scope: Scope) -> list[WorkspaceView]:
        rows = await self.session.execute(
            _MY_WORKSPACES.where(
                Membership.user_id == scope.user_id,
                in_scope(Workspace.id, scope),
            ).order_by(Workspace.personal.desc(), func.lower(Workspace.name), Workspace.id)
        )
        return [WorkspaceView(*row) for row in rows]

    async def get(self, scope: Scope, workspace_id: int) -> WorkspaceView | None:
        if not scope.can_see(workspace_id):
            return None
        row = (
            await self.session.execute(
                _MY_WORKSPACES.where(
                    Membership.user_id == scope.user_id, Workspace.id == workspace_id
                )
            )
        ).first()
        return None if row is None else WorkspaceView(*row)

    async def get_for_change(self, scope: Scope, workspace_id: int) -> Workspace | None:
        """The workspace, locked until the transaction ends, if the caller's role there may
        rename, delete or transfer it."""
        if not scope.may(workspace_id, Action.WORKSPACES_WRITE):
            return None
        result = await self.session.execute(
            select(Workspace).where(Workspace.id == workspace_id).with_for_update()
        )
        return result.scalar_one_or_none()

    async def rename(self, workspace: Workspace, name: str) -> Workspace:
        workspace.name = name
        if self.session.is_modified(workspace):
            workspace.version += 1
        await self.session.flush()
        return workspace

    async def delete(self, workspace: Workspace) -> None:
        """Delete a workspace with its tasks, categories and memberships (ON DELETE CASCADE)."""
        members = await self.session.execute(
            select(Membership.user_id).where(Membership.workspace_id == workspace.id)
        )
        note_callers_changed(self.session, *members.scalars())
        await self.session.delete(workspace)
        await self.session.flush()

    # ── members ──

    async def members(self, scope: Scope, workspace_id: int) -> list[MemberView]:
        if not scope.can_see(workspace_id):
            return []
        rows = await self.session.execute(
            _MEMBERS.where(Membership.workspace_id == workspace_id).order_by(
                Membership.created_at, Membership.user_id
            )
        )
        return [MemberView(*row) for row in rows]

    async def member(self, scope: Scope, workspace_id: int, user_id: int) -> MemberView | None:
        """`user_id` as a member of a workspace the caller belongs to; None if they are
        not one, or the caller cannot see the workspace."""
        if not scope.can_see(workspace_id):
            return None
        row = (
            await self.session.execute(
                _MEMBERS.where(
                    Membership.workspace_id == workspace_id, Membership.user_id == user_id
                )
            )
        ).first()
        return None if row is None else MemberView(*row)

    async def membership(self, scope: Scope, workspace_id: int, user_id: int) -> Membership | None:
        """`user_id`'s membership of a workspace the caller belongs to."""
        if not scope.can_see(workspace_id):
            return None
        return await self.session.get(Membership, (workspace_id, user_id))

    async def join(
        self, scope: Scope, workspace_id: int, role: Role, limits: MembershipLimits
    ) -> None:
        """The caller's own membership of `workspace_id` as `role`, which only an invitation
        of their verified address to exactly that role, accepted earlier in this
        transaction, allows (the policy of migration 0014 refuses anything else).
        MembershipLimitError if the caller belongs to as many workspaces as an account may,
        or the workspace has as many members as it may; both rows are locked first, so
        joins that race queue."""
        await self.session.execute(_LOCK_USER, {"user_id": scope.user_id})
        joined = (
            await self.session.execute(_WORKSPACES_OF_USER, {"user_id": scope.user_id})
        ).scalar_one()
        if joined >= limits.workspaces_per_user:
            raise MembershipLimitError(Limit.CALLERS_WORKSPACES, joined, limits.workspaces_per_user)
        members = (
            await self.session.execute(_INVITEE_MEMBER_COUNT, {"workspace_id": workspace_id})
        ).scalar_one()
        if members >= limits.members_per_workspace:
            raise MembershipLimitError(
                Limit.WORKSPACE_MEMBERS, members, limits.members_per_workspace
            )
        await self.session.execute(
            insert(Membership).values(
                workspace_id=workspace_id, user_id=scope.user_id, role=str(role)
            )
        )
        note_callers_changed(self.session, scope.user_id)

    async def lock_holders(self, scope: Scope, workspace_id: int, action: Action) -> Sequence[int]:
        """The ids of the members whose role may do `action` (the owners, for
        workspaces:write), their memberships locked until the transaction ends: two owners
        leaving or stepping down at once queue here, and the second sees that it would be
        the last."""
        if not scope.can_see(workspace_id):
            return []
        result = await self.session.execute(
            select(Membership.user_id)
            .where(
                Membership.workspace_id == workspace_id,
                Membership.role.in_([str(role) for role in roles_allowing(action)]),
            )
            .order_by(Membership.user_id)
            .with_for_update()
        )
        return list(result.scalars())

    async def set_role(self, scope: Scope, workspace_id: int, user_id: int, role: Role) -> bool:
        """Give `user_id` the role `role` in a workspace where the caller may manage
        members (which roles, the route and the policies check); whether they are a
        member."""
        if not scope.may(workspace_id, Action.MEMBERS_WRITE):
            return False
        result = await self.session.execute(
            update(Membership)
            .where(Membership.workspace_id == workspace_id, Membership.user_id == user_id)
            .values(role=str(role))
        )
        note_callers_changed(self.session, user_id)
        return bool(getattr(result, "rowcount", 0))

    async def remove_member(self, scope: Scope, workspace_id: int, user_id: int) -> bool:
        """Remove a membership: the caller's own, or any where the caller may manage
        members (which roles, the route and the policies check)."""
        if not (user_id == scope.user_id or scope.may(workspace_id, Action.MEMBERS_WRITE)):
            return False
        result = await self.session.execute(
            delete(Membership).where(
                Membership.workspace_id == workspace_id, Membership.user_id == user_id
            )
        )
        note_callers_changed(self.session, user_id)
        return bool(getattr(result, "rowcount", 0))


__all__ = [
    "Limit",
    "MemberView",
    "MembershipLimitError",
    "MembershipLimits",
    "WorkspaceRepository",
    "WorkspaceView",
]
