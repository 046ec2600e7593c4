"""A personal access token's last_used_at, with real commits (the rolled-back fixture's
uncommitted token is invisible to the separate transaction that stamps it): stamped after
the response by a short transaction of its own, once a minute at most, on read-only routes
too, and not for a request the token was refused."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from httpx import AsyncClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support.tokens import bearer


async def _last_used(observer: AsyncEngine, token_id: str) -> datetime | None:
    async with observer.connect() as connection:
        value: datetime | None = (
            await connection.execute(
                text("SELECT last_used_at FROM access_tokens WHERE id = :id"), {"id": token_id}
            )
        ).scalar_one()
        return value


async def _make(live: AsyncClient, scopes: list[str]) -> dict[str, Any]:
    response = await live.post("/users/me/tokens", json={"name": "use", "scopes": scopes})
    assert response.status_code == 201, response.text
    made: dict[str, Any] = response.json()
    return made


async def test_a_read_stamps_last_used_once_a_minute(
    live: AsyncClient, observer: AsyncEngine
) -> None:
    made = await _make(live, ["tasks:read"])
    assert await _last_used(observer, made["id"]) is None

    assert (await live.get("/tasks", headers=bearer(made["token"]))).status_code == 200
    first = await _last_used(observer, made["id"])
    assert first is not None
    assert abs(first - datetime.now(UTC)) < timedelta(minutes=1)

    # Within the minute: nothing is written again.
    assert (await live.get("/tasks", headers=bearer(made["token"]))).status_code == 200
    assert await _last_used(observer, made["id"]) == first

    # A minute later (made so by moving the stamp back): the next use stamps it again.
    async with observer.begin() as connection:
        await connection.execute(
            text(
                "UPDATE access_tokens SET last_used_at = now() - interval '2 minutes' "
                "WHERE id = :id"
            ),
            {"id": made["id"]},
        )
    assert (await live.get("/tasks", headers=bearer(made["token"]))).status_code == 200
    again = await _last_used(observer, made["id"])
    assert again is not None
    assert again > first

    listed = (await live.get("/users/me/tokens")).json()
    (shown,) = [token for token in listed if token["id"] == made["id"]]
    assert datetime.fromisoformat(shown["last_used_at"]) == again


async def test_a_refused_request_stamps_nothing(live: AsyncClient, observer: AsyncEngine) -> None:
    made = await _make(live, ["tasks:read"])
    refused = await live.post("/tasks", json={"title": "x"}, headers=bearer(made["token"]))
    assert refused.status_code == 403, refused.text
    assert await _last_used(observer, made["id"]) is None
