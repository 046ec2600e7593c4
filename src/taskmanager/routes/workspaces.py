"""Workspaces and their members. An id the caller may not see is 404; one they see but
may not change (a member acting as owner) is 403."""

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
)
from taskmanager.models import Workspace
from taskmanager.openapi import problem_responses, response_headers
from taskmanager.problems import CONFLICT, FORBIDDEN, ProblemError
from taskmanager.repositories.workspace_repository import MemberView, WorkspaceView
from taskmanager.routes.preconditions import IfMatch, get_for_change, get_or_404, set_etag
from taskmanager.schemas import (
    INT4_MAX,
    MemberAdd,
    MemberResponse,
    WorkspaceCreate,
    WorkspaceDetailResponse,
    WorkspaceResponse,
    WorkspaceUpdate,
)
from taskmanager.security.scope import Scope

router = APIRouter(prefix="/workspaces", tags=["workspaces"])

WorkspaceId = Annotated[int, Path(ge=1, le=INT4_MAX, description="The workspace's id.")]
UserId = Annotated[int, Path(ge=1, le=INT4_MAX, description="The member's user id.")]
NOT_FOUND = "Workspace not found"
MEMBER_NOT_FOUND = "Member not found"


def _owner_only(user: Scope, workspace_id: int) -> None:
    """404 for a workspace the caller cannot see, 403 for one they only belong to."""
    if not user.can_see(workspace_id):
        raise HTTPException(status_code=404, detail=NOT_FOUND)
    if not user.owns(workspace_id):
        raise ProblemError(FORBIDDEN.problem("only an owner of this workspace may do this"))


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
    account may already."""
    workspace_id = await repo.create(user.user_id, body.name, limits)
    # The scope was read at the start of the request; this one now includes the new id.
    joined = user.with_workspace(workspace_id, owner=True)
    view = await repo.get(joined, workspace_id)
    assert view is not None
    response.headers["Location"] = str(request.url_for("get_workspace", workspace_id=workspace_id))
    set_etag(response, view.version)
    members = await repo.members(joined, workspace_id)
    return {**asdict(view), "members": members}


@router.get("", response_model=list[WorkspaceResponse], responses=problem_responses(401, 503))
async def list_workspaces(repo: WorkspaceReaderDep, user: CurrentReaderDep) -> list[WorkspaceView]:
    """The workspaces you belong to, your personal one first, with your role in each."""
    return await repo.list_mine(user)


@router.get(
    "/{workspace_id}",
    response_model=WorkspaceDetailResponse,
    responses={200: {"headers": response_headers("ETag")}, **problem_responses(401, 404, 422, 503)},
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
    _owner_only(user, workspace_id)
    return get_for_change(await repo.get_for_change(user, workspace_id), NOT_FOUND, if_match)


@router.patch(
    "/{workspace_id}",
    response_model=WorkspaceDetailResponse,
    responses={
        200: {"headers": response_headers("ETag")},
        **problem_responses(401, 403, 404, 412, 413, 422, 503),
    },
)
async def rename_workspace(
    workspace_id: WorkspaceId,
    body: WorkspaceUpdate,
    repo: WorkspaceRepositoryDep,
    user: CurrentUserDep,
    response: Response,
    if_match: IfMatch = None,
) -> dict[str, object]:
    """Rename a workspace you own."""
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
)
async def delete_workspace(
    workspace_id: WorkspaceId,
    repo: WorkspaceRepositoryDep,
    user: CurrentUserDep,
    if_match: IfMatch = None,
) -> None:
    """Delete a workspace you own, with all its tasks and categories. Your personal
    workspace cannot be deleted (409)."""
    workspace = await _for_change(repo, user, workspace_id, if_match)
    if workspace_id == user.personal_workspace_id:
        raise ProblemError(CONFLICT.problem("your personal workspace cannot be deleted"))
    await repo.delete(workspace)


@router.post(
    "/{workspace_id}/members",
    response_model=MemberResponse,
    status_code=status.HTTP_201_CREATED,
    responses={
        201: {"headers": response_headers("Location")},
        **problem_responses(401, 403, 404, 409, 413, 422, 503),
    },
)
async def add_member(
    workspace_id: WorkspaceId,
    body: MemberAdd,
    repo: WorkspaceRepositoryDep,
    user: CurrentUserDep,
    request: Request,
    response: Response,
    limits: MembershipLimitsDep,
) -> MemberView:
    """Add the account with this email to a workspace you own; answers the new membership,
    at its own URL. 409 if it is a member already, if the workspace has as many members as
    it may, or if the account belongs to as many workspaces as an account may."""
    _owner_only(user, workspace_id)
    view = get_or_404(await repo.get(user, workspace_id), NOT_FOUND)
    if view.personal and body.role == "owner":
        raise ProblemError(
            CONFLICT.problem("a personal workspace has one owner; add people as members")
        )
    member_id = await repo.user_id_by_email(body.email)
    if member_id is None:
        raise BadInputError("body.email", "no account has this email")
    await repo.add_member(user, workspace_id, member_id, body.role, limits)
    member = await repo.member(user, workspace_id, member_id)
    assert member is not None  # just inserted, in a workspace the caller owns
    response.headers["Location"] = str(
        request.url_for("get_member", workspace_id=workspace_id, user_id=member_id)
    )
    return member


@router.get(
    "/{workspace_id}/members/{user_id}",
    response_model=MemberResponse,
    responses=problem_responses(401, 404, 422, 503),
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
)
async def remove_member(
    workspace_id: WorkspaceId,
    user_id: UserId,
    repo: WorkspaceRepositoryDep,
    user: CurrentUserDep,
) -> None:
    """Remove a member (an owner may remove anyone; anyone may leave). The last owner
    cannot leave (409): delete the workspace, or make someone else an owner first."""
    if not user.can_see(workspace_id):
        raise HTTPException(status_code=404, detail=NOT_FOUND)
    if user_id != user.user_id and not user.owns(workspace_id):
        raise ProblemError(FORBIDDEN.problem("only an owner may remove another member"))
    membership = get_or_404(await repo.membership(user, workspace_id, user_id), MEMBER_NOT_FOUND)
    if membership.role == "owner":
        owners = await repo.lock_owners(user, workspace_id)
        if list(owners) == [user_id]:
            raise ProblemError(
                CONFLICT.problem("the last owner cannot leave; delete the workspace instead")
            )
    # A personal workspace has one owner (add_member), so the check above keeps its owner.
    await repo.remove_member(user, workspace_id, user_id)
