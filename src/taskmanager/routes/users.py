"""The caller's own account."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from taskmanager.accounts.sessions import Refused, TooManyAttempts, change_password
from taskmanager.database import ReadSessionDep, SessionDep
from taskmanager.dependencies import (
    SESSION_ENDED,
    CurrentReaderDep,
    CurrentUserDep,
    unauthorized_error,
)
from taskmanager.models import User
from taskmanager.openapi import problem_responses
from taskmanager.problems import TOO_MANY_LOGIN_ATTEMPTS
from taskmanager.repositories.user_repository import UserRepository
from taskmanager.routes.auth import TOO_MANY_PASSWORD_ATTEMPTS, request_network, retry_later
from taskmanager.schemas import UserResponse, UserUpdate

router = APIRouter(prefix="/users", tags=["users"])


async def _me(users: UserRepository, user_id: int) -> User:
    user = await users.get_by_id(user_id)
    if user is None:  # the session check at the start of the request found it
        raise LookupError(f"user {user_id} vanished during the request")
    return user


@router.get("/me", response_model=UserResponse, responses=problem_responses(401, 503))
async def get_me(user: CurrentReaderDep, session: ReadSessionDep) -> User:
    """Your account."""
    return await _me(UserRepository(session), user.user_id)


@router.patch(
    "/me", response_model=UserResponse, responses=problem_responses(401, 413, 422, 429, 503)
)
async def update_me(
    body: UserUpdate, user: CurrentUserDep, session: SessionDep, request: Request
) -> User | JSONResponse:
    """Change your display name, or your password (with `current_password`): a new password
    ends every other login session of this account. Wrong current passwords count towards
    the same limits as failed logins (429 with `Retry-After`)."""
    users = UserRepository(session)
    me = await _me(users, user.user_id)
    if body.password is not None:
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
