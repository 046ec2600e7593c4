"""Workspaces and their members. An id the caller may not see is 404; one they see but
where their role does not allow the change (a viewer, a member or an admin acting as owner)
is 403 naming the roles that would (taskmanager.routes.permissions)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Request, Response, status

from taskmanager.bad_input import BadInputError
from taskmanager.dependencies import (
    CurrentReaderDep,
    CurrentUserDep,
    MembershipLimitsDep,
    WorkspaceReaderDep,
    WorkspaceRepositoryDep,
    token_scope,
)
from taskmanager.models import Workspace
from taskmanager.openapi import problem_responses, response_headers
from taskmanager.problems import CONFLICT, ProblemError
from taskmanager.repositories.workspace_repository import (
    MemberView,
    WorkspaceRepository,
    WorkspaceView,
)
from taskmanager.routes.permissions import require
from taskmanager.routes.preconditions import IfMatch, get_for_change, get_or_404, set_etag
from taskmanager.schemas import (
    INT4_MAX,
    MemberResponse,
    MemberUpdate,
    WorkspaceCreate,
    WorkspaceDetailResponse,
    WorkspaceResponse,
    WorkspaceTransfer,
    WorkspaceUpdate,
)
from taskmanager.security.access_tokens import TokenScope
from taskmanager.security.roles import Action, Role, owns
from taskmanager.security.scope import Scope

router = APIRouter(prefix="/workspaces", tags=["workspaces"])

WorkspaceId = Annotated[int, Path(ge=1, le=INT4_MAX, description="The workspace's id.")]
UserId = Annotated[int, Path(ge=1, le=INT4_MAX, description="The member's user id.")]
NOT_FOUND = "Workspace not found"
MEMBER_NOT_FOUND = "Member not found"


def _require(user: Scope, workspace_id: int, action: Action) -> None:
    """404 for a workspace the caller cannot see, 403 for one where their role does not
    allow `action`."""
    require(user, workspace_id, action, NOT_FOUND)


async def _detail(
    repo: WorkspaceReaderDep | WorkspaceRepositoryDep, user: Scope, workspace_id: int
) -> dict[str, object]:
    view = get_or_404(await repo.get(user, workspace_id), NOT_FOUND)
    members = await repo.members(user, workspace_id)
    return {**asdict(view), "members": members}


@router.post(
    "",
    response_model=WorkspaceDetailResponse,
    status_code=status.HTTP_201_CREATED,
    responses={
        201: {"headers": response_headers("Location", "ETag")},
        **problem_responses(401, 409, 413, 422, 503),
    },
    openapi_extra=token_scope(TokenScope.WORKSPACES_WRITE),
)
async def create_workspace(
    body: WorkspaceCreate,
    repo: WorkspaceRepositoryDep,
    user: CurrentUserDep,
    limits: MembershipLimitsDep,
    request: Request,
    response: Response,
) -> dict[str, object]:
    """A new workspace; you are its owner. 409 if you belong to as many workspaces as an
    account may already. A personal access token bound to a workspace makes none (403)."""
    user.require_unbound("a new workspace")
    workspace_id = await repo.create(user.user_id, body.name, limits)
    # The scope was read at the start of the request; this one now includes the new id.
    joined = user.with_workspace(workspace_id, Role.OWNER)
    view = await repo.get(joined, workspace_id)
    assert view is not None
    response.headers["Location"] = str(request.url_for("get_workspace", workspace_id=workspace_id))
    set_etag(response, view.version)
    members = await repo.members(joined, workspace_id)
    return {**asdict(view), "members": members}


@router.get(
    "",
    response_model=list[WorkspaceResponse],
    responses=problem_responses(401, 503),
    openapi_extra=token_scope(TokenScope.TASKS_READ),
)
async def list_workspaces(repo: WorkspaceReaderDep, user: CurrentReaderDep) -> list[WorkspaceView]:
    """The workspaces you belong to, your personal one first, with your role in each."""
    return await repo.list_mine(user)


@router.get(
    "/{workspace_id}",
    response_model=WorkspaceDetailResponse,
    responses={200: {"headers": response_headers("ETag")}, **problem_responses(401, 404, 422, 503)},
    openapi_extra=token_scope(TokenScope.TASKS_READ),
)
async def get_workspace(
    workspace_id: WorkspaceId, repo: WorkspaceReaderDep, user: CurrentReaderDep, response: Response
) -> dict[str, object]:
    """One of your workspaces, with its members."""
    detail = await _detail(repo, user, workspace_id)
    set_etag(response, int(str(detail["version"])))
    return detail


async def _for_change(
    repo: WorkspaceRepositoryDep, user: Scope, workspace_id: int, if_match: str | None
) -> Workspace:
    _require(user, workspace_id, Action.WORKSPACES_WRITE)
    return get_for_change(await repo.get_for_change(user, workspace_id), NOT_FOUND, if_match)


@router.patch(
    "/{workspace_id}",
    response_model=WorkspaceDetailResponse,
    responses={
        200: {"headers": response_headers("ETag")},
        **problem_responses(401, 403, 404, 412, 413, 422, 503),
    },
    openapi_extra=token_scope(TokenScope.WORKSPACES_WRITE),
)
async def rename_workspace(
    workspace_id: WorkspaceId,
    body: WorkspaceUpdate,
    repo: WorkspaceRepositoryDep,
    user: CurrentUserDep,
    response: Response,
    if_match: IfMatch = None,
) -> dict[str, object]:
    """Rename a workspace you own (403 for any other role)."""
    workspace = await _for_change(repo, user, workspace_id, if_match)
    await repo.rename(workspace, body.name)
    detail = await _detail(repo, user, workspace_id)
    set_etag(response, workspace.version)
    return detail


@router.delete(
    "/{workspace_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=problem_responses(401, 403, 404, 409, 412, 422, 503),
    openapi_extra=token_scope(TokenScope.WORKSPACES_WRITE),
)
async def delete_workspace(
    workspace_id: WorkspaceId,
    repo: WorkspaceRepositoryDep,
    user: CurrentUserDep,
    if_match: IfMatch = None,
) -> None:
    """Delete a workspace you own (403 for any other role), with all its tasks and
    categories. Your personal workspace cannot be deleted (409)."""
    workspace = await _for_change(repo, user, workspace_id, if_match)
    if workspace_id == user.personal_workspace_id:
        raise ProblemError(CONFLICT.problem("your personal workspace cannot be deleted"))
    await repo.delete(workspace)


@router.get(
    "/{workspace_id}/members/{user_id}",
    response_model=MemberResponse,
    responses=problem_responses(401, 404, 422, 503),
    openapi_extra=token_scope(TokenScope.TASKS_READ),
)
async def get_member(
    workspace_id: WorkspaceId, user_id: UserId, repo: WorkspaceReaderDep, user: CurrentReaderDep
) -> MemberView:
    """One member of a workspace you belong to."""
    if not user.can_see(workspace_id):
        raise HTTPException(status_code=404, detail=NOT_FOUND)
    return get_or_404(await repo.member(user, workspace_id, user_id), MEMBER_NOT_FOUND)


@router.delete(
    "/{workspace_id}/members/{user_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=problem_responses(401, 403, 404, 409, 422, 503),
    openapi_extra=token_scope(TokenScope.MEMBERS_WRITE),
)
async def remove_member(
    workspace_id: WorkspaceId,
    user_id: UserId,
    repo: WorkspaceRepositoryDep,
    user: CurrentUserDep,
) -> None:
    """Remove a member (an admin anyone but an owner, an owner anyone), or leave: anyone
    may remove themselves. The last owner cannot leave (409): transfer the workspace
    (POST /workspaces/{id}/transfer) or delete it first."""
    if not user.can_see(workspace_id):
        raise HTTPException(status_code=404, detail=NOT_FOUND)
    leaving = user_id == user.user_id
    if not leaving:
        user.require(workspace_id, Action.MEMBERS_WRITE)
    membership = get_or_404(await repo.membership(user, workspace_id, user_id), MEMBER_NOT_FOUND)
    role = Role(membership.role)
    if not leaving:
        user.require_managing(workspace_id, role)
    # A personal workspace has one owner (nobody is invited as another), so this keeps
    # its owner too.
    await _keep_an_owner(repo, user, workspace_id, user_id, role, "leave")
    await repo.remove_member(user, workspace_id, user_id)


@router.patch(
    "/{workspace_id}/members/{user_id}",
    response_model=MemberResponse,
    responses=problem_responses(401, 403, 404, 409, 413, 422, 503),
    openapi_extra=token_scope(TokenScope.MEMBERS_WRITE),
)
async def change_member_role(
    workspace_id: WorkspaceId,
    user_id: UserId,
    body: MemberUpdate,
    repo: WorkspaceRepositoryDep,
    user: CurrentUserDep,
) -> MemberView:
    """Give a member another role, as an admin (among admin, member and viewer) or an
    owner (any role; a personal workspace keeps its one owner: 409). The last owner
    cannot step down (409): transfer the workspace first."""
    _require(user, workspace_id, Action.MEMBERS_WRITE)
    membership = get_or_404(await repo.membership(user, workspace_id, user_id), MEMBER_NOT_FOUND)
    current, wanted = Role(membership.role), Role(body.role)
    user.require_managing(workspace_id, current)
    user.require_managing(workspace_id, wanted)
    if wanted != current:
        if owns(wanted):
            view = get_or_404(await repo.get(user, workspace_id), NOT_FOUND)
            if view.personal:
                raise ProblemError(CONFLICT.problem("a personal workspace has one owner"))
        elif owns(current):
            await _keep_an_owner(repo, user, workspace_id, user_id, current, "step down")
        await repo.set_role(user, workspace_id, user_id, wanted)
    member = await repo.member(user, workspace_id, user_id)
    assert member is not None  # a member of a workspace the caller belongs to
    return member


@router.post(
    "/{workspace_id}/transfer",
    response_model=WorkspaceDetailResponse,
    responses={
        200: {"headers": response_headers("ETag")},
        **problem_responses(401, 403, 404, 409, 413, 422, 503),
    },
    openapi_extra=token_scope(TokenScope.WORKSPACES_WRITE),
)
async def transfer_workspace(
    workspace_id: WorkspaceId,
    body: WorkspaceTransfer,
    repo: WorkspaceRepositoryDep,
    user: CurrentUserDep,
    response: Response,
) -> dict[str, object]:
    """Hand a workspace you own to one of its members: they become an owner, you an
    admin. A personal workspace cannot be transferred (409)."""
    workspace = await _for_change(repo, user, workspace_id, None)
    # Making someone an owner: only whoever may manage owners (a token needs every scope).
    user.require_managing(workspace_id, Role.OWNER)
    if workspace.personal:
        raise ProblemError(CONFLICT.problem("a personal workspace cannot be transferred"))
    if body.user_id == user.user_id:
        raise BadInputError("body.user_id", "you own this workspace already; name another member")
    if await repo.membership(user, workspace_id, body.user_id) is None:
        raise BadInputError("body.user_id", "no member of this workspace has this id")
    await repo.set_role(user, workspace_id, body.user_id, Role.OWNER)
    await repo.set_role(user, workspace_id, user.user_id, Role.ADMIN)
    detail = await _detail(repo, user, workspace_id)
    set_etag(response, workspace.version)
    return detail


async def _keep_an_owner(
    repo: WorkspaceRepository,
    user: Scope,
    workspace_id: int,
    user_id: int,
    role: Role,
    what: str,
) -> None:
    """409 if `user_id`, whose role is `role`, is the workspace's last owner (the owners'
    memberships locked meanwhile, so two owners leaving at once cannot both go)."""
    if not owns(role):
        return
    owners = await repo.lock_holders(user, workspace_id, Action.WORKSPACES_WRITE)
    if list(owners) == [user_id]:
        raise ProblemError(
            CONFLICT.problem(
                f"the last owner cannot {what}: transfer the workspace to another member "
                f"first (POST /workspaces/{workspace_id}/transfer), or delete it"
            )
        )
