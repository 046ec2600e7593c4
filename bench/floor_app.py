"""The separate floor: a minimal FastAPI + asyncpg app doing what the app's task routes send.

bench/run.py runs it in a uvicorn process of its own (1 worker, uvloop, httptools, as the app's
server), on the same database and with the same login as the app, and compares each of the
app's scenarios with the same request here (`vs separate floor`). A floor must not pay for
anything the app adds, so this app has no middleware (no request id, security headers, access
log, metrics, body limit), no SQLAlchemy session, no dependency: four routes at the app's own
paths, each sending PostgreSQL exactly the app's statements and answering the same body and
headers (ETag, X-Total-Count and Link, Location; the reads' Cache-Control):

- `GET /tasks/{id}`: BEGIN READ ONLY, the scope statement, the view statement, COMMIT.
- `GET /tasks?limit=50`: BEGIN READ ONLY, the scope statement, the page with its total (one
  row more than the page, for the next page's cursor), COMMIT.
- `POST /tasks`: BEGIN, the scope statement, INSERT ... RETURNING, COMMIT.
- `PATCH /tasks/{id}` (a new title): BEGIN, the scope statement, SELECT ... FOR UPDATE (the
  task with its category), UPDATE ... RETURNING, the task's labels, COMMIT.

The statements are the app's own, compiled once at start-up by SQLAlchemy's asyncpg dialect
(driver_sql.compiled): the same text, casts and parameters, prepared and cached by asyncpg as
the app's are; no SQLAlchemy runs per request. The two reads answer through the app's own
serialization (taskmanager.cache.task_reads: task_answer, page_answer: the response model's
JSON, and for a page its ETag, a digest of body and headers). The scope statement is
UserRepository's, with the service's proof made as the app makes it (CallerKey), and the
access token is verified as taskmanager.security.tokens.read_access_token verifies it. The
pool: asyncpg's, as many connections as the app's pool holds, none closed for idling, the
same connection settings as the app's engine (statement_timeout, json and jsonb decoded by
the driver) and no reset query when a connection goes back (the app's pool sends none
either; asyncpg's default would add `SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN
*; RESET ALL;`, a round trip per request).

bench_app.py's in-app floors share the token check and the pool from here.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import jwt
from driver_sql import compiled
from fastapi import FastAPI, HTTPException, Request, Response
from sqlalchemy import bindparam, func, insert, update

from taskmanager.cache.task_reads import page_answer, task_answer
from taskmanager.cursors import CursorCodec, fingerprint
from taskmanager.models import Task
from taskmanager.repositories import task_repository
from taskmanager.repositories.task_queries.filters import TaskFilters
from taskmanager.repositories.task_queries.statements import page_statement
from taskmanager.repositories.task_queries.task_labels import LABELS_OF
from taskmanager.repositories.task_queries.views import VIEW_BY_ID, shown_digest
from taskmanager.repositories.user_repository import _ENTER_ROW
from taskmanager.routes.preconditions import etag
from taskmanager.schemas import TaskCreate, TaskUpdate, TaskWithCategoryResponse
from taskmanager.security import tokens
from taskmanager.security.caller_key import CallerKey

APPLICATION_NAME = "taskmanager_floor"  # what PostgreSQL's log and pg_stat_activity show

# ─────────────────────────────────────────────── the app's statements, compiled once

_TASKS = Task.__table__
ENTER = compiled(_ENTER_ROW)
VIEW = compiled(VIEW_BY_ID)
PAGE = compiled(page_statement((), "newest", counted=True))
FOR_UPDATE = compiled(task_repository._BY_ID_WITH_CATEGORY_FOR_UPDATE)
LABELS = compiled(LABELS_OF)
# What the ORM's flush sends for a new task and for a new title (the same text: the bench's
# wire check, bench/pg_wire.py, compares the statements both apps send).
_INSERTED = (
    "workspace_id", "title", "description", "completed", "category_id", "due_at",
    "priority", "completed_at", "version",
)  # fmt: skip
_RETURNED = ("id", "due_key", "priority_rank", "created_at", "updated_at")
INSERT = compiled(
    insert(_TASKS)
    .values({name: bindparam(name, type_=_TASKS.c[name].type) for name in _INSERTED})
    .returning(*(_TASKS.c[name] for name in _RETURNED))
)
UPDATE_TITLE = compiled(
    update(_TASKS)
    .where(_TASKS.c.id == bindparam("task_id", type_=_TASKS.c.id.type))
    .values(
        title=bindparam("title", type_=_TASKS.c.title.type),
        updated_at=func.now(),
        version=bindparam("version", type_=_TASKS.c.version.type),
    )
    .returning(_TASKS.c.due_key, _TASKS.c.priority_rank, _TASKS.c.updated_at)
)
STATEMENTS = {
    "enter": ENTER,
    "view": VIEW,
    "page": PAGE,
    "for update": FOR_UPDATE,
    "labels": LABELS,
    "insert": INSERT,
    "update title": UPDATE_TITLE,
}

_TASK_FIELDS = tuple(
    name for name in TaskWithCategoryResponse.model_fields if name not in ("category", "labels")
)
_DEFAULT_FILTERS = fingerprint(TaskFilters())  # the list's filters: none
# The app sends the request's X-Request-ID (32 hex digits) with the scope statement; the
# floor, which makes no request ids, a constant of that length.
_REQUEST_ID = "0" * 32

# ─────────────────────────────────────────────── the pool, counted

CONNECTIONS_OPENED = 0  # every connection a floor pool of this process has opened


async def _init_connection(connection: asyncpg.Connection) -> None:
    """Count it; json and jsonb as the app's engine has them (SQLAlchemy's asyncpg dialect
    sets these codecs on each new connection: binary, decoded by json.loads)."""
    global CONNECTIONS_OPENED
    CONNECTIONS_OPENED += 1
    await connection.set_type_codec(
        "json",
        encoder=str.encode,
        decoder=lambda value: json.loads(value.decode()),
        schema="pg_catalog",
        format="binary",
    )
    await connection.set_type_codec(
        "jsonb",
        encoder=lambda value: b"\x01" + value.encode(),
        decoder=lambda value: json.loads(value[1:].decode()),  # after jsonb's version byte
        schema="pg_catalog",
        format="binary",
    )


async def _no_reset(connection: asyncpg.Connection) -> None:
    """A connection goes back to the pool as the app's does: without a reset query."""


