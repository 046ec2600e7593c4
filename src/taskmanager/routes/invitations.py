"""Invitations: a workspace's admins and owners invite an address (and list, revoke and
resend its invitations); the invitee, logged in with that address verified, sees theirs and
accepts or declines. The flows are taskmanager.accounts.invitations'; here their outcomes
become answers.

Inviting answers the same 202 whether or not the address has an account, and whether or
not it belongs to a member already: the inviter learns nothing about anyone's account. An
invitation that is not the caller's (to another address, or of a workspace they do not
manage) is 404, as one that does not exist."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal, TypeVar

from fastapi import APIRouter, HTTPException, Path, Query, Request, Response, status
from fastapi.responses import JSONResponse

from taskmanager.accounts import invitations as flows
from taskmanager.accounts.invitations import Closed, Refusal, Wait, invitation_rules
from taskmanager.bad_input import BadInputError
from taskmanager.database import ReadSessionDep, SessionDep
from taskmanager.dependencies import (
    CurrentReaderDep,
    CurrentUserDep,
    InvitationReaderDep,
    InvitationRepositoryDep,
    MembershipLimitsDep,
    WorkspaceRepositoryDep,
    token_scope,
)
from taskmanager.openapi import problem_responses
from taskmanager.problems import (
    CONFLICT,
    EMAIL_NOT_VERIFIED,
    LIMIT_REACHED,
    TOO_MANY_MAILS,
    ProblemError,
)
from taskmanager.repositories.invitation_repository import (
    InvitationView,
    ReceivedInvitation,
)
from taskmanager.repositories.user_repository import UserRepository
from taskmanager.repositories.workspace_repository import WorkspaceView
from taskmanager.routes.auth import retry_later
from taskmanager.routes.permissions import require
from taskmanager.schemas import (
    INT4_MAX,
    InvitationCreate,
    InvitationResponse,
    InvitationToken,
    ReceivedInvitationResponse,
    WorkspaceResponse,
)
from taskmanager.security.access_tokens import TokenScope
from taskmanager.security.roles import Action, Role
from taskmanager.security.scope import Scope

workspace_router = APIRouter(prefix="/workspaces", tags=["invitations"])
router = APIRouter(prefix="/invitations", tags=["invitations"])

WorkspaceId = Annotated[int, Path(ge=1, le=INT4_MAX, description="The workspace's id.")]
InvitationId = Annotated[uuid.UUID, Path(description="The invitation's id.")]
WORKSPACE_NOT_FOUND = "Workspace not found"
NOT_FOUND = "Invitation not found"
TOKEN_NOT_VALID = (
    "is not valid: unknown, or not an invitation to your address (log in with the address "
    "the invitation was mailed to)"
)
UNVERIFIED = (
    "verify your email address first: invitations are to an address, and only its proven "
    "owner sees or answers them (POST /auth/verify-email/resend mails a new link)"
)
_CLOSED = {
    "expired": "this invitation has expired (a new one must be sent)",
    "accepted": "this invitation was accepted already",
    "declined": "this invitation was declined",
    "revoked": "this invitation was revoked",
    "answered": "this invitation was answered or revoked meanwhile",
}


Done = TypeVar("Done")


def _done(outcome: Done | Refusal | Closed, rules: flows.InvitationRules | None = None) -> Done:
    """What a flow did, or the answer to its refusal (404, 403, 409, ...)."""
    if isinstance(outcome, Refusal):
        raise _refused(outcome, rules)
    if isinstance(outcome, Closed):
        raise _closed(outcome)
    return outcome


def _closed(closed: Closed) -> ProblemError:
    return ProblemError(CONFLICT.problem(_CLOSED.get(closed.status, "this invitation is closed")))


def _refused(refusal: Refusal, rules: flows.InvitationRules | None = None) -> Exception:
    """The answer to a flow's refusal."""
    if refusal is Refusal.NOT_FOUND:
        return HTTPException(status_code=404, detail=NOT_FOUND)
    if refusal is Refusal.UNVERIFIED:
        return ProblemError(EMAIL_NOT_VERIFIED.problem(UNVERIFIED))
    detail = {
        Refusal.PERSONAL_OWNER: "a personal workspace has one owner; invite people with "
        "another role",
        Refusal.PENDING_ALREADY: "an invitation of this address is pending already: resend it "
        "(POST .../invitations/{id}/resend) or revoke it first",
        Refusal.MEMBER_ALREADY: "you are a member of this workspace already; decline the "
        "invitation to dismiss it",
    }.get(refusal)
    if detail is not None:
        return ProblemError(CONFLICT.problem(detail))
    if refusal is Refusal.TOO_MANY_PENDING:
        most = rules.max_pending if rules else "so many"
        return ProblemError(
            LIMIT_REACHED.problem(
                f"this workspace has as many pending invitations as it may: at most {most} "
                "(revoke some, or wait for them to be answered)"
            )
        )
    if refusal is Refusal.SENT_ENOUGH:
        most = rules.max_sends if rules else "so many"
        return ProblemError(
            LIMIT_REACHED.problem(
                f"this invitation was mailed {most} times, as often as one may be: revoke it "
                "and invite again"
            )
        )
    raise AssertionError(f"unanswered refusal {refusal}")


