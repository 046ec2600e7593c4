"""Faults, against the real `taskmanager serve` on a real socket and a real PostgreSQL.

- PostgreSQL stopped while serving: 503 problems with Retry-After at once (no hang, no
  500), /health/live still 200; PostgreSQL started again: the service recovers by itself
  and every write it acknowledged is still there (also after a restart between requests).
- PostgreSQL frozen (hung host): the timeouts bound every answer, also for a request that
  already holds a pooled connection.
- Pool exhausted: the requests beyond pool_size + max_overflow wait pool_timeout, then get
  503 with Retry-After; /health/live stays fast; the ones holding connections complete.
- Statement timeout: 503 problem, and the pooled connection goes back healthy (the same
  backend serves the next requests).
- SIGTERM with a request in flight: it completes, new connections are refused, the engine
  is disposed, the process exits 0, the embedded PostgreSQL stops, and the committed change
  is there after a restart.

Requests are made slow for real: a row lock held by a transaction outside the service.
Each test records what the service answered in the reliability log (docs/reliability.md).
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from tests.support.accounts import TEST_SECRET, register_over_http
from tests.support.databases import migrate
from tests.support.faults import (
    ABANDONED_CONNECTION,
    OwnPostgres,
    assert_unavailable,
    embedded_url,
    log_abandoned_connections,
    poll,
    row_lock,
    scratch_dir,
    service_backends,
    timed,
    wait_for_lock_waiters,
)
from tests.support.processes import (
    ServeProcess,
    clean_env,
    serve,
    wait_for_no_postgres,
)
from tests.support.reliability import ReliabilityRecorder

pytestmark = [pytest.mark.server, pytest.mark.reliability]

T = TypeVar("T")

# Small timeouts, so a fault shows within a second or two.
FAST_TIMEOUTS = {
    "TASKMANAGER_CONNECT_TIMEOUT": "1",
    "TASKMANAGER_READY_TIMEOUT": "1",
    "TASKMANAGER_POOL_TIMEOUT": "1",
    "TASKMANAGER_LOG_LEVEL": "WARNING",
    "TASKMANAGER_JWT_SECRET": TEST_SECRET,
}
# Generous bounds for "answered at once" / "waited the timeout": a loaded CI box is slow.
PROMPT = 3.0
CLIENT_TIMEOUT = 15.0


def served_env(**settings: str) -> dict[str, str]:
    return clean_env(**(FAST_TIMEOUTS | settings))


def logged_in_client(server: ServeProcess, email: str) -> httpx.AsyncClient:
    """A client of `server` with the token of an account registered there over HTTP."""
    login = register_over_http(server.base_url, email)
    return httpx.AsyncClient(
        base_url=server.base_url, timeout=CLIENT_TIMEOUT, headers=login.headers
    )


async def create_task(client: httpx.AsyncClient, title: str) -> dict[str, Any]:
    response = await client.post("/tasks", json={"title": title})
    assert response.status_code == 201, response.text
    task: dict[str, Any] = response.json()
    return task


# ─────────────────────────────────────────────
# PostgreSQL stopped, restarted, frozen
# ─────────────────────────────────────────────


@dataclass
class Outage:
    """A PostgreSQL of the tests' own, and the service on it with small timeouts."""

    postgres: OwnPostgres
    server: ServeProcess
    url: str
    headers: dict[str, str]

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.server.base_url, timeout=CLIENT_TIMEOUT, headers=self.headers
        )

    async def ensure_running(self) -> None:
        """Each test starts with PostgreSQL up, whatever an earlier test left."""
        if not self.postgres.is_running():
            await asyncio.to_thread(self.postgres.start)