def asyncpg_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def create_pool(
    url: str, size: int, server_settings: dict[str, str] | None = None
) -> asyncpg.Pool:
    """`size` connections, opened at once and never closed for idling (no reconnects)."""
    pool: asyncpg.Pool = await asyncpg.create_pool(
        asyncpg_dsn(url),
        min_size=size,
        max_size=size,
        init=_init_connection,
        reset=_no_reset,
        max_inactive_connection_lifetime=0,
        server_settings=server_settings,
    )
    return pool


# ─────────────────────────────────────────────── the access token


def unauthorized() -> HTTPException:
    return HTTPException(401, "not authenticated", headers={"WWW-Authenticate": "Bearer"})


def claims(request: Request, signing_key: str) -> tuple[int, uuid.UUID, int]:
    """The access token verified as taskmanager.security.tokens.read_access_token verifies
    it: (user id, login session id, expiry)."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise unauthorized()
    try:
        verified = jwt.decode(
            token,
            signing_key,
            algorithms=[tokens.ALGORITHM],
            audience=tokens.AUDIENCE,
            issuer=tokens.ISSUER,
            leeway=tokens.LEEWAY_SECONDS,
            options={"require": list(tokens.REQUIRED_CLAIMS)},
        )
        return int(verified["sub"]), uuid.UUID(verified["sid"]), int(verified["exp"])
    except (jwt.InvalidTokenError, ValueError, TypeError):
        raise unauthorized() from None


# ─────────────────────────────────────────────── the routes


@contextlib.asynccontextmanager
async def _entered(request: Request, *, readonly: bool) -> AsyncIterator[tuple[Any, Any]]:
    """The token verified (before a connection is taken, as the app does), a transaction
    begun and the caller entered with the app's scope statement: (connection, its row)."""
    user_id, session_id, expires = claims(request, request.app.state.signing_key)
    key: CallerKey = request.app.state.caller_key
    entry = key.entry("request", user_id, session_id, valid_until=expires + tokens.LEEWAY_SECONDS)
    pool: asyncpg.Pool = request.app.state.pool
    async with pool.acquire() as connection, connection.transaction(readonly=readonly):
        caller = await connection.fetchrow(
            ENTER.sql,
            *ENTER.arguments(
                user_id=entry.user_id,
                session_id=entry.session_id,
                purpose=entry.purpose,
                valid_until=entry.valid_until,
                proof=entry.proof,
                subject=entry.subject,
                request_id=_REQUEST_ID,
            ),
        )
        if caller is None:
            raise unauthorized()
        yield connection, caller


