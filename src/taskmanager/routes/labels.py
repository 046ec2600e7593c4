"""Label routes: HTTP only; duplicate names are answered 409 by errors.py."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response, status
from fastapi.responses import JSONResponse

from taskmanager.dependencies import LabelReaderDep, LabelRepositoryDep, token_scope
from taskmanager.models import Label
from taskmanager.openapi import problem_responses, response_headers
from taskmanager.repositories.label_repository import LabelRepository
from taskmanager.routes.idempotency import IdempotencyDep
from taskmanager.routes.permissions import row_for_change
from taskmanager.routes.preconditions import IfMatch, get_or_404, set_etag
from taskmanager.schemas import INT4_MAX, LabelCreate, LabelDetailResponse, LabelUpdate
from taskmanager.security.access_tokens import TokenScope
from taskmanager.security.roles import Action

router = APIRouter(prefix="/labels", tags=["labels"])

LabelId = Annotated[int, Path(ge=1, le=INT4_MAX, description="The label's id.")]
NOT_FOUND = "Label not found"


@router.post(
    "",
    response_model=LabelDetailResponse,
    status_code=status.HTTP_201_CREATED,
    responses={
        201: {"headers": response_headers("Location", "ETag", "Idempotent-Replayed")},
        **problem_responses(401, 403, 409, 413, 422, 503),
    },
    openapi_extra=token_scope(TokenScope.TASKS_WRITE),
)
async def create_label(
    body: LabelCreate,
    repo: LabelRepositoryDep,
    idempotency: IdempotencyDep,
    request: Request,
    response: Response,
) -> Label | JSONResponse:
    """Create a label (its name unique in the workspace, ignoring case; 403 for a viewer of
    the workspace named). With `Idempotency-Key`, a retry gets this response again."""
    if (replayed := await idempotency.replay(body)) is not None:
        return replayed
    label = await repo.create(body.name, body.colour, body.workspace_id)
    location = str(request.url_for("get_label", label_id=label.id))
    await idempotency.created(response, LabelDetailResponse, label, location)
    return label


@router.get(
    "",
    response_model=list[LabelDetailResponse],
    responses=problem_responses(401, 422, 503),
    openapi_extra=token_scope(TokenScope.TASKS_READ),
)
async def list_labels(
    repo: LabelReaderDep,
    workspace_id: Annotated[
        int | None,
        Query(ge=1, le=INT4_MAX, description="Only this workspace's labels."),
    ] = None,
) -> list[Label]:
    """Your labels (in every workspace you belong to), ordered by name ignoring case."""
    return await repo.get_all(workspace_id)


@router.get(
    "/{label_id}",
    response_model=LabelDetailResponse,
    responses={200: {"headers": response_headers("ETag")}, **problem_responses(401, 404, 422, 503)},
    openapi_extra=token_scope(TokenScope.TASKS_READ),
)
async def get_label(label_id: LabelId, repo: LabelReaderDep, response: Response) -> Label:
    label = get_or_404(await repo.get_by_id(label_id), NOT_FOUND)
    set_etag(response, label.version)
    return label


@router.patch(
    "/{label_id}",
    response_model=LabelDetailResponse,
    responses={
        200: {"headers": response_headers("ETag")},
        **problem_responses(401, 403, 404, 409, 412, 413, 422, 503),
    },
    openapi_extra=token_scope(TokenScope.TASKS_WRITE),
)
async def update_label(
    label_id: LabelId,
    body: LabelUpdate,
    repo: LabelRepositoryDep,
    response: Response,
    if_match: IfMatch = None,
) -> Label:
    """Rename or recolour (only the fields sent; a null colour clears it; 403 for a viewer
    of its workspace); with `If-Match`, only if the label is still at that ETag (else
    412)."""
    label = await _for_change(repo, label_id, if_match)
    label = await repo.update(label, body.model_dump(exclude_unset=True))
    set_etag(response, label.version)
    return label


@router.delete(
    "/{label_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=problem_responses(401, 403, 404, 412, 422, 503),
    openapi_extra=token_scope(TokenScope.TASKS_WRITE),
)
async def delete_label(
    label_id: LabelId, repo: LabelRepositoryDep, if_match: IfMatch = None
) -> None:
    """Delete a label (403 for a viewer of its workspace); it comes off every task that
    carried it."""
    await repo.delete(await _for_change(repo, label_id, if_match))


async def _for_change(repo: LabelRepository, label_id: int, if_match: str | None) -> Label:
    """The label, locked, if the caller's role in its workspace may change it."""

    async def find(locked: bool) -> Label | None:
        return await repo.get_by_id(label_id, for_update=locked)

    return await row_for_change(find, repo.scope, Action.TASKS_WRITE, NOT_FOUND, if_match)