@pytest.fixture(scope="module")
def outage() -> Iterator[Outage]:
    """Shared by the outage tests, which stop, restart and freeze this PostgreSQL."""
    with scratch_dir() as parent:
        postgres = OwnPostgres(parent / "pgdata")
        try:
            logins = postgres.start()
            migrate(logins)
            url = logins.service
            # statement_timeout 1 s: the client-side bound on a hung server is 1 s + 1 s.
            env = served_env(DATABASE_URL=url, TASKMANAGER_STATEMENT_TIMEOUT_MS="1000")
            with serve(env, parent) as server:
                login = register_over_http(server.base_url, "outage@example.com")
                yield Outage(postgres, server, url, login.headers)
        finally:
            postgres.stop()


async def tasks_titled(client: httpx.AsyncClient, prefix: str) -> httpx.Response:
    """GET /tasks of the tasks whose title contains `prefix` (this test's own)."""
    return await client.get("/tasks", params={"q": prefix, "limit": 100})


async def test_database_down_answers_503_and_recovers_without_restart(
    outage: Outage, reliability: ReliabilityRecorder
) -> None:
    await outage.ensure_running()
    async with outage.client() as c:
        await _database_down(c, outage.postgres, reliability)


async def _database_down(
    client: httpx.AsyncClient, postgres: OwnPostgres, reliability: ReliabilityRecorder
) -> None:
    # Writes acknowledged before the outage; the pool now holds live connections.
    acknowledged = {}
    for i in range(3):
        task = await create_task(client, f"outage-down: acknowledged before {i}")
        acknowledged[task["id"]] = task
    first_id = next(iter(acknowledged))
    changed = await client.patch(f"/tasks/{first_id}", json={"completed": True})
    assert changed.status_code == 200, changed.text
    acknowledged[first_id] = changed.json()

    await asyncio.to_thread(postgres.stop)
    assert not postgres.is_running()

    # Twice: first the pooled connections PostgreSQL closed, then new connections to a
    # socket that is gone. Both must be a prompt 503 problem, never a 500 or a hang.
    answers: dict[str, str] = {}
    for round_ in (1, 2):
        for method, path, body in (
            ("GET", "/health/ready", None),
            ("GET", "/tasks", None),
            ("GET", f"/tasks/{first_id}", None),
            ("POST", "/tasks", {"title": "outage-down: sent during the outage"}),
            ("PATCH", f"/tasks/{first_id}", {"title": "outage-down: sent during the outage"}),
        ):
            response, seconds = await timed(client.request(method, path, json=body))
            what = f"{method} {path} (round {round_})"
            retry_after = assert_unavailable(response, what)
            assert seconds < PROMPT, f"{what} took {seconds:.2f}s"
            answers.setdefault(
                f"{method} {path.replace(str(first_id), '{id}')}",
                f"503 + Retry-After: {retry_after} in {seconds:.2f} s",
            )
        live, live_seconds = await timed(client.get("/health/live"))
        assert live.status_code == 200, live.text

    # PostgreSQL back on the same data dir: no restart of the service, just requests.
    await asyncio.to_thread(postgres.start)
    listed, seen, recovery = await poll(
        lambda: tasks_titled(client, "outage-down"), lambda r: r.status_code == 200, within=15.0
    )
    failures = seen[:-1]
    for failed in failures:
        assert_unavailable(failed, "GET /tasks while recovering")
    # Dead pooled connections were already discarded during the outage: nothing left to fail.
    assert len(failures) <= 1, [f.status_code for f in failures]

    # Every acknowledged write is there, as acknowledged; nothing sent during the outage is.
    assert {t["id"]: t for t in listed.json()} == acknowledged
    ready = await client.get("/health/ready")
    assert ready.status_code == 200, ready.text

    reliability.record(
        "Faults",
        "PostgreSQL stopped while serving",
        f"/health/ready {answers['GET /health/ready']}; "
        f"GET /tasks {answers['GET /tasks']}; "
        f"POST /tasks {answers['POST /tasks']}; "
        f"PATCH /tasks/{{id}} {answers['PATCH /tasks/{id}']} "
        f"(no 500, no hang); /health/live 200 in {live_seconds:.2f} s",
        lost=None,
    )
    reliability.record(
        "Faults",
        "PostgreSQL started again (service not restarted)",
        f"recovered by itself: GET /tasks 200 after {recovery:.2f} s "
        f"with {len(failures)} 503 on the way; all {len(acknowledged)} writes acknowledged "
        "before the outage still there, nothing from the refused ones",
        lost=False,
    )

    # A restart between two requests: the pool still holds connections that died with it.
    await asyncio.to_thread(postgres.stop)
    await asyncio.to_thread(postgres.start)
    created, seen, recovery = await poll(
        lambda: client.post("/tasks", json={"title": "outage-down: after a quick restart"}),
        lambda r: r.status_code == 201,
        within=15.0,
    )
    failures = seen[:-1]
    for failed in failures:
        assert_unavailable(failed, "POST /tasks after a quick restart")
    acknowledged[created.json()["id"]] = created.json()
    # The next reads, until one answers (the POST may have been given a connection the
    # in-process workers opened after the restart, leaving a dead one to the next request).
    listed, read_seen, _ = await poll(
        lambda: tasks_titled(client, "outage-down"),
        lambda r: r.status_code == 200,
        within=15.0,
    )
    for failed in read_seen[:-1]:
        assert_unavailable(failed, "GET /tasks after a quick restart")
    failures += read_seen[:-1]
    # The connections the restart closed are replaced at checkout (asyncpg saw them close);
    # one found dead only when used is a 503, and SQLAlchemy then invalidates the whole
    # pool: one 503 at most, whichever request meets it.
    assert len(failures) <= 1, [f.status_code for f in failures]
    assert listed.status_code == 200, listed.text
    assert {t["id"]: t for t in listed.json()} == acknowledged  # and no row from a 503
    reliability.record(
        "Faults",
        "PostgreSQL restarted between two requests",
        f"{len(failures)} x 503 + Retry-After (a pooled connection that died with it), then "
        f"201 after {recovery:.2f} s; every acknowledged write still there",
        lost=False,
    )


