"""Retries: Idempotency-Key on POST /tasks and POST /categories.

A retry with the same key and body gets the original response (status, body, Location,
ETag, plus `Idempotent-Replayed: true`) and creates nothing; the same key with another
body is a 422 problem. The key is claimed in the request's own transaction, in PostgreSQL:
concurrent requests with one key wait for the first and replay it, a request that failed
leaves no claim behind, and the promise holds across workers and restarts until the key
expires (Settings.idempotency_ttl_hours, default 24).

Single-request semantics run in the rolled-back `client` fixture; whatever needs real
commits (concurrency, expiry by the clock, purge, workers, restart) runs against a
database of its own.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from httpx import AsyncClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from tests.support.accounts import TEST_SECRET, register_over_http
from tests.support.kinds import CATEGORIES, KINDS, TASKS, Kind
from tests.support.live_app import live_client
from tests.support.problems import assert_problem
from tests.support.processes import ServeProcess, clean_env, serve
from tests.support.reliability import ReliabilityRecorder

pytestmark = pytest.mark.reliability

AREA = "Lost updates and retries"
REPLAYED = "Idempotent-Replayed"
CONCURRENT = 20
MIN_CONNECTIONS = 10  # to the two `serve` workers


def key_header(key: str | bytes) -> dict[str, Any]:
    return {"Idempotency-Key": key}


async def count_rows(db: AsyncSession | AsyncEngine, kind: Kind, value: str) -> int:
    query = text(f"SELECT count(*) FROM {kind.table} WHERE {kind.field} = :value")
    if isinstance(db, AsyncSession):
        return int((await db.execute(query, {"value": value})).scalar_one())
    async with db.connect() as connection:
        return int((await connection.execute(query, {"value": value})).scalar_one())


async def stored_keys(db: AsyncSession | AsyncEngine, key: str) -> list[Any]:
    query = text(
        "SELECT scope, status_code, created_at, expires_at FROM idempotency_keys "
        "WHERE key = :key ORDER BY scope"
    )
    if isinstance(db, AsyncSession):
        return list((await db.execute(query, {"key": key})).all())
    async with db.connect() as connection:
        return list((await connection.execute(query, {"key": key})).all())


def assert_replay_of(replay: httpx.Response, original: httpx.Response) -> None:
    """`replay` is `original` sent again: same status, body and headers, marked replayed."""
    assert replay.status_code == original.status_code == 201, replay.text
    assert replay.content == original.content
    assert replay.json() == original.json()
    assert replay.headers["Location"] == original.headers["Location"]
    assert replay.headers["ETag"] == original.headers["ETag"]
    assert replay.headers["content-type"] == original.headers["content-type"]
    assert replay.headers[REPLAYED] == "true"
    assert REPLAYED not in original.headers


# ─────────────────────────────────────────────
# One request at a time (rolled-back fixture)
# ─────────────────────────────────────────────


@KINDS
async def test_a_retry_with_the_same_key_and_body_replays_the_response(
    client: AsyncClient, db_session: AsyncSession, kind: Kind, reliability: ReliabilityRecorder
) -> None:
    headers = key_header(f"retry-{kind.name}")
    original = await client.post(kind.path, json=kind.body("sent twice"), headers=headers)
    assert original.status_code == 201, original.text

    retry = await client.post(kind.path, json=kind.body("sent twice"), headers=headers)

    assert_replay_of(retry, original)
    assert await count_rows(db_session, kind, "sent twice") == 1
    # The original response, even after the resource changed since.
    url = original.headers["Location"].removeprefix("http://test")
    assert (await client.patch(url, json=kind.body("changed since"))).status_code == 200
    later = await client.post(kind.path, json=kind.body("sent twice"), headers=headers)
    assert_replay_of(later, original)
    assert await count_rows(db_session, kind, "sent twice") == 0
    assert await count_rows(db_session, kind, "changed since") == 1
    reliability.record(
        AREA,
        f"POST /{kind.table} retried with the same Idempotency-Key and body",
        "201 again with the original body, Location and ETag, marked Idempotent-Replayed: "
        "true; exactly one row",
        lost=False,
    )


@KINDS
async def test_the_same_key_with_another_body_is_422_and_creates_nothing(
    client: AsyncClient, db_session: AsyncSession, kind: Kind, reliability: ReliabilityRecorder
) -> None:
    headers = key_header(f"reused-{kind.name}")
    original = await client.post(kind.path, json=kind.body("first body"), headers=headers)
    assert original.status_code == 201

    reused = await client.post(kind.path, json=kind.body("second body"), headers=headers)

    problem = assert_problem(reused, 422, problem_type="/problems/idempotency-key-reused")
    assert "Idempotency-Key" in problem["detail"]
    assert REPLAYED not in reused.headers
    assert await count_rows(db_session, kind, "second body") == 0
    assert await count_rows(db_session, kind, "first body") == 1
    # The key still belongs to the first request.
    again = await client.post(kind.path, json=kind.body("first body"), headers=headers)
    assert_replay_of(again, original)
    reliability.record(
        AREA,
        f"POST /{kind.table} with a used Idempotency-Key but a different body",
        "422 problem /problems/idempotency-key-reused; nothing created; the key still "
        "replays the first response",
        lost=False,
    )


async def test_a_key_is_scoped_to_its_endpoint(
    client: AsyncClient, db_session: AsyncSession, reliability: ReliabilityRecorder
) -> None:
    headers = key_header("shared-key")
    task = await client.post("/tasks", json={"title": "scoped"}, headers=headers)
    category = await client.post("/categories", json={"name": "scoped"}, headers=headers)
    assert (task.status_code, category.status_code) == (201, 201)
    assert REPLAYED not in category.headers

    assert_replay_of(await client.post("/tasks", json={"title": "scoped"}, headers=headers), task)
    assert_replay_of(
        await client.post("/categories", json={"name": "scoped"}, headers=headers), category
    )
    assert [row.scope for row in await stored_keys(db_session, "shared-key")] == [
        "POST /categories",
        "POST /tasks",
    ]
    assert await count_rows(db_session, TASKS, "scoped") == 1
    assert await count_rows(db_session, CATEGORIES, "scoped") == 1
    reliability.record(
        AREA,
        "the same Idempotency-Key on POST /tasks and on POST /categories",
        "independent: each creates its own row once and replays its own response",
        lost=False,
    )


INVALID_KEYS: dict[str, str | bytes] = {
    "empty": "",
    "256 characters": "k" * 256,
    "a space": "two words",
    "non-ASCII": "clé".encode(),
}


async def test_an_invalid_key_is_422_naming_the_header(
    client: AsyncClient, db_session: AsyncSession, reliability: ReliabilityRecorder
) -> None:
    for kind in (TASKS, CATEGORIES):
        for name, key in INVALID_KEYS.items():
            response = await client.post(
                kind.path, json=kind.body("bad key"), headers=key_header(key)
            )
            problem = assert_problem(response, 422, problem_type="/problems/validation-error")
            assert problem["detail"].startswith("header.Idempotency-Key:"), name
            assert await count_rows(db_session, kind, "bad key") == 0, name
    # The boundary: 255 printable ASCII characters are a key.
    longest = await client.post("/tasks", json={"title": "ok"}, headers=key_header("k" * 255))
    assert longest.status_code == 201
    reliability.record(
        AREA,
        "Idempotency-Key empty, 256 characters, with a space, or non-ASCII",
        "422 problem naming header.Idempotency-Key; nothing created (255 printable ASCII "
        "characters are accepted)",
        lost=False,
    )


@KINDS
async def test_without_a_key_every_post_creates(
    client: AsyncClient, db_session: AsyncSession, kind: Kind, reliability: ReliabilityRecorder
) -> None:
    if kind is CATEGORIES:  # two categories cannot share a name: the second is a 409
        first = await client.post(kind.path, json=kind.body("no key"))
        second = await client.post(kind.path, json=kind.body("no key"))
        assert (first.status_code, second.status_code) == (201, 409)
        answer = "201, then 409 for the duplicate name: no key, no replay"
    else:
        first = await client.post(kind.path, json=kind.body("no key"))
        second = await client.post(kind.path, json=kind.body("no key"))
        assert (first.status_code, second.status_code) == (201, 201)
        assert first.json()["id"] != second.json()["id"]
        assert await count_rows(db_session, kind, "no key") == 2
        answer = "201 twice: two tasks, as before keys existed"
    assert REPLAYED not in first.headers
    assert REPLAYED not in second.headers
    count = await db_session.execute(text("SELECT count(*) FROM idempotency_keys"))
    assert count.scalar_one() == 0
    reliability.record(AREA, f"POST /{kind.table} twice without Idempotency-Key", answer)


async def test_a_failed_request_does_not_use_up_its_key(
    client: AsyncClient, db_session: AsyncSession, reliability: ReliabilityRecorder
) -> None:
    """The claim commits with the request's own changes: a request that failed rolled it
    back, so the key is free for the corrected request (and the same mistake fails the
    same way again instead of replaying a failure or calling the key reused)."""
    headers = key_header("first-attempt-failed")
    missing = {"title": "needs a category", "category_id": 2147483647}

    failed = await client.post("/tasks", json=missing, headers=headers)
    problem = assert_problem(failed, 422, problem_type="/problems/validation-error")
    assert problem["errors"][0]["field"] == "body.category_id"
    assert await stored_keys(db_session, "first-attempt-failed") == []

    same_mistake = await client.post("/tasks", json=missing, headers=headers)
    assert_problem(same_mistake, 422, problem_type="/problems/validation-error")
    assert REPLAYED not in same_mistake.headers

    corrected = await client.post("/tasks", json={"title": "needs a category"}, headers=headers)
    assert corrected.status_code == 201, corrected.text
    assert REPLAYED not in corrected.headers
    retry = await client.post("/tasks", json={"title": "needs a category"}, headers=headers)
    assert_replay_of(retry, corrected)
    assert await count_rows(db_session, TASKS, "needs a category") == 1

    # The same for a conflict: a duplicate category name is 409, and the key stays free.
    assert (await client.post("/categories", json={"name": "taken"})).status_code == 201
    category_key = key_header("first-name-taken")
    conflict = await client.post("/categories", json={"name": "Taken"}, headers=category_key)
    assert_problem(conflict, 409, problem_type="/problems/conflict")
    renamed = await client.post("/categories", json={"name": "free"}, headers=category_key)
    assert renamed.status_code == 201
    assert REPLAYED not in renamed.headers
    reliability.record(
        AREA,
        "POST with an Idempotency-Key that failed (422 unknown category_id, 409 duplicate "
        "name), then the corrected request with the same key",
        "the failure leaves no claim: the same mistake fails again; the corrected body "
        "creates once (201) and its retries replay",
        lost=False,
    )


async def test_an_expired_key_is_used_again(
    client: AsyncClient, db_session: AsyncSession, reliability: ReliabilityRecorder
) -> None:
    headers = key_header("expires")
    first = await client.post("/tasks", json={"title": "expiring"}, headers=headers)
    assert first.status_code == 201
    (record,) = await stored_keys(db_session, "expires")
    # The default lifetime: 24 hours from the claim.
    assert abs(record.expires_at - record.created_at - timedelta(hours=24)) < timedelta(minutes=1)

    await db_session.execute(
        text("UPDATE idempotency_keys SET expires_at = now() - interval '1 second'")
    )
    after_expiry = await client.post("/tasks", json={"title": "expiring"}, headers=headers)

    assert after_expiry.status_code == 201
    assert REPLAYED not in after_expiry.headers
    assert after_expiry.json()["id"] != first.json()["id"]
    assert await count_rows(db_session, TASKS, "expiring") == 2
    # Claimed again in place, for another day; now its retries replay the new response.
    (renewed,) = await stored_keys(db_session, "expires")
    assert renewed.expires_at > record.expires_at
    assert_replay_of(
        await client.post("/tasks", json={"title": "expiring"}, headers=headers), after_expiry
    )
    reliability.record(
        AREA,
        "POST with an Idempotency-Key after the key expired (24 h by default)",
        "201 and a new row: an expired key is a new key (it is claimed again in place)",
        lost=False,
    )


# ─────────────────────────────────────────────
# Real commits, own database
# ─────────────────────────────────────────────


@KINDS
async def test_20_concurrent_posts_with_one_key_create_one_row(
    live: AsyncClient, observer: AsyncEngine, kind: Kind, reliability: ReliabilityRecorder
) -> None:
    value = f"concurrent {kind.name}"
    headers = key_header(f"concurrent-{kind.name}")

    responses = await asyncio.gather(
        *(live.post(kind.path, json=kind.body(value), headers=headers) for _ in range(CONCURRENT))
    )

    assert [r.status_code for r in responses] == [201] * CONCURRENT
    assert {r.json()["id"] for r in responses} == {responses[0].json()["id"]}
    originals = [r for r in responses if REPLAYED not in r.headers]
    assert len(originals) == 1
    for replay in responses:
        if replay is not originals[0]:
            assert_replay_of(replay, originals[0])
    assert await count_rows(observer, kind, value) == 1
    reliability.record(
        AREA,
        f"{CONCURRENT} concurrent POST /{kind.table} with one Idempotency-Key and body",
        f"all {CONCURRENT} got 201 with the same id (one original, {CONCURRENT - 1} "
        "replayed); one row",
        lost=False,
    )


async def test_concurrent_posts_with_one_key_and_different_bodies(
    live: AsyncClient, observer: AsyncEngine, reliability: ReliabilityRecorder
) -> None:
    titles = [f"racing body {i}" for i in range(CONCURRENT)]
    headers = key_header("racing-bodies")

    responses = await asyncio.gather(
        *(live.post("/tasks", json={"title": t}, headers=headers) for t in titles)
    )

    assert Counter(r.status_code for r in responses) == {201: 1, 422: CONCURRENT - 1}
    (winner,) = (r for r in responses if r.status_code == 201)
    for loser in (r for r in responses if r.status_code == 422):
        assert_problem(loser, 422, problem_type="/problems/idempotency-key-reused")
    async with observer.connect() as connection:
        rows = (
            await connection.execute(
                text("SELECT id, title FROM tasks WHERE title LIKE 'racing body %'")
            )
        ).all()
    assert [tuple(row) for row in rows] == [(winner.json()["id"], winner.json()["title"])]
    reliability.record(
        AREA,
        f"{CONCURRENT} concurrent POST /tasks with one Idempotency-Key, each a different body",
        f"1 got 201, {CONCURRENT - 1} got 422 problem idempotency-key-reused; one row, the "
        "winner's",
        lost=False,
    )


async def test_a_key_expires_after_the_configured_lifetime(
    own_database_url: str,
    live: AsyncClient,
    observer: AsyncEngine,
    monkeypatch: pytest.MonkeyPatch,
    reliability: ReliabilityRecorder,
) -> None:
    headers = key_header("one-second")
    monkeypatch.setenv("TASKMANAGER_IDEMPOTENCY_TTL_HOURS", str(1 / 3600))
    async with live_client(own_database_url) as short_lived:
        short_lived.headers.update(live.headers)  # the same account, on this other app
        first = await short_lived.post("/tasks", json={"title": "lives 1 s"}, headers=headers)
        replayed = await short_lived.post("/tasks", json={"title": "lives 1 s"}, headers=headers)
        assert first.status_code == 201
        assert replayed.headers[REPLAYED] == "true"
        (record,) = await stored_keys(observer, "one-second")
        lifetime = record.expires_at - record.created_at
        assert timedelta(0) < lifetime < timedelta(seconds=1.5), lifetime
        await asyncio.sleep(1.2)
        expired = await short_lived.post("/tasks", json={"title": "lives 1 s"}, headers=headers)

    assert expired.status_code == 201
    assert REPLAYED not in expired.headers
    assert expired.json()["id"] != first.json()["id"]
    assert await count_rows(observer, TASKS, "lives 1 s") == 2
    reliability.record(
        AREA,
        "Idempotency-Key retried after its lifetime (TASKMANAGER_IDEMPOTENCY_TTL_HOURS=1 s)",
        "replayed within the second; afterwards 201 and a new row",
        lost=False,
    )


async def test_purge_keys_deletes_only_expired_keys(
    own_database_url: str,
    live: AsyncClient,
    observer: AsyncEngine,
    tmp_path: Path,
    reliability: ReliabilityRecorder,
) -> None:
    for key in ("purge-expired", "purge-live"):
        created = await live.post("/tasks", json={"title": key}, headers=key_header(key))
        assert created.status_code == 201
    keys = text("SELECT scope, key, expires_at, clock_timestamp() AS now FROM idempotency_keys")
    async with observer.begin() as connection:
        await connection.execute(
            text(
                "UPDATE idempotency_keys SET expires_at = now() - interval '1 minute' "
                "WHERE key = 'purge-expired'"
            )
        )
    async with observer.connect() as connection:
        rows = (await connection.execute(keys)).all()
        before = {(row.scope, row.key): row.expires_at for row in rows}
        purge_started = (await connection.execute(text("SELECT clock_timestamp()"))).scalar_one()

    completed = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "taskmanager", "db", "purge-keys"],
        env=clean_env(DATABASE_URL=own_database_url),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )

    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output
    async with observer.connect() as connection:
        rows = (await connection.execute(keys)).all()
    after = {(row.scope, row.key) for row in rows}
    purge_ended = rows[0].now if rows else purge_started
    purged = set(before) - after
    assert f"purged {len(purged)} expired idempotency keys" in output
    assert ("POST /tasks", "purge-expired") in purged
    assert ("POST /tasks", "purge-live") in after
    # Only keys that had expired were deleted, and every key expired before it ran is gone.
    assert all(before[k] <= purge_ended for k in purged)
    assert all(before[k] > purge_started for k in after)
    # The task the purged key created stays; only the promise to replay it is gone.
    assert await count_rows(observer, TASKS, "purge-expired") == 1
    reliability.record(
        AREA,
        "`taskmanager db purge-keys` with expired and live keys stored",
        "deletes the expired keys only; live keys and every row the keys created stay",
        lost=False,
    )


def worker_ports(server: ServeProcess) -> dict[int, set[int]]:
    """Worker pid -> the client ports of the HTTP connections it holds open."""
    owners: dict[int, set[int]] = {}
    for child in psutil.Process(server.pid).children(recursive=True):
        try:
            connections = child.net_connections(kind="tcp")
        except psutil.NoSuchProcess:
            continue
        ports = {
            c.raddr.port
            for c in connections
            if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == server.port and c.raddr
        }
        if ports:
            owners[child.pid] = ports
    return owners


async def test_a_key_holds_across_two_workers_and_a_restart(
    own_database_url: str, observer: AsyncEngine, tmp_path: Path, reliability: ReliabilityRecorder
) -> None:
    """Two `serve` worker processes with their own pools share the key through PostgreSQL;
    after the server stopped, a new app instance on the same database still replays it."""
    env = clean_env(
        DATABASE_URL=own_database_url,
        TASKMANAGER_LOG_LEVEL="WARNING",
        TASKMANAGER_JWT_SECRET=TEST_SECRET,
    )
    body = {"title": "across workers"}
    headers = key_header("across-workers")
    clients: list[AsyncClient] = []
    try:
        with serve(env, tmp_path, "--workers", "2") as server:
            login = register_over_http(server.base_url, "across-workers@example.com")
            # One kept-alive connection per client; open them until both workers hold some,
            # so the POSTs below reach both processes.
            for _ in range(40):
                client = AsyncClient(
                    base_url=server.base_url,
                    limits=httpx.Limits(max_connections=1),
                    headers=login.headers,
                )
                clients.append(client)
                assert (await client.get("/health/live")).status_code == 200
                if len(clients) >= MIN_CONNECTIONS and len(worker_ports(server)) == 2:
                    break
            spread = worker_ports(server)
            assert len(spread) == 2, f"all connections went to one worker: {spread}"

            responses = await asyncio.gather(
                *(c.post("/tasks", json=body, headers=headers) for c in clients)
            )
            assert [r.status_code for r in responses] == [201] * len(clients)
            assert len({r.json()["id"] for r in responses}) == 1
            (original,) = (r for r in responses if REPLAYED not in r.headers)
            for replay in (r for r in responses if r is not original):
                assert_replay_of(replay, original)
            for client in clients:
                await client.aclose()
            clients.clear()
            started = time.monotonic()
            assert server.interrupt() == 0, server.output()
            assert time.monotonic() - started < 20
    finally:
        for client in clients:
            await client.aclose()
    assert await count_rows(observer, TASKS, "across workers") == 1

    # Both workers are gone; a new app instance (another process, a new pool) on the same
    # database still knows the key.
    async with live_client(own_database_url) as restarted:
        restarted.headers.update(login.headers)  # the same user: keys are per user
        retry = await restarted.post("/tasks", json=body, headers=headers)
    assert_replay_of(retry, original)
    assert await count_rows(observer, TASKS, "across workers") == 1
    reliability.record(
        AREA,
        f"{MIN_CONNECTIONS}+ concurrent POSTs with one Idempotency-Key over connections held "
        "by both workers of `serve --workers 2`, then a retry after the server stopped",
        "all got 201 with one id; a new app instance on the same database replays it; one row",
        lost=False,
    )
