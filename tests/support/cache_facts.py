"""What the cache believes about callers, held against what PostgreSQL holds.

`stale_caller_facts` reads every *valid* caller-facts entry in Redis (its epoch and its
user's generation current: taskmanager.cache.scripts) and compares it with the database, as
the superuser: the login session must still be alive and its account active, and the
memberships and roles must be the ones the entry holds. A change that forgot to void the
facts it ended shows up here, whichever route made it.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

_ALIVE = text(
    "SELECT s.user_id FROM auth_sessions s JOIN users u ON u.id = s.user_id "
    "WHERE s.id = :session_id AND s.revoked_at IS NULL AND s.expires_at > now() "
    "AND u.is_active"
)
_MEMBERSHIPS = text("SELECT workspace_id, role FROM memberships WHERE user_id = :user_id")


async def stale_caller_facts(redis_url: str, namespace: str, observer: AsyncEngine) -> list[str]:
    """Every valid cached caller fact the database contradicts, said in a sentence."""
    wrong: list[str] = []
    async with Redis.from_url(redis_url) as redis:
        epoch = await redis.get(f"{namespace}:epoch")
        async for key in redis.scan_iter(match=f"{namespace}:caller:*"):
            e, user, generation, workspaces, roles = await redis.hmget(
                key, ["e", "u", "g", "w", "f"]
            )
            if (
                e is None
                or e != epoch
                or generation != await redis.get(f"{namespace}:user:{user.decode()}")
            ):
                continue  # void: the next request asks the database
            session_id = uuid.UUID(key.decode().rsplit(":", 1)[1])
            cached = _facts(workspaces, roles)
            truth = await _truth(observer, session_id, int(user))
            if truth is None:
                wrong.append(f"session {session_id} has ended, its facts are still cached")
            elif truth != cached:
                wrong.append(f"user {int(user)}: cached {cached}, the database says {truth}")
    return wrong


def _facts(workspaces: bytes, roles: bytes) -> dict[int, str]:
    kept: dict[str, Any] = json.loads(roles)
    ids = [int(id_) for id_ in workspaces.decode().split(",") if id_]
    return {id_: kept["r"].get(str(id_), "?") for id_ in ids}


async def _truth(
    observer: AsyncEngine, session_id: uuid.UUID, user_id: int
) -> dict[int, str] | None:
    async with observer.connect() as connection:
        alive = (await connection.execute(_ALIVE, {"session_id": session_id})).first()
        if alive is None or alive.user_id != user_id:
            return None
        rows = await connection.execute(_MEMBERSHIPS, {"user_id": user_id})
        return {int(row.workspace_id): str(row.role) for row in rows}
