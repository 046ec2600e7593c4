"""Task routes: HTTP only. No SQLAlchemy here, no commit: the session dependency owns the
transaction and commits before the response is sent."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response, status
from fastapi.responses import JSONResponse
from pydantic import Field
from starlette.datastructures import URLPath

from taskmanager.bad_input import BadInputError
from taskmanager.cache.task_reads import PageLoaded, TaskReads
from taskmanager.cursors import MAX_CURSOR_LENGTH, CursorCodec, InvalidCursorError, fingerprint
from taskmanager.dependencies import TaskReadsDep, TaskRepositoryDep, token_scope
from taskmanager.models import Task
from taskmanager.openapi import (
    PAGE_ETAG,
    not_modified_response,
    problem_responses,
    response_headers,
)
from taskmanager.repositories.task_queries.filters import TaskFilters
from taskmanager.repositories.task_queries.sorts import SORTS_NEEDING_Q, keyset
from taskmanager.repositories.task_queries.views import shown_digest, task_view
from taskmanager.repositories.task_repository import TaskRepository
from taskmanager.routes.idempotency import IdempotencyDep
from taskmanager.routes.permissions import row_for_change
from taskmanager.routes.preconditions import IfMatch, IfNoneMatch, get_or_404, set_etag
from taskmanager.schemas import (
    INT4_MAX,
    MAX_LABELS_PER_TASK,
    DueAt,
    Priority,
    StorableText,
    TaskCreate,
    TaskSort,
    TaskUpdate,
    TaskWithCategoryResponse,
)
from taskmanager.security.access_tokens import TokenScope
from taskmanager.security.roles import Action

router = APIRouter(prefix="/tasks", tags=["tasks"])

TaskId = Annotated[int, Path(ge=1, le=INT4_MAX, description="The task's id.")]
NOT_FOUND = "Task not found"
CHANGED_TASK_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"headers": response_headers("ETag")},
    **problem_responses(401, 403, 404, 412, 413, 422, 503),
}


@router.post(
    "",
    response_model=TaskWithCategoryResponse,
    status_code=status.HTTP_201_CREATED,
    responses={
        201: {"headers": response_headers("Location", "ETag", "Idempotent-Replayed")},
        **problem_responses(401, 403, 413, 422, 503),
    },
    openapi_extra=token_scope(TokenScope.TASKS_WRITE),
)
async def create_task(
    body: TaskCreate,
    repo: TaskRepositoryDep,
    idempotency: IdempotencyDep,
    request: Request,
    response: Response,
) -> Task | JSONResponse:
    """Create a task. `Location` names the new task's URL, `ETag` its version. A viewer of
    the workspace named gets 403.

    With `Idempotency-Key`, a retry (same key, same body) gets this response again and
    creates nothing."""
    if (replayed := await idempotency.replay(body)) is not None:
        return replayed
    task = await repo.create(
        title=body.title,
        description=body.description,
        category_id=body.category_id,
        completed=body.completed,
        workspace_id=body.workspace_id,
        due_at=body.due_at,
        priority=body.priority,
        label_ids=body.label_ids,
    )
    location = task_url(request, task.id)
    shows = shown_digest(task_view(task))
    await idempotency.created(response, TaskWithCategoryResponse, task, location, shows)
    return task


def task_url(request: Request, task_id: int) -> str:
    """`request.url_for("get_task", task_id=task_id)`, without its search of every route of
    the app for the name (~50 µs of CPU per POST): the route's path is known here."""
    return str(URLPath(f"{router.prefix}/{task_id}").make_absolute_url(request.base_url))


