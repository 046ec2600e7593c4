"""A webhook receiver on 127.0.0.1 for tests and the bench: a real HTTP server (the
scripted server of tests.support.scripted_server) that records every request and answers
as told, with a way to wait for the n-th request."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from tests.support.scripted_server import Received, Reply, ScriptedServer


@dataclass
class Receiver:
    """Answers `reply(request)` (200 by default); `arrivals` holds when each came."""

    reply: Callable[[Received], Reply] = field(default=lambda _request: Reply(200, body=b"ok"))
    server: ScriptedServer | None = None
    arrivals: list[float] = field(default_factory=list)
    _arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url("/hooks")

    @property
    def received(self) -> list[Received]:
        assert self.server is not None
        return self.server.received

    def payloads(self) -> list[dict[str, Any]]:
        return [json.loads(request.body) for request in self.received]

    async def _script(self, request: Received) -> Reply:
        self.arrivals.append(time.perf_counter())
        async with self._arrived:
            self._arrived.notify_all()
        return self.reply(request)

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:  # noqa: ASYNC109
        """Once `count` requests came (else TimeoutError), all that came."""
        async with asyncio.timeout(timeout), self._arrived:
            await self._arrived.wait_for(lambda: len(self.received) >= count)
        return self.received


@contextlib.asynccontextmanager
async def receiver(reply: Callable[[Received], Reply] | None = None) -> AsyncIterator[Receiver]:
    made = Receiver() if reply is None else Receiver(reply=reply)
    made.server = ScriptedServer(made._script)
    await made.server.start()
    try:
        yield made
    finally:
        await made.server.stop()
