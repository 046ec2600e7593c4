"""Webhooks out, end to end: a change committed through the API, the delivery recorded by
PostgreSQL in its transaction, sent by a worker to a real receiver on 127.0.0.1, signed
so that the reference `standardwebhooks` package verifies it."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
from sqlalchemy import text
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from taskmanager.mail.sender import MailSender
from taskmanager.mail.transports import FileTransport
from taskmanager.security.mail_tokens import MailTokenKey
from tests.support.accounts import TEST_SECRET
from tests.support.receiver import receiver
from tests.support.scripted_server import Received, Reply
from tests.webhooks.conftest import Hooks


def _verify(secret: str, request: Received) -> dict[str, object]:
    verified: dict[str, object] = Webhook(secret).verify(request.body, request.headers)
    return verified


async def test_a_committed_change_is_delivered_signed_as_standard_webhooks_says(
    clean: Hooks,
) -> None:
    async with receiver() as hook:
        endpoint = await clean.endpoint(hook.url, ["task.created", "task.completed"])
        assert endpoint["secret"].startswith("whsec_")
        task = await clean.task("Ship it")

        assert await clean.worker().drain() == 1

        (request,) = hook.received
        payload = _verify(endpoint["secret"], request)
        assert payload["type"] == "task.created"
        assert payload["version"] == 1
        data = payload["data"]
        assert isinstance(data, dict)
        assert data["object_id"] == str(task["id"])
        assert data["workspace_id"] == clean.workspace_id
        assert data["after"]["title"] == "Ship it"
        assert request.headers["webhook-id"].startswith("msg_")
        assert request.headers["content-type"] == "application/json"
        # Another endpoint's secret does not verify it.
        with pytest.raises(WebhookVerificationError):
            Webhook("whsec_" + "A" * 43 + "=").verify(request.body, request.headers)

        # Completing the task: task.completed (subscribed), not task.updated (not).
        done = await clean.client.patch(
            f"/tasks/{task['id']}", json={"completed": True}, headers={"If-Match": "*"}
        )
        assert done.status_code == 200, done.text
        assert await clean.worker().drain() == 1
        assert _verify(endpoint["secret"], hook.received[1])["type"] == "task.completed"
    (stored,) = await clean.rows(
        "SELECT status, attempts FROM webhook_deliveries WHERE event_type = 'task.created'"
    )
    assert tuple(stored) == ("delivered", 1)


async def test_a_rolled_back_change_records_no_delivery(clean: Hooks) -> None:
    """The delivery is written in the change's transaction: seen inside it, gone with it."""
    async with receiver() as hook:
        await clean.endpoint(hook.url)
        async with clean.observer.connect() as connection:
            transaction = await connection.begin()
            await connection.execute(
                text(
                    "INSERT INTO activity (id, workspace_id, kind, object_type, object_id, after) "
                    "VALUES (-1, :w, 'task.created', 'task', '1', '{}')"
                ),
                {"w": clean.workspace_id},
            )
            inside = await connection.scalar(text("SELECT count(*) FROM webhook_deliveries"))
            await transaction.rollback()
        assert inside == 1
        assert await clean.rows("SELECT id FROM webhook_deliveries") == []
        assert await clean.worker().drain() == 0
        assert hook.received == []


async def test_a_workspace_without_endpoints_records_nothing(clean: Hooks) -> None:
    await clean.task("Nobody listens")
    assert await clean.rows("SELECT id FROM webhook_deliveries") == []


async def test_a_worker_that_died_after_its_claim_leaves_the_delivery_to_the_next_with_the_same_id(
    clean: Hooks,
) -> None:
    async with receiver() as hook:
        await clean.endpoint(hook.url)
        await clean.task("Crash")
        dead = clean.worker(lease_seconds=0.5)
        (claimed,) = await dead._claim()  # then it dies without sending
        assert await clean.worker().drain() == 0  # leased: nobody else sends it meanwhile
        await asyncio.sleep(0.6)
        assert await clean.worker().drain() == 1
        (request,) = hook.received
        assert request.headers["webhook-id"] == claimed.message_id
    (stored,) = await clean.rows("SELECT status, attempts FROM webhook_deliveries")
    assert tuple(stored) == ("delivered", 2)


