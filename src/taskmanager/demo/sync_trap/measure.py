"""The load driver of `taskmanager demo sync-trap`: bursts of concurrent requests, timed.

Each request is sent on a new connection by a tiny HTTP/1.1 client on asyncio sockets that
records when it was sent, when its headers came back and when it ended. The demo app reports
when its route started, got its database connection and finished, on the same clock
(`time.monotonic`, CLOCK_MONOTONIC: system-wide, so two processes on one machine can compare).

Why not httpx: its per-request work in this process spreads the burst out. Measured with
`.venv/bin/python bench/sync_trap_clients.py 10 50 6` (one demo server, the same bursts
through both clients, alternating; 10 concurrent requests x 50 ms, medians of 6 repeats;
three runs on 2 shared cores), this client vs httpx 0.28.1 (keep-alive pool, warmed up):
- the burst's requests left the client within 1.6-3.5 ms vs 14.5-24.2 ms;
- async variant, sent -> route started (median request): 12-18 ms vs 50-67 ms, time the
  timeline would draw as queued in the server; its slowest request: 102-118 vs 146-178 ms;
- the /ping sent during the trap's burst waited 580-587 ms vs 70-72 ms: with the requests
  arriving one by one, the /ping gets in among the first, and the timeline would no longer
  show a health check stuck behind the blocked event loop.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import re
import statistics
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

# /ping is sent this long (a fraction of one DB call) after a burst starts, so it arrives
# while the burst is in flight: a blocked event loop makes even a health check wait.
PING_AFTER_FRACTION = 0.25
# A server answer may arrive this early/late relative to the client's own readings
# (the two readings are taken a few instructions apart) before the clocks count as unshared.
CLOCK_TOLERANCE_MS = 2.0
# The multiplication sign ("10 by 50 ms"), by name: ruff (RUF001) takes the glyph for an x.
TIMES = "\N{MULTIPLICATION SIGN}"


@dataclass(frozen=True, slots=True)
class Variant:
    """One way of running the same task-list route."""

    name: str
    path: str
    route: str  # how the route is written, in the lecture's words
    effect: str  # what that does to the event loop
    color: str  # matplotlib colour, also mapped to a terminal colour


VARIANTS: tuple[Variant, ...] = (
    Variant(
        "trap",
        "/tasks/trap",
        "async def route + sync Session (psycopg)",
        "blocks the event loop: one request at a time",
        "#d62728",
    ),
    Variant(
        "threadpool",
        "/tasks/threadpool",
        "def route + sync Session (psycopg)",
        "FastAPI runs it in anyio's threadpool",
        "#1f77b4",
    ),
    Variant(
        "async",
        "/tasks/async",
        "async def route + AsyncSession (asyncpg)",
        "every await yields the event loop",
        "#2ca02c",
    ),
)
VARIANT_BY_NAME = {variant.name: variant for variant in VARIANTS}
PING_PATH = "/ping"
INFO_PATH = "/info"


class DemoHTTPError(RuntimeError):
    """The demo server answered something other than 200, or not in time."""


@dataclass(frozen=True, slots=True)
class Exchange:
    """One request as the client saw it (monotonic seconds) and what the server said."""

    path: str
    sent: float
    first_byte: float
    end: float
    status: int
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ServerTiming:
    """When the route started, had its database connection and finished, in ms since
    the burst started (the route's own readings)."""

    started_ms: float
    connected_ms: float
    finished_ms: float
    thread: str


@dataclass(frozen=True, slots=True)
class RequestTiming:
    """One request of a burst, in ms since the burst started."""

    index: int  # the order the client sent it in
    path: str
    sent_ms: float
    first_byte_ms: float
    end_ms: float
    latency_ms: float
    server: ServerTiming | None
    rows: int | None


@dataclass(slots=True)
class Burst:
    """`concurrency` requests sent at once to one variant, plus one /ping during them."""

    variant: str
    concurrency: int
    delay_ms: int
    requests: list[RequestTiming]
    ping: RequestTiming
    wall_ms: float  # first request sent -> last response received
    repeat: int | None = None
    position: int | None = None  # 0 = first variant of its repeat
    clock_shared: bool = True
    threads: list[str] = field(default_factory=list)

    @property
    def latencies(self) -> list[float]:
        return [request.latency_ms for request in self.requests]

    @property
    def fastest_ms(self) -> float:
        return min(self.latencies)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.latencies)

    @property
    def slowest_ms(self) -> float:
        return max(self.latencies)

    @property
    def ping_ms(self) -> float:
        return self.ping.latency_ms

    def service_order(self) -> list[RequestTiming]:
        """Requests in the order the server started them (the order they were served)."""
        return sorted(
            self.requests,
            key=lambda r: (r.server.started_ms if r.server else r.end_ms, r.end_ms),
        )

    def summary(self) -> dict[str, float]:
        return rounded_figures(self)


