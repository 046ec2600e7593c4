"""Why the lecture's naive route has a multi-second p99: routes and pools for `run.py --naive`.

Mounted only when BENCH_NAIVE=1 (run.py --naive sets it), so the main table's routing is
unchanged. What it adds:

- Pool instrumentation. The app's engine gets an `InstrumentedQueue` in place of its pool's
  stock `AsyncAdaptedQueue` before the pool has made a single connection. It behaves exactly
  like the stock queue (the same asyncio.Queue underneath) and records, per checkout, how
  long the request waited for a connection and how many times it joined the waiters' line
  (more than once: the connection it was woken for was taken before it could run, and it
  went to the END of the line), which checkouts took such a connection ("steals") and
  whether the thief came from the client whose previous request had just returned it.
- A pure ASGI middleware that tells the queue which client (wrk connection) a request
  comes from and times each request in the app, since wrk only prints corrected
  percentiles.
- Variants of the lecture's route (`session.get` with the lecture's `get_async_session`):
  with scope="function", on an autocommit connection, and on engines of their own (made
  by the app's own `create_engine`) whose pool is bigger or whose queue hands a returned
  connection straight to the longest waiter (first come, first served).
- /bench/pools/{name}: reset (and warm up) a pool before a run, read its figures after one.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from lecture_setup import (
    floor_database_url,
    lecture_session_dependency,
    lecture_session_factory,
    naive_read,
)
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.util import memoized_property
from sqlalchemy.util.queue import AsyncAdaptedQueue
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from taskmanager.config import get_settings
from taskmanager.database import create_engine, create_session_factory
from taskmanager.models import Task
from taskmanager.schemas import TaskWithCategoryResponse

router = APIRouter()


# ─────────────────────────────────────────────── pool instrumentation


# The client (its port: one per wrk connection) of the request running in this task; set by
# _ClientPort, read by the pool's queue (SQLAlchemy's greenlets carry the task's context).
CLIENT: contextvars.ContextVar[int | None] = contextvars.ContextVar("bench_client", default=None)


# Each request's time in the app, from the ASGI call to its response's last byte handed to
# the server (the time after that, the default scope's commit and close, is not in it).
LATENCIES: list[float] = []


class _ClientPort:
    """Pure ASGI middleware: tells the pool's queue which client a request came from, and
    records each request's own latency (wrk only reports percentiles it has corrected)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/bench/pools/"):
            await self.app(scope, receive, send)
            return
        if scope.get("client"):
            CLIENT.set(scope["client"][1])
        started = time.perf_counter()

        async def timed_send(message: Message) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                LATENCIES.append(time.perf_counter() - started)

        await self.app(scope, receive, timed_send)


class _WaitersLine(collections.deque[Any]):
    """asyncio.Queue's `_getters` (the line of waiting requests), watched.

    - joins: how many times each task joined the line. asyncio.Queue.get() appends a new
      waiter on every pass of its `while self.empty()` loop, so a second append is a waiter
      that was woken for a connection, found it gone, and went to the back of the line.
    - woken: tasks that a put woke (popleft, then set_result) and that have not run yet,
      with the client of the request that put the connection back.
    """

    def __init__(self) -> None:
        super().__init__()
        self.joins: dict[asyncio.Task[Any] | None, int] = {}
        self.woken: dict[asyncio.Task[Any] | None, int | None] = {}
        self._task_of: dict[Any, asyncio.Task[Any] | None] = {}

    def append(self, waiter: Any) -> None:
        task = asyncio.current_task()
        self.joins[task] = self.joins.get(task, 0) + 1
        self.woken.pop(task, None)  # it ran and found the queue empty: back in line
        self._task_of[waiter] = task
        super().append(waiter)

    def popleft(self) -> Any:
        waiter = super().popleft()
        task = self._task_of.pop(waiter, None)
        if not waiter.done():  # about to be woken by the put that is running now
            self.woken[task] = CLIENT.get()
        return waiter

    def remove(self, waiter: Any) -> None:
        super().remove(waiter)
        self._task_of.pop(waiter, None)


class _HandOffQueue(asyncio.Queue[Any]):
    """A first-come-first-served asyncio.Queue: a returned item goes straight to the
    longest-waiting getter, so no newcomer can take it first. Items are only stored when
    nobody waits, so a newcomer's get_nowait() succeeds only when nobody is in line."""

    def put_nowait(self, item: Any) -> None:
        while self._getters:  # type: ignore[attr-defined]
            getter = self._getters.popleft()  # type: ignore[attr-defined]
            if not getter.done():
                getter.set_result(item)
                return
        super().put_nowait(item)

    async def get(self) -> Any:
        if not self.empty():
            return self.get_nowait()
        getter = asyncio.get_running_loop().create_future()
        self._getters.append(getter)  # type: ignore[attr-defined]
        try:
            return await getter
        except BaseException:
            if getter.done() and not getter.cancelled():
                self.put_nowait(getter.result())  # handed over as we timed out: pass it on
            else:
                getter.cancel()
                with contextlib.suppress(ValueError):  # already popped by put_nowait
                    self._getters.remove(getter)  # type: ignore[attr-defined]
            raise