async def test_database_frozen_answers_503_within_the_timeouts(
    outage: Outage, reliability: ReliabilityRecorder
) -> None:
    """A hung server (stuck host, cut network) closes nothing: only timeouts end the wait,
    also for a request already holding a pooled connection."""
    await outage.ensure_running()
    async with outage.client() as c:
        await _database_frozen(c, outage.url, outage.postgres, reliability)


async def _database_frozen(
    client: httpx.AsyncClient, url: str, postgres: OwnPostgres, reliability: ReliabilityRecorder
) -> None:
    task = await create_task(client, "outage-frozen: acknowledged before")
    # Two pooled connections, so the requests below each start on one that will hang.
    async with row_lock(url, task["id"]) as lock:
        warm = [
            asyncio.create_task(client.patch(f"/tasks/{task['id']}", json={"completed": True}))
            for _ in range(2)
        ]
        await wait_for_lock_waiters(url, 2)
        await lock.release()
    for response in await asyncio.gather(*warm):
        assert response.status_code == 200, response.text
    task = (await client.get(f"/tasks/{task['id']}")).json()

    with postgres.frozen():
        (ready, ready_s), (listed, list_s), (live, live_s) = await asyncio.gather(
            timed(client.get("/health/ready")),
            timed(client.get("/tasks")),
            _live_meanwhile(client),
        )
        assert live.status_code == 200
        assert live_s < 0.5, f"/health/live took {live_s:.2f}s"
        assert_unavailable(ready, "/health/ready, PostgreSQL frozen")
        # ready_timeout is 1 s: the probe answers then, whatever closing its connection takes.
        assert ready_s < 1.0 + 1.0, f"/health/ready took {ready_s:.2f}s"
        assert_unavailable(listed, "GET /tasks on a pooled connection, PostgreSQL frozen")
        # statement_timeout 1 s + 1 s client-side margin, + up to 2 s for SQLAlchemy to
        # close the connection it gives up on.
        assert list_s < 2.0 + 2.0 + PROMPT, f"GET /tasks took {list_s:.2f}s"
        created, create_s = await timed(
            client.post("/tasks", json={"title": "outage-frozen: sent during the freeze"})
        )
        assert_unavailable(created, "POST /tasks, PostgreSQL frozen")
        assert create_s < 2.0 + 2.0 + PROMPT, f"POST /tasks took {create_s:.2f}s"

    listed_after, seen, recovery = await poll(
        lambda: tasks_titled(client, "outage-frozen"), lambda r: r.status_code == 200, within=15.0
    )
    for failed in seen[:-1]:
        assert_unavailable(failed, "GET /tasks after the freeze")
    assert listed_after.json() == [task]  # the acknowledged write there, the 503'd POST not
    reliability.record(
        "Faults",
        "PostgreSQL frozen (hung host: sockets open, no answers)",
        f"/health/ready 503 + Retry-After in {ready_s:.2f} s (ready_timeout 1 s); GET /tasks "
        f"on a pooled connection 503 in {list_s:.2f} s (statement_timeout 1 s + 1 s, then "
        f"the connection is dropped); POST /tasks 503 in {create_s:.2f} s; /health/live 200 "
        f"in {live_s:.3f} s; once it runs again 200 within {recovery:.2f} s, the "
        "acknowledged write there",
        lost=False,
    )


