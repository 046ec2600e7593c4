"""The real app plus the bench's own routes, kept outside the production app, for bench/run.py.

The in-app floors: raw asyncpg (no SQLAlchemy, no session, no dependency), each answering with
the same response model as the real route, at five levels of the work a request does
(`/bench/raw/{floor}/...`, see FLOORS). They are routes of this app, so every request to them
also pays for what the app adds around its routes (its middleware: request id, security
headers, access log, metrics, body limit; its exception handlers) and they send
hand-written SQL: what they measure is the difference between two levels (a step's cost).
What the app's routes are measured against is the separate floor, floor_app.py, a process of
its own without any of that, sending the app's own statements.

- `plain`: the statement alone (no transaction, no token): the floor before accounts.
- `tx`: the same in a transaction (BEGIN READ ONLY ... COMMIT for reads).
- `jwt`: + the access token verified (PyJWT, HS256, the claims that
  taskmanager.security.tokens requires).
- `scope`: + the caller entered in ONE statement, taskmanager_enter with the service's
  proof (an HMAC the floor makes, as the app does): the proof checked, the user and login
  session checked, the memberships read, the caller sealed (taskmanager's own statement,
  UserRepository._ENTER, minus its switch to the caller role), and the statement limited
  to the caller's workspaces. The floors log in as a superuser, so row-level security does
  not apply yet.
- `rls`: + the switch to the caller role in that same statement, exactly as the app
  enters a request's transaction: every statement after it goes through the policies. The
  work the real route does, behind the app's middleware.

Also: `GET /bench/connections`, the connections the app's SQLAlchemy pools and the floors'
asyncpg pool have opened so far (run.py reads it before and after each load run); the
"naive ORM way" of the lecture's Part 3.4 (`/bench/naive/tasks/{id}`, for `run.py
--naive`); GET /tasks/{id} rebuilt one layer at a time (bench_layers.py, `run.py --layers`);
with BENCH_NAIVE=1 (`run.py --naive`) variants of the naive route and pool-wait
instrumentation (bench_naive.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any

import asyncpg
import floor_app
from driver_sql import ENTER_SQL
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Response
from floor_app import claims, create_pool, unauthorized
from lecture_setup import (
    add_lecture_engine,
    floor_database_url,
    lecture_session_dependency,
    lecture_session_factory,
    naive_read,
)
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.pool import Pool

from taskmanager.config import get_settings
from taskmanager.main import create_app
from taskmanager.models import Task
from taskmanager.routes.preconditions import set_etag
from taskmanager.schemas import (
    CategoryResponse,
    TaskCreate,
    TaskUpdate,
    TaskWithCategoryResponse,
)
from taskmanager.security import tokens
from taskmanager.security.caller_key import CallerKey

# The columns the response shows, by the response models' field names (declared once, in
# schemas.py): what every floor selects.
_TASK_FIELDS = tuple(
    name for name in TaskWithCategoryResponse.model_fields if name not in ("category", "labels")
)
_CATEGORY_FIELDS = tuple(CategoryResponse.model_fields)
# A task's labels as the repository reads them: one JSON array per task, a correlated
# subquery (under the policies of task_labels and labels on the `rls` floor).
_LABELS = (
    "(SELECT coalesce(json_agg(json_build_object('id', l.id, 'name', l.name, "
    "'colour', l.colour) ORDER BY lower(l.name), l.id), '[]'::json) "
    "FROM task_labels tl JOIN labels l ON l.id = tl.label_id WHERE tl.task_id = t.id) AS labels"
)
_TASK_COLUMNS = ", ".join(
    [f"t.{name}" for name in _TASK_FIELDS]
    + [f"c.{name} AS category_{name}" for name in _CATEGORY_FIELDS]
    + [_LABELS]
)
_FROM = "FROM tasks t LEFT JOIN categories c ON c.id = t.category_id"
_IN_SCOPE = "t.workspace_id = ANY($2::integer[])"
_ONE = f"SELECT {_TASK_COLUMNS} {_FROM} WHERE t.id = $1"
_ONE_SCOPED = f"{_ONE} AND {_IN_SCOPE}"
# The page and the total in one statement (the total as an uncorrelated scalar subquery),
# as TaskRepository.get_page sends it.
_PAGE = (
    f"SELECT {_TASK_COLUMNS}, (SELECT count(*) FROM tasks) AS total {_FROM} "
    "ORDER BY t.created_at DESC, t.id DESC LIMIT $1 OFFSET $2"
)
_PAGE_SCOPED = (
    f"SELECT {_TASK_COLUMNS}, (SELECT count(*) FROM tasks t WHERE {_IN_SCOPE}) AS total "
    f"{_FROM} WHERE {_IN_SCOPE} ORDER BY t.created_at DESC, t.id DESC LIMIT $1 OFFSET $3"
)
_INSERT = (
    "INSERT INTO tasks (workspace_id, title, description, completed, category_id, version) "
    "VALUES ($1, $2, $3, $4, $5, 1) "
    "RETURNING id, created_at, updated_at, due_at, priority, completed_at"
)
_UPDATE_TITLE = (
    "UPDATE tasks SET title = $1, version = $2, updated_at = now() WHERE id = $3 "
    "RETURNING updated_at"
)

# The app's own statement for entering a request's transaction, with asyncpg's
# placeholders; and the same without its switch to the caller role (the `scope` floor).
_SCOPE_WITH_ROLE = ENTER_SQL
_SCOPE_WITHOUT_ROLE = re.sub(
    r",\s*set_config\('role', e.caller_role, true\) AS role", "", _SCOPE_WITH_ROLE
)
assert _SCOPE_WITHOUT_ROLE != _SCOPE_WITH_ROLE, "the scope statement changed: update the bench"


@dataclass(frozen=True)
class Floor:
    """How much of a request's work a floor does (module docstring)."""

    transaction: bool
    token: bool
    scope: bool
    role: bool