def _view(row: Any) -> dict[str, Any]:
    """A row of the view's columns as the app's view (task_queries.views.row_view)."""
    view = {name: row[name] for name in _TASK_FIELDS}
    view["category"] = (
        None
        if row["category_id"] is None
        else {"id": row["category_id"], "name": row["category_name"]}
    )
    view["labels"] = row["labels"]
    return view


def _not_found() -> HTTPException:
    return HTTPException(404, "Task not found")


def _etag(response: Response, version: int, shows: str | None = None) -> None:
    response.headers["ETag"] = etag(version, shows)  # routes/preconditions.py's set_etag


async def get_task(task_id: int, request: Request) -> Response:
    """The task, ETag its version; serialized as the app serializes it (task_answer)."""
    async with _entered(request, readonly=True) as (connection, caller):
        row = await connection.fetchrow(
            VIEW.sql, *VIEW.arguments(task_id=task_id, workspace_ids=caller["workspace_ids"])
        )
    if row is None:
        raise _not_found()
    return task_answer(_view(row)).response(None)


async def list_tasks(request: Request, limit: int = 50, offset: int = 0) -> Response:
    """The newest first, X-Total-Count, the next page's cursor in Link and the page's ETag
    (a digest of its body and headers), serialized as the app does it (page_answer)."""
    async with _entered(request, readonly=True) as (connection, caller):
        rows = await connection.fetch(
            PAGE.sql,
            *PAGE.arguments(workspace_ids=caller["workspace_ids"], limit=limit + 1, offset=offset),
        )
    shown = rows[:limit]
    headers = {"X-Total-Count": str(rows[0]["total"] if rows else 0)}
    if len(rows) > limit:
        codec = CursorCodec(request.app.state.signing_key, caller["user_id"])
        last = shown[-1]
        cursor = codec.issue("newest", _DEFAULT_FILTERS, (last["key_0"], last["key_1"]))
        url = request.url.remove_query_params("offset").include_query_params(cursor=cursor)
        headers["Link"] = f'<{url}>; rel="next"'
    return page_answer([_view(row) for row in shown], headers).response(None)


