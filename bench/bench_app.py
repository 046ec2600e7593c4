"""The real app plus baseline routes kept outside the production app, for bench/run.py.

Baselines, all returning the same response model as the real routes:
- /bench/raw/tasks/{id}, /bench/raw/tasks: raw asyncpg (no ORM, no session): the floor.
- /bench/naive/tasks/{id}: the "naive ORM way" of the lecture's Part 3.4 — a plain route
  with `session.get` and the lecture's default-scope session dependency, no repository.
- /bench/layers/...: GET /tasks/{id} rebuilt one layer at a time, for `run.py --layers`:
  the repository's statement on an AsyncConnection, then in an AsyncSession, then with the
  session from the session-per-request dependency. The real route adds the repository's
  dependency on top; the differences say what each layer costs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Any

import asyncpg
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Response
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import joinedload

from taskmanager.config import get_settings
from taskmanager.database import SessionDep
from taskmanager.main import create_app
from taskmanager.models import Task

# The repository's own view statement and row mapping (private: this is a measurement).
from taskmanager.repositories.task_repository import _VIEW_BY_ID, TaskView, _task_view
from taskmanager.schemas import CategoryResponse, TaskWithCategoryResponse

_TASK_COLUMNS = """
    t.id, t.title, t.description, t.completed, t.created_at, t.updated_at, t.version,
    c.id AS category_id, c.name AS category_name
    FROM tasks t LEFT JOIN categories c ON c.id = t.category_id
"""

router = APIRouter(prefix="/bench", tags=["bench"])


def _asyncpg_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


_POOL_LOCK = asyncio.Lock()


async def _pool(request: Request) -> asyncpg.Pool:
    pool: asyncpg.Pool | None = getattr(request.app.state, "raw_pool", None)
    if pool is not None:
        return pool
    async with _POOL_LOCK:  # the first burst of requests must create ONE pool
        pool = getattr(request.app.state, "raw_pool", None)
        if pool is not None:
            return pool
        settings = get_settings()
        assert settings.database_url is not None
        pool = await asyncpg.create_pool(
            _asyncpg_dsn(settings.database_url),
            min_size=settings.pool_size + settings.max_overflow,
            max_size=settings.pool_size + settings.max_overflow,
        )
        request.app.state.raw_pool = pool
    return pool


def _task_from_row(row: Any) -> TaskWithCategoryResponse:
    category = (
        CategoryResponse(id=row["category_id"], name=row["category_name"])
        if row["category_id"] is not None
        else None
    )
    return TaskWithCategoryResponse(
        id=row["id"],
        title=row["title"],
        description=row["description"],
        completed=row["completed"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        version=row["version"],
        category=category,
    )


@router.get("/raw/tasks/{task_id}", response_model=TaskWithCategoryResponse)
async def raw_get_task(task_id: int, request: Request) -> TaskWithCategoryResponse:
    pool = await _pool(request)
    row = await pool.fetchrow(f"SELECT {_TASK_COLUMNS} WHERE t.id = $1", task_id)
    if row is None:
        raise HTTPException(404, "Task not found")
    return _task_from_row(row)


# ─── GET /tasks/{id}, one layer at a time (same statement, same response as the real route).
# Declared right after the raw route: each route FastAPI passes on the way costs CPU.


def _found(view: TaskView | None, response: Response) -> TaskView:
    if view is None:
        raise HTTPException(404, "Task not found")
    response.headers["ETag"] = f'"{view.version}"'
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


@router.get("/raw/tasks", response_model=list[TaskWithCategoryResponse])
async def raw_list_tasks(request: Request, limit: int = 50) -> list[TaskWithCategoryResponse]:
    pool = await _pool(request)
    rows = await pool.fetch(
        f"SELECT {_TASK_COLUMNS} ORDER BY t.created_at DESC, t.id DESC LIMIT $1", limit
    )
    return [_task_from_row(row) for row in rows]


@router.get("/raw/tasks-with-total", response_model=list[TaskWithCategoryResponse])
async def raw_list_tasks_with_total(
    request: Request, response: Response, limit: int = 50
) -> list[TaskWithCategoryResponse]:
    """The list endpoint's whole contract, raw: the page AND X-Total-Count, one round trip."""
    pool = await _pool(request)
    rows = await pool.fetch(
        f"SELECT (SELECT count(*) FROM tasks) AS total, {_TASK_COLUMNS} "
        "ORDER BY t.created_at DESC, t.id DESC LIMIT $1",
        limit,
    )
    response.headers["X-Total-Count"] = str(rows[0]["total"] if rows else 0)
    return [_task_from_row(row) for row in rows]


async def _lecture_session(request: Request) -> AsyncIterator[AsyncSession]:
    """The lecture's get_async_session, default dependency scope."""
    async with request.app.state.async_session_factory() as session:
        try:
            yield session
            await session.commit()
        except Exception:
            await session.rollback()
            raise


@router.get("/naive/tasks/{task_id}", response_model=TaskWithCategoryResponse)
async def naive_get_task(
    task_id: int, session: Annotated[AsyncSession, Depends(_lecture_session)]
) -> Task:
    task = await session.get(Task, task_id, options=[joinedload(Task.category)])
    if task is None:
        raise HTTPException(404, "Task not found")
    return task


def create_bench_app() -> FastAPI:
    app = create_app()
    app.include_router(router)
    # Matched FIRST: FastAPI tries routes in order and every route it passes costs CPU
    # (~45 µs per request for a route behind all of the app's). The baselines must be the
    # floor, so they pay the least routing and the app's routes pay for passing these.
    app.router.routes.insert(0, app.router.routes.pop())
    return app
