"""A claimed batch: sent concurrently with a bound per host, its outcomes recorded together
in one transaction, each as it came out (delivered, due again, failed for good, the
endpoint's health), and none lost when one of them cannot be recorded."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime
from typing import Any

from taskmanager.outbox.webhooks import GONE_REASON
from taskmanager.repositories.webhook_delivery_repository import AttemptOutcome, ClaimedDelivery
from tests.support.receiver import receiver
from tests.support.scripted_server import Received, Reply, scripted_server
from tests.webhooks.conftest import Hooks


async def test_a_batch_of_mixed_outcomes_records_each_as_it_came_out(clean: Hooks) -> None:
    """Three endpoints, two events each, claimed and recorded as one batch: one endpoint
    takes both, one answers 500 (both due again, the endpoint failing), one answers 410
    (both failed for good, the endpoint disabled and its owners mailed)."""
    async with (
        receiver() as ok,
        receiver(lambda _request: Reply(500, body=b"down")) as broken,
        receiver(lambda _request: Reply(410)) as gone,
    ):
        taking = await clean.endpoint(ok.url)
        failing = await clean.endpoint(broken.url)
        leaving = await clean.endpoint(gone.url)
        # It had been failing: a delivery it takes ends that.
        await clean.execute(
            "UPDATE webhook_endpoints SET failing_since = now() - interval '1 day' WHERE id = :id",
            id=taking["id"],
        )
        await clean.task("One")
        await clean.task("Two")
        before = datetime.now(UTC)

        assert await clean.worker().drain() == 2

        assert (len(ok.received), len(broken.received), len(gone.received)) == (2, 2, 2)
    rows = await clean.rows(
        "SELECT d.endpoint_id::text AS endpoint, d.status, d.attempts, d.last_status_code, "
        "d.last_error, d.next_attempt_at, d.finished_at, "
        "array_agg(a.status_code) AS logged, array_agg(a.response_excerpt) AS excerpts "
        "FROM webhook_deliveries d JOIN webhook_attempts a ON a.delivery_id = d.id "
        "GROUP BY d.id"
    )
    by_endpoint: dict[str, list[Any]] = {}
    for row in rows:
        by_endpoint.setdefault(row.endpoint, []).append(row)
    assert sorted(by_endpoint) == sorted([taking["id"], failing["id"], leaving["id"]])
    for row in by_endpoint[taking["id"]]:
        assert (row.status, row.attempts, row.last_status_code, row.last_error) == (
            "delivered",
            1,
            200,
            None,
        )
        assert row.finished_at is not None
        assert (row.logged, row.excerpts) == ([200], ["ok"])
    for row in by_endpoint[failing["id"]]:
        assert (row.status, row.attempts, row.last_status_code, row.last_error) == (
            "pending",
            1,
            500,
            "the endpoint answered 500",
        )
        assert row.finished_at is None
        assert row.next_attempt_at > before  # due again after the schedule's wait
        assert (row.logged, row.excerpts) == ([500], ["down"])
    for row in by_endpoint[leaving["id"]]:
        assert (row.status, row.attempts, row.last_status_code) == ("failed", 1, 410)
        assert row.finished_at is not None
        assert row.logged == [410]
    endpoints = {
        row.id: row
        for row in await clean.rows(
            "SELECT id::text AS id, enabled, disabled_reason, failing_since FROM webhook_endpoints"
        )
    }
    assert endpoints[taking["id"]].failing_since is None
    assert endpoints[taking["id"]].enabled
    assert endpoints[failing["id"]].failing_since is not None
    assert endpoints[failing["id"]].enabled
    assert (endpoints[leaving["id"]].enabled, endpoints[leaving["id"]].disabled_reason) == (
        False,
        GONE_REASON,
    )
    mails = await clean.rows(
        "SELECT payload->>'endpoint_id' AS endpoint FROM outbox "
        "WHERE kind = 'mail.webhook_disabled' AND payload->>'endpoint_id' = ANY (:ids)",
        ids=[taking["id"], failing["id"], leaving["id"]],
    )
    assert [mail.endpoint for mail in mails] == [leaving["id"]]  # one owner, one mail


async def test_an_endpoint_that_took_a_delivery_in_the_batch_is_not_failing(
    clean: Hooks,
) -> None:
    """Failing for days, then in one batch one delivery fails and one is taken: the
    endpoint answers, so it is not disabled and no longer failing."""
    answers = iter([Reply(500), Reply(200)])
    async with receiver(lambda _request: next(answers)) as hook:
        endpoint = await clean.endpoint(hook.url)
        await clean.execute(
            "UPDATE webhook_endpoints SET failing_since = now() - interval '6 days'"
        )
        await clean.task("Fails")
        await clean.task("Taken")
        assert await clean.worker(concurrency_per_host=1).drain() == 1
    (shown,) = await clean.rows(
        "SELECT enabled, failing_since FROM webhook_endpoints WHERE id = :id", id=endpoint["id"]
    )
    assert tuple(shown) == (True, None)
    statuses = await clean.rows("SELECT status FROM webhook_deliveries ORDER BY status")
    assert [row.status for row in statuses] == ["delivered", "pending"]


async def test_a_batch_is_sent_concurrently_but_at_most_so_many_at_a_time_per_host(
    clean: Hooks,
) -> None:
    """Six deliveries to each of two receivers (two hosts: ports differ), at most two in
    flight at once to each; both receivers are sent to at the same time."""
    in_flight: dict[int, int] = {}
    most: dict[int, int] = {}
    overall: list[int] = [0, 0]  # now, most

    def slow(server_id: int) -> object:
        async def script(_request: Received) -> Reply:
            in_flight[server_id] = in_flight.get(server_id, 0) + 1
            most[server_id] = max(most.get(server_id, 0), in_flight[server_id])
            overall[0] += 1
            overall[1] = max(overall[1], overall[0])
            await asyncio.sleep(0.1)
            in_flight[server_id] -= 1
            overall[0] -= 1
            return Reply(200)

        return script

    async with (
        scripted_server(slow(1)) as first,  # type: ignore[arg-type]
        scripted_server(slow(2)) as second,  # type: ignore[arg-type]
    ):
        await clean.endpoint(first.url("/hooks"))
        await clean.endpoint(second.url("/hooks"))
        for number in range(6):
            await clean.task(f"Task {number}")
        assert await clean.worker(concurrency_per_host=2).drain() == 12
        assert (len(first.received), len(second.received)) == (6, 6)
    assert most == {1: 2, 2: 2}
    assert overall[1] > 2  # the two hosts were sent to side by side


async def test_a_delivery_deleted_while_in_flight_does_not_stop_the_batch_being_recorded(
    clean: Hooks,
) -> None:
    """An endpoint deleted (its deliveries with it) while its request is in flight: the
    others of the batch are recorded as usual."""
    doomed: dict[str, str] = {}

    async def delete_the_endpoint(_request: Received) -> Reply:
        await clean.execute("DELETE FROM webhook_endpoints WHERE id = :id", id=doomed["id"])
        return Reply(200)

    async with receiver() as kept, scripted_server(delete_the_endpoint) as deleting:
        staying = await clean.endpoint(kept.url)
        doomed.update(await clean.endpoint(deleting.url("/hooks")))
        await clean.task("Both")
        await clean.worker().drain()
        assert len(deleting.received) == 1
    rows = await clean.rows(
        "SELECT d.endpoint_id::text AS endpoint, d.status, count(a.id) AS attempts "
        "FROM webhook_deliveries d LEFT JOIN webhook_attempts a ON a.delivery_id = d.id "
        "GROUP BY d.id"
    )
    assert [tuple(row) for row in rows] == [(staying["id"], "delivered", 1)]


async def test_an_outcome_refused_by_a_constraint_is_recorded_alone_and_the_rest_are_kept(
    clean: Hooks,
) -> None:
    """When the batch's transaction is refused (here an outcome naming the wrong
    workspace: the attempt's foreign key), each outcome is recorded alone: the good ones
    are recorded, the bad one stays leased (sent again when its lease ends)."""
    async with receiver() as hook:
        await clean.endpoint(hook.url)
        await clean.task("Good")
        await clean.task("Bad")
        worker = clean.worker()
        good, bad = await worker._claim()
    forged = dataclasses.replace(bad, workspace_id=bad.workspace_id + 1_000_000)

    def taken(delivery: ClaimedDelivery) -> AttemptOutcome:
        return AttemptOutcome(delivery, 200, 3, "ok", None, True, None)

    await worker._record([taken(forged), taken(good)])

    rows = await clean.rows(
        "SELECT d.id, d.status, count(a.id) AS attempts FROM webhook_deliveries d "
        "LEFT JOIN webhook_attempts a ON a.delivery_id = d.id GROUP BY d.id"
    )
    assert {row.id: (row.status, row.attempts) for row in rows} == {
        good.id: ("delivered", 1),
        bad.id: ("pending", 0),
    }


async def test_a_410_in_a_batch_disables_the_endpoint_whatever_else_it_answered(
    clean: Hooks,
) -> None:
    answers = iter([Reply(200), Reply(410)])
    async with receiver(lambda _request: next(answers)) as hook:
        endpoint = await clean.endpoint(hook.url)
        await clean.task("Taken")
        await clean.task("Gone")
        assert await clean.worker(concurrency_per_host=1).drain() == 1
    (shown,) = await clean.rows(
        "SELECT enabled, disabled_reason FROM webhook_endpoints WHERE id = :id", id=endpoint["id"]
    )
    assert tuple(shown) == (False, GONE_REASON)
    statuses = await clean.rows("SELECT status FROM webhook_deliveries ORDER BY status")
    assert [row.status for row in statuses] == ["delivered", "failed"]


def test_a_lease_outlasts_a_whole_batch_sent_to_one_slow_host() -> None:
    """Were the lease shorter than a batch may take (100 deliveries to one host, 10 at a
    time, each up to the timeout), another worker could claim a delivery still waiting
    for its turn and send it at the same time."""
    from taskmanager.config import Settings
    from taskmanager.integrations.outbound import OutboundClient, OutboundPolicy
    from taskmanager.outbox.webhooks import BATCH, webhook_worker
    from taskmanager.security.caller_key import CallerKey
    from taskmanager.security.webhook_secrets import WebhookSecretKey
    from tests.support.accounts import TEST_SECRET

    for timeout, per_host in ((10.0, 10), (30.0, 2), (1.0, 100)):
        settings = Settings(webhook_timeout_seconds=timeout, webhook_concurrency_per_host=per_host)
        worker = webhook_worker(
            settings,
            None,  # type: ignore[arg-type]  # never used: nothing is claimed here
            CallerKey(TEST_SECRET),
            WebhookSecretKey(TEST_SECRET),
            OutboundClient(OutboundPolicy()),
        )
        waves = -(-BATCH // per_host)
        assert worker.policy.lease_seconds > waves * timeout, (timeout, per_host)
