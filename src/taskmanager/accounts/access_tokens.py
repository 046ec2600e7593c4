"""Stamping a personal access token's use, after the response (taskmanager.dependencies).

A request with a token whose last_used_at is a minute old schedules this: one short
transaction of its own, entered as the token again (a token revoked meanwhile stamps
nothing), that writes last_used_at unless another request stamped it first. The request's
own transaction stays as it was (read-only for a route that only reads), and a failure
here is only logged: the client has its answer already, and the next use tries again.
"""

from __future__ import annotations

import logging

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from taskmanager.accounts.callers import enter_with_token
from taskmanager.repositories.access_token_repository import AccessTokenRepository
from taskmanager.security.caller_key import CallerKey

log = logging.getLogger(__name__)


async def stamp_token_use(
    session_factory: async_sessionmaker[AsyncSession], key: CallerKey, token_hash: str
) -> None:
    """Stamp last_used_at of the token whose hash is `token_hash` (at most once a minute)."""
    try:
        async with session_factory() as session, session.begin():
            if await enter_with_token(session, key, token_hash) is not None:
                await AccessTokenRepository(session).stamp_use()
    except (SQLAlchemyError, OSError) as exc:
        log.warning("could not stamp an access token's last use: %s", type(exc).__name__)