# What a burst, and a variant over all its bursts, is summed up by (milliseconds).
FIGURES = ("fastest_ms", "median_ms", "slowest_ms", "wall_ms", "ping_ms")


def rounded_figures(measured: object) -> dict[str, float]:
    """`measured`'s FIGURES, rounded to hundredths of a millisecond."""
    return {name: round(getattr(measured, name), 2) for name in FIGURES}


# GET a path within so many seconds: http_get on a server's host and port (or any client's).
Get = Callable[[str, float], Coroutine[Any, Any, Exchange]]


def client(host: str, port: int) -> Get:
    return functools.partial(http_get, host, port)


async def http_get(host: str, port: int, path: str, within: float) -> Exchange:
    """GET `path` on a new connection (`Connection: close`) and return the timed exchange;
    raise DemoHTTPError unless the answer is a JSON object with status 200.

    The response ends when its body is complete (Content-Length, which the demo app always
    sends), not when the server closes the connection: a server whose event loop is blocked
    sends the body at once but gets round to closing the socket only later.
    """
    sent = time.monotonic()
    try:
        async with asyncio.timeout(within):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(
                    f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
                )
                await writer.drain()
                head = await reader.readuntil(b"\r\n\r\n")  # the status line and headers
                first_byte = time.monotonic()
                length = re.search(rb"(?im)^content-length: *(\d+)", head)
                payload = await (reader.readexactly(int(length[1])) if length else reader.read())
            finally:
                writer.close()
    except TimeoutError:
        raise DemoHTTPError(f"GET {path}: no complete answer within {within:.0f}s") from None
    except (OSError, EOFError, ValueError, asyncio.LimitOverrunError) as exc:
        raise DemoHTTPError(f"GET {path}: {exc!r}") from exc
    end = time.monotonic()
    status = int(head.split(b" ", 2)[1])
    try:
        body = json.loads(payload)
    except ValueError:
        body = None
    if status != 200 or not isinstance(body, dict):
        raise DemoHTTPError(f"GET {path}: HTTP {status}: {payload[:300]!r}")
    return Exchange(path, sent, first_byte, end, status, body)


def _timing(exchange: Exchange, index: int, origin: float) -> RequestTiming:
    def ms(reading: float) -> float:
        return round((reading - origin) * 1000, 3)

    body = exchange.body
    server = None
    if {"started", "finished"} <= body.keys():
        server = ServerTiming(
            started_ms=ms(float(body["started"])),
            connected_ms=ms(float(body.get("connected", body["started"]))),
            finished_ms=ms(float(body["finished"])),
            thread=str(body.get("thread", "")),
        )
    rows = body.get("rows")
    return RequestTiming(
        index=index,
        path=exchange.path,
        sent_ms=ms(exchange.sent),
        first_byte_ms=ms(exchange.first_byte),
        end_ms=ms(exchange.end),
        latency_ms=round((exchange.end - exchange.sent) * 1000, 3),
        server=server,
        rows=int(rows) if isinstance(rows, int) else None,
    )


