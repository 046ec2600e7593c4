"""Every error response, in one place, as RFC 9457 problem details (taskmanager.problems).

Bad client input is a 422 naming the field, by one path whoever finds it: Pydantic's
validation before the route runs, and a `BadInputError` (taskmanager.bad_input) raised
past it, by the caller's scope, a repository or the cursor reader. A role that does not
allow what its caller asked (`ActionNotAllowedError`, taskmanager.security.roles) is a 403
naming the roles that would.

Database errors are translated here and nowhere else: by SQLSTATE and constraint name,
a unique violation is 409, a missing foreign key is 422 naming the field, and a database
that is unreachable, too slow or out of connections is 503 with Retry-After. Only errors
that come from the database driver are "database unavailable": any other exception, an
OSError included, is a bug, logged and answered 500.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from http import HTTPStatus
from types import TracebackType
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from taskmanager.bad_input import BadInputError
from taskmanager.models import (
    FK_TASK_LABELS_LABEL,
    FK_TASKS_CATEGORY,
    PK_MEMBERSHIPS,
    UQ_CALENDAR_SUBSCRIPTIONS_URL,
    UQ_CATEGORIES_NAME,
    UQ_LABELS_NAME,
    UQ_USERS_EMAIL,
)
from taskmanager.observability.metrics import count_database_error
from taskmanager.problems import (
    CONFLICT,
    DATABASE_UNAVAILABLE,
    FORBIDDEN,
    INTERNAL_ERROR,
    LIMIT_REACHED,
    VALIDATION_ERROR,
    FieldError,
    ProblemError,
    http_problem,
)
from taskmanager.repositories.calendar_subscription_repository import CalendarLimitError
from taskmanager.repositories.label_repository import LABELS_NOT_IN_WORKSPACE
from taskmanager.repositories.webhook_repository import (
    EndpointDisabledError,
    ManualDeliveryLimitError,
)
from taskmanager.repositories.workspace_repository import Limit, MembershipLimitError
from taskmanager.security.roles import ActionNotAllowedError

log = logging.getLogger(__name__)


async def _handle_problem_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ProblemError)
    return exc.problem.response(exc.headers)


# ─────────────────────────────────────────────
# Request validation (422, naming every failing field)
# ─────────────────────────────────────────────


def _field_name(loc: Iterable[int | str]) -> str:
    return ".".join(str(part) for part in loc)


def _validation_errors(errors: Iterable[Any]) -> list[FieldError]:
    out = []
    for error in errors:
        loc = list(error.get("loc", ()))
        message = str(error.get("msg", "invalid value"))
        if error.get("type") == "json_invalid":  # loc is ("body", character offset)
            reason = (error.get("ctx") or {}).get("error", "not valid JSON")
            message = f"not valid JSON at character {loc[-1]}: {reason}"
            loc = loc[:1]
        # Pydantic prefixes messages of our own validators with "Value error, ".
        message = message.removeprefix("Value error, ")
        out.append(
            FieldError(field=_field_name(loc), loc=loc, message=message, type=error.get("type"))
        )
    return out


async def _handle_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = _validation_errors(exc.errors())
    detail = "; ".join(f"{e.field}: {e.message}" for e in errors) or "invalid request"
    return VALIDATION_ERROR.problem(detail, errors).response()


async def _handle_bad_input(request: Request, exc: Exception) -> Response:
    """Bad input found past validation (taskmanager.bad_input): a 422 naming the field."""
    assert isinstance(exc, BadInputError)
    return VALIDATION_ERROR.about_field(exc.field, exc.message, exc.error_type).response()


async def _handle_action_not_allowed(request: Request, exc: Exception) -> Response:
    """A workspace the caller sees, where their role does not allow the change: 403."""
    assert isinstance(exc, ActionNotAllowedError)
    return FORBIDDEN.problem(exc.detail).response()


def _unparsable_body_problem(cause: BaseException) -> Response:
    """422 naming `body`, like any other invalid JSON, for the bodies FastAPI answers with a bare
    400: bytes that are not UTF-8, nesting deeper than the parser allows, an integer with
    thousands of digits."""
    if isinstance(cause, UnicodeDecodeError):
        reason = "the body is not UTF-8 text"
    elif isinstance(cause, RecursionError):
        reason = "it is nested too deeply"
    else:
        reason = "it cannot be parsed (for example, a number with thousands of digits)"
    return VALIDATION_ERROR.about_field(
        "body", f"not valid JSON: {reason}", "json_invalid"
    ).response()


_METHODS = ("DELETE", "GET", "HEAD", "PATCH", "POST", "PUT")


def _allowed_methods(request: Request) -> str:
    """Every method some route serves at the request's path. Starlette's own 405 names only
    the methods of the first route matching the path (`Allow: POST` for /tasks, which has GET
    too), so ask every route about every method."""
    allowed = []
    for method in _METHODS:
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] is Match.FULL for route in request.app.router.routes):
            allowed.append(method)
    return ", ".join(allowed)


async def _handle_membership_limit(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, MembershipLimitError)
    return LIMIT_REACHED.problem(_membership_limit_detail(exc)).response()


def _membership_limit_detail(exc: MembershipLimitError) -> str:
    """Which cap was reached and what it is."""
    most = exc.maximum
    if exc.limit is Limit.CALLERS_WORKSPACES:
        return (
            f"you belong to {exc.count} workspaces; an account may belong to at most {most} "
            "(leave or delete one first)"
        )
    return f"this workspace has {exc.count} members; a workspace may have at most {most}"


async def _handle_manual_delivery_limit(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ManualDeliveryLimitError)
    return LIMIT_REACHED.problem(str(exc)).response()


async def _handle_endpoint_disabled(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, EndpointDisabledError)
    return CONFLICT.problem(str(exc)).response()


async def _handle_calendar_limit(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, CalendarLimitError)
    return LIMIT_REACHED.problem(str(exc)).response()


async def _handle_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400 and exc.__cause__ is not None:  # FastAPI could not parse the body
        return _unparsable_body_problem(exc.__cause__)
    headers = dict(exc.headers or {})
    if exc.status_code == 405 and "Allow" in headers:  # a 405 from routing, not from a route
        headers["Allow"] = _allowed_methods(request) or headers["Allow"]
    detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
    return http_problem(exc.status_code).problem(detail).response(headers)


# ─────────────────────────────────────────────
# Database errors
# ─────────────────────────────────────────────


@dataclass(frozen=True, slots=True)
class ConstraintProblem:
    status: int
    field: str
    message: str


# Constraint name -> what the client did wrong, in the client's words.
CONSTRAINT_PROBLEMS: dict[str, ConstraintProblem] = {
    FK_TASKS_CATEGORY: ConstraintProblem(
        422, "body.category_id", "no category has this id in the task's workspace"
    ),
    UQ_CATEGORIES_NAME: ConstraintProblem(
        409,
        "body.name",
        "a category with this name already exists in this workspace (names ignore case)",
    ),
    UQ_USERS_EMAIL: ConstraintProblem(
        409, "body.email", "an account with this email exists already (emails ignore case)"
    ),
    # Accepting an invitation into a workspace one joined meanwhile.
    PK_MEMBERSHIPS: ConstraintProblem(
        409, "path.invitation_id", "you are a member of this workspace already"
    ),
    UQ_LABELS_NAME: ConstraintProblem(
        409,
        "body.name",
        "a label with this name already exists in this workspace (names ignore case)",
    ),
    # The backstop of LabelRepository.in_workspace's check (a label deleted meanwhile).
    FK_TASK_LABELS_LABEL: ConstraintProblem(422, "body.label_ids", LABELS_NOT_IN_WORKSPACE),
    "ck_labels_name_not_blank": ConstraintProblem(
        422, "body.name", "must not be empty or only whitespace"
    ),
    "ck_tasks_title_not_blank": ConstraintProblem(
        422, "body.title", "must not be empty or only whitespace"
    ),
    "ck_categories_name_not_blank": ConstraintProblem(
        422, "body.name", "must not be empty or only whitespace"
    ),
    UQ_CALENDAR_SUBSCRIPTIONS_URL: ConstraintProblem(
        409, "body.url", "this workspace subscribes to this URL already"
    ),
    "ck_calendar_subscriptions_name_not_blank": ConstraintProblem(
        422, "body.name", "must not be empty or only whitespace"
    ),
}

# SQLSTATE classes/codes meaning "the database cannot serve this now; try again".
# SQLSTATE -> the kind a database error is counted under in the metrics, and what the 503
# says.
_UNAVAILABLE_SQLSTATES = {
    "57014": ("statement_timeout", "the database took too long to answer (statement timeout)"),
    "57P01": ("unavailable", "the database is shutting down"),
    "57P02": ("unavailable", "the database is shutting down"),
    "57P03": ("unavailable", "the database is starting up"),
    "53300": ("unavailable", "the database has no free connections"),
    # A prepared statement missing or clashing: the signature of a transaction-pooling
    # PgBouncer in front of a server reached without TASKMANAGER_PGBOUNCER=true.
    "26000": (
        "prepared_statement",
        "the database connection lost a prepared statement (behind PgBouncer? set "
        "TASKMANAGER_PGBOUNCER=true)",
    ),
    "42P05": (
        "prepared_statement",
        "the database connection has a clashing prepared statement (behind PgBouncer? "
        "set TASKMANAGER_PGBOUNCER=true)",
    ),
    "40001": ("serialization", "the transaction conflicted with another one"),
    "40P01": ("deadlock", "the transaction deadlocked with another one"),
}


def _driver_error(exc: BaseException) -> BaseException | None:
    """The asyncpg exception behind a SQLAlchemy DBAPIError, if any."""
    orig = getattr(exc, "orig", None)
    return getattr(orig, "__cause__", None) or orig


def _sqlstate(exc: BaseException) -> str | None:
    orig = getattr(exc, "orig", None)
    state = getattr(orig, "sqlstate", None) or getattr(_driver_error(exc), "sqlstate", None)
    return str(state) if state else None


def _unavailable(detail: str, retry_after: int = 1) -> Response:
    return DATABASE_UNAVAILABLE.problem(detail).response({"Retry-After": str(retry_after)})


def _integrity_problem(exc: sa_exc.IntegrityError, sqlstate: str | None) -> Response:
    driver_error = _driver_error(exc)
    constraint = getattr(driver_error, "constraint_name", None)
    known = CONSTRAINT_PROBLEMS.get(str(constraint)) if constraint else None
    if known is not None:
        problem_type = CONFLICT if known.status == 409 else VALIDATION_ERROR
        return problem_type.about_field(known.field, known.message, "constraint").response()
    if sqlstate == "23505":
        return CONFLICT.problem("the request conflicts with existing data").response()
    # Any other constraint (FK, NOT NULL, CHECK) is data the request should not have sent.
    column = getattr(driver_error, "column_name", None)
    detail = f"{column}: violates a database constraint" if column else "violates a constraint"
    return VALIDATION_ERROR.problem(detail).response()


def translate_database_error(exc: BaseException) -> Response | None:
    """The problem response for a database error, or None if it is not one we understand.

    Each one is counted in the metrics by kind (taskmanager_database_errors_total)."""
    translated = _translate(exc)
    if translated is None:
        if isinstance(exc, sa_exc.SQLAlchemyError):
            count_database_error("other")
        return None
    kind, response = translated
    count_database_error(kind)
    return response


def _translate(exc: BaseException) -> tuple[str, Response] | None:
    if isinstance(exc, sa_exc.TimeoutError):  # the pool had no free connection in time
        return "pool_timeout", _unavailable(
            "no database connection became free in time; retry shortly"
        )
    sqlstate = _sqlstate(exc)
    if isinstance(exc, sa_exc.IntegrityError):
        return "integrity", _integrity_problem(exc, sqlstate)
    if sqlstate in _UNAVAILABLE_SQLSTATES:
        kind, detail = _UNAVAILABLE_SQLSTATES[sqlstate]
        return kind, _unavailable(detail)
    if sqlstate and sqlstate.startswith("08"):  # connection exception class
        return "connection", _unavailable("the connection to the database failed", retry_after=5)
    if sqlstate and sqlstate.startswith("22"):  # data exception: a value the DB refused
        return "data", VALIDATION_ERROR.problem(
            "a value in the request cannot be stored"
        ).response()
    if isinstance(exc, sa_exc.DBAPIError) and (
        exc.connection_invalidated or isinstance(exc, sa_exc.InterfaceError)
    ):
        return "connection", _unavailable("the connection to the database was lost", retry_after=5)
    if isinstance(exc, OSError) and raised_by_database_driver(exc):
        # Refused, no socket, timed out (TimeoutError is an OSError): the driver lets these
        # through unwrapped while it connects or waits for an answer.
        return "unreachable", _unavailable("the database cannot be reached", retry_after=5)
    return None


# The database driver: asyncpg, and SQLAlchemy's pool and asyncpg adapter around it.
_DRIVER_PACKAGES = frozenset({"asyncpg", "sqlalchemy"})
# What the driver stands on, which raises on its behalf: the event loop, sockets, TLS.
_PLUMBING_PACKAGES = frozenset({"asyncio", "uvloop", "socket", "ssl", "selectors"})


def raised_by_database_driver(exc: BaseException) -> bool:
    """Whether `exc` was raised inside the database driver: the innermost frame of its
    traceback that is not the event loop's or the socket layer's belongs to asyncpg or
    SQLAlchemy. An OSError the service's own code raised, even from a callback SQLAlchemy
    runs (`run_sync`), has a frame of that code further in, so it is not the driver's."""
    owner = None
    frame: TracebackType | None = exc.__traceback__
    while frame is not None:
        package = str(frame.tb_frame.f_globals.get("__name__", "")).partition(".")[0]
        if package not in _PLUMBING_PACKAGES:
            owner = package
        frame = frame.tb_next
    return owner in _DRIVER_PACKAGES


