"""The task cache under concurrency, on real processes, a real Redis and a real PostgreSQL.

- Concurrent writers and readers over two `taskmanager serve` processes sharing one database
  and one Redis: no read is older than a write acknowledged before it started (the writer's
  own, on either server, and everyone else's), no reader goes back to a version older than
  one it saw acknowledged, nothing answers 5xx, and once the writes stop both servers answer
  what PostgreSQL holds. The cache served hits meanwhile (else the run proves nothing).
- A hot task that was just changed is read by 50 requests at once: PostgreSQL is asked once,
  not 50 times (single flight), and entries stored together expire at different times.
- A read that misses never takes the answer of a database read begun before the reader's
  own acknowledged write (the single flight shares only among readers that saw the same
  generations).
- Redis stopped under load, then started again: no 5xx, every read shows the writes
  acknowledged before it, one warning per process, errors counted, and the cache serves
  hits again by itself. Redis frozen (SIGSTOP): requests answer within the cache's timeout
  plus their usual time, not when Redis wakes up.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text
from sqlalchemy.dialects.postgresql import asyncpg

from taskmanager.repositories.task_queries.views import VIEW_BY_ID
from taskmanager.repositories.task_repository import TaskRepository
from tests.support.accounts import TEST_SECRET, login, register_and_login
from tests.support.invitations import add_member, verify_address
from tests.support.live_app import app_of, live_client, observer_engine
from tests.support.processes import ServeProcess, clean_env, serve
from tests.support.redis import RedisServer
from tests.support.statements import count_statements

pytestmark = pytest.mark.asyncio(loop_scope="session")

# The statement a task's read sends PostgreSQL on a miss, as the engine sends it.
VIEW_SQL = str(VIEW_BY_ID.compile(dialect=asyncpg.dialect()))


async def _created(client: httpx.AsyncClient, title: str, **fields: Any) -> dict[str, Any]:
    response = await client.post("/tasks", json={"title": title, **fields})
    assert response.status_code == 201, response.text
    task: dict[str, Any] = response.json()
    return task


# ─────────────────────────────── one process: the stampede, the jitter, the single flight


@pytest_asyncio.fixture(loop_scope="session")
async def cached(own_database_url: str, redis_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """The real app in this process with the cache on, logged in as a new account.

    A generous cache timeout: 50 requests at once open 50 Redis connections, and on a busy
    machine some take longer than the default 50 ms to connect, which pauses the cache for
    a second (by design) and would hide what the single flight does."""
    async with live_client(own_database_url, redis_url=redis_url, cache_timeout_ms=1000) as client:
        client.headers.update(await register_and_login(client, _new_email()))
        yield client


_emails = iter(range(1_000_000))


def _new_email() -> str:
    return f"loaded{next(_emails)}@example.com"


async def test_fifty_reads_of_a_hot_task_just_changed_ask_postgresql_once(
    cached: httpx.AsyncClient,
) -> None:
    task = await _created(cached, "Hot")
    for _ in range(2):  # the caller's facts, then the task
        assert (await cached.get(f"/tasks/{task['id']}")).status_code == 200
    # Hits, 50 at once: the app now holds Redis connections for 50 requests at once, so the
    # lookups below all run together rather than one connection after another.
    warm = await asyncio.gather(*(cached.get(f"/tasks/{task['id']}") for _ in range(50)))
    assert {answer.status_code for answer in warm} == {200}
    changed = await cached.patch(f"/tasks/{task['id']}", json={"title": "Hot, changed"})
    assert changed.status_code == 200, changed.text

    with count_statements(app_of(cached).state.engine) as sent:
        answers = await asyncio.gather(*(cached.get(f"/tasks/{task['id']}") for _ in range(50)))

    assert {(a.status_code, a.json()["title"], a.json()["version"]) for a in answers} == {
        (200, "Hot, changed", changed.json()["version"])
    }
    reads = sent.statements.count(VIEW_SQL)
    # One database read for the 50 (a request that looked before the shared read stored the
    # task, and asked after it ended, reads again: a handful at most, never 50).
    assert 1 <= reads <= 5, f"{reads} database reads for 50 concurrent misses"
    # And the next reads are hits: nothing is sent at all.
    with count_statements(app_of(cached).state.engine) as after:
        assert (await cached.get(f"/tasks/{task['id']}")).status_code == 200
    assert after.statements == []


async def test_entries_stored_together_expire_at_different_times(
    cached: httpx.AsyncClient, redis_server: RedisServer
) -> None:
    tasks = [await _created(cached, f"Burst {number}") for number in range(20)]
    assert (await cached.get(f"/tasks/{tasks[0]['id']}")).status_code == 200  # the facts
    await asyncio.gather(*(cached.get(f"/tasks/{task['id']}") for task in tasks))

    cache = app_of(cached).state.cache
    with redis_server.client() as redis:
        ttls = [redis.ttl(cache.key("task", task["id"])) for task in tasks]

    ttl = cache.ttl_seconds
    assert all(ttl - ttl // 10 - 1 <= left <= ttl for left in ttls), ttls
    assert len(set(ttls)) > 1, f"all {len(ttls)} entries expire together: {ttls}"


async def test_a_miss_never_shares_a_database_read_begun_before_the_readers_own_write(
    cached: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader's miss reads PostgreSQL and is held there; meanwhile a writer changes the
    task, its PATCH is acknowledged, and the writer reads the task: it must get its own
    write, not the held read's older answer (which the single flight could hand it)."""
    email = _new_email()
    writer = cached
    writer.headers.update(await register_and_login(writer, email))
    reader_headers = await login(writer, email)  # another login of the same account
    task = await _created(writer, "Before")
    for headers in ({}, reader_headers):  # both logins' caller facts, and the task
        for _ in range(2):
            assert (await writer.get(f"/tasks/{task['id']}", headers=headers)).status_code == 200
    first = await writer.patch(f"/tasks/{task['id']}", json={"title": "First"})
    assert first.status_code == 200

    real_get_view = TaskRepository.get_view
    held, release = asyncio.Event(), asyncio.Event()

    async def get_view_held_once(self: TaskRepository, task_id: int) -> Any:
        view = await real_get_view(self, task_id)
        if not held.is_set():
            held.set()
            await release.wait()
        return view

    monkeypatch.setattr(TaskRepository, "get_view", get_view_held_once)
    read = asyncio.ensure_future(writer.get(f"/tasks/{task['id']}", headers=reader_headers))
    await asyncio.wait_for(held.wait(), 10)  # the reader's miss has read "First"
    second = await writer.patch(f"/tasks/{task['id']}", json={"title": "Second"})
    assert second.status_code == 200
    own = asyncio.ensure_future(writer.get(f"/tasks/{task['id']}"))
    await asyncio.wait({own}, timeout=1.0)  # let it join the held read, if it would
    release.set()

    assert (await read).json()["title"] == "First"  # begun before "Second": either is right
    mine = await own
    assert (mine.json()["title"], mine.json()["version"]) == ("Second", second.json()["version"])
    # The held read did not store its older answer either.
    again = await writer.get(f"/tasks/{task['id']}", headers=reader_headers)
    assert again.json()["title"] == "Second"
