"""The webhook routes' answers to bad input, the cap, and the in-process worker woken by
PostgreSQL's NOTIFY right after a commit."""

from __future__ import annotations

from httpx import AsyncClient

from tests.support.accounts import register_and_login
from tests.support.live_app import live_client
from tests.support.problems import assert_validation_problem
from tests.support.receiver import receiver
from tests.webhooks.conftest import LIVE_SETTINGS, Hooks


async def test_a_url_the_service_may_not_send_to_is_422_naming_the_field(clean: Hooks) -> None:
    path = f"/workspaces/{clean.workspace_id}/webhooks"
    for url in ("http://10.0.0.1/hooks", "http://user:pw@127.0.0.1/", "ftp://127.0.0.1/"):
        response = await clean.client.post(path, json={"url": url, "events": ["task.created"]})
        assert_validation_problem(response, "body.url")


async def test_an_unknown_event_type_is_422_listing_the_known_ones(clean: Hooks) -> None:
    response = await clean.client.post(
        f"/workspaces/{clean.workspace_id}/webhooks",
        json={"url": "http://127.0.0.1:9/", "events": ["task.created", "task.exploded"]},
    )
    assert_validation_problem(response, "body.events")
    assert "task.exploded" in response.text
    assert "task.completed" in response.text


async def test_the_cap_on_endpoints_per_workspace_is_409(own_database_url: str) -> None:
    settings = LIVE_SETTINGS | {"max_webhooks_per_workspace": 2}
    async with live_client(own_database_url, **settings) as client:
        client.headers.update(await register_and_login(client, "capped@example.com"))
        workspace = (await client.post("/workspaces", json={"name": "capped"})).json()["id"]
        body = {"url": "http://127.0.0.1:9/", "events": ["task.created"]}
        for _ in range(2):
            made = await client.post(f"/workspaces/{workspace}/webhooks", json=body)
            assert made.status_code == 201, made.text
        refused = await client.post(f"/workspaces/{workspace}/webhooks", json=body)
        assert refused.status_code == 409, refused.text
        assert refused.json()["type"].endswith("/problems/limit-reached")
        listed = await client.get(f"/workspaces/{workspace}/webhooks")
        assert len(listed.json()) == 2
        assert all("secret" not in endpoint for endpoint in listed.json())


async def test_the_in_process_worker_delivers_right_after_the_commit(
    own_database_url: str,
) -> None:
    """Woken by NOTIFY at the commit (its poll is an hour): the delivery arrives at once."""
    settings = LIVE_SETTINGS | {"in_process_worker": True, "webhook_poll_seconds": 3600}
    client: AsyncClient
    async with receiver() as hook, live_client(own_database_url, **settings) as client:
        client.headers.update(await register_and_login(client, "notified@example.com"))
        workspace = (await client.post("/workspaces", json={"name": "notified"})).json()["id"]
        made = await client.post(
            f"/workspaces/{workspace}/webhooks",
            json={"url": hook.url, "events": ["task.created"]},
        )
        assert made.status_code == 201, made.text
        for title in ("one", "two"):
            task = await client.post("/tasks", json={"title": title, "workspace_id": workspace})
            assert task.status_code == 201, task.text
        received = await hook.wait_for(2, timeout=5)
        assert sorted(p["data"]["after"]["title"] for p in hook.payloads()) == ["one", "two"]
        assert len(received) == 2


async def test_the_delivery_log_pages_by_key(clean: Hooks) -> None:
    """`before` names the last delivery of the page before; an unknown one is an empty
    page (it was a 500: the subquery's row compared with the key)."""
    endpoint = await clean.endpoint("http://127.0.0.1:9/paged")
    for title in ("one", "two", "three"):
        await clean.task(title)
    log = f"/workspaces/{clean.workspace_id}/webhooks/{endpoint['id']}/deliveries"
    first = await clean.client.get(log, params={"limit": 2})
    assert first.status_code == 200, first.text
    assert [d["payload"]["data"]["after"]["title"] for d in first.json()] == ["three", "two"]
    following = await clean.client.get(log, params={"limit": 2, "before": first.json()[-1]["id"]})
    assert [d["payload"]["data"]["after"]["title"] for d in following.json()] == ["one"]
    unknown = await clean.client.get(log, params={"before": "00000000-0000-4000-8000-000000000000"})
    assert (unknown.status_code, unknown.json()) == (200, [])


async def test_test_events_and_replays_waiting_are_capped_at_100_per_endpoint(
    clean: Hooks,
) -> None:
    endpoint = await clean.endpoint("http://127.0.0.1:9/")
    base = f"/workspaces/{clean.workspace_id}/webhooks/{endpoint['id']}"
    for _ in range(100):
        sent = await clean.client.post(f"{base}/test")
        assert sent.status_code == 202, sent.text
    for refused in (
        await clean.client.post(f"{base}/test"),
        await clean.client.post(f"{base}/deliveries/{sent.json()['delivery_id']}/replay"),
    ):
        assert refused.status_code == 409, refused.text
        assert refused.json()["type"].endswith("/problems/limit-reached")
        assert "100 test events and replays waiting" in refused.json()["detail"]
    (waiting,) = await clean.rows("SELECT count(*) FROM webhook_deliveries")
    assert waiting[0] == 100
    # Sent (or failed) ones do not count: room again.
    await clean.execute("UPDATE webhook_deliveries SET status = 'failed'")
    assert (await clean.client.post(f"{base}/test")).status_code == 202


async def test_a_disabled_endpoint_gets_a_test_event_but_no_replay(clean: Hooks) -> None:
    endpoint = await clean.endpoint("http://127.0.0.1:9/")
    base = f"/workspaces/{clean.workspace_id}/webhooks/{endpoint['id']}"
    sent = await clean.client.post(f"{base}/test")
    assert sent.status_code == 202, sent.text
    disabled = await clean.client.patch(base, json={"enabled": False})
    assert disabled.status_code == 200, disabled.text
    replay = await clean.client.post(f"{base}/deliveries/{sent.json()['delivery_id']}/replay")
    assert replay.status_code == 409, replay.text
    assert replay.json()["type"].endswith("/problems/conflict")
    assert "disabled" in replay.json()["detail"]
    assert (await clean.client.post(f"{base}/test")).status_code == 202
    (waiting,) = await clean.rows("SELECT count(*) FROM webhook_deliveries")
    assert waiting[0] == 2
