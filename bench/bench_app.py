"""The real app plus baseline routes kept outside the production app, for bench/run.py.

Baselines, all returning the same response model as the real routes:
- /bench/raw/tasks/{id}, /bench/raw/tasks: raw asyncpg (no ORM, no session): the floor.
- /bench/naive/tasks/{id}: the "naive ORM way" of the lecture's Part 3.4 — a plain route
  with `session.get` and the lecture's default-scope session dependency, no repository.
- /bench/layers/...: GET /tasks/{id} rebuilt one layer at a time (bench_layers.py), for
  `run.py --layers`. Left out when the service under test predates what they measure
  (`PYTHONPATH=<older checkout>/src`, see bench/README.md).
- With BENCH_NAIVE=1 (`run.py --naive`) only: variants of the naive route and pool-wait
  instrumentation (bench_naive.py), to show where its multi-second p99 comes from.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

import asyncpg
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Response
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import joinedload

from taskmanager.config import get_settings
from taskmanager.main import create_app
from taskmanager.models import Task
from taskmanager.schemas import CategoryResponse, TaskWithCategoryResponse

# The columns the response shows, by the response models' field names (declared once, in
# schemas.py): what every baseline selects.
_TASK_FIELDS = tuple(name for name in TaskWithCategoryResponse.model_fields if name != "category")
_CATEGORY_FIELDS = tuple(CategoryResponse.model_fields)
_TASK_COLUMNS = (
    ", ".join(
        [f"t.{name}" for name in _TASK_FIELDS]
        + [f"c.{name} AS category_{name}" for name in _CATEGORY_FIELDS]
    )
    + " FROM tasks t LEFT JOIN categories c ON c.id = t.category_id"
)

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
        CategoryResponse(**{name: row[f"category_{name}"] for name in _CATEGORY_FIELDS})
        if row["category_id"] is not None
        else None
    )
    return TaskWithCategoryResponse(**{name: row[name] for name in _TASK_FIELDS}, category=category)


@router.get("/raw/tasks/{task_id}", response_model=TaskWithCategoryResponse)
async def raw_get_task(task_id: int, request: Request) -> TaskWithCategoryResponse:
    pool = await _pool(request)
    row = await pool.fetchrow(f"SELECT {_TASK_COLUMNS} WHERE t.id = $1", task_id)
    if row is None:
        raise HTTPException(404, "Task not found")
    return _task_from_row(row)


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


def lecture_session_dependency(
    factory_of: Callable[[Request], async_sessionmaker[AsyncSession]],
) -> Callable[[Request], AsyncIterator[AsyncSession]]:
    """The lecture's get_async_session (Part 3.4), on the session factory `factory_of`
    picks for the request; declared at FastAPI's default dependency scope by its users."""

    async def get_async_session(request: Request) -> AsyncIterator[AsyncSession]:
        async with factory_of(request)() as session:
            try:
                yield session
                await session.commit()
            except Exception:
                await session.rollback()
                raise

    return get_async_session


def app_session_factory(request: Request) -> async_sessionmaker[AsyncSession]:
    """The app's own session factory (its engine and pool)."""
    factory: async_sessionmaker[AsyncSession] = request.app.state.async_session_factory
    return factory


_lecture_session = lecture_session_dependency(app_session_factory)


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
    try:
        from bench_layers import router as layers_router
    except ImportError as missing:
        # An older version of the service (PYTHONPATH=<checkout>/src) lacks what the layer
        # routes import: measure it without them. Any other import error is a bug.
        if missing.name != "taskmanager.repositories.task_repository":
            raise
    else:
        router.include_router(layers_router)
        # Right after the raw GET one route: each route FastAPI passes on the way costs CPU.
        router.routes.insert(1, router.routes.pop())
    if os.environ.get("BENCH_NAIVE") == "1":
        from bench_naive import install

        install(app, router)  # after the routes above: their routing stays as it was
    app.include_router(router)
    # Matched FIRST: FastAPI tries routes in order and every route it passes costs CPU
    # (~45 µs per request for a route behind all of the app's). The baselines must be the
    # floor, so they pay the least routing and the app's routes pay for passing these.
    app.router.routes.insert(0, app.router.routes.pop())
    return app