FLOORS = {
    "plain": Floor(transaction=False, token=False, scope=False, role=False),
    "tx": Floor(transaction=True, token=False, scope=False, role=False),
    "jwt": Floor(transaction=True, token=True, scope=False, role=False),
    "scope": Floor(transaction=True, token=True, scope=True, role=False),
    "rls": Floor(transaction=True, token=True, scope=True, role=True),
}

# ─────────────────────────────────────────────── connections opened, counted

CONNECTIONS = {"app": 0}


@event.listens_for(Pool, "connect")
def _count_app_connection(dbapi_connection: Any, record: Any) -> None:
    """Every new connection any SQLAlchemy pool of this process opens (the app's engine)."""
    CONNECTIONS["app"] += 1


# ─────────────────────────────────────────────── the floors

floors = APIRouter(prefix="/bench/raw", tags=["bench"])

_POOL_LOCK = asyncio.Lock()


async def _pool(request: Request) -> asyncpg.Pool:
    """The floors' pool (floor_app.create_pool: as the separate floor's, no reset query),
    logged in as BENCH_FLOOR_DATABASE_URL's superuser, made on first use."""
    pool: asyncpg.Pool | None = getattr(request.app.state, "raw_pool", None)
    if pool is not None:
        return pool
    async with _POOL_LOCK:  # the first burst of requests must create ONE pool
        created_meanwhile: asyncpg.Pool | None = getattr(request.app.state, "raw_pool", None)
        if created_meanwhile is not None:
            return created_meanwhile
        settings = get_settings()
        size = settings.pool_size + settings.max_overflow
        request.app.state.raw_pool = pool = await create_pool(floor_database_url(), size)
    return pool


def _caller_key(request: Request) -> CallerKey:
    key: CallerKey = request.app.state.caller_key
    return key


def _floor(name: str) -> Floor:
    floor = FLOORS.get(name)
    if floor is None:
        raise HTTPException(404, f"no floor {name!r}; the floors are {', '.join(FLOORS)}")
    return floor