async def _live_meanwhile(client: httpx.AsyncClient) -> tuple[httpx.Response, float]:
    await asyncio.sleep(0.2)  # while the requests beside it hang
    return await timed(client.get("/health/live"))


# ─────────────────────────────────────────────
# Pool exhausted
# ─────────────────────────────────────────────


async def test_pool_exhausted_answers_503_after_pool_timeout(
    make_database: Callable[[str], str], reliability: ReliabilityRecorder, tmp_path: Path
) -> None:
    url = await asyncio.to_thread(make_database, "faults_pool")
    env = served_env(
        DATABASE_URL=url,
        TASKMANAGER_POOL_SIZE="2",
        TASKMANAGER_MAX_OVERFLOW="0",
        TASKMANAGER_POOL_TIMEOUT="1",
    )
    with serve(env, tmp_path) as server:
        async with logged_in_client(server, "pool@example.com") as client:
            task = await create_task(client, "contended")
            task_id = task["id"]
            async with row_lock(url, task_id) as lock:
                patches = [
                    asyncio.create_task(
                        timed(client.patch(f"/tasks/{task_id}", json={"title": f"patch {i}"}))
                    )
                    for i in range(5)
                ]
                # Two requests hold the pool's two connections, waiting for the lock.
                await wait_for_lock_waiters(url, 2)
                live, live_seconds = await timed(client.get("/health/live"))
                assert live.status_code == 200
                assert live_seconds < 0.5, f"/health/live took {live_seconds:.2f}s"

                done, pending = await wait_for_some(patches, 3, within=1 + 2 * PROMPT)
                refused = [t.result() for t in done]
                assert len(refused) == 3, [r.status_code for r, _ in refused]
                for response, seconds in refused:
                    assert_unavailable(response, "PATCH beyond the pool")
                    assert 0.8 < seconds < 1 + PROMPT, f"waited {seconds:.2f}s, not ~1 s"
                assert len(pending) == 2
                await lock.release()
            completed = [await asyncio.wait_for(t, 10.0) for t in pending]
            for response, _ in completed:
                assert response.status_code == 200, response.text

            # Both acknowledged changes happened (version bumped twice), the refused did not.
            current = (await client.get(f"/tasks/{task_id}")).json()
            assert current["version"] == task["version"] + 2
            assert current["title"] in {r.json()["title"] for r, _ in completed}
            retry_after = refused[0][0].headers["retry-after"]
            waits = sorted(seconds for _, seconds in refused)
            wait_range = f"{waits[0]:.2f}" + (
                f" to {waits[-1]:.2f}" if f"{waits[-1]:.2f}" != f"{waits[0]:.2f}" else ""
            )
            reliability.record(
                "Faults",
                "Pool exhausted (5 slow requests, pool_size 2 + max_overflow 0, pool_timeout 1 s)",
                f"3 excess requests 503 + Retry-After: {retry_after} after "
                f"{wait_range} s; /health/live 200 in {live_seconds:.3f} s "
                "meanwhile; the 2 holding connections 200 once unblocked",
                lost=False,
            )


