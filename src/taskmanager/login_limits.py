"""Limits on password attempts (logins, and password changes that must name the current
password): counted in PostgreSQL per account and per client address, 429 with Retry-After."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import AsyncSession

from taskmanager.models import EMAIL_MAX_LENGTH
from taskmanager.problems import TOO_MANY_LOGIN_ATTEMPTS
from taskmanager.repositories.login_limit_repository import LoginLimitRepository
from taskmanager.repositories.user_repository import UserRepository


def limit_keys(email: str, request: Request) -> tuple[str, str]:
    """The keys a password attempt is counted under: the account, and the client address."""
    address = request.client.host if request.client else "unknown"
    # Cut to the longest email that can exist, so any username can be counted.
    return f"email:{email.strip().lower()[:EMAIL_MAX_LENGTH]}", f"address:{address}"


async def count_password_attempt(
    session: AsyncSession, request: Request, keys: tuple[str, str]
) -> int | None:
    """Count a password attempt under `keys` and COMMIT it at once, before the password is
    checked: a 401 or 422 afterwards cannot roll the count back, and the row locks are held
    for one short transaction, not for the 40 ms of hashing. Seconds to wait, or None."""
    settings = request.app.state.settings
    account_key, address_key = keys
    # In a transaction of its own, entered to count (the route enters its caller again).
    await UserRepository(session).enter(request.app.state.caller_key.entry("login"))
    limits = {
        account_key: settings.login_failures_per_account,
        address_key: settings.login_failures_per_address,
    }
    wait = await LoginLimitRepository(session).count_attempt(limits, settings.login_window_seconds)
    # The one commit outside get_async_session: the count must stand whatever follows.
    await session.commit()
    return wait


def too_many_attempts(wait: int) -> JSONResponse:
    problem = TOO_MANY_LOGIN_ATTEMPTS.problem(
        f"too many password attempts; try again in {wait} seconds"
    )
    return problem.response({"Retry-After": str(wait)})
