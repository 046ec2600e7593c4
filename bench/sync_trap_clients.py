"""Why `taskmanager demo sync-trap` times its requests with its own small client, not httpx.

Runs one demo server and sends the same bursts through both clients, alternating, then
prints medians over the repeats of what the timeline is drawn from (milliseconds):

    spread      how long the burst's requests took to leave the client
    to route    sent -> route started, median request (drawn as "queued in the server")
    slowest     the burst's slowest request
    /ping       the /ping sent a quarter of a DB call into the burst
    overlaps    requests whose route ran while the previous one's was still running

Usage (the database as for the demo: DATABASE_URL, or the embedded server):

    .venv/bin/python bench/sync_trap_clients.py [CONCURRENCY] [DELAY_MS] [REPEATS]
"""

import asyncio
import functools
import itertools
import statistics
import sys
import time
from typing import Any

import httpx

from taskmanager.config import load_settings
from taskmanager.demo.sync_trap import measure
from taskmanager.demo.sync_trap.command import _prepare_database, demo_url
from taskmanager.demo.sync_trap.server import demo_server
from taskmanager.postgres.migrate import migrated
from taskmanager.security.caller_key import CallerKey
from taskmanager.security.signing_key import signing_key


async def httpx_get(client: httpx.AsyncClient, path: str, within: float) -> measure.Exchange:
    """measure.http_get's contract, through httpx."""
    sent = time.monotonic()
    async with asyncio.timeout(within), client.stream("GET", path) as response:
        first_byte = time.monotonic()
        await response.aread()
    end = time.monotonic()
    response.raise_for_status()
    return measure.Exchange(path, sent, first_byte, end, response.status_code, response.json())


def figures(burst: measure.Burst) -> dict[str, float]:
    served = burst.service_order()
    starts = [r.server.started_ms - r.sent_ms for r in burst.requests if r.server]
    return {
        "spread": max(r.sent_ms for r in served) - min(r.sent_ms for r in served),
        "to route": statistics.median(starts),
        "slowest": burst.slowest_ms,
        "/ping": burst.ping_ms,
        "overlaps": sum(
            1
            for before, after in itertools.pairwise(served)
            if before.server
            and after.server
            and after.server.connected_ms < before.server.finished_ms
        ),
    }


async def compare(host: str, port: int, concurrency: int, delay_ms: int, repeats: int) -> None:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(
        base_url=f"http://{host}:{port}", limits=limits, trust_env=False
    ) as client:
        clients: dict[str, measure.Get] = {
            "hand-written": measure.client(host, port),
            f"httpx {httpx.__version__}": functools.partial(httpx_get, client),
        }
        for get in clients.values():
            for variant in measure.VARIANTS:
                await measure.warm_up(get, variant, concurrency, delay_ms)
        seen: dict[tuple[str, str], list[dict[str, float]]] = {}
        for repeat in range(repeats):
            order = list(clients.items()) if repeat % 2 == 0 else list(clients.items())[::-1]
            for name, get in order:
                for variant in measure.VARIANTS:
                    burst = await measure.burst(get, variant, concurrency, delay_ms)
                    seen.setdefault((variant.name, name), []).append(figures(burst))
                    await asyncio.sleep(0.1)
    print(f"{concurrency} concurrent x {delay_ms} ms, {repeats} repeats: medians (ms)")
    columns = ("spread", "to route", "slowest", "/ping", "overlaps")
    print(f"{'variant':11}{'client':14}" + "".join(f"{c:>10}" for c in columns))
    for (variant_name, name), rows in seen.items():
        values = "".join(f"{statistics.median(r[c] for r in rows):10.1f}" for c in columns)
        print(f"{variant_name:11}{name:14}{values}")


def main(argv: list[str]) -> None:
    concurrency, delay_ms, repeats = (int(a) for a in (argv + ["10", "50", "6"][len(argv) :]))
    settings = load_settings()
    key = CallerKey(signing_key(settings))
    with migrated(settings) as logins:
        asyncio.run(_prepare_database(logins, key))  # seeds a few tasks into an empty table
        url = demo_url(logins)
        pool: dict[str, Any] = {"pool_size": concurrency, "max_overflow": 0, "pool_timeout": 60}
        with demo_server(url, **pool) as server:

            async def run() -> None:
                await server.wait_ready()
                await compare(server.host, server.port, concurrency, delay_ms, repeats)

            asyncio.run(run())


if __name__ == "__main__":
    main(sys.argv[1:])
