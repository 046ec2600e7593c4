"""InvitationRepository: a workspace's invitations (for its managers) and the caller's own
(as an invitee), always under the policies of migration 0014.

Writing an invitation and mailing it (again) are database functions with the service's
proof: the caller role has no INSERT on invitations or the outbox. Answering one (accept,
decline) and revoking one are plain UPDATEs the policies allow to the invitee and to the
managers respectively. Flushes, never commits."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Integer,
    Text,
    Uuid,
    and_,
    bindparam,
    case,
    func,
    literal,
    select,
    text,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from taskmanager.database import note_outbox_recorded
from taskmanager.models import Invitation
from taskmanager.security.caller_key import CallerKey
from taskmanager.security.mail_tokens import MailTokenKey, mail_token_hash
from taskmanager.security.roles import Action
from taskmanager.security.scope import Scope

InvitationStatus = Literal["pending", "expired", "accepted", "declined", "revoked"]
STATUSES: tuple[InvitationStatus, ...] = ("pending", "expired", "accepted", "declined", "revoked")

_OPEN = and_(
    Invitation.accepted_at.is_(None),
    Invitation.declined_at.is_(None),
    Invitation.revoked_at.is_(None),
)
# An invitation's status, as the API shows it (computed: `expired` is a matter of time).
_STATUS: ColumnElement[str] = case(
    (Invitation.accepted_at.is_not(None), literal("accepted")),
    (Invitation.declined_at.is_not(None), literal("declined")),
    (Invitation.revoked_at.is_not(None), literal("revoked")),
    (Invitation.expires_at <= func.now(), literal("expired")),
    else_=literal("pending"),
)
_VIEW = select(
    Invitation.id,
    Invitation.workspace_id,
    Invitation.email,
    Invitation.role,
    _STATUS.label("status"),
    Invitation.invited_by,
    Invitation.created_at,
    Invitation.expires_at,
    Invitation.send_count,
    Invitation.last_sent_at,
)
# The caller's own address, if verified (lower case; NULL otherwise).
_MY_VERIFIED_EMAIL = func.taskmanager_caller_verified_email()
_LOCK_WORKSPACE = text("SELECT id FROM workspaces WHERE id = :workspace_id FOR NO KEY UPDATE")

_RECORD = text(
    "SELECT taskmanager_record_invitation(:id, :workspace_id, :address, :role, :token_hash, "
    ":lifetime, :valid_until, :proof)"
).bindparams(
    bindparam("id", type_=Uuid),
    bindparam("workspace_id", type_=Integer),
    bindparam("address", type_=Text),
    bindparam("role", type_=Text),
    bindparam("token_hash", type_=Text),
    bindparam("lifetime", type_=Integer),
    bindparam("valid_until", type_=BigInteger),
    bindparam("proof", type_=Text),
)
_RESEND = text("SELECT taskmanager_resend_invitation(:id, :valid_until, :proof)").bindparams(
    bindparam("id", type_=Uuid),
    bindparam("valid_until", type_=BigInteger),
    bindparam("proof", type_=Text),
)
# The only delete (migration 0014), but a workspace's own: for maintenance.
_PURGE = text("SELECT taskmanager_purge_invitations(:kept_days)").bindparams(
    bindparam("kept_days", type_=Integer)
)
_MINE = text(
    "SELECT id, workspace_id, workspace_name, role, invited_by_name, created_at, expires_at "
    "FROM taskmanager_my_invitations()"
)


@dataclass(frozen=True, slots=True)
class InvitationView:
    """An invitation as its workspace's managers see it."""

    id: uuid.UUID
    workspace_id: int
    email: str
    role: str
    status: InvitationStatus
    invited_by: int | None
    created_at: datetime
    expires_at: datetime
    send_count: int
    last_sent_at: datetime


def _view(row: Any) -> InvitationView:
    return InvitationView(*row)


