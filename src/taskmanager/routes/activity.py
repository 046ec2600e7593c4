"""The activity log: what changed in a workspace, or in one task, newest first. HTTP only:
the database writes the log (migration 0011); every member of a workspace may read it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, Request, Response

from taskmanager.cursors import MAX_CURSOR_LENGTH, CursorCodec, fingerprint
from taskmanager.dependencies import ActivityReaderDep, TaskReaderDep, token_scope
from taskmanager.models import Activity
from taskmanager.openapi import problem_responses, response_headers
from taskmanager.repositories.activity_repository import (
    CURSOR_KEY_TYPES,
    ActivityFilters,
    ActivityPage,
    ActivityRepository,
)
from taskmanager.schemas import INT4_MAX, ActivityResponse
from taskmanager.security.access_tokens import TokenScope

router = APIRouter(tags=["activity"])

WorkspaceId = Annotated[int, Path(ge=1, le=INT4_MAX, description="The workspace's id.")]
TaskId = Annotated[int, Path(ge=1, le=INT4_MAX, description="The task's id.")]
Limit = Annotated[int, Query(ge=1, le=100)]
Cursor = Annotated[
    str | None,
    Query(
        max_length=MAX_CURSOR_LENGTH,
        description="Continue after the page this came from: take it, unchanged, from the "
        '`Link: <...>; rel="next"` header. Only with the same filters.',
    ),
]
# A cursor's "sort": a cursor of GET /tasks cannot continue a page of activity.
ORDER = "activity"
RESPONSES = {200: {"headers": response_headers("Link")}, **problem_responses(401, 404, 422, 503)}


@router.get(
    "/workspaces/{workspace_id}/activity",
    response_model=list[ActivityResponse],
    responses=RESPONSES,
    openapi_extra=token_scope(TokenScope.TASKS_READ),
)
async def list_workspace_activity(
    workspace_id: WorkspaceId,
    repo: ActivityReaderDep,
    request: Request,
    response: Response,
    task_id: Annotated[
        int | None,
        Query(ge=1, le=INT4_MAX, description="Only the changes of this task (and its labels)."),
    ] = None,
    actor_id: Annotated[
        int | None, Query(ge=1, le=INT4_MAX, description="Only the changes this user made.")
    ] = None,
    kind: Annotated[
        str | None,
        Query(
            max_length=60,
            pattern=r"^[a-z_]+\.[a-z_]+$",
            description="Only changes of this kind, e.g. task.deleted.",
        ),
    ] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Sequence[Activity]:
    """What changed in a workspace you belong to, newest first: who, when, what, the
    fields before and after, and the request's X-Request-ID. `Link` (rel="next") holds the
    URL of the next page, if any."""
    if not repo.scope.can_see(workspace_id):
        raise HTTPException(status_code=404, detail="Workspace not found")
    filters = ActivityFilters(
        workspace_id=workspace_id, task_id=task_id, actor_id=actor_id, kind=kind
    )
    page = await _page(request, response, repo, filters, limit, cursor)
    return page.items


@router.get(
    "/tasks/{task_id}/activity",
    response_model=list[ActivityResponse],
    responses=RESPONSES,
    openapi_extra=token_scope(TokenScope.TASKS_READ),
)
async def list_task_activity(
    task_id: TaskId,
    repo: ActivityReaderDep,
    tasks: TaskReaderDep,
    request: Request,
    response: Response,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Sequence[Activity]:
    """A task's history, newest first (its labels' changes included). A deleted task's
    history stays readable while you belong to its workspace; 404 for a task you cannot
    see and have no history of."""
    page = await _page(request, response, repo, ActivityFilters(task_id=task_id), limit, cursor)
    if not page.items and cursor is None and await tasks.get_by_id(task_id) is None:
        raise HTTPException(status_code=404, detail="Task not found")
    return page.items


async def _page(
    request: Request,
    response: Response,
    repo: ActivityRepository,
    filters: ActivityFilters,
    limit: int,
    cursor: str | None,
) -> ActivityPage:
    """The page after `cursor` (a 422 if it is not one for these filters), with the next
    page's URL in `Link`."""
    codec = CursorCodec(request.app.state.signing_key, repo.scope.user_id)
    filters_fingerprint = fingerprint(filters)
    after = None
    if cursor is not None:
        (after,) = codec.read(
            cursor, sort=ORDER, filters_fingerprint=filters_fingerprint, key_types=CURSOR_KEY_TYPES
        )
    page = await repo.page(filters, limit=limit, after=after)
    if page.next_after is not None:
        next_cursor = codec.issue(ORDER, filters_fingerprint, (page.next_after,))
        # RFC 8288, as GET /tasks: this request's URL with the next page's cursor.
        url = request.url.include_query_params(cursor=next_cursor)
        response.headers["Link"] = f'<{url}>; rel="next"'
    return page
