"""Webhooks out, measured: what a worker delivers per second to a receiver on 127.0.0.1, the
delivery latency after commit (p50/p99), and what the outbox write adds to a task write,
each against a floor measured side by side in the same run.

    .venv/bin/python bench/webhooks.py                                   # ~3 minutes
    .venv/bin/python bench/webhooks.py --events 2000 --rounds 1 --duration 3 --tasks 1000

One throwaway embedded PostgreSQL, seeded as bench/run.py seeds it.

1. Throughput: `--events` deliveries recorded in one committed transaction (activity rows
   inserted by the owner: the fan-out trigger records one delivery each), then one
   WebhookWorker (this process, the shared OutboundClient) drains them to the receiver
   (tests/support/receiver.py, this process too): deliveries per second, wall clock.
   Floors, alternating with it round by round (`--rounds`): the same number of signed
   bodies (the app's payload, a fresh webhook-id and signature each) POSTed to the same
   receiver, as many in flight at once as the worker allows per host, with no database:
   through the shared OutboundClient, and through a bare httpx.AsyncClient.
2. Latency: a worker LISTENing as the app's in-process one does; one change committed at a
   time; from the commit's return to the receiver reading the request: p50 and p99. The
   floor, alternating with it sample by sample: a listener on another channel that POSTs
   a signed body through the same client the moment a bare NOTIFY's commit reaches it.
3. Cost per write: POST /tasks and PATCH /tasks/{id} (side_by_side.py, wrk) with 1 and with 3
   endpoints subscribed against none (each pair measured in one run, alternating); the
   server runs no worker (TASKMANAGER_IN_PROCESS_WORKER=false), so what is measured is the
   recording, not the sending.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from harness import Database, autocommit, bench_database, seed_database, seeded
from side_by_side import Comparison, add_arguments, run_side_by_side, table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.support.receiver

ENDPOINT_URL = "http://127.0.0.1:9/bench"  # nothing listens: no worker runs in part 3
FLOOR_CHANNEL = "taskmanager_bench_floor"
APP = "app: one WebhookWorker"
FLOOR_OUTBOUND = "floor: OutboundClient, no database"
FLOOR_HTTPX = "floor: bare httpx.AsyncClient, no database"
# A POST that returns an answer (its status, for the floors' check).
Post = Callable[[str, Mapping[str, str], bytes], Awaitable[int]]


def _endpoints(database: Database, workspace_id: int, count: int, url: str) -> list[str]:
    ids = [str(uuid.uuid4()) for _ in range(count)]
    autocommit(
        database.admin_url,
        f"DELETE FROM webhook_endpoints WHERE workspace_id = {workspace_id}",
        *(
            "INSERT INTO webhook_endpoints (id, workspace_id, url, events, secret_nonce) "
            f"VALUES ('{endpoint}', {workspace_id}, '{url}', "
            "ARRAY['task.created', 'task.updated'], decode(md5(random()::text), 'hex'))"
            for endpoint in ids
        ),
    )
    return ids


def _changes(workspace_id: int, count: int) -> str:
    """`count` changes in one statement (the fan-out records a delivery each)."""
    return (
        "INSERT INTO activity (id, workspace_id, kind, object_type, object_id, after) "
        "SELECT -n - (extract(epoch FROM clock_timestamp()) * 1000)::bigint * 100000, "
        f"{workspace_id}, 'task.created', 'task', n::text, jsonb_build_object('title', 'bench') "
        f"FROM generate_series(1, {count}) n"
    )


def _record(admin_url: str, workspace_id: int, count: int) -> None:
    """`count` changes in one committed transaction."""
    autocommit(admin_url, _changes(workspace_id, count))


def _signed(payload: dict[str, Any], secret: bytes) -> tuple[dict[str, str], bytes]:
    """What any Standard Webhooks sender does per message: the body, a fresh id, the
    signature."""
    from taskmanager.integrations.webhooks import body_of
    from taskmanager.security.webhook_secrets import signature_header

    message_id = "msg_" + uuid.uuid4().hex
    body = body_of(payload)
    timestamp = int(time.time())
    headers = {
        "content-type": "application/json",
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature_header([secret], message_id, timestamp, body),
    }
    return headers, body


async def _floor_send(
    post: Post, url: str, payload: dict[str, Any], count: int, per_host: int
) -> float:
    """The throughput floor: `count` signed bodies POSTed to `url`, at most `per_host` at
    once, nothing read or written elsewhere; the seconds it took."""
    secret = secrets.token_bytes(32)
    limit = asyncio.Semaphore(per_host)

    async def one() -> None:
        headers, body = _signed(payload, secret)
        async with limit:
            status = await post(url, headers, body)
        assert status == 200, status

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(count)))
    return time.perf_counter() - started


def _ratio_table(rates: dict[str, list[float]]) -> list[str]:
    app = statistics.median(rates[APP])
    lines = ["| sender | deliveries/s (median) | app / this |", "|---|---:|---:|"]
    for mode, runs in rates.items():
        rate = statistics.median(runs)
        lines.append(f"| {mode} | {rate:,.0f} | {app / rate:.2f}x |")
    return lines


async def _worker_figures(database: Database, events: int, samples: int, rounds: int) -> list[str]:
    from ipaddress import ip_network

    import httpx
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy.pool import NullPool
    from tests.support.receiver import receiver

    from taskmanager.config import Settings
    from taskmanager.database import create_engine, create_session_factory
    from taskmanager.integrations.outbound import OutboundClient, OutboundPolicy
    from taskmanager.integrations.webhooks import MAX_ANSWER_BYTES, WebhookSender
    from taskmanager.outbox.webhooks import BATCH, DeliveryPolicy, WebhookWorker
    from taskmanager.security.caller_key import CallerKey
    from taskmanager.security.webhook_secrets import WebhookSecretKey

    secret = os.environ["TASKMANAGER_JWT_SECRET"]
    settings = Settings(database_url=database.app_url, jwt_secret=secret)
    engine = create_engine(settings, database.app_url)
    ids = await asyncio.to_thread(seeded, database.admin_url)
    policy = OutboundPolicy(allow_http=True, allowed_networks=(ip_network("127.0.0.1/32"),))
    rules = DeliveryPolicy(
        schedule=(0.0, 1.0),
        jitter=0.0,
        poll_seconds=60.0,
        timeout_seconds=5.0,
        lease_seconds=60.0,
        disable_after_seconds=86400.0,
        concurrency_per_host=settings.webhook_concurrency_per_host,
    )
    per_host = rules.concurrency_per_host
    # Commits for the latency part, on one connection held open (its time is not measured).
    committer = create_async_engine(database.admin_url, isolation_level="AUTOCOMMIT")
    listener = create_async_engine(database.admin_url, poolclass=NullPool)
    bare = httpx.AsyncClient(
        limits=httpx.Limits(max_connections=100, max_keepalive_connections=100)
    )
    try:
        async with OutboundClient(policy) as client, receiver() as hook:
            worker = WebhookWorker(
                create_session_factory(engine),
                CallerKey(secret),
                WebhookSender(client, 5.0),
                WebhookSecretKey(secret),
                rules,
            )

            async def through_outbound(url: str, headers: Mapping[str, str], body: bytes) -> int:
                answer = await client.request(
                    "POST", url, headers=headers, content=body, max_bytes=MAX_ANSWER_BYTES
                )
                return answer.status_code

            async def through_httpx(url: str, headers: Mapping[str, str], body: bytes) -> int:
                answer = await bare.post(url, headers=headers, content=body)
                return answer.status_code

            await asyncio.to_thread(_endpoints, database, ids.workspace_id, 1, hook.url)
            # Warm-up (connections, prepared statements) and a real payload for the floors.
            await asyncio.to_thread(_record, database.admin_url, ids.workspace_id, BATCH)
            assert await worker.drain() == BATCH
            payload = json.loads(hook.received[0].body)
            rates: dict[str, list[float]] = {APP: [], FLOOR_OUTBOUND: [], FLOOR_HTTPX: []}
            for round_number in range(rounds):
                modes = list(rates)[:: 1 if round_number % 2 == 0 else -1]
                for mode in modes:
                    if mode == APP:
                        await asyncio.to_thread(
                            _record, database.admin_url, ids.workspace_id, events
                        )
                        started = time.perf_counter()
                        delivered = await worker.drain()
                        elapsed = time.perf_counter() - started
                        assert delivered == events, (delivered, events)
                    else:
                        post = through_outbound if mode == FLOOR_OUTBOUND else through_httpx
                        elapsed = await _floor_send(post, hook.url, payload, events, per_host)
                    rates[mode].append(events / elapsed)

            pending: set[asyncio.Task[None]] = set()

            floor_secret = secrets.token_bytes(32)

            async def floor_post() -> None:
                await through_outbound(hook.url, *_signed(payload, floor_secret))

            def floor_woken(*_: Any) -> None:
                task = asyncio.create_task(floor_post())
                pending.add(task)
                task.add_done_callback(pending.discard)

            connection = await listener.connect()
            raw = await connection.get_raw_connection()
            await raw.driver_connection.add_listener(FLOOR_CHANNEL, floor_woken)  # type: ignore[union-attr]
            worker.start(listen_on=engine)
            await asyncio.sleep(0.5)  # listening
            latencies: dict[str, list[float]] = {"app": [], "floor": []}
            change = text(_changes(ids.workspace_id, 1))
            notify = text(f"SELECT pg_notify('{FLOOR_CHANNEL}', '')")
            async with committer.connect() as commits:
                for sample in range(2 * samples):
                    mode = "app" if sample % 2 == 0 else "floor"
                    before = len(hook.received)
                    await commits.execute(change if mode == "app" else notify)
                    committed = time.perf_counter()
                    await hook.wait_for(before + 1)
                    latencies[mode].append((hook.arrivals[before] - committed) * 1000)
                    await asyncio.sleep(0.01)  # the worker records its outcome meanwhile
            await worker.stop()
            await connection.close()
    finally:
        await bare.aclose()
        await listener.dispose()
        await committer.dispose()
        await asyncio.to_thread(
            autocommit,
            database.admin_url,
            "DELETE FROM webhook_endpoints",
            "DELETE FROM activity WHERE id < 0",
        )
        await engine.dispose()
    app = statistics.quantiles(latencies["app"], n=100)
    floor = statistics.quantiles(latencies["floor"], n=100)
    return [
        f"worker throughput: {events} deliveries per run to one receiver on 127.0.0.1, "
        f"{rounds} round(s) alternating; batches of {BATCH}, at most {per_host} in flight "
        "(the floors too):",
        *_ratio_table(rates),
        "",
        f"latency after commit ({samples} changes each, one at a time, alternating):",
        "| | p50 ms | p99 ms |",
        "|---|---:|---:|",
        f"| app: NOTIFY-woken worker (claim, sign, send) | {app[49]:.1f} | {app[98]:.1f} |",
        f"| floor: LISTEN, POST at once | {floor[49]:.1f} | {floor[98]:.1f} |",
        f"| app / floor | {app[49] / floor[49]:.2f}x | {app[98] / floor[98]:.2f}x |",
    ]


def _cost_comparison(count: int) -> Comparison:
    modes = (f"{count} endpoint{'s' if count > 1 else ''}", "0 endpoints")

    def set_mode(database: Database, mode: str) -> None:
        workspace = seeded(database.admin_url).workspace_id
        _endpoints(database, workspace, count if mode == modes[0] else 0, ENDPOINT_URL)

    def deliveries(database: Database) -> int:
        (row,) = autocommit(
            database.admin_url,
            "WITH gone AS (DELETE FROM webhook_deliveries RETURNING 1) SELECT count(*) FROM gone",
        )
        return int(row[0])

    return Comparison(modes, set_mode, count=deliveries, count_name="deliveries/req")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument(
        "--worker-only", action="store_true", help="throughput and latency, not the write cost"
    )
    args = parser.parse_args()
    os.environ["TASKMANAGER_IN_PROCESS_WORKER"] = "false"
    os.environ.setdefault("TASKMANAGER_JWT_SECRET", uuid.uuid4().hex * 2)
    lines = []
    with bench_database("embedded") as database:
        seed_database(database, os.environ["TASKMANAGER_JWT_SECRET"], 1000, 5)
        lines += asyncio.run(
            _worker_figures(database, args.events, args.samples, max(1, args.rounds))
        )
    for count in () if args.worker_only else (1, 3):
        runs = run_side_by_side(_cost_comparison(count), args)
        lines += ["", f"the outbox write, {count} vs 0 endpoints subscribed:"]
        lines += table(runs, _cost_comparison(count))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
