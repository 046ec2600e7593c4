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
- A write acknowledged by a process whose cache is paused (one command was too slow) is
  seen at once on another process whose cache goes on.
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
from contextlib import ExitStack
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
from tests.support.accounts import login, register_and_login
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


async def test_a_write_acknowledged_while_its_servers_cache_pauses_is_seen_on_another(
    own_database_url: str, redis_url: str
) -> None:
    """Two app processes on one Redis. One command of A's was too slow, so A leaves the
    cache alone for a moment; B's cache goes on serving. A write acknowledged by A then
    must void B's entry (the invalidation is sent even during the pause), or the writer's
    next read, on B, answers the old task."""
    async with (
        live_client(own_database_url, redis_url=redis_url) as a,
        live_client(own_database_url, redis_url=redis_url) as b,
    ):
        a.headers.update(await register_and_login(a, _new_email()))
        b.headers.update(a.headers)
        task = await _created(a, "Before")
        for _ in range(3):  # the caller's facts, the task, then a hit on B
            assert (await b.get(f"/tasks/{task['id']}")).json()["title"] == "Before"
        paused = app_of(a).state.cache
        paused._failed("task", TimeoutError("slower than the timeout"))
        assert not paused.available

        changed = await a.patch(f"/tasks/{task['id']}", json={"title": "After"})
        assert changed.status_code == 200, changed.text
        read = await b.get(f"/tasks/{task['id']}")

        assert (read.json()["title"], read.json()["version"]) == ("After", task["version"] + 1)
        assert paused.available, "Redis took the invalidation: A's pause is over"


# ─────────────────────────────── two `serve` processes, one database, one Redis

METRICS_TOKEN = "metrics-token-for-the-cache-load-tests-0123456789"
# The servers' cache timeout: above a busy test machine's hiccups, so the caches keep
# serving (a pause is tested on its own, above), and what "slow" means to them below.
TIMEOUT_MS = 250
OWNER, MEMBER = "owner.loaded@example.com", "member.loaded@example.com"


@dataclass(frozen=True)
class Served:
    """Two servers, and a team: the owner's workspace with a member, and its tasks."""

    servers: tuple[ServeProcess, ServeProcess]
    team_id: int
    team_task_ids: tuple[int, ...]
    # A task in the owner's personal workspace: the member never sees it.
    private_task_id: int
    owner_logins: tuple[dict[str, str], ...]
    member_logins: tuple[dict[str, str], ...]

    @property
    def task_ids(self) -> tuple[int, ...]:
        return (*self.team_task_ids, self.private_task_id)


@pytest.fixture(scope="module")
def two_servers(
    own_database_url: str, session_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServeProcess, ServeProcess]]:
    session_redis.start()
    session_redis.flushall()
    env = clean_env(
        DATABASE_URL=own_database_url,
        TASKMANAGER_REDIS_URL=session_redis.url,
        TASKMANAGER_METRICS_TOKEN=METRICS_TOKEN,
        TASKMANAGER_LOG_LEVEL="WARNING",
    )
    with ExitStack() as stack:
        a, b = (
            stack.enter_context(
                serve(
                    {**env, "TASKMANAGER_CACHE_TIMEOUT_MS": str(TIMEOUT_MS)},
                    tmp_path_factory.mktemp(f"cache-{name}"),
                    ready=False,
                )
            )
            for name in ("a", "b")
        )
        a.wait_ready()  # both start at once; each is waited for
        b.wait_ready()
        yield a, b


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def served(two_servers: tuple[ServeProcess, ServeProcess], own_database_url: str) -> Served:
    a, _ = two_servers
    async with httpx.AsyncClient(base_url=a.base_url, timeout=30) as http:
        owner = await register_and_login(http, OWNER)
        member = await register_and_login(http, MEMBER)
        await verify_address(own_database_url, MEMBER)
        created = await http.post("/workspaces", json={"name": "Loaded"}, headers=owner)
        assert created.status_code == 201, created.text
        team_id = created.json()["id"]
        await add_member(http, team_id, MEMBER, member, inviter=owner)
        http.headers.update(owner)
        team_tasks = [
            (await _created(http, f"Team task {number}", workspace_id=team_id))["id"]
            for number in range(3)
        ]
        private = await _created(http, "The owner's own")
        owner_logins = (owner, *[await login(http, OWNER) for _ in range(4)])
        member_logins = (member, await login(http, MEMBER))
    return Served(
        two_servers, team_id, tuple(team_tasks), private["id"], owner_logins, member_logins
    )


