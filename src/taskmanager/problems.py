"""RFC 9457 problem details: the one catalogue of problem types and the one Problem model.

Every error this service answers is a `Problem` (the body, and the schema /openapi.json
documents for it), of a type from the catalogue below or `about:blank` for a plain HTTP
status (404, 405, 413, ...); a refused login is a `TokenProblem`, a Problem that also says it
in OAuth 2's words. Code that must answer a specific problem raises
`ProblemError(SOME_TYPE.problem(detail))`; errors.py renders it, and everything else.
Bad input found past validation is not a problem of its own: code below the routes raises
a `BadInputError` (taskmanager.bad_input), which errors.py answers as a validation problem.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

PROBLEM_JSON = "application/problem+json"

# RFC 9110's names where Python's http.HTTPStatus still has the older ones.
_TITLES = {413: "Content Too Large", 422: "Unprocessable Content"}


class FieldError(BaseModel):
    """One failing field of a request, as validation problems list them in `errors`."""

    field: str = Field(examples=["body.title"])
    loc: list[str | int] = Field(default_factory=list)
    message: str
    type: str | None = None

    @classmethod
    def named(cls, field: str, message: str, error_type: str) -> FieldError:
        """The error for `field` ("body.title", "header.Idempotency-Key")."""
        return cls(field=field, loc=list(field.split(".")), message=message, type=error_type)


class Problem(BaseModel):
    """RFC 9457 problem details: the body of every error response."""

    type: str = Field(examples=["about:blank"])
    title: str = Field(examples=["Not Found"])
    status: int = Field(examples=[404])
    detail: str = Field(examples=["Task not found"])
    errors: list[FieldError] | None = None

    def response(self, headers: Mapping[str, str] | None = None) -> JSONResponse:
        """This problem as an `application/problem+json` response with its status."""
        body: dict[str, Any] = self.model_dump(mode="json")
        if body["errors"] is None:
            del body["errors"]
        return JSONResponse(
            body, status_code=self.status, headers=dict(headers or {}), media_type=PROBLEM_JSON
        )


class TokenProblem(Problem):
    """A refused login at the token endpoint (POST /auth/token): the problem, also said in
    RFC 6749 5.2's members, which OAuth 2 clients read (Swagger UI's Authorize dialog shows
    them)."""

    error: str = Field(
        description="The OAuth 2 error code (RFC 6749 5.2).", examples=["invalid_grant"]
    )
    error_description: str = Field(
        description="What went wrong, in words (RFC 6749 5.2).",
        examples=["the email or the password is wrong"],
    )

    @classmethod
    def of(cls, problem: Problem, error: str) -> TokenProblem:
        """`problem`, with `error` as its OAuth 2 error code and its detail as the
        error_description."""
        return cls(**problem.model_dump(), error=error, error_description=problem.detail)


@dataclass(frozen=True, slots=True)
class ProblemType:
    """A kind of problem: its `type` URI, `title` and HTTP `status`, the same every time."""

    type: str
    title: str
    status: int

    def problem(self, detail: str, errors: list[FieldError] | None = None) -> Problem:
        return Problem(
            type=self.type, title=self.title, status=self.status, detail=detail, errors=errors
        )

    def about_field(self, field: str, message: str, error_type: str = "value_error") -> Problem:
        """A problem about one field: `detail` and `errors` both name it."""
        return self.problem(
            f"{field}: {message}", errors=[FieldError.named(field, message, error_type)]
        )


def http_problem(status: int) -> ProblemType:
    """`about:blank`: the problem is just the HTTP status, titled by its RFC 9110 name."""
    return ProblemType("about:blank", _TITLES.get(status) or HTTPStatus(status).phrase, status)


# ─────────────────────────────────────────────
# The catalogue
# ─────────────────────────────────────────────

VALIDATION_ERROR = ProblemType("/problems/validation-error", "Request validation failed", 422)
CONFLICT = ProblemType("/problems/conflict", "Conflict", 409)
PRECONDITION_FAILED = ProblemType("/problems/precondition-failed", "Precondition Failed", 412)
IDEMPOTENCY_KEY_REUSED = ProblemType(
    "/problems/idempotency-key-reused", "Idempotency-Key reused", 422
)
UNAUTHORIZED = ProblemType("/problems/unauthorized", "Unauthorized", 401)
FORBIDDEN = ProblemType("/problems/forbidden", "Forbidden", 403)
# What trusts an address (an invitation to it) needs the address verified first.
EMAIL_NOT_VERIFIED = ProblemType("/problems/email-not-verified", "Email address not verified", 403)
TOO_MANY_LOGIN_ATTEMPTS = ProblemType(
    "/problems/too-many-login-attempts", "Too many failed logins", 429
)
TOO_MANY_REGISTRATIONS = ProblemType(
    "/problems/too-many-registrations", "Too many registrations", 429
)
TOO_MANY_MAILS = ProblemType("/problems/too-many-mails", "Too many mails", 429)
# A manual refresh of a calendar sooner than allowed (calendar_manual_refresh_seconds).
TOO_MANY_REFRESHES = ProblemType("/problems/too-many-refreshes", "Too many refreshes", 429)
# A cap on how many of something may exist (workspaces per account, members per
# workspace): `detail` names the cap and its value.
LIMIT_REACHED = ProblemType("/problems/limit-reached", "Limit reached", 409)
DATABASE_UNAVAILABLE = ProblemType("/problems/database-unavailable", "Database unavailable", 503)
INTERNAL_ERROR = ProblemType("/problems/internal-error", "Internal Server Error", 500)

CATALOGUE: tuple[ProblemType, ...] = (
    VALIDATION_ERROR,
    CONFLICT,
    PRECONDITION_FAILED,
    IDEMPOTENCY_KEY_REUSED,
    UNAUTHORIZED,
    FORBIDDEN,
    EMAIL_NOT_VERIFIED,
    TOO_MANY_LOGIN_ATTEMPTS,
    TOO_MANY_REGISTRATIONS,
    TOO_MANY_MAILS,
    TOO_MANY_REFRESHES,
    LIMIT_REACHED,
    DATABASE_UNAVAILABLE,
    INTERNAL_ERROR,
)


def unauthorized_problem(detail: str, *, token_given: bool) -> tuple[Problem, dict[str, str]]:
    """The 401 problem and its WWW-Authenticate header (RFC 6750 3: `invalid_token` when a
    token was presented, a bare challenge when none was)."""
    challenge = 'Bearer error="invalid_token"' if token_given else "Bearer"
    return UNAUTHORIZED.problem(detail), {"WWW-Authenticate": challenge}


class ProblemError(Exception):
    """Raised where code needs a specific problem answered, not just a status code."""

    def __init__(self, problem: Problem, *, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(problem.detail)
        self.problem = problem
        self.headers = dict(headers or {})
