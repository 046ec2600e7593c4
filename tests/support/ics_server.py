"""A real HTTP server of .ics files on 127.0.0.1, for the calendar tests, with faults on
demand: slow, reset, 500, a redirect (to a private address), oversized, malformed; ETag
and 304; and a count of the requests each path got (and their headers).

It runs in the test's event loop (asyncio.start_server) and speaks just enough HTTP/1.1:
one request per connection, answered with Connection: close.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta


@dataclass
class Feed:
    """What one path answers."""

    body: bytes = b""
    status: int = 200
    etag: str | None = None
    delay: float = 0.0  # seconds before answering
    reset: bool = False  # close the connection without an answer
    location: str | None = None  # a redirect's target
    content_type: str = "text/calendar; charset=utf-8"


@dataclass
class Request:
    path: str
    headers: dict[str, str]


@dataclass
class IcsServer:
    feeds: dict[str, Feed] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    _server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def count(self, path: str) -> int:
        """How many requests `path` got."""
        return sum(1 for request in self.requests if request.path == path)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def stop(self) -> None:
        """Stop listening (a request then meets a refused connection)."""
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            path = lines[0].split(" ")[1]
            headers = {
                name.strip().lower(): value.strip()
                for name, _, value in (line.partition(":") for line in lines[1:] if line)
            }
            self.requests.append(Request(path, headers))
            feed = self.feeds.get(path, Feed(status=404, body=b"no such feed"))
            if feed.delay:
                await asyncio.sleep(feed.delay)
            if feed.reset:
                writer.transport.abort()
                return
            writer.write(_answer(feed, headers))
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()


def _answer(feed: Feed, headers: dict[str, str]) -> bytes:
    status, body = feed.status, feed.body
    extra = [f"Content-Type: {feed.content_type}"]
    if feed.etag is not None:
        extra.append(f"ETag: {feed.etag}")
        if headers.get("if-none-match") == feed.etag:
            status, body = 304, b""
    if feed.location is not None:
        extra.append(f"Location: {feed.location}")
    reason = {200: "OK", 304: "Not Modified", 404: "Not Found", 500: "Internal Server Error"}
    lines = [
        f"HTTP/1.1 {status} {reason.get(status, 'Status')}",
        *extra,
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@contextlib.asynccontextmanager
async def ics_server() -> AsyncIterator[IcsServer]:
    server = IcsServer()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def ics(*events: tuple[str, datetime, datetime], extra: str = "") -> bytes:
    """A calendar of `events` (summary, start, end), in UTC, plus `extra` component text."""
    parts = ["BEGIN:VCALENDAR", "VERSION:2.0", "PRODID:-//taskmanager tests//EN"]
    for number, (summary, start, end) in enumerate(events):
        parts += [
            "BEGIN:VEVENT",
            f"UID:event-{number}@tests",
            f"DTSTAMP:{_stamp(start)}",
            f"DTSTART:{_stamp(start)}",
            f"DTEND:{_stamp(end)}",
            f"SUMMARY:{summary}",
            "END:VEVENT",
        ]
    if extra:
        parts.append(extra.strip())
    parts.append("END:VCALENDAR")
    return ("\r\n".join(parts) + "\r\n").encode()


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def weekly(summary: str, start: datetime, count: int) -> str:
    """A VEVENT repeating weekly `count` times (an RRULE), for `ics(extra=...)`."""
    return "\r\n".join(
        [
            "BEGIN:VEVENT",
            "UID:weekly@tests",
            f"DTSTAMP:{_stamp(start)}",
            f"DTSTART:{_stamp(start)}",
            f"DTEND:{_stamp(start + timedelta(hours=1))}",
            f"RRULE:FREQ=WEEKLY;COUNT={count}",
            f"SUMMARY:{summary}",
            "END:VEVENT",
        ]
    )