async def test_failures_are_retried_on_the_schedule_with_the_same_webhook_id(
    clean: Hooks,
) -> None:
    """A 500, then a reset connection, then an answer too slow: each is logged and retried
    after the schedule's wait; the fourth attempt succeeds. Every attempt carries the same
    webhook-id and a fresh, valid signature."""
    answers = iter(
        [Reply(500, body=b"boom" * 1000), Reply(reset=True), Reply(200, delay=1.0), Reply(204)]
    )
    async with receiver(lambda _request: next(answers)) as hook:
        endpoint = await clean.endpoint(hook.url)
        await clean.task("Flaky")
        worker = clean.worker(schedule=(0.0, 0.3, 0.3, 0.3), timeout_seconds=0.5)
        assert await worker.drain() == 0  # the 500
        assert await worker.drain() == 0  # not due yet
        for _ in range(3):
            await asyncio.sleep(0.35)
            await worker.drain()
        await hook.wait_for(4)
        assert len({request.headers["webhook-id"] for request in hook.received}) == 1
        for request in hook.received:
            _verify(endpoint["secret"], request)
    response = await clean.client.get(
        f"/workspaces/{clean.workspace_id}/webhooks/{endpoint['id']}/deliveries"
    )
    assert response.status_code == 200, response.text
    (delivery,) = response.json()
    assert delivery["status"] == "delivered"
    attempts = delivery["attempts"]
    assert [attempt["status_code"] for attempt in attempts] == [500, None, None, 204]
    assert len(attempts[0]["response_excerpt"]) == 1000  # bounded
    assert "OutboundConnectionError" in attempts[1]["error"]
    assert "OutboundTimeout" in attempts[2]["error"]


async def test_a_delivery_that_fails_every_attempt_fails_for_good(clean: Hooks) -> None:
    async with receiver(lambda _request: Reply(503)) as hook:
        await clean.endpoint(hook.url)
        await clean.task("Never")
        worker = clean.worker(schedule=(0.0, 0.1))
        await worker.drain()
        await asyncio.sleep(0.15)
        await worker.drain()
        assert len(hook.received) == 2
    (stored,) = await clean.rows("SELECT status, attempts, last_error FROM webhook_deliveries")
    assert tuple(stored) == ("failed", 2, "the endpoint answered 503")


async def test_410_disables_the_endpoint_and_mails_its_owners(clean: Hooks) -> None:
    async with receiver(lambda _request: Reply(410)) as hook:
        endpoint = await clean.endpoint(hook.url)
        await clean.task("Gone")
        await clean.worker().drain()
        await clean.task("Not sent")
        await clean.worker().drain()
        assert len(hook.received) == 1  # the second event: the endpoint is disabled
    shown = await clean.client.get(f"/workspaces/{clean.workspace_id}/webhooks/{endpoint['id']}")
    assert shown.json()["enabled"] is False
    assert shown.json()["disabled_reason"] == "the endpoint answered 410 Gone"
    (mail,) = await clean.rows(
        "SELECT payload FROM outbox WHERE kind = 'mail.webhook_disabled' "
        "AND payload->>'endpoint_id' = :id",
        id=endpoint["id"],
    )
    assert mail.payload["to"] == "hooks@example.com"
    # Enabling it again clears why it was disabled.
    enabled = await clean.client.patch(
        f"/workspaces/{clean.workspace_id}/webhooks/{endpoint['id']}", json={"enabled": True}
    )
    assert (enabled.json()["enabled"], enabled.json()["disabled_reason"]) == (True, None)