def _clock_shared(timings: list[RequestTiming]) -> bool:
    """Whether the server's readings fall inside the client's, as one shared clock implies."""
    for timing in timings:
        if timing.server is None:
            continue
        if timing.server.started_ms < timing.sent_ms - CLOCK_TOLERANCE_MS:
            return False
        if timing.server.finished_ms > timing.end_ms + CLOCK_TOLERANCE_MS:
            return False
    return True


def request_timeout(concurrency: int, delay_ms: int) -> float:
    """Seconds any one request may take: the trap's worst case (all requests in a row) x3."""
    return 10.0 + 3 * concurrency * max(delay_ms, 5) / 1000


def variant_path(variant: Variant, delay_ms: int) -> str:
    return f"{variant.path}?delay_ms={delay_ms}"


async def burst(get: Get, variant: Variant, concurrency: int, delay_ms: int) -> Burst:
    """Send `concurrency` requests to `variant` at once and a /ping shortly after."""
    within = request_timeout(concurrency, delay_ms)
    path = variant_path(variant, delay_ms)
    origin = time.monotonic()
    requests = [asyncio.create_task(get(path, within)) for _ in range(concurrency)]
    try:
        await asyncio.sleep(delay_ms * PING_AFTER_FRACTION / 1000)
        ping = await get(PING_PATH, within)
        exchanges = await asyncio.gather(*requests)
    finally:
        for task in requests:
            task.cancel()
        await asyncio.gather(*requests, return_exceptions=True)
    timings = [_timing(exchange, index, origin) for index, exchange in enumerate(exchanges)]
    ping_timing = _timing(ping, concurrency, origin)
    wall = max(t.end_ms for t in timings) - min(t.sent_ms for t in timings)
    threads = sorted({t.server.thread for t in timings if t.server is not None})
    return Burst(
        variant=variant.name,
        concurrency=concurrency,
        delay_ms=delay_ms,
        requests=timings,
        ping=ping_timing,
        wall_ms=round(wall, 3),
        clock_shared=_clock_shared([*timings, ping_timing]),
        threads=threads,
    )


async def warm_up(get: Get, variant: Variant, concurrency: int, delay_ms: int) -> None:
    """Open the pool's connections, start the worker threads and fill SQLAlchemy's statement
    cache before measuring. The trap can only run one request at a time, so it needs (and
    gets) a single warm-up request instead of a full, slow burst."""
    within = request_timeout(concurrency, delay_ms)
    count = 1 if variant.name == "trap" else concurrency
    path = variant_path(variant, delay_ms)
    await asyncio.gather(*(get(path, within) for _ in range(count)))


@dataclass(frozen=True, slots=True)
class RunContext:
    """The parameters every explanation and picture refers to."""

    concurrency: int
    delay_ms: int
    repeat: int
    pool_size: int
    max_overflow: int
    thread_tokens: int
    cpu_count: int
    event_loop: str

    @property
    def pool_total(self) -> int:
        return self.pool_size + self.max_overflow

    @property
    def shown(self) -> str:
        """Which repeat the timelines draw."""
        if self.repeat > 1:
            return f"median of {self.repeat} repeats (by slowest request)"
        return "one burst per variant"

    def model_ms(self, variant: str, concurrency: int) -> float:
        """The slowest request by the lecture's model: waves of DB calls, back to back."""
        return float(
            waves(variant, concurrency, self.pool_total, self.thread_tokens) * self.delay_ms
        )


@dataclass(frozen=True, slots=True)
class SweepPoint:
    concurrency: int
    bursts: dict[str, Burst]


def waves(variant: str, concurrency: int, pool_total: int, thread_tokens: int) -> int:
    """How many DB calls each burst needs back to back, by the lecture's model.

    trap: the event loop runs one route at a time, so every request is its own wave.
    threadpool: at most `thread_tokens` routes run at once (and each holds a connection).
    async: at most `pool_total` requests hold a connection; the rest wait for one.
    """
    if variant == "trap":
        return concurrency
    if variant == "threadpool":
        return math.ceil(concurrency / max(1, min(thread_tokens, pool_total)))
    return math.ceil(concurrency / max(1, pool_total))
