"""Invitations: how somebody comes to belong to a workspace that is not their own.

A manager (members:write) invites an address with a role; the invitation and its mail are
recorded in one transaction (the mail leaves after commit). The answer is the same whether
or not the address has an account, or belongs to a member already: only the invitee learns
that, when they answer. The invitee, logged in with that address verified, accepts (the
membership is made, within the caps) or declines; a manager may revoke an open invitation
or mail it again, a few times, not too often.

Each flow returns what happened (an outcome the route turns into an answer) or raises what
errors.py answers (ActionNotAllowedError, MembershipLimitError).
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from taskmanager.config import Settings
from taskmanager.repositories.invitation_repository import InvitationRepository, InvitationView
from taskmanager.repositories.user_repository import UserRepository
from taskmanager.repositories.workspace_repository import (
    MembershipLimits,
    WorkspaceRepository,
    WorkspaceView,
)
from taskmanager.security.caller_key import CallerKey
from taskmanager.security.mail_tokens import MailTokenKey
from taskmanager.security.roles import Role, owns
from taskmanager.security.scope import Scope


@dataclass(frozen=True, slots=True)
class InvitationRules:
    """How long an invitation works, how often it may be mailed, how many may be open."""

    lifetime_seconds: int
    max_sends: int
    resend_seconds: int
    max_pending: int


def invitation_rules(settings: Settings) -> InvitationRules:
    return InvitationRules(
        lifetime_seconds=int(settings.invitation_days * 24 * 3600),
        max_sends=settings.invitation_max_sends,
        resend_seconds=int(settings.invitation_resend_minutes * 60),
        max_pending=settings.max_pending_invitations_per_workspace,
    )


class Refusal(enum.Enum):
    """Why an invitation flow did nothing (each a 4xx the route words)."""

    NOT_FOUND = enum.auto()
    PERSONAL_OWNER = enum.auto()  # a personal workspace keeps its one owner
    PENDING_ALREADY = enum.auto()  # an open invitation of that address is there
    TOO_MANY_PENDING = enum.auto()
    NOT_OPEN = enum.auto()  # accepted, declined, revoked or expired
    SENT_ENOUGH = enum.auto()  # mailed as many times as an invitation may be
    UNVERIFIED = enum.auto()  # the invitee's address is not verified
    MEMBER_ALREADY = enum.auto()


@dataclass(frozen=True, slots=True)
class Wait:
    """Mailed too lately to mail again: `seconds` until it may be."""

    seconds: int


@dataclass(frozen=True, slots=True)
class Closed:
    """An invitation that can no longer be answered, and its status (what the 409 says)."""

    status: str


async def invite(
    invitations: InvitationRepository,
    workspaces: WorkspaceRepository,
    user: Scope,
    workspace_id: int,
    email: str,
    role: Role,
    rules: InvitationRules,
    key: CallerKey,
    tokens: MailTokenKey,
) -> InvitationView | Refusal:
    """Invite `email` to `workspace_id` as `role` (the caller may manage that role there:
    the route checked, the database checks again), and mail it."""
    workspace = await workspaces.get(user, workspace_id)
    if workspace is None:
        return Refusal.NOT_FOUND
    if workspace.personal and owns(role):
        return Refusal.PERSONAL_OWNER
    # Under the workspace's lock, two invitations at once count each other.
    await invitations.lock_workspace(user, workspace_id)
    if await invitations.pending_to(user, workspace_id, email):
        return Refusal.PENDING_ALREADY
    if await invitations.pending_count(user, workspace_id) >= rules.max_pending:
        return Refusal.TOO_MANY_PENDING
    return await invitations.create(
        user, workspace_id, email, str(role), rules.lifetime_seconds, key, tokens
    )


async def resend(
    invitations: InvitationRepository,
    user: Scope,
    workspace_id: int,
    invitation_id: uuid.UUID,
    rules: InvitationRules,
    key: CallerKey,
) -> InvitationView | Refusal | Closed | Wait:
    """Mail an open invitation again (the same link, the same expiry), at most
    `rules.max_sends` times in all and not twice within `rules.resend_seconds`."""
    view = await invitations.get(user, workspace_id, invitation_id)
    if view is None:
        return Refusal.NOT_FOUND
    user.require_managing(workspace_id, Role(view.role))
    if view.status != "pending":
        return Closed(view.status)
    # Locked: two resends at once see each other's count.
    locked = await invitations.get_for_change(user, workspace_id, invitation_id)
    if locked is None:
        return Refusal.NOT_FOUND
    if locked.send_count >= rules.max_sends:
        return Refusal.SENT_ENOUGH
    next_at = locked.last_sent_at + timedelta(seconds=rules.resend_seconds)
    wait = (next_at - datetime.now(UTC)).total_seconds()
    if wait > 0:
        return Wait(max(1, int(wait + 0.999)))
    if not await invitations.resend(invitation_id, key):
        return Closed("expired")  # expired between the two statements
    resent = await invitations.get(user, workspace_id, invitation_id)
    assert resent is not None
    return resent


async def revoke(
    invitations: InvitationRepository, user: Scope, workspace_id: int, invitation_id: uuid.UUID
) -> Refusal | Closed | None:
    """Revoke an open invitation (expired ones too: nobody answers them any more)."""
    view = await invitations.get(user, workspace_id, invitation_id)
    if view is None:
        return Refusal.NOT_FOUND
    user.require_managing(workspace_id, Role(view.role))
    if view.status not in ("pending", "expired"):
        return Closed(view.status)
    locked = await invitations.get_for_change(user, workspace_id, invitation_id)
    if locked is None:
        return Refusal.NOT_FOUND
    if locked.accepted_at or locked.declined_at or locked.revoked_at:
        return Closed("answered")  # answered meanwhile
    await invitations.revoke(locked)
    return None


async def is_verified(users: UserRepository, user: Scope) -> bool:
    """Whether the caller proved their address: what seeing or answering an invitation to
    it requires."""
    return await users.email_verified(user.user_id)


async def accept(
    invitations: InvitationRepository,
    workspaces: WorkspaceRepository,
    users: UserRepository,
    user: Scope,
    invitation: InvitationView | None,
    limits: MembershipLimits,
) -> WorkspaceView | Refusal | Closed:
    """Accept the caller's own invitation, then their membership, with its role, within the
    caps (MembershipLimitError past one, and nothing is kept). `invitation` as the
    caller found it (by its id or by its token)."""
    if not await is_verified(users, user):
        return Refusal.UNVERIFIED
    if invitation is None:
        return Refusal.NOT_FOUND
    if invitation.status != "pending":
        return Closed(invitation.status)
    if user.can_see(invitation.workspace_id):
        return Refusal.MEMBER_ALREADY
    if not await invitations.lock_mine(invitation.id):
        return Closed("answered")  # answered (or expired) meanwhile
    role = Role(invitation.role)
    # Accepted first: the database lets the invitee in only on an invitation accepted in
    # this very transaction (migration 0014), so a join always closes its invitation. A
    # refusal past a cap rolls both back.
    await invitations.answer(invitation.id, accepted=True)
    await workspaces.join(user, invitation.workspace_id, role, limits)
    joined = await workspaces.get(
        user.with_workspace(invitation.workspace_id, role), invitation.workspace_id
    )
    assert joined is not None  # a member now
    return joined


async def decline(
    invitations: InvitationRepository,
    users: UserRepository,
    user: Scope,
    invitation_id: uuid.UUID,
) -> Refusal | Closed | None:
    """Decline the caller's own open invitation."""
    if not await is_verified(users, user):
        return Refusal.UNVERIFIED
    invitation = await invitations.mine(invitation_id)
    if invitation is None:
        return Refusal.NOT_FOUND
    if invitation.status != "pending":
        return Closed(invitation.status)
    if not await invitations.lock_mine(invitation_id):
        return Closed("answered")
    await invitations.answer(invitation_id, accepted=False)
    return None