@dataclass
class PoolStats:
    """Per checkout: seconds spent getting a connection, times the request joined the line
    (0: a connection was free; 1: waited once; n > 1: re-queued n - 1 times). Counts:
    steals, checkouts that took at once a connection put back for a woken waiter that had
    not run yet (each makes one waiter re-queue), and how many of those thieves came from
    the client whose previous request had just put that connection back; overlaps,
    checkouts asked for while the same client's previous request still held a connection."""

    waits: list[float] = field(default_factory=list)
    joins: list[int] = field(default_factory=list)
    steals: int = 0
    steals_by_releasing_client: int = 0
    overlaps: int = 0
    clients: dict[int | None, int] = field(default_factory=dict)  # checkouts per client


class InstrumentedQueue(AsyncAdaptedQueue[Any]):
    """SQLAlchemy's AsyncAdaptedQueue, unchanged, plus PoolStats; `fair` swaps in the
    hand-off asyncio.Queue above."""

    def __init__(self, maxsize: int = 0, use_lifo: bool = False, fair: bool = False) -> None:
        super().__init__(maxsize, use_lifo)
        self.fair = fair
        self.stats = PoolStats()
        self.line = _WaitersLine()
        self.held: dict[int | None, int] = {}  # connections checked out per client

    @memoized_property
    def _queue(self) -> asyncio.Queue[Any]:
        queue: asyncio.Queue[Any]
        if self.fair:
            queue = _HandOffQueue(maxsize=self.maxsize)
        elif self.use_lifo:
            queue = asyncio.LifoQueue(maxsize=self.maxsize)
        else:
            queue = asyncio.Queue(maxsize=self.maxsize)
        queue._getters = self.line  # type: ignore[attr-defined]
        return queue

    def put_nowait(self, item: Any) -> None:
        client = CLIENT.get()
        if self.held.get(client, 0) > 0:  # (connections the pool opened were never got here)
            self.held[client] -= 1
        super().put_nowait(item)

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        # Runs in the request's task (SQLAlchemy's greenlet runs inside it).
        task = asyncio.current_task()
        client = CLIENT.get()
        if self.held.get(client, 0) > 0:
            self.stats.overlaps += 1
        woken_by = set(self.line.woken.values())  # clients that just put connections back
        started = time.perf_counter()
        item = None
        try:
            item = super().get(block, timeout)
            return item
        finally:
            self.stats.waits.append(time.perf_counter() - started)
            joins = self.line.joins.pop(task, 0)
            self.line.woken.pop(task, None)
            self.stats.joins.append(joins)
            if item is not None:
                self.held[client] = self.held.get(client, 0) + 1
                self.stats.clients[client] = self.stats.clients.get(client, 0) + 1
                if joins == 0 and woken_by and not self.fair:  # (fair: woken ones hold theirs)
                    self.stats.steals += 1
                    self.stats.steals_by_releasing_client += client in woken_by


def instrument(engine: AsyncEngine, *, fair: bool = False) -> InstrumentedQueue:
    """Give the engine's pool an InstrumentedQueue; only before its first connection."""
    pool: Any = engine.sync_engine.pool
    if pool.checkedout() or pool.checkedin():
        raise RuntimeError("instrument the pool before it makes its first connection")
    queue = InstrumentedQueue(pool._pool.maxsize, pool._pool.use_lifo, fair=fair)
    pool._pool = queue
    return queue


# ─────────────────────────────────────────────── the pools


@dataclass(frozen=True)
class PoolSpec:
    pool_size: int | None  # None: the app's own engine (TASKMANAGER_POOL_SIZE)
    fair: bool = False


# name -> pool. "app" is the app's own engine (our route's); "lecture" the lecture engine
# (lecture_setup.add_lecture_engine: the naive routes'); the others are engines of their own on
# the lecture's login, made by the app's create_engine with the app's settings, opened
# before their run and disposed of after it (PostgreSQL's max_connections is 100).
KEPT = ("app", "lecture")
POOLS = {
    "app": PoolSpec(None),
    "lecture": PoolSpec(None),
    "fifo": PoolSpec(None, fair=True),
    "pool32": PoolSpec(32),
    "pool40": PoolSpec(40),
}


@dataclass
class _Pool:
    engine: AsyncEngine
    queue: InstrumentedQueue
    session_factory: async_sessionmaker[AsyncSession]


def _pools(app: FastAPI) -> dict[str, _Pool]:
    pools: dict[str, _Pool] = app.state.bench_pools
    return pools


async def _open_pool(app: FastAPI, name: str) -> _Pool:
    pools = _pools(app)
    if name in pools:
        return pools[name]
    spec = POOLS[name]
    settings = get_settings()
    url = floor_database_url()
    if spec.pool_size is not None:
        settings = settings.model_copy(update={"pool_size": spec.pool_size})
    engine = create_engine(settings, url)
    queue = instrument(engine, fair=spec.fair)
    pools[name] = _Pool(engine, queue, create_session_factory(engine))
    # Open every connection now, so that the measured run does not pay for connecting.
    async with AsyncExitStack() as stack:
        for _ in range(settings.pool_size):
            await stack.enter_async_context(engine.connect())
    return pools[name]