async def test_an_endpoint_failing_for_days_is_disabled_and_its_owners_mailed(
    clean: Hooks, tmp_path: object
) -> None:
    async with receiver(lambda _request: Reply(500)) as hook:
        url = hook.url
        endpoint = await clean.endpoint(url)
        await clean.task("Failing")
        await clean.worker().drain()
        (shown,) = await clean.rows(
            "SELECT enabled, failing_since FROM webhook_endpoints WHERE id = :id",
            id=endpoint["id"],
        )
        assert shown.enabled
        assert shown.failing_since is not None
        await clean.execute(
            "UPDATE webhook_endpoints SET failing_since = now() - interval '6 days'"
        )
        await clean.task("Still failing")
        await clean.worker().drain()
    (disabled,) = await clean.rows(
        "SELECT enabled, disabled_reason FROM webhook_endpoints WHERE id = :id", id=endpoint["id"]
    )
    assert tuple(disabled) == (False, "every delivery failed for 5 days")
    (mail,) = await clean.rows(
        "SELECT payload FROM outbox WHERE kind = 'mail.webhook_disabled' "
        "AND payload->>'endpoint_id' = :id",
        id=endpoint["id"],
    )
    sender = MailSender(
        FileTransport(tmp_path),  # type: ignore[arg-type]
        MailTokenKey(TEST_SECRET),
        "t <t@example.com>",
        "https://tasks.example",
    )
    rendered = sender.render("webhook_disabled", mail.payload)
    assert url in rendered.text
    assert "every delivery failed for 5 days" in rendered.text
    assert f"/workspaces/{clean.workspace_id}/webhooks/{endpoint['id']}" in rendered.text


async def test_a_replay_sends_the_same_event_with_the_same_webhook_id(clean: Hooks) -> None:
    async with receiver() as hook:
        endpoint = await clean.endpoint(hook.url)
        await clean.task("Again")
        await clean.worker().drain()
        (delivery,) = await clean.rows("SELECT id, message_id FROM webhook_deliveries")
        base = f"/workspaces/{clean.workspace_id}/webhooks/{endpoint['id']}"
        replayed = await clean.client.post(f"{base}/deliveries/{delivery.id}/replay")
        assert replayed.status_code == 202, replayed.text
        assert replayed.json()["delivery_id"] != str(delivery.id)
        assert await clean.worker().drain() == 1
        first, second = hook.received
        assert first.headers["webhook-id"] == second.headers["webhook-id"] == delivery.message_id
        assert json.loads(first.body) == json.loads(second.body)
        unknown = await clean.client.post(f"{base}/deliveries/{uuid.uuid4()}/replay")
        assert unknown.status_code == 404


async def test_a_test_event_reaches_the_endpoint(clean: Hooks) -> None:
    async with receiver() as hook:
        endpoint = await clean.endpoint(hook.url)
        base = f"/workspaces/{clean.workspace_id}/webhooks/{endpoint['id']}"
        sent = await clean.client.post(f"{base}/test")
        assert sent.status_code == 202, sent.text
        assert await clean.worker().drain() == 1
        (request,) = hook.received
        payload = _verify(endpoint["secret"], request)
        assert payload["type"] == "webhook.test"
        assert payload["data"]["endpoint_id"] == endpoint["id"]  # type: ignore[index]


async def test_a_rotated_secret_and_the_old_one_both_sign_until_the_overlap_ends(
    clean: Hooks,
) -> None:
    async with receiver() as hook:
        endpoint = await clean.endpoint(hook.url)
        old = endpoint["secret"]
        base = f"/workspaces/{clean.workspace_id}/webhooks/{endpoint['id']}"
        rotated = await clean.client.post(f"{base}/rotate-secret")
        assert rotated.status_code == 200, rotated.text
        new = rotated.json()["secret"]
        assert new != old
        assert rotated.json()["previous_secret_valid_until"] is not None

        await clean.task("During the overlap")
        await clean.worker().drain()
        during = hook.received[0]
        assert len(during.headers["webhook-signature"].split(" ")) == 2
        _verify(old, during)
        _verify(new, during)

        await clean.execute(
            "UPDATE webhook_endpoints SET previous_valid_until = now() - interval '1 second'"
        )
        await clean.task("After the overlap")
        await clean.worker().drain()
        after = hook.received[1]
        assert len(after.headers["webhook-signature"].split(" ")) == 1
        _verify(new, after)
        with pytest.raises(WebhookVerificationError):
            _verify(old, after)


async def test_two_workers_never_send_one_delivery_twice(clean: Hooks) -> None:
    async with receiver(lambda _request: Reply(200, delay=0.02)) as hook:
        await clean.endpoint(hook.url)
        for number in range(30):
            await clean.task(f"Task {number}")
        first, second = clean.worker(), clean.worker()
        sent = await asyncio.gather(first.drain(), second.drain())
        assert sum(sent) == 30
        ids = [request.headers["webhook-id"] for request in hook.received]
        assert len(ids) == len(set(ids)) == 30
