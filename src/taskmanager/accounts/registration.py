"""Opening an account: the user, their personal workspace, and whatever nobody owns yet.

One function for every way in: POST /auth/register, `taskmanager users create` and the demo
user of `taskmanager db seed`. Flushes in the caller's transaction, never commits."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from taskmanager.models import User
from taskmanager.repositories.user_repository import UserRepository
from taskmanager.repositories.workspace_repository import WorkspaceRepository
from taskmanager.security.caller_key import CallerKey
from taskmanager.security.passwords import hash_password

PERSONAL_WORKSPACE_NAME = "Personal"


async def register_account(
    session: AsyncSession,
    key: CallerKey,
    email: str,
    password: str,
    display_name: str | None = None,
    *,
    claim_unowned: bool = False,
    request_id: str | None = None,
) -> User:
    """Create the account (an email in use fails the unique index: 409) with its personal
    workspace. With `claim_unowned` (only `taskmanager users create`, an operator's
    command), it also takes over the workspaces nobody owns: the tasks and categories from
    before accounts existed. Never through the public registration, where the first
    stranger to register would get them.

    The transaction must not have entered a caller yet: it enters as the account about to
    be made (the database allocates its id), under row-level security from the start.
    `request_id`: the request it serves (the activity log names it), if any."""
    password_hash = await hash_password(password)
    users = UserRepository(session)
    entered = await users.enter(key.entry("register"), request_id)
    if entered is None or entered.user_id is None:
        raise RuntimeError("the database allocated no id for a registration")
    user = await users.create(
        entered.user_id,
        email=email,
        display_name=display_name or email.split("@", 1)[0],
        password_hash=password_hash,
    )
    # The policies let a caller create a workspace only as its creator, and become the
    # first owner of a workspace it created.
    workspaces = WorkspaceRepository(session)
    personal = await workspaces.create_personal(user.id, PERSONAL_WORKSPACE_NAME)
    await users.set_personal_workspace(user, personal)
    if claim_unowned:
        # Only an operator's caller may take over the workspaces nobody owns.
        await users.enter(key.entry("operator", user.id), request_id)
        await workspaces.claim_unclaimed(user.id)
    return user
