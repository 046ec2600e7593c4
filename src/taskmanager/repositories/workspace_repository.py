"""WorkspaceRepository: workspaces and memberships, always within the caller's Scope.

Flushes, never commits. Inserts name no RETURNING: the row-level policy lets a caller see a
workspace only through a membership, which does not exist yet while the workspace is being
inserted, so the new id is taken from the sequence first."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from taskmanager.models import Membership, UnclaimedWorkspace, User, Workspace
from taskmanager.repositories.array_parameters import in_scope
from taskmanager.scope import Scope


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


class WorkspaceRepository:
    """Encapsulates all database operations for workspaces and memberships."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    # ── creating (registration and POST /workspaces) ──

    async def create(self, creator_id: int, name: str, *, personal: bool = False) -> int:
        """A workspace owned by `creator_id`, who must be the caller the transaction acts
        as (the row-level policies check it). Returns its id."""
        workspace_id = int(
            (await self.session.execute(text("SELECT nextval('workspaces_id_seq')"))).scalar_one()
        )
        await self.session.execute(
            insert(Workspace).values(
                id=workspace_id, name=name, created_by=creator_id, personal=personal
            )
        )
        await self.session.execute(
            insert(Membership).values(workspace_id=workspace_id, user_id=creator_id, role="owner")
        )
        return workspace_id

    async def claim_unclaimed(self, user_id: int) -> list[int]:
        """Make `user_id` the owner of every workspace left without members (the data from
        before accounts existed); returns their ids."""
        result = await self.session.execute(
            delete(UnclaimedWorkspace).returning(UnclaimedWorkspace.workspace_id)
        )
        claimed = [int(workspace_id) for workspace_id in result.scalars()]
        for workspace_id in claimed:
            await self.session.execute(
                insert(Membership).values(workspace_id=workspace_id, user_id=user_id, role="owner")
            )
        return claimed

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
        """The workspace, locked until the transaction ends, if the caller owns it."""
        if not scope.owns(workspace_id):
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
        await self.session.delete(workspace)
        await self.session.flush()

    # ── members ──

    async def members(self, scope: Scope, workspace_id: int) -> list[MemberView]:
        if not scope.can_see(workspace_id):
            return []
        rows = await self.session.execute(
            select(
                Membership.user_id,
                User.email,
                User.display_name,
                Membership.role,
                Membership.created_at,
            )
            .join(User, User.id == Membership.user_id)
            .where(Membership.workspace_id == workspace_id)
            .order_by(Membership.created_at, Membership.user_id)
        )
        return [MemberView(*row) for row in rows]

    async def user_id_by_email(self, email: str) -> int | None:
        """The id of the account with `email` (any case): the one thing a caller may learn
        about a user outside their workspaces (through a database function, since the
        policy on users shows only co-members)."""
        result = await self.session.execute(
            text("SELECT taskmanager_user_id_by_email(:email)"), {"email": email}
        )
        value = result.scalar_one()
        return None if value is None else int(value)

    async def membership(self, scope: Scope, workspace_id: int, user_id: int) -> Membership | None:
        """`user_id`'s membership of a workspace the caller belongs to."""
        if not scope.can_see(workspace_id):
            return None
        return await self.session.get(Membership, (workspace_id, user_id))

    async def add_member(self, scope: Scope, workspace_id: int, user_id: int, role: str) -> None:
        """A new membership of a workspace the caller owns; one that exists already fails
        the primary key (409)."""
        if not scope.owns(workspace_id):
            raise PermissionError(f"user {scope.user_id} does not own workspace {workspace_id}")
        await self.session.execute(
            insert(Membership).values(workspace_id=workspace_id, user_id=user_id, role=role)
        )

    async def lock_owners(self, scope: Scope, workspace_id: int) -> Sequence[int]:
        """The owners' ids, their memberships locked until the transaction ends: two owners
        leaving at once queue here, and the second sees that it would be the last."""
        if not scope.can_see(workspace_id):
            return []
        result = await self.session.execute(
            select(Membership.user_id)
            .where(Membership.workspace_id == workspace_id, Membership.role == "owner")
            .order_by(Membership.user_id)
            .with_for_update()
        )
        return list(result.scalars())

    async def remove_member(self, scope: Scope, workspace_id: int, user_id: int) -> bool:
        """Remove a membership: any of an owned workspace, or the caller's own."""
        if not (scope.owns(workspace_id) or user_id == scope.user_id):
            return False
        result = await self.session.execute(
            delete(Membership).where(
                Membership.workspace_id == workspace_id, Membership.user_id == user_id
            )
        )
        return bool(getattr(result, "rowcount", 0))


__all__ = ["MemberView", "WorkspaceRepository", "WorkspaceView"]
