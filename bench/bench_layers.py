"""GET /tasks/{id} rebuilt one layer at a time, for `bench/run.py --layers`.

Every route does the whole work of the real route: it verifies the access token, enters
the caller with the app's own statement (the service's proof, user and login session
checked, memberships read, caller sealed, caller role switched to) and runs the
repository's own view statement in a READ ONLY transaction; it answers the same response.
Each adds one layer to the one before it: SQLAlchemy Core on an AsyncConnection, then an
AsyncSession, then the session from the read-session dependency, then the current-reader
dependency (dependencies.py). The real route adds the repository's dependency on top. The
differences say what each layer costs.
"""

from __future__ import annotations

from typing import Any

from driver_sql import ENTER_SQL
from fastapi import APIRouter, HTTPException, Request, Response
from sqlalchemy.dialects.postgresql import asyncpg as postgresql_asyncpg
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from taskmanager.database import ReadSessionDep
from taskmanager.dependencies import BearerToken, CurrentReaderDep

# The repository's own statements and row mapping (private: this is a measurement).
from taskmanager.repositories.task_queries.views import VIEW_BY_ID, TaskView, row_view
from taskmanager.repositories.user_repository import _ENTER
from taskmanager.routes.preconditions import set_etag
from taskmanager.routes.tasks import TaskId
from taskmanager.schemas import TaskWithCategoryResponse
from taskmanager.security.caller_key import Entry
from taskmanager.security.tokens import LEEWAY_SECONDS, InvalidAccessTokenError, read_access_token

router = APIRouter(prefix="/bench")


def _found(view: TaskView | None, response: Response) -> TaskView:
    if view is None:
        raise HTTPException(404, "Task not found")
    set_etag(response, view["version"])
    return view


def _entry(request: Request, token: str | None) -> Entry:
    """The caller's entry for the access token, as the app makes it; 401 without one."""
    try:
        if not token:
            raise InvalidAccessTokenError("no token")
        claims = read_access_token(request.app.state.signing_key, token)
    except InvalidAccessTokenError:
        raise HTTPException(401, "not authenticated") from None
    entry: Entry = request.app.state.caller_key.entry(
        "request", claims.user_id, claims.session_id, valid_until=claims.expires_at + LEEWAY_SECONDS
    )
    return entry


def _claims(request: Request) -> dict[str, Any]:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    entry = _entry(request, token if scheme.lower() == "bearer" else None)
    return {
        "user_id": entry.user_id,
        "session_id": entry.session_id,
        "purpose": entry.purpose,
        "valid_until": entry.valid_until,
        "proof": entry.proof,
        "subject": None,
        "request_id": "",
    }


async def _view(
    executor: AsyncConnection | AsyncSession, claims: dict[str, Any], task_id: int
) -> TaskView | None:
    caller = (await executor.execute(_ENTER, claims)).first()
    if caller is None:
        raise HTTPException(401, "not authenticated")
    parameters = {"task_id": task_id, "workspace_ids": list(caller.workspace_ids)}
    row = (await executor.execute(VIEW_BY_ID, parameters)).one_or_none()
    return None if row is None else row_view(row)


@router.get("/layers/connection/tasks/{task_id}", response_model=TaskWithCategoryResponse)
async def layer_connection(task_id: int, request: Request, response: Response) -> TaskView:
    """SQLAlchemy Core on an AsyncConnection of the read sessions' (READ ONLY) engine."""
    claims = _claims(request)
    engine = request.app.state.read_session_factory.kw["bind"]
    async with engine.connect() as connection, connection.begin():
        view = await _view(connection, claims, task_id)
    return _found(view, response)


@router.get("/layers/session/tasks/{task_id}", response_model=TaskWithCategoryResponse)
async def layer_session(task_id: int, request: Request, response: Response) -> TaskView:
    """The same in an AsyncSession (a read session) opened and closed by the route itself."""
    claims = _claims(request)
    async with request.app.state.read_session_factory() as session:
        view = await _view(session, claims, task_id)
        await session.commit()
    return _found(view, response)


@router.get("/layers/dependency/tasks/{task_id}", response_model=TaskWithCategoryResponse)
async def layer_dependency(
    task_id: int, session: ReadSessionDep, request: Request, response: Response
) -> TaskView:
    """The same with the session from get_read_session (ReadSessionDep, scope="function")."""
    return _found(await _view(session, _claims(request), task_id), response)


@router.get("/layers/reader/tasks/{task_id}", response_model=TaskWithCategoryResponse)
async def layer_reader(
    task_id: int, session: ReadSessionDep, caller: CurrentReaderDep, response: Response
) -> TaskView:
    """The same with the caller from get_current_reader (the bearer scheme, the token read,
    the scope entered through UserRepository and minted): the view statement run directly."""
    parameters = {"task_id": task_id, "workspace_ids": list(caller.workspace_ids)}
    row = (await session.execute(VIEW_BY_ID, parameters)).one_or_none()
    return _found(None if row is None else row_view(row), response)


# ─────────────────────────────────────────────── a cheaper design, measured

# The app's statements rendered for asyncpg: the scope statement (the same text) and the
# repository's view statement compiled by SQLAlchemy's PostgreSQL dialect, once.
_SCOPE_SQL = ENTER_SQL
_VIEW = VIEW_BY_ID.compile(dialect=postgresql_asyncpg.dialect())  # type: ignore[no-untyped-call]
_VIEW_SQL = str(_VIEW)


def _view_arguments(**values: Any) -> list[Any]:
    """The view statement's positional arguments: `values` by name, the statement's own
    constants (the labels' JSON keys) where it has them."""
    return [{**_VIEW.params, **values}[name] for name in _VIEW.positiontup or ()]


@router.get("/layers/driver/tasks/{task_id}", response_model=TaskWithCategoryResponse)
async def layer_driver(
    task_id: TaskId,
    session: ReadSessionDep,
    token: BearerToken,
    request: Request,
    response: Response,
) -> TaskView:
    """The real route's work and transaction with the read session from its dependency, but
    both statements sent on the asyncpg connection under the session: what the app would
    cost if its read path gave SQLAlchemy's execution up (a design measured, not adopted)."""
    entry = _entry(request, token)
    connection = await session.connection()
    adapted: Any = (await connection.get_raw_connection()).dbapi_connection
    await adapted._start_transaction()  # BEGIN READ ONLY, as the first statement would
    driver = adapted.driver_connection
    caller = await driver.fetchrow(
        _SCOPE_SQL,
        entry.user_id,
        entry.session_id,
        entry.purpose,
        entry.valid_until,
        entry.proof,
        None,
        "",
    )
    if caller is None:
        raise HTTPException(401, "not authenticated")
    arguments = _view_arguments(task_id=task_id, workspace_ids=list(caller["workspace_ids"]))
    row = await driver.fetchrow(_VIEW_SQL, *arguments)
    return _found(None if row is None else row_view(row), response)
