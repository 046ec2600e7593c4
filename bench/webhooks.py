"""Webhooks out, measured: what a worker delivers per second to a receiver on 127.0.0.1, the
delivery latency after commit (p50/p99), and what the outbox write adds to a task write.

    .venv/bin/python bench/webhooks.py                                   # ~3 minutes
    .venv/bin/python bench/webhooks.py --events 200 --rounds 1 --duration 2 --tasks 1000

One throwaway embedded PostgreSQL, seeded as bench/run.py seeds it.

1. Throughput: `--events` deliveries recorded in one committed transaction (activity rows
   inserted by the owner: the fan-out trigger records one delivery each), then one
   WebhookWorker (this process, the shared OutboundClient) drains them to the receiver
   (tests/support/receiver.py, this process too): deliveries per second, wall clock.
2. Latency: a worker LISTENing as the app's in-process one does; one change committed at a
   time; from the commit's return to the receiver reading the request: p50 and p99.
3. Cost per write: POST /tasks and PATCH /tasks/{id} (side_by_side.py, wrk) with 1 and with 3
   endpoints subscribed against none (each pair measured in one run, alternating); the
   server runs no worker (TASKMANAGER_IN_PROCESS_WORKER=false), so what is measured is the
   recording, not the sending.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

from harness import Database, autocommit, bench_database, seed_database, seeded
from side_by_side import Comparison, add_arguments, run_side_by_side, table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.support.receiver

ENDPOINT_URL = "http://127.0.0.1:9/bench"  # nothing listens: no worker runs in part 3


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


def _record(admin_url: str, workspace_id: int, count: int) -> None:
    """`count` changes in one committed transaction (the fan-out records a delivery each)."""
    autocommit(
        admin_url,
        "INSERT INTO activity (id, workspace_id, kind, object_type, object_id, after) "
        "SELECT -n - (extract(epoch FROM clock_timestamp()) * 1000)::bigint * 100000, "
        f"{workspace_id}, 'task.created', 'task', n::text, jsonb_build_object('title', 'bench') "
        f"FROM generate_series(1, {count}) n",
    )


async def _worker_figures(database: Database, events: int, samples: int) -> list[str]:
    from ipaddress import ip_network

    from tests.support.receiver import receiver

    from taskmanager.config import Settings
    from taskmanager.database import create_engine, create_session_factory
    from taskmanager.integrations.outbound import OutboundClient, OutboundPolicy
    from taskmanager.integrations.webhooks import WebhookSender
    from taskmanager.outbox.webhooks import DeliveryPolicy, WebhookWorker
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
            await asyncio.to_thread(_endpoints, database, ids.workspace_id, 1, hook.url)
            await asyncio.to_thread(_record, database.admin_url, ids.workspace_id, events)
            started = time.perf_counter()
            delivered = await worker.drain()
            elapsed = time.perf_counter() - started
            assert delivered == events, (delivered, events)

            worker.start(listen_on=engine)
            await asyncio.sleep(0.5)  # listening
            latencies = []
            for _ in range(samples):
                before = len(hook.received)
                await asyncio.to_thread(_record, database.admin_url, ids.workspace_id, 1)
                committed = time.perf_counter()
                await hook.wait_for(before + 1)
                latencies.append((hook.arrivals[before] - committed) * 1000)
            await worker.stop()
    finally:
        await asyncio.to_thread(
            autocommit,
            database.admin_url,
            "DELETE FROM webhook_endpoints",
            "DELETE FROM activity WHERE id < 0",
        )
        await engine.dispose()
    quantiles = statistics.quantiles(latencies, n=100)
    return [
        f"worker throughput: {events} deliveries in {elapsed:.2f} s = "
        f"{events / elapsed:,.0f} deliveries/s (one worker, batches of 50 sent concurrently)",
        f"latency after commit ({samples} changes, one at a time, NOTIFY-woken): "
        f"p50 {quantiles[49]:.1f} ms, p99 {quantiles[98]:.1f} ms",
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
    args = parser.parse_args()
    os.environ["TASKMANAGER_IN_PROCESS_WORKER"] = "false"
    os.environ.setdefault("TASKMANAGER_JWT_SECRET", uuid.uuid4().hex * 2)
    lines = []
    with bench_database("embedded") as database:
        seed_database(database, os.environ["TASKMANAGER_JWT_SECRET"], 1000, 5)
        lines += asyncio.run(_worker_figures(database, args.events, args.samples))
    for count in (1, 3):
        runs = run_side_by_side(_cost_comparison(count), args)
        lines += ["", f"the outbox write, {count} vs 0 endpoints subscribed:"]
        lines += table(runs, _cost_comparison(count))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