@router.get(
    "",
    response_model=list[TaskWithCategoryResponse],
    responses={
        200: {
            "headers": {
                **response_headers("X-Total-Count", "Link", "Cache-Control"),
                "ETag": PAGE_ETAG,
            }
        },
        **not_modified_response(PAGE_ETAG),
        **problem_responses(401, 422, 503),
    },
    openapi_extra=token_scope(TokenScope.TASKS_READ),
)
async def list_tasks(
    reads: TaskReadsDep,
    request: Request,
    if_none_match: IfNoneMatch = None,
    completed: Annotated[
        bool | None, Query(description="Only done (true) or open (false) tasks.")
    ] = None,
    category_id: Annotated[int | None, Query(ge=1, le=INT4_MAX)] = None,
    workspace_id: Annotated[
        int | None,
        Query(ge=1, le=INT4_MAX, description="Only this workspace's tasks (else all of yours)."),
    ] = None,
    q: Annotated[
        StorableText | None,
        Query(
            min_length=1,
            max_length=200,
            description="Words to search for in the title and the description: each word "
            'must begin a word of the task\'s ("mil" finds "Buy milk"), in any order, '
            'ignoring case. Not a substring match: "ilk" does not find "milk". A q '
            "without any word (only punctuation) is a 422.",
        ),
    ] = None,
    due_before: Annotated[
        DueAt | None, Query(description="Only tasks due before this moment.")
    ] = None,
    due_after: Annotated[
        DueAt | None, Query(description="Only tasks due at or after this moment.")
    ] = None,
    overdue: Annotated[
        bool | None,
        Query(description="Only tasks due in the past and still open (true), or all others."),
    ] = None,
    priority: Annotated[Priority | None, Query(description="Only tasks of this priority.")] = None,
    label_id: Annotated[
        list[Annotated[int, Field(ge=1, le=INT4_MAX)]] | None,
        Query(
            max_length=MAX_LABELS_PER_TASK,
            description="Only tasks that carry this label; repeat it for tasks that carry "
            "ALL of the labels named.",
        ),
    ] = None,
    sort: Annotated[
        TaskSort,
        Query(
            description="newest (default) or oldest first; due: soonest due first, no due "
            "date last; priority: most urgent first; title: alphabetical; relevance: best "
            "match for q first (needs q). Ties: by id."
        ),
    ] = "newest",
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
    offset: Annotated[
        int,
        Query(
            ge=0,
            le=INT4_MAX,
            description="Skip this many tasks (not with `cursor`); at most "
            "TASKMANAGER_MAX_OFFSET (10,000 unless configured): deeper pages are read by "
            "cursor.",
        ),
    ] = 0,
    cursor: Annotated[
        str | None,
        Query(
            max_length=MAX_CURSOR_LENGTH,
            description="Continue after the page this came from: take it, unchanged, from "
            'the `Link: <...>; rel="next"` header. Only with the same sort and filters.',
        ),
    ] = None,
    count: Annotated[
        bool | None,
        Query(
            description="Send `X-Total-Count` (it reads every matching task). Default: "
            "on pages without `cursor`, not on pages with one.",
        ),
    ] = None,
) -> Response:
    """Your tasks (in every workspace you belong to) newest first. `X-Total-Count` holds
    how many match the filters; `Link` (rel="next") the URL of the next page, if any."""
    if sort in SORTS_NEEDING_Q and not q:
        raise BadInputError("query.sort", f"{sort} needs q")
    max_offset = request.app.state.settings.max_offset
    if offset > max_offset:
        raise BadInputError(
            "query.offset",
            f"at most {max_offset}: read deeper pages by cursor, following the Link header's "
            'rel="next" URL',
        )
    filters = TaskFilters(
        completed=completed,
        category_id=category_id,
        q=q,
        workspace_id=workspace_id,
        due_before=due_before,
        due_after=due_after,
        overdue=overdue,
        priority=priority,
        label_ids=tuple(label_id or ()),
    )
    filters_fingerprint = fingerprint(filters)
    after = None
    if cursor is not None:
        after = _read_cursor(request, reads, cursor, offset, sort, filters_fingerprint)
    counted = cursor is None if count is None else count

    async def load(repo: TaskRepository, count_now: bool) -> PageLoaded:
        page = await repo.get_page(
            filters, limit=limit, offset=offset, sort=sort, after=after, counted=count_now
        )
        headers = {}
        if page.next_after is not None:
            next_cursor = _cursors(request, reads).issue(sort, filters_fingerprint, page.next_after)
            headers["Link"] = _next_link(request, next_cursor)
        return page.items, page.total, headers

    answer = await reads.page(
        url=str(request.url),
        filters_key=filters_fingerprint,
        counted=counted,
        load=load,
        cacheable=overdue is None,  # overdue moves with the clock, not with writes
    )
    return answer.response(if_none_match)


