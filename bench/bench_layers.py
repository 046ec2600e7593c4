"""GET /tasks/{id} rebuilt one layer at a time, for `bench/run.py --layers`.

Each route runs the repository's own view statement and returns the same response as the
real route; each adds one layer to the one before it: SQLAlchemy Core on an AsyncConnection,
then an AsyncSession, then the session from the session-per-request dependency. The real
route adds the repository's dependency on top. The differences say what each layer costs.
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, Response

from taskmanager.database import SessionDep

# The repository's own view statement and row mapping (private: this is a measurement).
from taskmanager.repositories.task_repository import _VIEW_BY_ID, TaskView, _task_view
from taskmanager.routes.preconditions import set_etag
from taskmanager.schemas import TaskWithCategoryResponse

router = APIRouter()


def _found(view: TaskView | None, response: Response) -> TaskView:
    if view is None:
        raise HTTPException(404, "Task not found")
    set_etag(response, view["version"])
    return view


@router.get("/layers/connection/tasks/{task_id}", response_model=TaskWithCategoryResponse)
async def layer_connection(task_id: int, request: Request, response: Response) -> TaskView:
    """SQLAlchemy Core on an AsyncConnection of the read sessions' (autocommit) engine."""
    async with request.app.state.read_session_factory.kw["bind"].connect() as connection:
        row = (await connection.execute(_VIEW_BY_ID, {"task_id": task_id})).one_or_none()
    return _found(None if row is None else _task_view(row), response)


@router.get("/layers/session/tasks/{task_id}", response_model=TaskWithCategoryResponse)
async def layer_session(task_id: int, request: Request, response: Response) -> TaskView:
    """The same in an AsyncSession opened and closed by the route itself."""
    async with request.app.state.read_session_factory() as session:
        row = (await session.execute(_VIEW_BY_ID, {"task_id": task_id})).one_or_none()
    return _found(None if row is None else _task_view(row), response)


@router.get("/layers/dependency/tasks/{task_id}", response_model=TaskWithCategoryResponse)
async def layer_dependency(task_id: int, session: SessionDep, response: Response) -> TaskView:
    """The same with the session from get_async_session (SessionDep, scope="function")."""
    row = (await session.execute(_VIEW_BY_ID, {"task_id": task_id})).one_or_none()
    return _found(None if row is None else _task_view(row), response)
