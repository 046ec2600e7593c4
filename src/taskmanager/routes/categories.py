"""Category routes: HTTP only; duplicate names are answered 409 by errors.py."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Request, Response, status

from taskmanager.dependencies import CategoryRepositoryDep
from taskmanager.models import Category
from taskmanager.openapi import problem_responses
from taskmanager.schemas import INT4_MAX, CategoryCreate, CategoryDetailResponse, CategoryUpdate

router = APIRouter(prefix="/categories", tags=["categories"])

CategoryId = Annotated[int, Path(ge=1, le=INT4_MAX, description="The category's id.")]
NOT_FOUND = "Category not found"


async def _get_or_404(repo: CategoryRepositoryDep, category_id: int) -> Category:
    category = await repo.get_by_id(category_id)
    if category is None:
        raise HTTPException(status_code=404, detail=NOT_FOUND)
    return category


@router.post(
    "",
    response_model=CategoryDetailResponse,
    status_code=status.HTTP_201_CREATED,
    responses=problem_responses(409, 422),
)
async def create_category(
    body: CategoryCreate, repo: CategoryRepositoryDep, request: Request, response: Response
) -> Category:
    category = await repo.create(body.name)
    response.headers["Location"] = str(request.url_for("get_category", category_id=category.id))
    return category


@router.get("", response_model=list[CategoryDetailResponse])
async def list_categories(repo: CategoryRepositoryDep) -> list[Category]:
    """All categories, ordered by name."""
    return await repo.get_all()


@router.get(
    "/{category_id}", response_model=CategoryDetailResponse, responses=problem_responses(404, 422)
)
async def get_category(category_id: CategoryId, repo: CategoryRepositoryDep) -> Category:
    return await _get_or_404(repo, category_id)


@router.patch(
    "/{category_id}",
    response_model=CategoryDetailResponse,
    responses=problem_responses(404, 409, 422),
)
async def rename_category(
    category_id: CategoryId, body: CategoryUpdate, repo: CategoryRepositoryDep
) -> Category:
    category = await _get_or_404(repo, category_id)
    return await repo.rename(category, body.name)


@router.delete(
    "/{category_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=problem_responses(404, 422),
)
async def delete_category(category_id: CategoryId, repo: CategoryRepositoryDep) -> None:
    """Delete a category; its tasks stay, uncategorised."""
    await repo.delete(await _get_or_404(repo, category_id))
