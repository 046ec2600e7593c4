"""Task routes: HTTP only. No SQLAlchemy here, no commit: the session dependency owns the
transaction and commits before the response is sent."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, Request, Response, status

from taskmanager.dependencies import TaskRepositoryDep
from taskmanager.models import Task
from taskmanager.openapi import problem_responses
from taskmanager.repositories.task_repository import TaskFilters, TaskView
from taskmanager.schemas import (
    INT4_MAX,
    StorableText,
    TaskCreate,
    TaskUpdate,
    TaskWithCategoryResponse,
)

router = APIRouter(prefix="/tasks", tags=["tasks"])

TaskId = Annotated[int, Path(ge=1, le=INT4_MAX, description="The task's id.")]
NOT_FOUND = "Task not found"


async def _get_or_404(repo: TaskRepositoryDep, task_id: int) -> Task:
    task = await repo.get_by_id_with_category(task_id)
    if task is None:
        raise HTTPException(status_code=404, detail=NOT_FOUND)
    return task


@router.post(
    "",
    response_model=TaskWithCategoryResponse,
    status_code=status.HTTP_201_CREATED,
    responses=problem_responses(422),
)
async def create_task(
    body: TaskCreate, repo: TaskRepositoryDep, request: Request, response: Response
) -> Task:
    """Create a task. `Location` names the new task's URL."""
    task = await repo.create(
        title=body.title,
        description=body.description,
        category_id=body.category_id,
        completed=body.completed,
    )
    response.headers["Location"] = str(request.url_for("get_task", task_id=task.id))
    return task


@router.get("", response_model=list[TaskWithCategoryResponse], responses=problem_responses(422))
async def list_tasks(
    repo: TaskRepositoryDep,
    response: Response,
    completed: Annotated[
        bool | None, Query(description="Only done (true) or open (false) tasks.")
    ] = None,
    category_id: Annotated[int | None, Query(ge=1, le=INT4_MAX)] = None,
    q: Annotated[
        StorableText | None,
        Query(min_length=1, max_length=200, description="Case-insensitive substring of the title."),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
    offset: Annotated[int, Query(ge=0, le=INT4_MAX)] = 0,
) -> Sequence[TaskView]:
    """Tasks newest first. `X-Total-Count` holds how many match the filters."""
    filters = TaskFilters(completed=completed, category_id=category_id, q=q)
    page = await repo.get_page(filters, limit=limit, offset=offset)
    response.headers["X-Total-Count"] = str(page.total)
    return page.items


@router.get(
    "/{task_id}", response_model=TaskWithCategoryResponse, responses=problem_responses(404, 422)
)
async def get_task(task_id: TaskId, repo: TaskRepositoryDep) -> TaskView:
    task = await repo.get_view(task_id)
    if task is None:
        raise HTTPException(status_code=404, detail=NOT_FOUND)
    return task


@router.patch(
    "/{task_id}", response_model=TaskWithCategoryResponse, responses=problem_responses(404, 422)
)
async def update_task(task_id: TaskId, body: TaskUpdate, repo: TaskRepositoryDep) -> Task:
    """Change only the fields sent; an explicit null clears description or category_id."""
    task = await _get_or_404(repo, task_id)
    return await repo.update(task, body.model_dump(exclude_unset=True))


@router.put(
    "/{task_id}",
    response_model=TaskWithCategoryResponse,
    responses=problem_responses(404, 422),
    deprecated=True,
)
async def replace_task(task_id: TaskId, body: TaskUpdate, repo: TaskRepositoryDep) -> Task:
    """The lecture's route, kept for its students: same partial semantics as PATCH."""
    return await update_task(task_id, body, repo)


@router.delete(
    "/{task_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=problem_responses(404, 422),
)
async def delete_task(task_id: TaskId, repo: TaskRepositoryDep) -> None:
    task = await repo.get_by_id(task_id)
    if task is None:
        raise HTTPException(status_code=404, detail=NOT_FOUND)
    await repo.delete(task)