@dataclass(frozen=True, slots=True)
class ReceivedInvitation:
    """An open invitation as its invitee sees it: where to, as what, from whom."""

    id: uuid.UUID
    workspace_id: int
    workspace_name: str
    role: str
    invited_by: str | None
    created_at: datetime
    expires_at: datetime


class InvitationRepository:
    """Encapsulates all database operations on invitations."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    # ── a workspace's managers ──

    async def lock_workspace(self, scope: Scope, workspace_id: int) -> None:
        """Invitations to one workspace queue here (its pending count and its duplicates
        are checked under the lock)."""
        if scope.can_see(workspace_id):
            await self.session.execute(_LOCK_WORKSPACE, {"workspace_id": workspace_id})

    async def pending_count(self, scope: Scope, workspace_id: int) -> int:
        """The workspace's open, unexpired invitations."""
        if not scope.may(workspace_id, Action.MEMBERS_WRITE):
            return 0
        result = await self.session.execute(
            select(func.count())
            .select_from(Invitation)
            .where(
                Invitation.workspace_id == workspace_id, _OPEN, Invitation.expires_at > func.now()
            )
        )
        return int(result.scalar_one())

    async def pending_to(self, scope: Scope, workspace_id: int, email: str) -> bool:
        """Whether an open, unexpired invitation of `email` (any case) to the workspace is
        there already."""
        if not scope.may(workspace_id, Action.MEMBERS_WRITE):
            return False
        result = await self.session.execute(
            select(Invitation.id).where(
                Invitation.workspace_id == workspace_id,
                func.lower(Invitation.email) == func.lower(email),
                _OPEN,
                Invitation.expires_at > func.now(),
            )
        )
        return result.first() is not None

    async def create(
        self,
        scope: Scope,
        workspace_id: int,
        email: str,
        role: str,
        lifetime_seconds: int,
        key: CallerKey,
        tokens: MailTokenKey,
    ) -> InvitationView:
        """Record the invitation and its mail (sent after commit), in this transaction. The
        database refuses (42501) a role the caller may not give there."""
        invitation_id = uuid.uuid4()
        token_hash = mail_token_hash(tokens.token(invitation_id))
        valid_until, proof = key.invitation_proof(
            invitation_id, workspace_id, email, role, token_hash, lifetime_seconds
        )
        await self.session.execute(
            _RECORD,
            {
                "id": invitation_id,
                "workspace_id": workspace_id,
                "address": email,
                "role": role,
                "token_hash": token_hash,
                "lifetime": lifetime_seconds,
                "valid_until": valid_until,
                "proof": proof,
            },
        )
        note_outbox_recorded(self.session)
        view = await self.get(scope, workspace_id, invitation_id)
        if view is None:
            raise LookupError(f"the invitation {invitation_id} just recorded is not visible")
        return view

    async def list_for_workspace(
        self, scope: Scope, workspace_id: int, status: InvitationStatus | None, limit: int
    ) -> list[InvitationView]:
        """The workspace's invitations, newest first; only those of `status` if given."""
        if not scope.may(workspace_id, Action.MEMBERS_WRITE):
            return []
        statement = _VIEW.where(Invitation.workspace_id == workspace_id)
        if status is not None:
            statement = statement.where(_STATUS == status)  # noqa: SIM300 (a column)
        rows = await self.session.execute(
            statement.order_by(Invitation.created_at.desc(), Invitation.id).limit(limit)
        )
        return [_view(row) for row in rows]

    async def get(
        self, scope: Scope, workspace_id: int, invitation_id: uuid.UUID
    ) -> InvitationView | None:
        if not scope.may(workspace_id, Action.MEMBERS_WRITE):
            return None
        row = (
            await self.session.execute(
                _VIEW.where(Invitation.workspace_id == workspace_id, Invitation.id == invitation_id)
            )
        ).first()
        return None if row is None else _view(row)

    async def get_for_change(
        self, scope: Scope, workspace_id: int, invitation_id: uuid.UUID
    ) -> Invitation | None:
        """The workspace's invitation, locked until the transaction ends (revoking, resending:
        two at once queue), if it is still open and of a role the caller may give (the
        policy locks no other row)."""
        if not scope.may(workspace_id, Action.MEMBERS_WRITE):
            return None
        result = await self.session.execute(
            select(Invitation)
            .where(Invitation.workspace_id == workspace_id, Invitation.id == invitation_id)
            .with_for_update()
        )
        return result.scalar_one_or_none()

    async def revoke(self, invitation: Invitation) -> None:
        await self.session.execute(
            update(Invitation).where(Invitation.id == invitation.id).values(revoked_at=func.now())
        )

    async def resend(self, invitation_id: uuid.UUID, key: CallerKey) -> bool:
        """Mail the invitation once more (the same link), counted; whether it was open,
        unexpired and the caller's to resend."""
        valid_until, proof = key.invitation_resend_proof(invitation_id)
        sent = (
            await self.session.execute(
                _RESEND, {"id": invitation_id, "valid_until": valid_until, "proof": proof}
            )
        ).scalar_one()
        if sent:
            note_outbox_recorded(self.session)
        return bool(sent)

    # ── the invitee ──

    async def received(self) -> list[ReceivedInvitation]:
        """The caller's open, unexpired invitations (to their verified address)."""
        rows = await self.session.execute(_MINE)
        return [ReceivedInvitation(*row) for row in rows]

    async def mine(self, invitation_id: uuid.UUID) -> InvitationView | None:
        """An invitation to the caller's verified address, whatever its status (managers see
        their workspace's others too: this one must be the caller's own)."""
        row = (
            await self.session.execute(
                _VIEW.where(
                    Invitation.id == invitation_id,
                    func.lower(Invitation.email) == _MY_VERIFIED_EMAIL,
                )
            )
        ).first()
        return None if row is None else _view(row)

    async def mine_by_token(self, token: str) -> InvitationView | None:
        """The invitation to the caller's verified address whose mailed token is `token`."""
        row = (
            await self.session.execute(
                _VIEW.where(
                    Invitation.token_hash == mail_token_hash(token),
                    func.lower(Invitation.email) == _MY_VERIFIED_EMAIL,
                )
            )
        ).first()
        return None if row is None else _view(row)

    async def lock_mine(self, invitation_id: uuid.UUID) -> bool:
        """Lock the caller's own open, unexpired invitation (two answers at once queue, the
        second then finds it answered); whether there is one."""
        result = await self.session.execute(
            select(Invitation.id)
            .where(
                Invitation.id == invitation_id,
                func.lower(Invitation.email) == _MY_VERIFIED_EMAIL,
                _OPEN,
                Invitation.expires_at > func.now(),
            )
            .with_for_update()
        )
        return result.first() is not None

    async def answer(self, invitation_id: uuid.UUID, accepted: bool) -> bool:
        """Mark the caller's own open invitation accepted or declined; whether it was."""
        column = "accepted_at" if accepted else "declined_at"
        result = await self.session.execute(
            update(Invitation)
            .where(
                Invitation.id == invitation_id,
                func.lower(Invitation.email) == _MY_VERIFIED_EMAIL,
                _OPEN,
            )
            .values({column: func.now()})
        )
        return bool(getattr(result, "rowcount", 0))

    # ── housekeeping ──

    async def purge_closed(self, kept_days: int) -> int:
        """Delete the invitations accepted, declined, revoked or expired more than
        `kept_days` days ago (the transaction must have entered for maintenance); returns
        how many."""
        result = await self.session.execute(_PURGE, {"kept_days": kept_days})
        return int(result.scalar_one())


__all__ = [
    "STATUSES",
    "InvitationRepository",
    "InvitationStatus",
    "InvitationView",
    "ReceivedInvitation",
]