@dataclass(frozen=True)
class _Caller:
    workspace_ids: list[int] | None  # None: not scoped (floors below `scope`)
    personal_workspace_id: int


def _bench_workspace_id() -> int:
    """Where unscoped floors put new tasks: the seeded account's workspace (run.py says)."""
    return int(os.environ["BENCH_WORKSPACE_ID"])


async def _enter(
    connection: Any, floor: Floor, verified: tuple[int, uuid.UUID, int] | None, key: CallerKey
) -> _Caller:
    if not floor.scope:
        return _Caller(None, _bench_workspace_id())
    assert verified is not None
    statement = _SCOPE_WITH_ROLE if floor.role else _SCOPE_WITHOUT_ROLE
    user_id, session_id, expires = verified
    entry = key.entry("request", user_id, session_id, valid_until=expires + tokens.LEEWAY_SECONDS)
    row = await connection.fetchrow(
        statement, user_id, session_id, entry.purpose, entry.valid_until, entry.proof, None, ""
    )
    if row is None:
        raise unauthorized()
    return _Caller(list(row["workspace_ids"]), row["personal_workspace_id"])


@contextlib.asynccontextmanager
async def _connection(
    request: Request, floor: Floor, *, readonly: bool
) -> AsyncIterator[tuple[Any, _Caller]]:
    """A pooled connection with the floor's share of the work done: token verified (before
    the connection is taken, as the app does), transaction begun, scope entered."""
    verified = claims(request, request.app.state.signing_key) if floor.token else None
    pool = await _pool(request)
    async with pool.acquire() as connection:
        transaction: contextlib.AbstractAsyncContextManager[Any] = (
            connection.transaction(readonly=readonly)
            if floor.transaction
            else contextlib.nullcontext()
        )
        async with transaction:
            yield connection, await _enter(connection, floor, verified, _caller_key(request))


def _scoped(statement: str, scoped_statement: str, caller: _Caller) -> tuple[str, list[Any]]:
    if caller.workspace_ids is None:
        return statement, []
    return scoped_statement, [caller.workspace_ids]


def _task_from_row(row: Any) -> TaskWithCategoryResponse:
    category = (
        CategoryResponse(**{name: row[f"category_{name}"] for name in _CATEGORY_FIELDS})
        if row["category_id"] is not None
        else None
    )
    return TaskWithCategoryResponse(
        **{name: row[name] for name in _TASK_FIELDS},
        category=category,
        labels=row.get("labels", []),  # decoded by the pool's json codec
    )


@floors.get("/{floor}/tasks/{task_id}", response_model=TaskWithCategoryResponse)
async def floor_get_task(
    floor: str, task_id: int, request: Request, response: Response
) -> TaskWithCategoryResponse:
    async with _connection(request, _floor(floor), readonly=True) as (connection, caller):
        statement, scope = _scoped(_ONE, _ONE_SCOPED, caller)
        row = await connection.fetchrow(statement, task_id, *scope)
    if row is None:
        raise HTTPException(404, "Task not found")
    set_etag(response, row["version"])
    return _task_from_row(row)


@floors.get("/{floor}/tasks", response_model=list[TaskWithCategoryResponse])
async def floor_list_tasks(
    floor: str, request: Request, response: Response, limit: int = 50, offset: int = 0
) -> list[TaskWithCategoryResponse]:
    """A page and X-Total-Count in one statement, as the list endpoint answers."""
    async with _connection(request, _floor(floor), readonly=True) as (connection, caller):
        if caller.workspace_ids is None:
            rows = await connection.fetch(_PAGE, limit, offset)
        else:
            rows = await connection.fetch(_PAGE_SCOPED, limit, caller.workspace_ids, offset)
    response.headers["X-Total-Count"] = str(rows[0]["total"] if rows else 0)
    return [_task_from_row(row) for row in rows]


