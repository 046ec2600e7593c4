"""The caller's own account."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from taskmanager.accounts.login_limits import count_password_attempt, password_limits
from taskmanager.bad_input import BadInputError
from taskmanager.database import ReadSessionDep, SessionDep
from taskmanager.dependencies import CurrentReaderDep, CurrentUserDep, enter_again
from taskmanager.models import User
from taskmanager.openapi import problem_responses
from taskmanager.problems import TOO_MANY_LOGIN_ATTEMPTS
from taskmanager.repositories.auth_session_repository import AuthSessionRepository
from taskmanager.repositories.user_repository import UserRepository
from taskmanager.routes.auth import TOO_MANY_PASSWORD_ATTEMPTS, request_network, retry_later
from taskmanager.schemas import UserResponse, UserUpdate
from taskmanager.security.passwords import hash_password, verify_password

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
        # The scope lives in this transaction: end it, count the attempt as the service
        # does at login (committed at once, so a wrong password cannot roll it back), then
        # enter the scope again for the change itself.
        await session.commit()
        attempt = await count_password_attempt(
            session,
            request.app.state.caller_key,
            password_limits(request.app.state.settings),
            request_network(request),
            me.email,
        )
        if attempt.wait is not None:
            return retry_later(TOO_MANY_LOGIN_ATTEMPTS, TOO_MANY_PASSWORD_ATTEMPTS, attempt.wait)
        await enter_again(request, session, user)
        account = await users.password_hash_of(me.email, request.app.state.caller_key)
        matches, _ = await verify_password(
            body.current_password or "", account.password_hash if account is not None else None
        )
        if not matches:
            raise BadInputError("body.current_password", "is not your password")
        await users.record_password_change(me, await hash_password(body.password))
        await AuthSessionRepository(session).revoke_all(
            user.user_id, "password_changed", keep=user.session_id
        )
    if body.display_name is not None:
        await users.rename(me, body.display_name)
    return me