async def _handle_database_error(request: Request, exc: Exception) -> Response:
    response = translate_database_error(exc)
    if response is None:
        raise exc  # not understood: the last-resort handler logs it and answers 500
    if response.status_code >= 500:
        log.warning("database unavailable: %s", exc.__class__.__name__, exc_info=exc)
    return response


def internal_error_response() -> Response:
    """The answer to a bug: no details leak, the request id lets operators find the log."""
    return INTERNAL_ERROR.problem(
        "the server failed to handle this request; it has been logged"
    ).response()


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers above; the last-resort 500 lives in the request middleware."""
    app.add_exception_handler(ProblemError, _handle_problem_error)
    app.add_exception_handler(RequestValidationError, _handle_validation_error)
    app.add_exception_handler(BadInputError, _handle_bad_input)
    app.add_exception_handler(ActionNotAllowedError, _handle_action_not_allowed)
    app.add_exception_handler(MembershipLimitError, _handle_membership_limit)
    app.add_exception_handler(CalendarLimitError, _handle_calendar_limit)
    app.add_exception_handler(ManualDeliveryLimitError, _handle_manual_delivery_limit)
    app.add_exception_handler(EndpointDisabledError, _handle_endpoint_disabled)
    app.add_exception_handler(StarletteHTTPException, _handle_http_exception)
    app.add_exception_handler(sa_exc.SQLAlchemyError, _handle_database_error)
    # The driver raises OSError (TimeoutError included) unwrapped; other OSErrors are bugs.
    app.add_exception_handler(OSError, _handle_database_error)