@router.post("/pools/{name}/reset")
async def reset_pool(name: str, request: Request) -> dict[str, Any]:
    """Open the pool if it is not (its connections too) and forget its recorded waits."""
    if name not in POOLS:
        raise HTTPException(404, f"no pool {name!r}; the pools are {sorted(POOLS)}")
    pool = await _open_pool(request.app, name)
    pool.queue.stats = PoolStats()
    LATENCIES.clear()
    return {"pool": name, "size": pool.queue.maxsize}


@router.get("/pools/{name}/stats")
async def pool_stats(name: str, request: Request, close: bool = False) -> dict[str, Any]:
    """The waits recorded since the last reset (ms) and joins per checkout; `close`
    disposes of an engine of its own (never the app's)."""
    pool = _pools(request.app).get(name)
    if pool is None:
        raise HTTPException(404, f"pool {name!r} is not open")
    # Requests still waiting when wrk stopped get their connection now: count them too.
    sync_pool: Any = pool.engine.sync_engine.pool
    for _ in range(int((get_settings().pool_timeout + 5) * 100)):
        if not (sync_pool.checkedout() or pool.queue.line):
            break
        await asyncio.sleep(0.01)
    stats = pool.queue.stats
    pool.queue.stats = PoolStats()
    latencies = list(LATENCIES)
    LATENCIES.clear()
    if close and name not in KEPT:
        del _pools(request.app)[name]
        await pool.engine.dispose()
    return {
        "pool": name,
        "waits_ms": [round(w * 1000, 3) for w in stats.waits],
        "joins": stats.joins,
        "steals": stats.steals,
        "steals_by_releasing_client": stats.steals_by_releasing_client,
        "overlaps": stats.overlaps,
        "checkouts_per_client": sorted(stats.clients.values()),
        "latencies_ms": [round(latency * 1000, 3) for latency in latencies],
    }


# ─────────────────────────────────────────────── the lecture's route, and its variants


def _autocommit_factory(request: Request) -> async_sessionmaker[AsyncSession]:
    """Sessions on an autocommit connection of the lecture engine: no BEGIN, no COMMIT."""
    factory: async_sessionmaker[AsyncSession] = request.app.state.lecture_autocommit_session_factory
    return factory


def _pool_factory(request: Request) -> async_sessionmaker[AsyncSession]:
    """One of POOLS' engines (path parameter `pool`), opened by /bench/pools/{pool}/reset."""
    name = request.path_params["pool"]
    opened = _pools(request.app).get(name)
    if opened is None:
        raise HTTPException(404, f"pool {name!r} is not open: POST /bench/pools/{name}/reset")
    return opened.session_factory


_session_from_app = lecture_session_dependency(lecture_session_factory)
_autocommit_session = lecture_session_dependency(_autocommit_factory)
_session_from_pool = lecture_session_dependency(_pool_factory)


@router.get("/naive-scope-function/tasks/{task_id}", response_model=TaskWithCategoryResponse)
async def naive_scope_function(
    task_id: int,
    session: Annotated[AsyncSession, Depends(_session_from_app, scope="function")],
) -> Task:
    """The naive route with the dependency's exit (commit, close) before the response."""
    return await naive_read(session, task_id)


@router.get("/naive-autocommit/tasks/{task_id}", response_model=TaskWithCategoryResponse)
async def naive_autocommit(
    task_id: int, session: Annotated[AsyncSession, Depends(_autocommit_session)]
) -> Task:
    """The naive route, default scope, on an autocommit connection (one round trip)."""
    return await naive_read(session, task_id)


@router.get("/naive-pool/{pool}/tasks/{task_id}", response_model=TaskWithCategoryResponse)
async def naive_on_pool(
    pool: str, task_id: int, session: Annotated[AsyncSession, Depends(_session_from_pool)]
) -> Task:
    """The naive route, default scope, on one of POOLS' engines."""
    return await naive_read(session, task_id)


def install(app: FastAPI, bench_router: APIRouter) -> None:
    """Add the routes under /bench and instrument the app's pool when the app starts."""
    bench_router.include_router(router)
    app.add_middleware(_ClientPort)
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[Any]:
        async with inner(app) as state:
            app.state.bench_pools = {}
            engine: AsyncEngine = app.state.engine
            # The app's start-up checks its login on a pooled connection: a fresh pool (same
            # settings and listeners), so every checkout the run counts meets the queue.
            await engine.dispose()
            _pools(app)["app"] = _Pool(engine, instrument(engine), app.state.async_session_factory)
            lecture: AsyncEngine = app.state.lecture_engine
            _pools(app)["lecture"] = _Pool(
                lecture, instrument(lecture), app.state.lecture_session_factory
            )
            try:
                yield state
            finally:
                for name, pool in list(_pools(app).items()):
                    if name not in KEPT:
                        await pool.engine.dispose()

    app.router.lifespan_context = lifespan
