"""What a receiver or a manager can do to the delivery worker: answers PostgreSQL will not
store, a record that fails, an endpoint deleted mid-send, a delivery whose outcomes never
got recorded, a test event that fails, and a failure after days of silence."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import pytest
from sqlalchemy import text

from taskmanager.repositories.webhook_delivery_repository import (
    AttemptOutcome,
    WebhookDeliveryRepository,
)
from tests.support.receiver import receiver
from tests.support.scripted_server import Received, Reply
from tests.webhooks.conftest import Hooks

WORKER_LOG = "taskmanager.outbox.webhooks"


def _echo_title(request: Received) -> Reply:
    """200, with the task's title (and a NUL, for one) in the body."""
    title = request.body.split(b'"title":"')[1].split(b'"')[0]
    return Reply(200, body=b"got " + title + b"\x00\x01\x1b[0m")


async def test_an_answer_with_a_nul_byte_is_logged_without_it_and_delivered(
    clean: Hooks,
) -> None:
    """PostgreSQL's text refuses NUL: the excerpt (and the error) keep everything else."""
    async with receiver(lambda _request: Reply(200, body=b"ok\x00thanks\x07\r\n")) as hook:
        await clean.endpoint(hook.url)
        await clean.task("nul")
        assert await clean.worker().drain() == 1
        assert len(hook.received) == 1
    (stored,) = await clean.rows(
        "SELECT d.status, d.attempts, a.response_excerpt FROM webhook_deliveries d "
        "JOIN webhook_attempts a ON a.delivery_id = d.id"
    )
    assert tuple(stored) == ("delivered", 1, "okthanks\r\n")


async def test_one_delivery_whose_record_fails_does_not_abort_the_others(
    clean: Hooks, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The full record of one delivery fails in PostgreSQL: it is recorded without the
    answer's text instead (and the failure logged); the batch's other deliveries are
    recorded as they were."""
    record = WebhookDeliveryRepository.record

    async def refused_for_poison(
        self: WebhookDeliveryRepository, outcomes: Sequence[AttemptOutcome]
    ) -> None:
        if any(o.excerpt is not None and "poison" in o.excerpt for o in outcomes):
            await self.session.execute(text("SELECT 1 / 0"))  # PostgreSQL refuses it
        await record(self, outcomes)

    monkeypatch.setattr(WebhookDeliveryRepository, "record", refused_for_poison)
    async with receiver(_echo_title) as hook:
        await clean.endpoint(hook.url)
        for title in ("poison", "fine one", "fine two"):
            await clean.task(title)
        with caplog.at_level(logging.WARNING, logger=WORKER_LOG):
            assert await clean.worker().drain() == 3
        assert len(hook.received) == 3
    stored = await clean.rows(
        "SELECT d.payload->'data'->'after'->>'title' AS title, d.status, "
        "a.status_code, a.response_excerpt FROM webhook_deliveries d "
        "JOIN webhook_attempts a ON a.delivery_id = d.id ORDER BY title"
    )
    assert [tuple(row) for row in stored] == [
        ("fine one", "delivered", 200, "got fine one[0m"),
        ("fine two", "delivered", 200, "got fine two[0m"),
        ("poison", "delivered", 200, None),
    ]
    assert "could not be recorded" in caplog.text


async def test_an_endpoint_deleted_while_its_delivery_is_in_flight_raises_nothing(
    clean: Hooks, caplog: pytest.LogCaptureFixture
) -> None:
    async with receiver(lambda _request: Reply(200, delay=0.5)) as hook:
        endpoint = await clean.endpoint(hook.url)
        await clean.task("deleted meanwhile")
        with caplog.at_level(logging.WARNING, logger=WORKER_LOG):
            drain = asyncio.create_task(clean.worker().drain())
            await hook.wait_for(1)
            deleted = await clean.client.delete(
                f"/workspaces/{clean.workspace_id}/webhooks/{endpoint['id']}"
            )
            assert deleted.status_code == 204, deleted.text
            assert await drain == 1
    assert caplog.records == []  # nothing failed: there was just nothing left to record
    assert await clean.rows("SELECT id FROM webhook_attempts") == []


async def test_a_delivery_claimed_as_often_as_the_schedule_allows_is_failed_at_the_claim(
    clean: Hooks,
) -> None:
    """Its outcomes never got recorded (a worker died each time, a record was refused):
    it is not sent again every lease forever."""
    async with receiver() as hook:
        await clean.endpoint(hook.url)
        await clean.task("exhausted")
        await clean.execute("UPDATE webhook_deliveries SET attempts = 3")  # the schedule's 3
        assert await clean.worker().drain() == 0
        assert hook.received == []
    (stored,) = await clean.rows("SELECT status, attempts, last_error FROM webhook_deliveries")
    assert tuple(stored) == ("failed", 3, "no outcome recorded after 3 attempts")


async def test_a_test_event_is_tried_once(clean: Hooks) -> None:
    async with receiver(lambda _request: Reply(500)) as hook:
        endpoint = await clean.endpoint(hook.url)
        sent = await clean.client.post(
            f"/workspaces/{clean.workspace_id}/webhooks/{endpoint['id']}/test"
        )
        assert sent.status_code == 202, sent.text
        worker = clean.worker(schedule=(0.0, 0.1, 0.1))
        await worker.drain()
        await asyncio.sleep(0.15)
        await worker.drain()
        assert len(hook.received) == 1
    (stored,) = await clean.rows("SELECT status, attempts FROM webhook_deliveries")
    assert tuple(stored) == ("failed", 1)


async def test_one_failure_after_days_of_silence_starts_a_new_streak(clean: Hooks) -> None:
    """A delivery failed (for good) six days ago, nothing was sent for three days, and
    now one fails: the endpoint has not been failing for 5 days, it stays enabled."""
    async with receiver(lambda _request: Reply(500)) as hook:
        endpoint = await clean.endpoint(hook.url)
        await clean.task("long ago")
        await clean.worker().drain()
        await clean.execute(
            "UPDATE webhook_endpoints SET failing_since = now() - interval '6 days', "
            "last_failed_at = now() - interval '3 days'"
        )
        await clean.task("today")
        await clean.worker().drain()
        assert len(hook.received) == 2
    (shown,) = await clean.rows(
        "SELECT enabled, failing_since > now() - interval '1 minute' AS recent "
        "FROM webhook_endpoints WHERE id = :id",
        id=endpoint["id"],
    )
    assert tuple(shown) == (True, True)
    assert (
        await clean.rows(
            "SELECT 1 FROM outbox WHERE kind = 'mail.webhook_disabled' "
            "AND payload->>'endpoint_id' = :id",
            id=endpoint["id"],
        )
        == []
    )
