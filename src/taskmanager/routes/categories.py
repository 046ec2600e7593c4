"""Category routes: HTTP only; duplicate names are answered 409 by errors.py."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response, status
from fastapi.responses import JSONResponse

from taskmanager.dependencies import CategoryReaderDep, CategoryRepositoryDep, token_scope
from taskmanager.models import Category
from taskmanager.openapi import problem_responses, response_headers
from taskmanager.repositories.category_repository import CategoryRepository
from taskmanager.routes.idempotency import IdempotencyDep
from taskmanager.routes.permissions import row_for_change
from taskmanager.routes.preconditions import IfMatch, get_or_404, set_etag
from taskmanager.schemas import INT4_MAX, CategoryCreate, CategoryDetailResponse, CategoryUpdate
from taskmanager.security.access_tokens import TokenScope
from taskmanager.security.roles import Action

router = APIRouter(prefix="/categories", tags=["categories"])

CategoryId = Annotated[int, Path(ge=1, le=INT4_MAX, description="The category's id.")]
NOT_FOUND = "Category not found"


@router.post(
    "",
    response_model=CategoryDetailResponse,
    status_code=status.HTTP_201_CREATED,
    responses={
        201: {"headers": response_headers("Location", "ETag", "Idempotent-Replayed")},
        **problem_responses(401, 403, 409, 413, 422, 503),
    },
    openapi_extra=token_scope(TokenScope.TASKS_WRITE),
)
async def create_category(
    body: CategoryCreate,
    repo: CategoryRepositoryDep,
    idempotency: IdempotencyDep,
    request: Request,
    response: Response,
) -> Category | JSONResponse:
    """Create a category (403 for a viewer of the workspace named). With
    `Idempotency-Key`, a retry gets this response again."""
    if (replayed := await idempotency.replay(body)) is not None:
        return replayed
    category = await repo.create(body.name, body.workspace_id)
    location = str(request.url_for("get_category", category_id=category.id))
    await idempotency.created(response, CategoryDetailResponse, category, location)
    return category


@router.get(
    "",
    response_model=list[CategoryDetailResponse],
    responses=problem_responses(401, 422, 503),
    openapi_extra=token_scope(TokenScope.TASKS_READ),
)
async def list_categories(
    repo: CategoryReaderDep,
    workspace_id: Annotated[
        int | None,
        Query(ge=1, le=INT4_MAX, description="Only this workspace's categories."),
    ] = None,
) -> list[Category]:
    """Your categories (in every workspace you belong to), ordered by name."""
    return await repo.get_all(workspace_id)


@router.get(
    "/{category_id}",
    response_model=CategoryDetailResponse,
    responses={200: {"headers": response_headers("ETag")}, **problem_responses(401, 404, 422, 503)},
    openapi_extra=token_scope(TokenScope.TASKS_READ),
)
async def get_category(
    category_id: CategoryId, repo: CategoryReaderDep, response: Response
) -> Category:
    category = get_or_404(await repo.get_by_id(category_id), NOT_FOUND)
    set_etag(response, category.version)
    return category


@router.patch(
    "/{category_id}",
    response_model=CategoryDetailResponse,
    responses={
        200: {"headers": response_headers("ETag")},
        **problem_responses(401, 403, 404, 409, 412, 413, 422, 503),
    },
    openapi_extra=token_scope(TokenScope.TASKS_WRITE),
)
async def rename_category(
    category_id: CategoryId,
    body: CategoryUpdate,
    repo: CategoryRepositoryDep,
    response: Response,
    if_match: IfMatch = None,
) -> Category:
    """Rename (403 for a viewer of its workspace); with `If-Match`, only if the category is
    still at that ETag (else 412)."""
    category = await repo.rename(await _for_change(repo, category_id, if_match), body.name)
    set_etag(response, category.version)
    return category


@router.delete(
    "/{category_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=problem_responses(401, 403, 404, 412, 422, 503),
    openapi_extra=token_scope(TokenScope.TASKS_WRITE),
)
async def delete_category(
    category_id: CategoryId, repo: CategoryRepositoryDep, if_match: IfMatch = None
) -> None:
    """Delete a category (403 for a viewer of its workspace); its tasks stay,
    uncategorised."""
    await repo.delete(await _for_change(repo, category_id, if_match))


async def _for_change(repo: CategoryRepository, category_id: int, if_match: str | None) -> Category:
    """The category, locked, if the caller's role in its workspace may change it."""

    async def find(locked: bool) -> Category | None:
        return await repo.get_by_id(category_id, for_update=locked)

    return await row_for_change(find, repo.scope, Action.TASKS_WRITE, NOT_FOUND, if_match)
