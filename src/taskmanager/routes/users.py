"""The caller's own account."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from taskmanager.accounts.sessions import Refused, TooManyAttempts, change_password
from taskmanager.database import ReadSessionDep, SessionDep
from taskmanager.dependencies import (
    LOGIN_NEEDED,
    SESSION_ENDED,
    CurrentReaderDep,
    CurrentUserDep,
    token_scope,
    unauthorized_error,
)
from taskmanager.models import User
from taskmanager.openapi import problem_responses
from taskmanager.problems import TOO_MANY_LOGIN_ATTEMPTS
from taskmanager.repositories.user_repository import UserRepository
from taskmanager.routes.auth import TOO_MANY_PASSWORD_ATTEMPTS, request_network, retry_later
from taskmanager.schemas import UserResponse, UserUpdate
from taskmanager.security.access_tokens import TokenScope
from taskmanager.security.roles import ActionNotAllowedError

router = APIRouter(prefix="/users", tags=["users"])


@router.get(
    "/me",
    response_model=UserResponse,
    responses=problem_responses(401, 503),
    openapi_extra=token_scope(TokenScope.ACCOUNT_READ),
)
async def get_me(user: CurrentReaderDep, session: ReadSessionDep) -> User:
    """Your account."""
    return await UserRepository(session).get_caller(user.user_id)


@router.patch(
    "/me",
    response_model=UserResponse,
    responses=problem_responses(401, 413, 422, 429, 503),
    openapi_extra=token_scope(TokenScope.ACCOUNT_WRITE),
)
async def update_me(
    body: UserUpdate, user: CurrentUserDep, session: SessionDep, request: Request
) -> User | JSONResponse:
    """Change your display name, or your password (with `current_password`): a new password
    ends every other login session of this account (personal access tokens keep
    working). Wrong current passwords count towards the same limits as failed logins (429
    with `Retry-After`). A personal access token may change the display name (with
    account:write), never the password (403)."""
    users = UserRepository(session)
    me = await users.get_caller(user.user_id)
    if body.password is not None:
        if user.token is not None:
            raise ActionNotAllowedError(f"a new password: {LOGIN_NEEDED}")
        outcome = await change_password(
            session,
            request.app.state.caller_key,
            request.app.state.settings,
            request_network(request),
            user,
            me,
            body.current_password or "",
            body.password,
        )
        if isinstance(outcome, TooManyAttempts):
            return retry_later(TOO_MANY_LOGIN_ATTEMPTS, TOO_MANY_PASSWORD_ATTEMPTS, outcome.wait)
        if outcome is Refused.LOGIN_ENDED:
            raise unauthorized_error(SESSION_ENDED, token_given=True)
    if body.display_name is not None:
        await users.rename(me, body.display_name)
    return me