def _cursors(request: Request, reads: TaskReads) -> CursorCodec:
    """The caller's cursors, signed with the app's key."""
    return CursorCodec(request.app.state.signing_key, reads.user_id)


def _read_cursor(
    request: Request,
    reads: TaskReads,
    cursor: str,
    offset: int,
    sort: str,
    filters_fingerprint: str,
) -> tuple[object, ...]:
    """The sort keys the page continues after (InvalidCursorError if it cannot)."""
    if offset:
        message = "cannot be combined with offset: a cursor says where the page starts"
        raise InvalidCursorError(message)
    return _cursors(request, reads).read(
        cursor,
        sort=sort,
        filters_fingerprint=filters_fingerprint,
        key_types=keyset(sort).types,
    )


def _next_link(request: Request, next_cursor: str) -> str:
    """RFC 8288: this request's absolute URL with the next page's cursor (and no offset)."""
    url = request.url.remove_query_params("offset").include_query_params(cursor=next_cursor)
    return f'<{url}>; rel="next"'


@router.get(
    "/{task_id}",
    response_model=TaskWithCategoryResponse,
    responses={
        200: {"headers": response_headers("ETag", "Cache-Control")},
        **not_modified_response(),
        **problem_responses(401, 404, 422, 503),
    },
    openapi_extra=token_scope(TokenScope.TASKS_READ),
)
async def get_task(
    task_id: TaskId, reads: TaskReadsDep, if_none_match: IfNoneMatch = None
) -> Response:
    """One task; `ETag` is its version, for If-Match on a later change, and If-None-Match
    with it answers 304 while the task is unchanged."""
    return get_or_404(await reads.one(task_id), NOT_FOUND).response(if_none_match)


@router.patch(
    "/{task_id}",
    response_model=TaskWithCategoryResponse,
    responses=CHANGED_TASK_RESPONSES,
    openapi_extra=token_scope(TokenScope.TASKS_WRITE),
)
async def update_task(
    task_id: TaskId,
    body: TaskUpdate,
    repo: TaskRepositoryDep,
    response: Response,
    if_match: IfMatch = None,
) -> Task:
    """Change only the fields sent; an explicit null clears description or category_id.
    A viewer of the task's workspace gets 403.

    With `If-Match`, only if the task is still at that ETag (else 412)."""
    task = await _for_change(repo, task_id, if_match)
    task = await repo.update(task, body.model_dump(exclude_unset=True))
    set_etag(response, task.version, shown_digest(task_view(task)))
    return task


@router.put(
    "/{task_id}",
    response_model=TaskWithCategoryResponse,
    responses=CHANGED_TASK_RESPONSES,
    deprecated=True,
    openapi_extra=token_scope(TokenScope.TASKS_WRITE),
)
async def replace_task(
    task_id: TaskId,
    body: TaskUpdate,
    repo: TaskRepositoryDep,
    response: Response,
    if_match: IfMatch = None,
) -> Task:
    """The lecture's route, kept for its students: same partial semantics as PATCH."""
    return await update_task(task_id, body, repo, response, if_match)


@router.delete(
    "/{task_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=problem_responses(401, 403, 404, 412, 422, 503),
    openapi_extra=token_scope(TokenScope.TASKS_WRITE),
)
async def delete_task(task_id: TaskId, repo: TaskRepositoryDep, if_match: IfMatch = None) -> None:
    """Delete a task (403 for a viewer of its workspace); with `If-Match`, only if it is
    still at that ETag (else 412)."""
    await repo.delete(await _for_change(repo, task_id, if_match))


async def _for_change(repo: TaskRepository, task_id: int, if_match: str | None) -> Task:
    """The task, locked, if the caller's role in its workspace may change tasks."""

    async def find(locked: bool) -> Task | None:
        return await repo.get_by_id_with_category(task_id, for_update=locked)

    return await row_for_change(find, repo.scope, Action.TASKS_WRITE, NOT_FOUND, if_match)