async def wait_for_some(
    tasks: list[asyncio.Task[T]], count: int, within: float
) -> tuple[set[asyncio.Task[T]], set[asyncio.Task[T]]]:
    """(done, pending) as soon as `count` of `tasks` are done, or when `within` runs out."""
    deadline = time.monotonic() + within
    done: set[asyncio.Task[T]] = set()
    pending = set(tasks)
    while len(done) < count and pending and (left := deadline - time.monotonic()) > 0:
        finished, pending = await asyncio.wait(
            pending, timeout=left, return_when=asyncio.FIRST_COMPLETED
        )
        done |= finished
    return done, pending


# ─────────────────────────────────────────────
# Statement timeout
# ─────────────────────────────────────────────


async def test_statement_timeout_answers_503_and_keeps_the_connection(
    make_database: Callable[[str], str], reliability: ReliabilityRecorder, tmp_path: Path
) -> None:
    url = await asyncio.to_thread(make_database, "faults_statement_timeout")
    env = served_env(
        DATABASE_URL=url,
        TASKMANAGER_STATEMENT_TIMEOUT_MS="500",
        TASKMANAGER_POOL_SIZE="1",
        TASKMANAGER_MAX_OVERFLOW="0",
    )
    with serve(env, tmp_path) as server:
        async with logged_in_client(server, "timeout@example.com") as client:
            task = await create_task(client, "slow to change")
            task_id = task["id"]
            [backend] = await service_backends(url)  # pool_size 1: one connection

            async with row_lock(url, task_id):
                response, seconds = await timed(
                    client.patch(f"/tasks/{task_id}", json={"title": "timed out"})
                )
            retry_after = assert_unavailable(response, "PATCH past statement_timeout")
            assert "statement timeout" in response.json()["detail"]
            assert 0.4 < seconds < 0.5 + PROMPT, f"answered after {seconds:.2f}s"

            # The same pooled connection serves the next requests: it went back healthy.
            changed = await client.patch(f"/tasks/{task_id}", json={"title": "changed after"})
            assert changed.status_code == 200, changed.text
            fetched = await client.get(f"/tasks/{task_id}")
            assert fetched.status_code == 200, fetched.text
            assert fetched.json()["title"] == "changed after"
            assert fetched.json()["version"] == task["version"] + 1  # the 503 changed nothing
            assert [b["pid"] for b in await service_backends(url)] == [backend["pid"]]

            reliability.record(
                "Faults",
                "Statement timeout exceeded (statement_timeout 500 ms, a row lock held)",
                f"503 problem + Retry-After: {retry_after} after {seconds:.2f} s, the change "
                "not applied; the same pooled connection (same backend pid) then served "
                "200s",
                lost=False,
            )


# ─────────────────────────────────────────────
# Graceful shutdown
# ─────────────────────────────────────────────