@dataclass
class History:
    """What the run saw: each acknowledged write (when, which version) and every problem."""

    acknowledged: dict[int, list[tuple[float, int]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    acknowledged_at: dict[tuple[int, int], float] = field(default_factory=dict)
    statuses: Counter[int] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    # (started, seconds) of every request.
    timings: list[tuple[float, float]] = field(default_factory=list)

    def acknowledge(self, task_id: int, version: int) -> None:
        """A PATCH answered 200 with `version`: noted now, after its response arrived."""
        now = time.monotonic()
        self.acknowledged[task_id].append((now, version))
        self.acknowledged_at[(task_id, version)] = now

    def floor(self, task_id: int, before: float) -> int:
        """The newest version of the task acknowledged before `before`."""
        return max((v for at, v in self.acknowledged[task_id] if at < before), default=0)

    def check(self, who: str, task_id: int, version: int, started: float, own: int) -> None:
        """A read begun at `started` answered `version`: it must be at least the version of
        the reader's own last acknowledged write, and of anyone's acknowledged before."""
        if version < own:
            self.problems.append(f"{who}: task {task_id} at {version}, own write was {own}")
        acknowledged = self.floor(task_id, started)
        if version < acknowledged:
            self.problems.append(
                f"{who}: task {task_id} at {version}, {acknowledged} was acknowledged before"
            )


@dataclass
class Actor:
    """One client (one login) of both servers, alternating between them."""

    name: str
    headers: dict[str, str]
    clients: tuple[httpx.AsyncClient, httpx.AsyncClient]
    history: History
    # task -> the newest version of this actor's own acknowledged writes.
    own: dict[int, int] = field(default_factory=dict)
    # task -> the newest version it read whose write was acknowledged before the read.
    trusted: dict[int, int] = field(default_factory=dict)
    sent: int = 0

    def client(self) -> httpx.AsyncClient:
        self.sent += 1
        return self.clients[self.sent % 2]

    async def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response | None:
        started = time.monotonic()
        try:
            response = await self.client().request(method, url, headers=self.headers, **kwargs)
        except httpx.HTTPError as exc:
            self.history.problems.append(f"{self.name}: {method} {url}: {exc!r}")
            return None
        self.history.timings.append((started, time.monotonic() - started))
        self.history.statuses[response.status_code] += 1
        if response.status_code != 200:
            self.history.problems.append(
                f"{self.name}: {method} {url}: {response.status_code} {response.text[:200]}"
            )
            return None
        return response

    async def write(self, task_id: int, title: str) -> None:
        response = await self.request("PATCH", f"/tasks/{task_id}", json={"title": title})
        if response is not None:
            version = response.json()["version"]
            self.history.acknowledge(task_id, version)
            self.own[task_id] = max(self.own.get(task_id, 0), version)

    async def read_one(self, task_id: int) -> None:
        started = time.monotonic()
        response = await self.request("GET", f"/tasks/{task_id}")
        if response is not None:
            body = response.json()
            if response.headers["ETag"] != f'"{body["version"]}"':
                self.history.problems.append(f"{self.name}: ETag {response.headers['ETag']}")
            self.saw(task_id, body["version"], started)

    async def read_page(self, url: str, expected: set[int]) -> None:
        started = time.monotonic()
        response = await self.request("GET", url)
        if response is not None:
            versions = {t["id"]: t["version"] for t in response.json() if t["id"] in expected}
            if set(versions) != expected:
                self.history.problems.append(f"{self.name}: {url} listed {sorted(versions)}")
            for task_id, version in versions.items():
                self.saw(task_id, version, started)

    def saw(self, task_id: int, version: int, started: float) -> None:
        self.history.check(self.name, task_id, version, started, self.own.get(task_id, 0))
        if version < self.trusted.get(task_id, 0):
            self.history.problems.append(
                f"{self.name}: task {task_id} went back to {version} after it read "
                f"{self.trusted[task_id]}, acknowledged before that read"
            )
        acknowledged_at = self.history.acknowledged_at.get((task_id, version))
        if acknowledged_at is not None and acknowledged_at < started:
            self.trusted[task_id] = max(self.trusted.get(task_id, 0), version)


async def _write_and_read_back(
    actor: Actor, served: Served, until: float, pause: float, number: int
) -> None:
    """A writer: changes a task (counting up its title), then reads that task and its
    list on the other server and on the same one, and again."""
    turn = 0
    while time.monotonic() < until:
        task_id = served.task_ids[(number + turn) % len(served.task_ids)]
        await actor.write(task_id, f"{actor.name} #{turn}")
        for _ in range(2):
            await actor.read_one(task_id)
            await actor.read_page("/tasks?limit=100", set(served.task_ids))
        turn += 1
        await asyncio.sleep(pause)


async def _read(actor: Actor, served: Served, until: float, pause: float, member: bool) -> None:
    """A reader: one task, then a list, round and round, on both servers."""
    visible = served.team_task_ids if member else served.task_ids
    page = f"/tasks?workspace_id={served.team_id}" if member else "/tasks?limit=100"
    listed = set(served.team_task_ids) if member else set(served.task_ids)
    turn = 0
    while time.monotonic() < until:
        if turn % 3 == 2:
            await actor.read_page(page, listed)
        else:
            await actor.read_one(visible[turn % len(visible)])
        turn += 1
        await asyncio.sleep(pause)


@dataclass(frozen=True)
class Mix:
    writers: int
    owner_readers: int
    member_readers: int
    writer_pause: float
    reader_pause: float


async def _run_load(
    served: Served,
    seconds: float,
    mix: Mix,
    during: Callable[[], Awaitable[None]] | None = None,
) -> History:
    """Writers and readers on both servers for `seconds`; `during` runs alongside."""
    history = History()
    a, b = served.servers
    until = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=4)
    async with (
        httpx.AsyncClient(base_url=a.base_url, timeout=30, limits=limits) as on_a,
        httpx.AsyncClient(base_url=b.base_url, timeout=30, limits=limits) as on_b,
    ):

        def actor(name: str, headers: dict[str, str], number: int) -> Actor:
            # Half of them start on each server.
            clients = (on_a, on_b) if number % 2 else (on_b, on_a)
            return Actor(name, headers, clients, history)

        logins = iter(served.owner_logins)
        work: list[Awaitable[None]] = [
            _write_and_read_back(
                actor(f"writer {n}", next(logins), n), served, until, mix.writer_pause, n
            )
            for n in range(mix.writers)
        ]
        work += [
            _read(actor(f"reader {n}", next(logins), n), served, until, mix.reader_pause, False)
            for n in range(mix.owner_readers)
        ]
        work += [
            _read(
                actor(f"member {n}", served.member_logins[n % len(served.member_logins)], n),
                served,
                until,
                mix.reader_pause,
                True,
            )
            for n in range(mix.member_readers)
        ]
        if during is not None:
            work.append(during())
        await asyncio.gather(*work)
    return history


def _counters(server: ServeProcess, name: str) -> dict[str, float]:
    """A counter of `server`'s /metrics, by its `kind` label."""
    response = httpx.get(
        f"{server.base_url}/metrics",
        headers={"Authorization": f"Bearer {METRICS_TOKEN}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return {
        sample.labels["kind"]: sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
        if sample.name == f"{name}_total"
    }


@pytest.mark.server
async def test_no_read_is_older_than_a_write_acknowledged_before_it(
    served: Served, own_database_url: str
) -> None:
    hits_before = [_counters(server, "taskmanager_cache_hits") for server in served.servers]

    history = await _run_load(
        served,
        seconds=8,
        mix=Mix(writers=2, owner_readers=2, member_readers=2, writer_pause=0.1, reader_pause=0.02),
    )

    logs = "\n".join(f"{server.base_url}:\n{server.output()[-3000:]}" for server in served.servers)
    assert history.problems == [], "\n".join(history.problems[:30]) + "\n" + logs
    assert set(history.statuses) == {200}, history.statuses
    writes = sum(len(acks) for acks in history.acknowledged.values())
    assert writes >= 20, f"only {writes} writes: the run tested little"
    # The cache really answered reads on both servers during the run.
    for server, before in zip(served.servers, hits_before, strict=True):
        after = _counters(server, "taskmanager_cache_hits")
        assert after["task"] > before["task"], (server.base_url, before, after)

    # The writes have stopped: both servers, to both users, answer what PostgreSQL holds.
    async with observer_engine(own_database_url) as observer, observer.connect() as connection:
        rows = await connection.execute(
            text("SELECT id, title, version FROM tasks WHERE id = ANY(:ids)"),
            {"ids": list(served.task_ids)},
        )
        stored = {row.id: (row.title, row.version) for row in rows}
    assert set(stored) == set(served.task_ids)
    for server in served.servers:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as http:
            for headers, visible in (
                (served.owner_logins[0], served.task_ids),
                (served.member_logins[0], served.team_task_ids),
            ):
                for _ in range(2):  # from wherever it comes, then (again) from the cache
                    for task_id in visible:
                        read = await http.get(f"/tasks/{task_id}", headers=headers)
                        assert read.status_code == 200, read.text
                        assert (read.json()["title"], read.json()["version"]) == stored[task_id]
                    listed = await http.get(
                        f"/tasks?workspace_id={served.team_id}", headers=headers
                    )
                    assert {t["id"]: (t["title"], t["version"]) for t in listed.json()} == {
                        task_id: stored[task_id] for task_id in served.team_task_ids
                    }


FAILED_LINE = "cache: Redis failed"
BACK_LINE = "cache: Redis answers again"


@pytest.mark.server
async def test_redis_stopped_under_load_costs_no_answer_and_comes_back_by_itself(
    served: Served, redis_server: RedisServer
) -> None:
    servers = served.servers
    pids = [server.pid for server in servers]
    marks: dict[str, list[int]] = {}
    counted: dict[str, list[dict[str, float]]] = {}

    async def look(moment: str) -> None:
        marks[moment] = [len(server.output()) for server in servers]
        counted[moment] = [
            await asyncio.to_thread(_counters, server, name)
            for server in servers
            for name in ("taskmanager_cache_hits", "taskmanager_cache_errors")
        ]

    async def outage() -> None:
        await asyncio.sleep(1.5)
        await look("stopped")
        await asyncio.to_thread(redis_server.stop)
        await asyncio.sleep(2)
        await asyncio.to_thread(redis_server.start)
        await look("started")

    history = await _run_load(
        served,
        seconds=6,
        mix=Mix(writers=1, owner_readers=4, member_readers=4, writer_pause=0.1, reader_pause=0.02),
        during=outage,
    )
    await look("end")

    assert history.problems == [], "\n".join(history.problems[:30])
    assert set(history.statuses) == {200}, history.statuses
    assert sum(len(acks) for acks in history.acknowledged.values()) >= 10
    for number, server in enumerate(servers):
        assert server.pid == pids[number]  # the same process, never restarted
        assert server.process.poll() is None
        hits = {moment: counted[moment][2 * number]["task"] for moment in counted}
        errors = {moment: sum(counted[moment][2 * number + 1].values()) for moment in counted}
        output = server.output()
        during = output[marks["stopped"][number] : marks["started"][number]]
        after = output[marks["started"][number] :]
        since = output[marks["stopped"][number] :]
        # One warning for the outage, one when it is over: not one per request. (The line
        # that it is over may come before the test looks at the output once Redis is
        # started: a loaded machine runs the servers' requests meanwhile.)
        assert during.count(FAILED_LINE) == 1, during
        assert after.count(FAILED_LINE) == 0, after
        assert since.count(BACK_LINE) == 1, since
        assert since.index(BACK_LINE) > since.index(FAILED_LINE), since
        assert errors["started"] > errors["stopped"], errors
        # The cache serves again, without a restart.
        assert hits["end"] > hits["started"], hits


STALL_SECONDS = 3.0


@pytest.mark.server
async def test_a_frozen_redis_costs_a_request_at_most_the_timeout(
    served: Served, redis_server: RedisServer
) -> None:
    """Redis accepts connections and commands but answers none (SIGSTOP): each request
    waits at most the cache's timeout (twice for a new connection: connect, then its first
    answer), then the database answers."""
    stall: dict[str, float] = {}

    async def freeze() -> None:
        await asyncio.sleep(1.5)
        stall["from"] = time.monotonic()
        os.kill(redis_server.pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(STALL_SECONDS)
        finally:
            stall["until"] = time.monotonic()
            os.kill(redis_server.pid, signal.SIGCONT)

    try:
        history = await _run_load(
            served,
            seconds=5,
            mix=Mix(
                writers=1, owner_readers=4, member_readers=4, writer_pause=0.1, reader_pause=0.02
            ),
            during=freeze,
        )
    finally:
        os.kill(redis_server.pid, signal.SIGCONT)  # whatever happened

    assert history.problems == [], "\n".join(history.problems[:30])
    assert set(history.statuses) == {200}, history.statuses
    before = max(took for started, took in history.timings if started + took < stall["from"])
    bound = 2 * TIMEOUT_MS / 1000 + before + 0.5
    answered = [
        started
        for started, took in history.timings
        if stall["from"] <= started and started + took < stall["until"]
    ]
    assert len(answered) >= 20, f"only {len(answered)} requests answered while Redis was frozen"
    # Every request begun while Redis was frozen, early enough to tell, answered within the
    # bound: long before Redis woke up.
    early = [
        took
        for started, took in history.timings
        if stall["from"] <= started <= stall["until"] - bound
    ]
    assert len(early) >= 10, f"the machine is too slow to tell ({before:.2f} s before)"
    assert max(early) < bound, (max(early), bound, before)
