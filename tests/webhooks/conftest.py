"""The live app on the module's own database (real commits), with no worker of its own:
each test drives delivery workers itself against a receiver on 127.0.0.1."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from ipaddress import ip_network
from typing import Any

import pytest_asyncio
from httpx import AsyncClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from taskmanager.config import Settings
from taskmanager.database import create_engine, create_session_factory
from taskmanager.integrations.outbound import OutboundClient, OutboundPolicy
from taskmanager.integrations.webhooks import WebhookSender
from taskmanager.outbox.webhooks import DeliveryPolicy, WebhookWorker
from taskmanager.security.webhook_secrets import WebhookSecretKey
from tests.support.accounts import TEST_SECRET, register_and_login
from tests.support.databases import TEST_KEY
from tests.support.live_app import live_client, observer_engine

POLICY = OutboundPolicy(allow_http=True, allowed_networks=(ip_network("127.0.0.1/32"),))
LIVE_SETTINGS: dict[str, Any] = {
    "in_process_worker": False,
    "outbound_allow_http": True,
    "outbound_allowed_networks": ["127.0.0.1/32"],
}


@dataclass
class Hooks:
    """The live app (logged in as its workspace's owner), an observer past every policy,
    and delivery workers for the module's database."""

    client: AsyncClient
    workspace_id: int
    observer: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    outbound: OutboundClient

    def worker(self, **policy: Any) -> WebhookWorker:
        rules: dict[str, Any] = {
            "schedule": (0.0, 0.2, 0.2),
            "jitter": 0.0,
            "poll_seconds": 0.1,
            "timeout_seconds": 2.0,
            "lease_seconds": 30.0,
            "disable_after_seconds": 5 * 86400.0,
        } | policy
        sender = WebhookSender(self.outbound, rules["timeout_seconds"])
        return WebhookWorker(
            self.sessions, TEST_KEY, sender, WebhookSecretKey(TEST_SECRET), DeliveryPolicy(**rules)
        )

    async def rows(self, sql: str, **params: Any) -> list[Any]:
        async with self.observer.connect() as connection:
            return list((await connection.execute(text(sql), params)).all())

    async def execute(self, sql: str, **params: Any) -> None:
        async with self.observer.begin() as connection:
            await connection.execute(text(sql), params)

    async def endpoint(self, url: str, events: list[str] | None = None) -> dict[str, Any]:
        response = await self.client.post(
            f"/workspaces/{self.workspace_id}/webhooks",
            json={"url": url, "events": events or ["task.created"], "description": "test"},
        )
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        return body

    async def task(self, title: str) -> dict[str, Any]:
        response = await self.client.post(
            "/tasks", json={"title": title, "workspace_id": self.workspace_id}
        )
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        return body


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def hooks(own_database_url: str) -> AsyncIterator[Hooks]:
    settings = Settings(database_url=own_database_url, jwt_secret=TEST_SECRET)
    engine = create_engine(settings, own_database_url)
    async with (
        live_client(own_database_url, **LIVE_SETTINGS) as client,
        observer_engine(own_database_url) as observer,
        OutboundClient(POLICY) as outbound,
    ):
        client.headers.update(await register_and_login(client, "hooks@example.com"))
        made = await client.post("/workspaces", json={"name": "hooked"})
        assert made.status_code == 201, made.text
        try:
            yield Hooks(
                client, made.json()["id"], observer, create_session_factory(engine), outbound
            )
        finally:
            await engine.dispose()


@pytest_asyncio.fixture(loop_scope="session")
async def clean(hooks: Hooks) -> Hooks:
    """Each test starts without endpoints (and so without deliveries)."""
    await hooks.execute("DELETE FROM webhook_endpoints")
    return hooks
