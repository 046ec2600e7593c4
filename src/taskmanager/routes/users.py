"""The caller's own account."""

from __future__ import annotations

from fastapi import APIRouter

from taskmanager.auth import CurrentReaderDep, CurrentUserDep
from taskmanager.database import ReadSessionDep, SessionDep
from taskmanager.models import User
from taskmanager.openapi import problem_responses
from taskmanager.passwords import hash_password, verify_password
from taskmanager.problems import VALIDATION_ERROR, ProblemError
from taskmanager.repositories.auth_session_repository import AuthSessionRepository
from taskmanager.repositories.user_repository import UserRepository
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


@router.patch("/me", response_model=UserResponse, responses=problem_responses(401, 413, 422, 503))
async def update_me(body: UserUpdate, user: CurrentUserDep, session: SessionDep) -> User:
    """Change your display name, or your password (with `current_password`): a new password
    ends every other login session of this account."""
    users = UserRepository(session)
    me = await _me(users, user.user_id)
    if body.display_name is not None:
        me.display_name = body.display_name
    if body.password is not None:
        matches, _ = await verify_password(body.current_password or "", me.password_hash)
        if not matches:
            raise ProblemError(
                VALIDATION_ERROR.about_field("body.current_password", "is not your password")
            )
        await users.record_password_change(me, await hash_password(body.password))
        await AuthSessionRepository(session).revoke_all(
            user.user_id, "password_changed", keep=user.session_id
        )
    await session.flush()
    return me