async def create_task(body: TaskCreate, request: Request, response: Response) -> dict[str, Any]:
    """A task in the caller's personal workspace unless the body names one (the bench's
    tasks have no category and no labels, as POST /tasks sends nothing more for them)."""
    if body.category_id is not None or body.label_ids or body.completed:
        raise HTTPException(422, "the floor creates open tasks without a category or labels")
    async with _entered(request, readonly=False) as (connection, caller):
        values = {
            "workspace_id": body.workspace_id or caller["personal_workspace_id"],
            "title": body.title,
            "description": body.description,
            "completed": body.completed,
            "category_id": None,
            "due_at": body.due_at,
            "priority": body.priority,
            "completed_at": None,
            "version": 1,
        }
        row = await connection.fetchrow(INSERT.sql, *INSERT.arguments(**values))
    assert row is not None
    response.headers["Location"] = str(request.url_for("get_task", task_id=row["id"]))
    _etag(response, 1)
    return {
        **{name: values[name] for name in _TASK_FIELDS if name in values},
        "id": row["id"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
        "category": None,
        "labels": [],
    }


async def update_task(
    task_id: int, body: TaskUpdate, request: Request, response: Response
) -> dict[str, Any]:
    """A new title (all the bench changes): the task read and locked with its category,
    changed, its labels read, as PATCH does."""
    changes = body.model_dump(exclude_unset=True)
    if set(changes) != {"title"}:
        raise HTTPException(422, "the floor changes titles only")
    async with _entered(request, readonly=False) as (connection, caller):
        row = await connection.fetchrow(
            FOR_UPDATE.sql,
            *FOR_UPDATE.arguments(task_id=task_id, workspace_ids=caller["workspace_ids"]),
        )
        if row is None:
            raise _not_found()
        task = {name: row[name] for name in _TASK_FIELDS}
        if changes["title"] != task["title"]:
            version = task["version"] + 1
            changed = await connection.fetchrow(
                UPDATE_TITLE.sql,
                *UPDATE_TITLE.arguments(title=changes["title"], version=version, task_id=task_id),
            )
            assert changed is not None
            task |= {"title": changes["title"], "version": version, "updated_at": changed[2]}
        labels = await connection.fetch(LABELS.sql, *LABELS.arguments(task_id=task_id))
    # The ORM row: the category's columns come after the task's (id_1, ..., name, ...).
    task["category"] = None if row["id_1"] is None else {"id": row["id_1"], "name": row["name"]}
    task["labels"] = [
        {"id": label["id"], "name": label["name"], "colour": label["colour"]} for label in labels
    ]
    _etag(response, task["version"], shown_digest(task))
    return task


async def ready() -> dict[str, str]:
    return {"status": "ready"}


async def connections() -> dict[str, int]:
    """The connections opened so far, as bench_app's GET /bench/connections counts them."""
    return {"app": 0, "floors": CONNECTIONS_OPENED}


def create_floor_app() -> FastAPI:
    """The app uvicorn runs (`floor_app:create_floor_app --factory`): DATABASE_URL (the
    service's login), TASKMANAGER_JWT_SECRET, BENCH_FLOOR_POOL_SIZE,
    BENCH_FLOOR_STATEMENT_TIMEOUT_MS (the app's statement_timeout; 0: none)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        secret = os.environ["TASKMANAGER_JWT_SECRET"]
        app.state.signing_key = secret
        app.state.caller_key = CallerKey(secret)
        settings = {"application_name": APPLICATION_NAME}
        timeout = os.environ.get("BENCH_FLOOR_STATEMENT_TIMEOUT_MS", "0")
        if timeout != "0":
            settings["statement_timeout"] = timeout
        size = int(os.environ.get("BENCH_FLOOR_POOL_SIZE", "20"))
        app.state.pool = await create_pool(os.environ["DATABASE_URL"], size, settings)
        try:
            yield
        finally:
            await app.state.pool.close()

    app = FastAPI(lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None)
    model = TaskWithCategoryResponse
    # The measured routes first: every route FastAPI passes on the way costs CPU.
    app.add_api_route("/tasks/{task_id}", get_task, response_model=model, name="get_task")
    app.add_api_route("/tasks", list_tasks, response_model=list[model])
    app.add_api_route(
        "/tasks", create_task, methods=["POST"], response_model=model, status_code=201
    )
    app.add_api_route("/tasks/{task_id}", update_task, methods=["PATCH"], response_model=model)
    app.add_api_route("/health/ready", ready)
    app.add_api_route("/bench/connections", connections)
    return app
