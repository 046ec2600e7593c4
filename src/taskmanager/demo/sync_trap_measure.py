"""The load driver of `taskmanager demo sync-trap`: bursts of concurrent requests, timed.

A deliberately tiny HTTP/1.1 client on raw asyncio sockets (one connection per request,
`Connection: close`): it needs no dependency, and it records exactly when each request was
sent, when its first byte came back and when it ended. The demo app reports when its route
started, got its database connection and finished, on the same clock (`time.monotonic`,
CLOCK_MONOTONIC: system-wide, so two processes on one machine can compare readings).
"""

from __future__ import annotations

import asyncio
import json
import math
import statistics
import time
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

    def summary(self) -> dict[str, float]:
        return rounded_figures(self)


# What a burst, and a variant over all its bursts, is summed up by (milliseconds).
FIGURES = ("fastest_ms", "median_ms", "slowest_ms", "wall_ms", "ping_ms")


def rounded_figures(measured: object) -> dict[str, float]:
    """`measured`'s FIGURES, rounded to hundredths of a millisecond."""
    return {name: round(getattr(measured, name), 2) for name in FIGURES}


async def http_get(host: str, port: int, path: str, within: float) -> Exchange:
    """GET `path` on a new connection and return the timed exchange (raises on non-200).

    The response ends when its body is complete (Content-Length), as for any HTTP client,
    not when the server closes the connection: a server whose event loop is blocked
    sends the body at once but gets round to closing the socket only later.
    """
    sent = time.monotonic()
    first_byte = 0.0
    received = bytearray()
    try:
        async with asyncio.timeout(within):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n"
                writer.write(request.encode("ascii"))
                await writer.drain()
                while chunk := await reader.read(65536):
                    if not received:
                        first_byte = time.monotonic()
                    received += chunk
                    if _complete(received):
                        break
            finally:
                writer.close()
    except TimeoutError:
        raise DemoHTTPError(f"GET {path}: no complete answer within {within:.0f}s") from None
    except OSError as exc:
        raise DemoHTTPError(f"GET {path}: {exc}") from exc
    end = time.monotonic()
    status, body = _parse_response(bytes(received), path)
    return Exchange(path, sent, first_byte or end, end, status, body)


def _complete(received: bytearray) -> bool:
    """Whether `received` holds a whole response (headers and Content-Length bytes of body)."""
    header_end = received.find(b"\r\n\r\n")
    if header_end < 0:
        return False
    for line in bytes(received[:header_end]).split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(received) >= header_end + 4 + int(value.strip())
    return received.endswith(b"0\r\n\r\n")  # chunked: the last chunk; otherwise EOF


def _parse_response(raw: bytes, path: str) -> tuple[int, dict[str, Any]]:
    head, separator, payload = raw.partition(b"\r\n\r\n")
    if not separator:
        raise DemoHTTPError(f"GET {path}: incomplete HTTP response {raw[:200]!r}")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    try:
        status = int(status_line.split(" ", 2)[1])
    except (IndexError, ValueError):
        raise DemoHTTPError(f"GET {path}: bad status line {status_line!r}") from None
    headers = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(":") for line in header_lines)
    }
    if headers.get("transfer-encoding", "").lower() == "chunked":
        payload = _dechunk(payload)
    if status != 200:
        text = payload.decode("utf-8", "replace")[:500]
        raise DemoHTTPError(f"GET {path}: HTTP {status}: {text}")
    try:
        body = json.loads(payload)
    except ValueError:
        raise DemoHTTPError(f"GET {path}: not JSON: {payload[:200]!r}") from None
    if not isinstance(body, dict):
        raise DemoHTTPError(f"GET {path}: expected a JSON object, got {body!r}")
    return status, body


def _dechunk(payload: bytes) -> bytes:
    out = bytearray()
    while payload:
        size_line, _, rest = payload.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += rest[:size]
        payload = rest[size + 2 :]
    return bytes(out)


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


async def burst(host: str, port: int, variant: Variant, concurrency: int, delay_ms: int) -> Burst:
    """Send `concurrency` requests to `variant` at once and a /ping shortly after."""
    within = request_timeout(concurrency, delay_ms)
    path = variant_path(variant, delay_ms)
    origin = time.monotonic()
    requests = [asyncio.create_task(http_get(host, port, path, within)) for _ in range(concurrency)]
    try:
        await asyncio.sleep(delay_ms * PING_AFTER_FRACTION / 1000)
        ping = await http_get(host, port, PING_PATH, within)
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


async def warm_up(host: str, port: int, variant: Variant, concurrency: int, delay_ms: int) -> None:
    """Open the pool's connections, start the worker threads and fill SQLAlchemy's statement
    cache before measuring. The trap can only run one request at a time, so it needs (and
    gets) a single warm-up request instead of a full, slow burst."""
    within = request_timeout(concurrency, delay_ms)
    count = 1 if variant.name == "trap" else concurrency
    path = variant_path(variant, delay_ms)
    await asyncio.gather(*(http_get(host, port, path, within) for _ in range(count)))


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