@floors.post("/{floor}/tasks", response_model=TaskWithCategoryResponse, status_code=201)
async def floor_create_task(
    floor: str, request: Request, response: Response
) -> TaskWithCategoryResponse:
    """INSERT ... RETURNING in a transaction (a task without a category: nothing to load)."""
    body = TaskCreate.model_validate_json(await request.body())
    async with _connection(request, _floor(floor), readonly=False) as (connection, caller):
        workspace_id = body.workspace_id or caller.personal_workspace_id
        row = await connection.fetchrow(
            _INSERT, workspace_id, body.title, body.description, body.completed, None
        )
    assert row is not None
    response.headers["Location"] = str(request.url_for("get_task", task_id=row["id"]))
    set_etag(response, 1)
    return TaskWithCategoryResponse(
        id=row["id"],
        workspace_id=workspace_id,
        title=body.title,
        description=body.description,
        completed=body.completed,
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        due_at=row["due_at"],
        priority=row["priority"],
        completed_at=row["completed_at"],
        version=1,
        category=None,
        labels=[],
    )


@floors.patch("/{floor}/tasks/{task_id}", response_model=TaskWithCategoryResponse)
async def floor_update_task(
    floor: str, task_id: int, request: Request, response: Response
) -> TaskWithCategoryResponse:
    """The task read and locked (SELECT ... FOR UPDATE), then changed, as PATCH does. The
    bench changes titles only."""
    changes = TaskUpdate.model_validate_json(await request.body()).model_dump(exclude_unset=True)
    if set(changes) - {"title"}:
        raise HTTPException(422, "the floor changes titles only")
    async with _connection(request, _floor(floor), readonly=False) as (connection, caller):
        statement, scope = _scoped(_ONE, _ONE_SCOPED, caller)
        row = await connection.fetchrow(f"{statement} FOR UPDATE OF t", task_id, *scope)
        if row is None:
            raise HTTPException(404, "Task not found")
        task = _task_from_row(row)
        if "title" in changes and changes["title"] != task.title:
            updated_at = await connection.fetchval(
                _UPDATE_TITLE, changes["title"], task.version + 1, task_id
            )
            task = task.model_copy(
                update={
                    "title": changes["title"],
                    "version": task.version + 1,
                    "updated_at": updated_at,
                }
            )
    set_etag(response, task.version)
    return task


# ─────────────────────────────────────────────── everything else the bench serves

router = APIRouter(prefix="/bench", tags=["bench"])


@router.get("/connections")
async def connections() -> dict[str, int]:
    """Connections opened so far by the app's SQLAlchemy pools and by the floors' pool."""
    return {"app": CONNECTIONS["app"], "floors": floor_app.CONNECTIONS_OPENED}


_lecture_session = lecture_session_dependency(lecture_session_factory)


@router.get("/naive/tasks/{task_id}", response_model=TaskWithCategoryResponse)
async def naive_get_task(
    task_id: int, session: Annotated[AsyncSession, Depends(_lecture_session)]
) -> Task:
    return await naive_read(session, task_id)


def create_bench_app() -> FastAPI:
    app = create_app()
    add_lecture_engine(app)
    front: list[APIRouter] = [floors]
    if os.environ.get("BENCH_LAYERS") == "1":
        from bench_layers import router as layers_router

        front.append(layers_router)
    if os.environ.get("BENCH_NAIVE") == "1":
        from bench_naive import install

        install(app, router)
    app.include_router(router)  # behind the app's routes: not measured against them
    # The floors (and the layers, in --layers) are matched FIRST: FastAPI tries routes in
    # order and every route it passes costs CPU (~45 µs per request for a route behind all
    # of the app's). The floors must be the floor, so they pay the least routing, and the
    # app's routes pay for passing their four routes.
    for extra in reversed(front):
        before = len(app.router.routes)
        app.include_router(extra)
        added = app.router.routes[before:]
        del app.router.routes[before:]
        app.router.routes[0:0] = added
    return app
