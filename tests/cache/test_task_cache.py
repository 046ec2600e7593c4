"""The task cache (lecture Week 10) on a real Redis and the real app: hits answer without
PostgreSQL, writes are seen by the very next read, authorization is never taken from a
cached value, and Redis going away costs nothing but speed."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio
from fastapi import FastAPI
from httpx import AsyncClient
from sqlalchemy import event

from tests.support.accounts import register_and_login
from tests.support.invitations import add_member, verify_address
from tests.support.live_app import app_of, cached_live_client, live_client
from tests.support.redis import RedisServer

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest_asyncio.fixture(loop_scope="session")
async def cached(own_database_url: str, redis_url: str) -> AsyncIterator[AsyncClient]:
    """The real app with the cache on, logged in as a new account."""
    async with cached_live_client(own_database_url, redis_url) as client:
        client.headers.update(await register_and_login(client, _new_email()))
        yield client


@pytest.fixture
def statements(cached: AsyncClient) -> Iterator[list[str]]:
    """The SQL statements the app sends from now on."""
    sent: list[str] = []
    engine = app_of(cached).state.engine.sync_engine

    def record(*args: Any) -> None:
        sent.append(args[2])

    event.listen(engine, "before_cursor_execute", record)
    yield sent
    event.remove(engine, "before_cursor_execute", record)


_emails = iter(range(1_000_000))


def _new_email() -> str:
    return f"cached{next(_emails)}@example.com"


async def _task(client: AsyncClient, title: str = "Buy milk", **fields: Any) -> dict[str, Any]:
    response = await client.post("/tasks", json={"title": title, **fields})
    assert response.status_code == 201, response.text
    task: dict[str, Any] = response.json()
    return task


async def test_a_second_read_is_answered_from_the_cache_without_postgresql(
    cached: AsyncClient, statements: list[str]
) -> None:
    task = await _task(cached)
    first = await cached.get(f"/tasks/{task['id']}")  # keeps the caller's facts
    await cached.get(f"/tasks/{task['id']}")  # and the task
    assert statements, "the first reads ask the database"
    statements.clear()

    second = await cached.get(f"/tasks/{task['id']}")

    assert statements == []
    assert second.status_code == 200
    assert second.content == first.content
    assert second.json() == task
    assert second.headers["ETag"] == first.headers["ETag"] == f'"{task["version"]}"'
    assert second.headers["Cache-Control"] == "private, no-cache"


async def test_if_none_match_is_a_304_from_the_cache(
    cached: AsyncClient, statements: list[str]
) -> None:
    task = await _task(cached)
    await cached.get(f"/tasks/{task['id']}")
    etag = (await cached.get(f"/tasks/{task['id']}")).headers["ETag"]
    statements.clear()

    unchanged = await cached.get(f"/tasks/{task['id']}", headers={"If-None-Match": etag})
    weak = await cached.get(f"/tasks/{task['id']}", headers={"If-None-Match": f"W/{etag}"})
    other = await cached.get(f"/tasks/{task['id']}", headers={"If-None-Match": '"999"'})

    assert (unchanged.status_code, unchanged.content) == (304, b"")
    assert unchanged.headers["ETag"] == etag
    assert unchanged.headers["Cache-Control"] == "private, no-cache"
    assert weak.status_code == 304
    assert other.status_code == 200
    assert statements == []


async def test_a_change_is_seen_by_the_very_next_read(cached: AsyncClient) -> None:
    task = await _task(cached)
    etag = (await cached.get(f"/tasks/{task['id']}")).headers["ETag"]
    page = await cached.get("/tasks")
    assert page.status_code == 200

    changed = await cached.patch(f"/tasks/{task['id']}", json={"title": "Buy oat milk"})
    assert changed.status_code == 200
    read = await cached.get(f"/tasks/{task['id']}", headers={"If-None-Match": etag})
    listed = await cached.get("/tasks")

    assert read.status_code == 200
    assert read.json()["title"] == "Buy oat milk"
    assert read.headers["ETag"] == f'"{task["version"] + 1}"'
    assert [t["title"] for t in listed.json() if t["id"] == task["id"]] == ["Buy oat milk"]
    assert listed.headers["ETag"] != page.headers["ETag"]


async def test_a_new_task_changes_the_cached_page_and_its_count(cached: AsyncClient) -> None:
    before = await cached.get("/tasks")
    again = await cached.get("/tasks", headers={"If-None-Match": before.headers["ETag"]})
    assert again.status_code == 304

    added = await _task(cached, "New on the page")
    after = await cached.get("/tasks", headers={"If-None-Match": before.headers["ETag"]})

    assert after.status_code == 200
    assert int(after.headers["X-Total-Count"]) == int(before.headers["X-Total-Count"]) + 1
    assert after.json()[0]["id"] == added["id"]


async def test_a_deleted_task_is_gone_at_once(cached: AsyncClient) -> None:
    task = await _task(cached)
    assert (await cached.get(f"/tasks/{task['id']}")).status_code == 200

    assert (await cached.delete(f"/tasks/{task['id']}")).status_code == 204

    assert (await cached.get(f"/tasks/{task['id']}")).status_code == 404


async def test_a_cached_page_equals_the_uncached_one_byte_for_byte(
    cached: AsyncClient, own_database_url: str
) -> None:
    await _task(cached, 'Ünïcode \u2028 and "quotes" <b>', description="tab\there")
    from_database = await cached.get("/tasks?limit=5")
    from_cache = await cached.get("/tasks?limit=5")
    async with live_client(own_database_url, redis_url="off") as uncached:
        uncached.headers["Authorization"] = cached.headers["Authorization"]
        without_cache = await uncached.get("/tasks?limit=5")

    assert from_cache.content == from_database.content == without_cache.content
    for name in ("ETag", "X-Total-Count", "Link", "Cache-Control"):
        assert from_cache.headers.get(name) == without_cache.headers.get(name), name


async def test_logging_out_ends_the_cached_login_at_once(cached: AsyncClient) -> None:
    task = await _task(cached)
    assert (await cached.get(f"/tasks/{task['id']}")).status_code == 200

    assert (await cached.post("/auth/logout")).status_code == 204

    refused = await cached.get(f"/tasks/{task['id']}")
    assert refused.status_code == 401
    assert (await cached.get("/tasks")).status_code == 401


async def test_a_removed_member_cannot_read_the_cached_task_any_more(
    cached: AsyncClient, own_database_url: str
) -> None:
    owner = cached
    workspace = (await owner.post("/workspaces", json={"name": "Shared"})).json()
    task = await _task(owner, "Shared task", workspace_id=workspace["id"])
    guest_email = _new_email()
    guest_headers = await register_and_login(owner, guest_email)
    await verify_address(own_database_url, guest_email)
    await add_member(owner, workspace["id"], guest_email, guest_headers)
    assert (await owner.get(f"/tasks/{task['id']}", headers=guest_headers)).status_code == 200
    assert (await owner.get("/tasks", headers=guest_headers)).status_code == 200

    guest_id = (await owner.get("/users/me", headers=guest_headers)).json()["id"]
    removed = await owner.delete(f"/workspaces/{workspace['id']}/members/{guest_id}")
    assert removed.status_code == 204, removed.text

    after = await owner.get(f"/tasks/{task['id']}", headers=guest_headers)
    assert after.status_code == 404
    listed = await owner.get("/tasks", headers=guest_headers)
    assert task["id"] not in [t["id"] for t in listed.json()]


async def test_redis_going_away_costs_speed_not_answers(
    cached: AsyncClient, redis_server: RedisServer, statements: list[str]
) -> None:
    task = await _task(cached)
    for _ in range(2):
        assert (await cached.get(f"/tasks/{task['id']}")).status_code == 200
    app: FastAPI = app_of(cached)
    with redis_server.down():
        for _ in range(3):
            read = await cached.get(f"/tasks/{task['id']}")
            assert read.status_code == 200
        changed = await cached.patch(f"/tasks/{task['id']}", json={"title": "while down"})
        assert changed.status_code == 200
        assert (await cached.get(f"/tasks/{task['id']}")).json()["title"] == "while down"
    app.state.cache._down_until = 0.0  # no need to wait out the pause in a test
    statements.clear()
    for _ in range(2):  # the caller's facts, then the task
        assert (await cached.get(f"/tasks/{task['id']}")).json()["title"] == "while down"
    assert statements, "Redis restarted empty: the first reads ask the database"
    statements.clear()
    assert (await cached.get(f"/tasks/{task['id']}")).json()["title"] == "while down"
    assert statements == [], "and the cache serves again"


async def test_another_tenants_cached_task_is_a_404_from_the_database(
    cached: AsyncClient, statements: list[str]
) -> None:
    """Not theirs is 404, and the same work as an id that does not exist: the database
    answers both, so the time of the answer tells nothing about what is cached."""
    task = await _task(cached)
    for _ in range(2):
        assert (await cached.get(f"/tasks/{task['id']}")).status_code == 200  # now cached
    stranger = await register_and_login(cached, _new_email())
    for _ in range(2):  # the stranger's facts are cached too
        assert (await cached.get("/tasks", headers=stranger)).status_code == 200
    statements.clear()

    foreign = await cached.get(f"/tasks/{task['id']}", headers=stranger)
    asked_for_the_foreign_one = len(statements)
    missing = await cached.get("/tasks/2147483000", headers=stranger)

    assert foreign.status_code == missing.status_code == 404
    assert foreign.content == missing.content
    assert asked_for_the_foreign_one > 0, "the database answers, not the cache"
    assert len(statements) == 2 * asked_for_the_foreign_one


async def test_reads_give_their_connections_back_and_hits_take_none(cached: AsyncClient) -> None:
    """A read that went to the database returns its pooled connection when it ends; one
    answered from the cache never takes one (its session is never used)."""
    pool = app_of(cached).state.engine.pool
    task = await _task(cached)
    for _ in range(5):  # misses first (facts, then the task), then hits
        assert (await cached.get(f"/tasks/{task['id']}")).status_code == 200
        assert (await cached.get("/tasks?limit=3")).status_code == 200
        assert pool.checkedout() == 0
    opened = pool.checkedin()

    for _ in range(20):
        assert (await cached.get(f"/tasks/{task['id']}")).status_code == 200

    assert pool.checkedout() == 0
    assert pool.checkedin() == opened