def _require_managing(user: Scope, workspace_id: int) -> None:
    """404 for a workspace the caller cannot see; 403 unless they may manage members."""
    require(user, workspace_id, Action.MEMBERS_WRITE, WORKSPACE_NOT_FOUND)


# ─────────────────────────────── a workspace's admins and owners


@workspace_router.post(
    "/{workspace_id}/invitations",
    response_model=InvitationResponse,
    status_code=status.HTTP_202_ACCEPTED,
    responses=problem_responses(401, 403, 404, 409, 413, 422, 503),
    openapi_extra=token_scope(TokenScope.MEMBERS_WRITE),
)
async def create_invitation(
    workspace_id: WorkspaceId,
    body: InvitationCreate,
    invitations: InvitationRepositoryDep,
    workspaces: WorkspaceRepositoryDep,
    user: CurrentUserDep,
    request: Request,
) -> InvitationView:
    """Invite an address to a workspace where you are an admin or an owner, with a role
    (member unless you say; only an owner invites an owner: 403 for an admin). A link to
    accept is mailed to the address, which works for 7 days. The answer is this same 202
    whether or not the address has an account or belongs to a member already. 409 for an
    owner of a personal workspace, for an address with a pending invitation here already,
    or past the cap on pending invitations."""
    _require_managing(user, workspace_id)
    role = Role(body.role)
    user.require_managing(workspace_id, role)
    rules = invitation_rules(request.app.state.settings)
    outcome = await flows.invite(
        invitations,
        workspaces,
        user,
        workspace_id,
        body.email,
        role,
        rules,
        request.app.state.caller_key,
        request.app.state.mail_token_key,
    )
    return _done(outcome, rules)


@workspace_router.get(
    "/{workspace_id}/invitations",
    response_model=list[InvitationResponse],
    responses=problem_responses(401, 403, 404, 422, 503),
    openapi_extra=token_scope(TokenScope.MEMBERS_WRITE),
)
async def list_workspace_invitations(
    workspace_id: WorkspaceId,
    invitations: InvitationReaderDep,
    user: CurrentReaderDep,
    invitation_status: Annotated[
        Literal["pending", "expired", "accepted", "declined", "revoked", "all"],
        Query(alias="status", description="Which invitations: the pending ones unless you say."),
    ] = "pending",
    limit: Annotated[int, Query(ge=1, le=500, description="At most this many.")] = 100,
) -> list[InvitationView]:
    """A workspace's invitations, newest first, for its admins and owners (403 for other
    members)."""
    _require_managing(user, workspace_id)
    chosen = None if invitation_status == "all" else invitation_status
    return await invitations.list_for_workspace(user, workspace_id, chosen, limit)


@workspace_router.delete(
    "/{workspace_id}/invitations/{invitation_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=problem_responses(401, 403, 404, 409, 422, 503),
    openapi_extra=token_scope(TokenScope.MEMBERS_WRITE),
)
async def revoke_invitation(
    workspace_id: WorkspaceId,
    invitation_id: InvitationId,
    invitations: InvitationRepositoryDep,
    user: CurrentUserDep,
) -> None:
    """Revoke an invitation that has not been answered: its link stops working. An admin
    cannot revoke an owner's invitation (403); an answered or revoked one is 409."""
    _require_managing(user, workspace_id)
    _done(await flows.revoke(invitations, user, workspace_id, invitation_id))


