"""LoginLimitRepository: failed logins counted in PostgreSQL, per key, in a fixed window.

Kept in the database so that every worker and every machine counts the same failures."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from sqlalchemy import bindparam, case, delete, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from taskmanager.models import LoginFailure

_WINDOW = func.make_interval(0, 0, 0, 0, 0, 0, bindparam("window_seconds"))


class LoginLimitRepository:
    """Encapsulates all database operations for failed-login counts."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def seconds_blocked(self, limits: Mapping[str, int], window_seconds: int) -> int | None:
        """Seconds until the most-blocked of `limits`' keys may try again (key -> allowed
        failures per window); None when none of them has reached its limit."""
        rows = await self.session.execute(
            select(
                LoginFailure.key,
                LoginFailure.failures,
                func.extract("epoch", LoginFailure.window_started_at + _WINDOW - func.now()).label(
                    "remaining"
                ),
            ).where(LoginFailure.key.in_(list(limits))),
            {"window_seconds": window_seconds},
        )
        waits = [
            row.remaining for row in rows if row.failures >= limits[row.key] and row.remaining > 0
        ]
        return max(1, math.ceil(max(waits))) if waits else None

    async def record_failure(self, keys: Sequence[str], window_seconds: int) -> None:
        """One more failure for each key; a key whose window has passed starts a new one."""
        stmt = insert(LoginFailure).values(
            [{"key": key, "failures": 1, "window_started_at": func.now()} for key in keys]
        )
        expired = LoginFailure.window_started_at + _WINDOW <= func.now()
        stmt = stmt.on_conflict_do_update(
            index_elements=[LoginFailure.key],
            set_={
                "failures": case((expired, 1), else_=LoginFailure.failures + 1),
                "window_started_at": case(
                    (expired, func.now()), else_=LoginFailure.window_started_at
                ),
            },
        )
        await self.session.execute(stmt, {"window_seconds": window_seconds})

    async def clear(self, key: str) -> None:
        await self.session.execute(delete(LoginFailure).where(LoginFailure.key == key))

    async def purge_expired(self, window_seconds: int) -> int:
        result = await self.session.execute(
            delete(LoginFailure).where(LoginFailure.window_started_at + _WINDOW <= func.now()),
            {"window_seconds": window_seconds},
        )
        return int(getattr(result, "rowcount", 0) or 0)
