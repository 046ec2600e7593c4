"""LoginLimitRepository: password attempts counted in PostgreSQL, per key, in a fixed window.

Kept in the database so that every worker and every machine counts the same attempts. An
attempt is counted, atomically, BEFORE the password is checked: requests sent at the same
moment each get their own number, so no burst of guesses slips past the limit while the
first ones are still hashing."""

from __future__ import annotations

import math
from collections.abc import Mapping

from sqlalchemy import bindparam, case, delete, func, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from taskmanager.models import LoginFailure

_WINDOW = func.make_interval(0, 0, 0, 0, 0, 0, bindparam("window_seconds"))


class LoginLimitRepository:
    """Encapsulates all database operations for password-attempt counts."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def count_attempt(self, limits: Mapping[str, int], window_seconds: int) -> int | None:
        """Count one attempt for each of `limits`' keys (key -> attempts allowed per window);
        a key whose window has passed starts a new one. Returns the seconds to wait if any
        key is now over its limit, else None (go ahead and check the password)."""
        new_rows = insert(LoginFailure).values(
            [{"key": key, "failures": 1, "window_started_at": func.now()} for key in limits]
        )
        expired = LoginFailure.window_started_at + _WINDOW <= func.now()
        stmt = new_rows.on_conflict_do_update(
            index_elements=[LoginFailure.key],
            set_={
                "failures": case((expired, 1), else_=LoginFailure.failures + 1),
                "window_started_at": case(
                    (expired, func.now()), else_=LoginFailure.window_started_at
                ),
            },
        ).returning(
            LoginFailure.key,
            LoginFailure.failures,
            func.extract("epoch", LoginFailure.window_started_at + _WINDOW - func.now()).label(
                "remaining"
            ),
        )
        rows = await self.session.execute(stmt, {"window_seconds": window_seconds})
        waits = [row.remaining for row in rows if row.failures > limits[row.key]]
        return max(1, math.ceil(max(waits))) if waits else None

    async def forget_attempt(self, account_key: str, address_key: str) -> None:
        """A successful login: the account starts afresh, and the address is not charged
        for it."""
        await self.session.execute(delete(LoginFailure).where(LoginFailure.key == account_key))
        await self.session.execute(
            update(LoginFailure)
            .where(LoginFailure.key == address_key, LoginFailure.failures > 0)
            .values(failures=LoginFailure.failures - 1)
        )

    async def purge_expired(self, window_seconds: int) -> int:
        result = await self.session.execute(
            delete(LoginFailure).where(LoginFailure.window_started_at + _WINDOW <= func.now()),
            {"window_seconds": window_seconds},
        )
        return int(getattr(result, "rowcount", 0) or 0)