@workspace_router.post(
    "/{workspace_id}/invitations/{invitation_id}/resend",
    response_model=InvitationResponse,
    status_code=status.HTTP_202_ACCEPTED,
    responses=problem_responses(401, 403, 404, 409, 422, 429, 503),
    openapi_extra=token_scope(TokenScope.MEMBERS_WRITE),
)
async def resend_invitation(
    workspace_id: WorkspaceId,
    invitation_id: InvitationId,
    invitations: InvitationRepositoryDep,
    user: CurrentUserDep,
    request: Request,
) -> InvitationView | JSONResponse:
    """Mail a pending invitation again: the same link, working until the same time. At
    most 3 mails in all (then 409: revoke it and invite again), and not twice within 10
    minutes (429 with `Retry-After`). An answered, revoked or expired one is 409."""
    _require_managing(user, workspace_id)
    rules = invitation_rules(request.app.state.settings)
    outcome = await flows.resend(
        invitations, user, workspace_id, invitation_id, rules, request.app.state.caller_key
    )
    if isinstance(outcome, Wait):
        return retry_later(TOO_MANY_MAILS, "this invitation was mailed just now", outcome.seconds)
    return _done(outcome, rules)


# ─────────────────────────────── the invitee


@router.get(
    "",
    response_model=list[ReceivedInvitationResponse],
    responses=problem_responses(401, 403, 503),
)
async def list_my_invitations(
    invitations: InvitationReaderDep, user: CurrentReaderDep, session: ReadSessionDep
) -> list[ReceivedInvitation]:
    """The pending invitations to your address (any case), newest first, with the
    workspace's name and who invited you. Your address must be verified (403 otherwise)."""
    if not await flows.is_verified(UserRepository(session), user):
        raise _refused(Refusal.UNVERIFIED)
    return await invitations.received()


@router.post(
    "/accept",
    response_model=WorkspaceResponse,
    responses=problem_responses(401, 403, 409, 413, 422, 503),
)
async def accept_invitation_by_token(
    body: InvitationToken,
    invitations: InvitationRepositoryDep,
    workspaces: WorkspaceRepositoryDep,
    user: CurrentUserDep,
    session: SessionDep,
    limits: MembershipLimitsDep,
) -> WorkspaceView:
    """Accept the invitation whose mailed link carries `token`: it must be to your verified
    address (else 422 naming `body.token`). Answers the workspace you joined, as
    POST /invitations/{id}/accept does."""
    users = UserRepository(session)
    if not await flows.is_verified(users, user):
        raise _refused(Refusal.UNVERIFIED)
    invitation = await invitations.mine_by_token(body.token)
    if invitation is None:
        raise BadInputError("body.token", TOKEN_NOT_VALID)
    return _done(await flows.accept(invitations, workspaces, users, user, invitation, limits))


@router.post(
    "/{invitation_id}/accept",
    response_model=WorkspaceResponse,
    responses=problem_responses(401, 403, 404, 409, 422, 503),
)
async def accept_invitation(
    invitation_id: InvitationId,
    invitations: InvitationRepositoryDep,
    workspaces: WorkspaceRepositoryDep,
    user: CurrentUserDep,
    session: SessionDep,
    limits: MembershipLimitsDep,
) -> WorkspaceView:
    """Accept an invitation to your verified address (403 until it is verified): you become
    a member with its role, and the answer is the workspace. Expired, revoked, declined or
    accepted ones are 409, as is one to a workspace you belong to already, or one past a
    cap (you in as many workspaces as an account may be, or the workspace as full as it
    may be; `/problems/limit-reached`)."""
    users = UserRepository(session)
    invitation = await invitations.mine(invitation_id)
    return _done(await flows.accept(invitations, workspaces, users, user, invitation, limits))


@router.post(
    "/{invitation_id}/decline",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=problem_responses(401, 403, 404, 409, 422, 503),
)
async def decline_invitation(
    invitation_id: InvitationId,
    invitations: InvitationRepositoryDep,
    user: CurrentUserDep,
    session: SessionDep,
) -> None:
    """Decline an invitation to your verified address; it cannot be accepted afterwards."""
    _done(await flows.decline(invitations, UserRepository(session), user, invitation_id))