async def test_sigterm_completes_in_flight_requests_and_stops_postgres(
    reliability: ReliabilityRecorder,
) -> None:
    with scratch_dir() as parent:
        data_dir = parent / "pgdata"
        env = clean_env(
            TASKMANAGER_DATA_DIR=str(data_dir),
            TASKMANAGER_LOG_LEVEL="WARNING",
            TASKMANAGER_JWT_SECRET=TEST_SECRET,
        )
        with serve(env, parent) as server:
            login = register_over_http(server.base_url, "sigterm@example.com")
            async with httpx.AsyncClient(
                base_url=server.base_url, timeout=CLIENT_TIMEOUT, headers=login.headers
            ) as client:
                task = await create_task(client, "in flight at SIGTERM")
                task_id = task["id"]
                url = await asyncio.to_thread(embedded_url, data_dir)
                async with row_lock(url, task_id) as lock:
                    patch = asyncio.create_task(
                        client.patch(
                            f"/tasks/{task_id}",
                            json={"title": "finished during shutdown", "completed": True},
                        )
                    )
                    await wait_for_lock_waiters(url, 1)
                    # The PATCH's backend reads this before its next command.
                    await log_abandoned_connections(url)
                    server.process.send_signal(signal.SIGTERM)
                    signalled = time.monotonic()
                    refused_after = await _wait_until_refused(server.base_url, within=PROMPT)
                    # Shutting down, yet waiting for the request in flight.
                    await asyncio.sleep(1.0)
                    assert not patch.done(), "the in-flight request ended before its lock"
                    assert server.process.poll() is None, "exited with a request in flight"
                    await lock.release()
                    released = time.monotonic()
                response = await asyncio.wait_for(patch, 10.0)
            assert response.status_code == 200, response.text
            finished = response.json()
            assert finished["title"] == "finished during shutdown"

            code = await asyncio.to_thread(server.process.wait, 20)
            exited = time.monotonic()
            output = server.output()
        assert code == 0, f"exit code {code} after SIGTERM:\n{output}"
        # It exited once the request was done, not after the 10 s graceful timeout.
        assert exited - released < 5.0, f"exited {exited - released:.1f}s after the request"
        assert "Traceback" not in output, output
        assert wait_for_no_postgres(data_dir) == [], "embedded PostgreSQL still running"
        assert (data_dir / "PG_VERSION").exists()
        # PostgreSQL's own log: a clean shutdown, and the service closed its connections
        # (engine disposed) instead of leaving them to die with the process.
        postgres_log = (data_dir / "log").read_text(errors="replace")
        assert "database system is shut down" in postgres_log, postgres_log[-2000:]
        assert "terminating connection due to administrator command" not in postgres_log
        assert "log_min_messages" in postgres_log  # the DEBUG1 logging asked for was on
        assert ABANDONED_CONNECTION not in postgres_log, "engine not disposed at shutdown"

        # Nothing committed is lost: the change made during shutdown is there.
        with serve(env, parent) as again:
            async with httpx.AsyncClient(
                base_url=again.base_url, timeout=CLIENT_TIMEOUT, headers=login.headers
            ) as c:
                # The token from before the restart still works (same key, same session).
                fetched = await c.get(f"/tasks/{task_id}")
            assert fetched.status_code == 200, fetched.text
            assert fetched.json() == finished
            assert again.interrupt() == 0, again.output()
        assert wait_for_no_postgres(data_dir) == []

        reliability.record(
            "Faults",
            "SIGTERM with a request in flight (embedded PostgreSQL)",
            f"new connections refused {refused_after:.2f} s after SIGTERM; the in-flight "
            f"PATCH, held {released - signalled:.1f} s into the shutdown by a row lock, then "
            "completed 200; engine disposed (no connection left open); "
            f"exit code 0 {exited - released:.2f} s after it; embedded PostgreSQL stopped; "
            "the change was there after a restart",
            lost=False,
        )


# A new request is not served: the connection is refused, or (one that reached the listening
# socket's queue just as it closed) closed without an answer.
_NOT_SERVED = (httpx.ConnectError, httpx.RemoteProtocolError)


async def _wait_until_refused(base_url: str, within: float) -> float:
    """Seconds until a NEW connection to the server is refused; no 2xx may follow."""
    started = time.monotonic()
    while True:
        try:
            async with httpx.AsyncClient(base_url=base_url, timeout=2.0) as fresh:
                await fresh.get("/health/live")
        except _NOT_SERVED:
            refused_after = time.monotonic() - started
            break
        assert time.monotonic() - started < within, "new connections still accepted"
        await asyncio.sleep(0.05)
    # And it stays refused.
    with pytest.raises(_NOT_SERVED):
        async with httpx.AsyncClient(base_url=base_url, timeout=2.0) as fresh:
            await fresh.get("/health/live")
    return refused_after
