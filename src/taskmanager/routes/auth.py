"""Accounts and tokens: register, log in (the OAuth2 password flow), refresh, log out.

Failures that must be remembered (a failed login counted, a reused refresh token's session
revoked) are answered by returning the 401 rather than raising it: the request's
transaction then commits what was recorded, instead of rolling it back."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Form, Request, Response, status
from fastapi.responses import JSONResponse

from taskmanager.accounts.login_limits import (
    client_network,
    count_password_attempt,
    count_registration,
    password_limits,
    registration_limits,
    remember_login,
)
from taskmanager.accounts.registration import register_account
from taskmanager.database import SessionDep
from taskmanager.dependencies import TOKEN_URL, CurrentUserDep
from taskmanager.models import User
from taskmanager.observability.metrics import count_login_failure
from taskmanager.openapi import problem_responses, response_headers
from taskmanager.problems import (
    TOO_MANY_LOGIN_ATTEMPTS,
    TOO_MANY_REGISTRATIONS,
    ProblemType,
    unauthorized_problem,
)
from taskmanager.repositories.auth_session_repository import AuthSessionRepository, Rotation
from taskmanager.repositories.user_repository import UserRepository
from taskmanager.schemas import (
    LoginForm,
    RefreshRequest,
    RegisterRequest,
    TokenResponse,
    UserResponse,
)
from taskmanager.security.caller_key import CallerKey, attempt_subject
from taskmanager.security.passwords import verify_password
from taskmanager.security.tokens import issue_access_token

router = APIRouter(prefix="/auth", tags=["auth"])

BAD_CREDENTIALS = "the email or the password is wrong"
TOO_MANY_PASSWORD_ATTEMPTS = "too many password attempts"


def request_network(request: Request) -> str:
    """The network of the client that sent `request`, as attempts are counted under it
    (see taskmanager.accounts.login_limits.client_network)."""
    return client_network(request.client.host if request.client else None)


def retry_later(problem_type: ProblemType, detail: str, wait: int) -> JSONResponse:
    """A 429 of `problem_type`: `detail`, and how long to wait (also in Retry-After)."""
    problem = problem_type.problem(f"{detail}; try again in {wait} seconds")
    return problem.response({"Retry-After": str(wait)})


def _tokens(
    request: Request, user_id: int, session_id: uuid.UUID, refresh_token: str
) -> TokenResponse:
    settings = request.app.state.settings
    lifetime = timedelta(minutes=settings.access_token_minutes)
    access = issue_access_token(request.app.state.signing_key, user_id, session_id, lifetime)
    return TokenResponse(
        access_token=access,
        expires_in=int(lifetime.total_seconds()),
        refresh_token=refresh_token,
    )


def _unauthorized(detail: str) -> JSONResponse:
    problem, headers = unauthorized_problem(detail, token_given=False)
    return problem.response(headers)


@router.post(
    "/register",
    response_model=UserResponse,
    status_code=status.HTTP_201_CREATED,
    responses={
        201: {"headers": response_headers("Location")},
        **problem_responses(409, 413, 422, 429, 503),
    },
)
async def register(
    body: RegisterRequest, session: SessionDep, request: Request, response: Response
) -> User | JSONResponse:
    """Open an account with its personal workspace. An email in use (in any case) is 409.
    Too many registrations from one address, or from everywhere, are 429 with
    `Retry-After`."""
    settings = request.app.state.settings
    wait = await count_registration(
        session,
        request.app.state.caller_key,
        registration_limits(settings),
        request_network(request),
    )
    if wait is not None:
        return retry_later(TOO_MANY_REGISTRATIONS, "too many registrations", wait)
    user = await register_account(
        session, request.app.state.caller_key, body.email, body.password, body.display_name
    )
    response.headers["Location"] = str(request.url_for("get_me"))
    return user


@router.post(
    "/token",
    response_model=TokenResponse,
    responses={**problem_responses(401, 413, 422, 429, 503)},
)
async def login(
    form: Annotated[LoginForm, Form()],
    session: SessionDep,
    request: Request,
) -> TokenResponse | JSONResponse:
    """Log in with the OAuth2 password flow: `username` is your email. Answers an access
    token (a JWT, short-lived) and a refresh token (single use).

    A wrong email and a wrong password get the same 401 after the same work. Too many
    attempts at one account, or from one address, are 429 with `Retry-After`; failures
    from elsewhere do not hold back an address the account logged in from lately."""
    settings = request.app.state.settings
    key: CallerKey = request.app.state.caller_key
    attempt = await count_password_attempt(
        session, key, password_limits(settings), request_network(request), form.username
    )
    if attempt.wait is not None:
        count_login_failure("too_many_attempts")
        return retry_later(TOO_MANY_LOGIN_ATTEMPTS, TOO_MANY_PASSWORD_ATTEMPTS, attempt.wait)
    users = UserRepository(session)
    await users.enter(key.entry("login"))
    account = await users.password_hash_of(form.username, key)
    matches, new_hash = await verify_password(
        form.password, account.password_hash if account is not None else None
    )
    if account is None or not matches or not account.is_active:
        count_login_failure("bad_credentials")
        problem, headers = unauthorized_problem(BAD_CREDENTIALS, token_given=False)
        # Also in OAuth 2's words (RFC 6749 5.2), which OAuth 2 clients show their user.
        problem.error, problem.error_description = "invalid_grant", BAD_CREDENTIALS
        return problem.response(headers)
    # From here on as the account whose password this is: what follows is its own (and
    # the attempt counts of this login's subject).
    subject = attempt_subject(attempt.network, attempt.username)
    await users.enter(key.entry("login", account.user_id, subject=subject))
    if new_hash is not None:  # hashed with older parameters: store today's
        await users.change_password_hash(account.user_id, new_hash)
    await remember_login(session, attempt)
    expires_at = datetime.now(UTC) + timedelta(days=settings.session_days)
    session_id, refresh_token = await AuthSessionRepository(session).open(
        account.user_id, expires_at
    )
    return _tokens(request, account.user_id, session_id, refresh_token)


@router.post(
    "/refresh",
    response_model=TokenResponse,
    responses={**problem_responses(401, 413, 422, 503)},
)
async def refresh(
    body: RefreshRequest, session: SessionDep, request: Request
) -> TokenResponse | JSONResponse:
    """Trade a refresh token for a new access token and a new refresh token. Each refresh
    token works once: presenting a spent one ends its whole login session."""
    key: CallerKey = request.app.state.caller_key
    users = UserRepository(session)
    sessions = AuthSessionRepository(session)
    await users.enter(key.entry("refresh"))
    owner = await sessions.owner_of(body.refresh_token)
    # From here on as the user whose login session the token belongs to.
    if owner is None or await users.enter(key.entry("refresh", *owner)) is None:
        return _unauthorized("the refresh token is not valid")
    result = await sessions.rotate(body.refresh_token)
    if result.outcome is Rotation.REUSED:
        return _unauthorized(
            "this refresh token was already used; its login session has been ended"
        )
    if result.outcome is not Rotation.ROTATED:
        return _unauthorized("the refresh token is not valid")
    assert result.user_id is not None
    assert result.refresh_token is not None
    assert result.session_id is not None
    return _tokens(request, result.user_id, result.session_id, result.refresh_token)


@router.post(
    "/logout",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=problem_responses(401, 503),
)
async def logout(user: CurrentUserDep, session: SessionDep) -> None:
    """End this login session: its access and refresh tokens stop working at once."""
    await AuthSessionRepository(session).revoke(user.session_id, "logout")


@router.post(
    "/logout-all",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=problem_responses(401, 503),
)
async def logout_all(user: CurrentUserDep, session: SessionDep) -> None:
    """End every login session of this account, this one included."""
    await AuthSessionRepository(session).revoke_all(user.user_id, "logout_all")


__all__ = ["TOKEN_URL", "router"]
