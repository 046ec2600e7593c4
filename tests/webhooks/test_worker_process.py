"""`taskmanager worker` as the separate process a deployment runs: two of them, started as
subprocesses on the module's database, beside a live app that runs no worker of its own
(TASKMANAGER_IN_PROCESS_WORKER=false).

What only a real process shows: its settings come from the environment, it is woken by
PostgreSQL's NOTIFY from another process's commit (its poll is set to a minute, so nothing
else would be this quick), two of them share the work without sending one delivery twice
or fetching one calendar twice, and SIGTERM stops each with exit code 0 within seconds.
"""

from __future__ import annotations

import asyncio
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.support.ics_server import Feed, ics, ics_server
from tests.support.processes import WorkerProcess, clean_env, worker
from tests.support.receiver import receiver
from tests.webhooks.conftest import Hooks

pytestmark = pytest.mark.server

DELIVERIES = 20


def worker_env(database_url: str) -> dict[str, str]:
    return clean_env(
        DATABASE_URL=database_url,
        TASKMANAGER_LOG_LEVEL="WARNING",
        TASKMANAGER_REDIS_URL="off",
        TASKMANAGER_OUTBOUND_ALLOW_HTTP="true",
        TASKMANAGER_OUTBOUND_ALLOWED_NETWORKS='["127.0.0.1/32"]',
        # Only a notification can wake them within the test.
        TASKMANAGER_WEBHOOK_POLL_SECONDS="60",
        TASKMANAGER_OUTBOX_POLL_SECONDS="60",
        TASKMANAGER_MAIL_DIR=os.environ["TASKMANAGER_MAIL_DIR"],
    )


async def listening(hooks: Hooks) -> int:
    """Connections LISTENing for webhook deliveries (the workers' own)."""
    rows = await hooks.rows(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND query ILIKE 'LISTEN%taskmanager_webhooks%'"
    )
    return int(rows[0][0])


async def wait_listening(hooks: Hooks, workers: list[WorkerProcess], within: float = 15) -> None:
    for _ in range(int(within / 0.1)):
        if await listening(hooks) >= len(workers):
            return
        for each in workers:
            assert each.process.poll() is None, "the worker exited:\n" + each.output()
        await asyncio.sleep(0.1)
    raise AssertionError("the workers never listened:\n" + "\n".join(w.output() for w in workers))


async def test_separate_workers_deliver_once_each_woken_by_notify_and_stop_on_sigterm(
    clean: Hooks, own_database_url: str, tmp_path: Path
) -> None:
    soon = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    async with receiver() as hook, ics_server() as calendars:
        await clean.endpoint(hook.url)
        calendars.feeds["/rota.ics"] = Feed(ics(("On call", soon, soon + timedelta(hours=1))))
        made = await clean.client.post(
            f"/workspaces/{clean.workspace_id}/calendars",
            json={"url": calendars.url("/rota.ics"), "name": "Rota"},
        )
        assert made.status_code == 201, made.text
        env = worker_env(own_database_url)
        with worker(env, tmp_path) as first, worker(env, tmp_path) as second:
            await wait_listening(clean, [first, second])
            await asyncio.sleep(1.0)  # past each one's first look: from here, only NOTIFY
            started = time.perf_counter()
            for number in range(DELIVERIES):
                await clean.task(f"Task {number}")
            await hook.wait_for(DELIVERIES, timeout=10)
            delivered_within = time.perf_counter() - started
            await asyncio.sleep(0.5)  # a second send of any of them would come by now

            stopping = time.perf_counter()
            codes = [first.terminate(10), second.terminate(10)]
            stopped_within = time.perf_counter() - stopping
            outputs = first.output() + second.output()

    assert codes == [0, 0], outputs
    assert stopped_within < 5, (stopped_within, outputs)
    assert delivered_within < 10, delivered_within  # not by the minute's poll
    ids = [request.headers["webhook-id"] for request in hook.received]
    assert len(ids) == len(set(ids)) == DELIVERIES, ids
    statuses = await clean.rows("SELECT status, count(*) FROM webhook_deliveries GROUP BY status")
    assert [tuple(row) for row in statuses] == [("delivered", DELIVERIES)]
    # Each worker's refresher looked at start; the calendar was claimed by one of them.
    assert calendars.count("/rota.ics") == 1
    fetched = await clean.rows(
        "SELECT jsonb_array_length(events), last_error FROM calendar_subscriptions WHERE id = :id",
        id=made.json()["id"],
    )
    assert [tuple(row) for row in fetched] == [(1, None)]
