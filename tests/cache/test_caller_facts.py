"""What the cache keeps about callers ends with the change that ends it: logging out
everywhere, a new password, leaving or being removed from a workspace, a role changed,
ownership handed over, a workspace deleted, an invitation accepted, a token revoked. Each
is effective on the very next request, and afterwards no valid cached fact contradicts
the database (tests/support/cache_facts.py)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from httpx import AsyncClient
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support.accounts import PASSWORD, login, register_and_login
from tests.support.cache_facts import stale_caller_facts
from tests.support.invitations import add_member, verify_address
from tests.support.live_app import app_of, cached_live_client
from tests.support.mail import eml_token

pytestmark = pytest.mark.asyncio(loop_scope="session")

_numbers = iter(range(1_000_000))


class World:
    """A live app with the cache on, an owner's shared workspace with a task, and a
    member in it, each logged in; every caller's facts cached before the change."""

    def __init__(self, client: AsyncClient, redis_url: str, database_url: str) -> None:
        self.client = client
        self.redis_url = redis_url
        self.database_url = database_url
        self.namespace: str = app_of(client).state.cache.namespace

    async def account(self) -> tuple[str, dict[str, str]]:
        email = f"facts{next(_numbers)}@example.com"
        return email, await register_and_login(self.client, email)

    async def setup(self) -> None:
        self.owner_email, self.owner = await self.account()
        self.member_email, self.member = await self.account()
        made = await self.client.post("/workspaces", json={"name": "Team"}, headers=self.owner)
        self.workspace = made.json()["id"]
        await verify_address(self.database_url, self.member_email)
        await add_member(
            self.client, self.workspace, self.member_email, self.member, inviter=self.owner
        )
        created = await self.client.post(
            "/tasks",
            json={"title": "Team task", "workspace_id": self.workspace},
            headers=self.owner,
        )
        assert created.status_code == 201, created.text
        self.task = created.json()["id"]
        self.member_id = (await self.client.get("/users/me", headers=self.member)).json()["id"]
        await self.warm(self.owner, self.member)

    async def warm(self, *callers: dict[str, str]) -> None:
        """Each caller's facts, the task and their first page in the cache."""
        for headers in callers:
            for _ in range(2):
                assert (
                    await self.client.get(f"/tasks/{self.task}", headers=headers)
                ).status_code == 200
                assert (await self.client.get("/tasks", headers=headers)).status_code == 200

    async def read(self, headers: dict[str, str]) -> int:
        return (await self.client.get(f"/tasks/{self.task}", headers=headers)).status_code

    async def listed(self, headers: dict[str, str]) -> list[int]:
        page = await self.client.get("/tasks", headers=headers)
        assert page.status_code == 200, page.text
        return [task["id"] for task in page.json()]


@pytest_asyncio.fixture(loop_scope="session")
async def world(
    own_database_url: str, redis_url: str, observer: AsyncEngine
) -> AsyncIterator[World]:
    async with cached_live_client(own_database_url, redis_url) as client:
        made = World(client, redis_url, own_database_url)
        await made.setup()
        yield made
        assert await stale_caller_facts(redis_url, made.namespace, observer) == []


async def test_the_warm_world_has_cached_facts_that_hold(
    world: World, observer: AsyncEngine
) -> None:
    from redis.asyncio import Redis

    async with Redis.from_url(world.redis_url) as redis:
        cached = [key async for key in redis.scan_iter(match=f"{world.namespace}:caller:*")]
    assert len(cached) >= 2, "the checks below must have facts to find"
    assert await stale_caller_facts(world.redis_url, world.namespace, observer) == []


async def test_logging_out_everywhere_ends_every_cached_login(world: World) -> None:
    second = await login(world.client, world.member_email)
    await world.warm(second)

    assert (await world.client.post("/auth/logout-all", headers=world.member)).status_code == 204

    assert await world.read(world.member) == 401
    assert await world.read(second) == 401


async def test_a_new_password_ends_the_other_cached_logins(world: World) -> None:
    other = await login(world.client, world.member_email)
    await world.warm(other)

    changed = await world.client.patch(
        "/users/me",
        json={"current_password": PASSWORD, "password": "a brand new password"},
        headers=world.member,
    )

    assert changed.status_code == 200, changed.text
    assert await world.read(other) == 401
    assert await world.read(world.member) == 200  # the login that changed it goes on


async def test_leaving_a_workspace_ends_its_cached_reads(world: World) -> None:
    left = await world.client.delete(
        f"/workspaces/{world.workspace}/members/{world.member_id}", headers=world.member
    )

    assert left.status_code == 204, left.text
    assert await world.read(world.member) == 404
    assert world.task not in await world.listed(world.member)


async def test_a_removed_member_is_refused_at_once(world: World) -> None:
    removed = await world.client.delete(
        f"/workspaces/{world.workspace}/members/{world.member_id}", headers=world.owner
    )

    assert removed.status_code == 204, removed.text
    assert await world.read(world.member) == 404
    assert world.task not in await world.listed(world.member)
    assert await world.read(world.owner) == 200


async def test_a_role_change_is_the_role_of_the_very_next_request(world: World) -> None:
    demoted = await world.client.patch(
        f"/workspaces/{world.workspace}/members/{world.member_id}",
        json={"role": "viewer"},
        headers=world.owner,
    )
    assert demoted.status_code == 200, demoted.text

    write = await world.client.patch(
        f"/tasks/{world.task}", json={"title": "A viewer's edit"}, headers=world.member
    )
    assert write.status_code == 403, write.text
    assert await world.read(world.member) == 200  # a viewer still reads


async def test_handing_over_a_workspace_changes_both_callers_at_once(world: World) -> None:
    handed = await world.client.post(
        f"/workspaces/{world.workspace}/transfer",
        json={"user_id": world.member_id},
        headers=world.owner,
    )
    assert handed.status_code == 200, handed.text

    renamed = await world.client.patch(
        f"/workspaces/{world.workspace}", json={"name": "Mine now"}, headers=world.member
    )
    assert renamed.status_code == 200, renamed.text


async def test_a_deleted_workspace_is_gone_for_every_member_at_once(world: World) -> None:
    deleted = await world.client.delete(f"/workspaces/{world.workspace}", headers=world.owner)

    assert deleted.status_code == 204, deleted.text
    assert await world.read(world.member) == 404
    assert await world.read(world.owner) == 404
    assert world.task not in await world.listed(world.member)


async def test_joining_a_workspace_shows_its_tasks_at_once(world: World) -> None:
    newcomer_email, newcomer = await world.account()
    await world.warm(world.owner)
    for _ in range(2):
        assert (await world.client.get("/tasks", headers=newcomer)).status_code == 200
    assert await world.read(newcomer) == 404

    await verify_address(world.database_url, newcomer_email)
    await add_member(world.client, world.workspace, newcomer_email, newcomer, inviter=world.owner)

    assert await world.read(newcomer) == 200
    assert world.task in await world.listed(newcomer)


async def test_a_revoked_access_token_is_refused_at_once(world: World) -> None:
    made = await world.client.post(
        "/users/me/tokens", json={"name": "script", "scopes": ["tasks:read"]}, headers=world.member
    )
    assert made.status_code == 201, made.text
    token: dict[str, Any] = made.json()
    script = {"Authorization": f"Bearer {token['token']}"}
    for _ in range(2):
        assert await world.read(script) == 200

    revoked = await world.client.delete(f"/users/me/tokens/{token['id']}", headers=world.member)

    assert revoked.status_code == 204, revoked.text
    assert await world.read(script) == 401


@pytest.mark.parametrize("change", ["logout", "logout-all"])
async def test_the_facts_of_a_login_that_ended_are_never_valid_again(
    world: World, observer: AsyncEngine, change: str
) -> None:
    assert (await world.client.post(f"/auth/{change}", headers=world.owner)).status_code == 204

    assert await stale_caller_facts(world.redis_url, world.namespace, observer) == []
    assert await world.read(world.owner) == 401


async def test_a_password_reset_ends_every_cached_login(world: World) -> None:
    """A reset by mail (no login needed, so no writer to void the cache): the stolen token
    of the account it resets stops reading at once."""
    asked = await world.client.post("/auth/password-reset", json={"email": world.member_email})
    assert asked.status_code == 202, asked.text
    token = await asyncio.to_thread(
        eml_token,
        Path(os.environ["TASKMANAGER_MAIL_DIR"]),
        world.member_email,
        "Reset your password",
    )

    reset = await world.client.post(
        "/auth/password-reset/confirm", json={"token": token, "new_password": "a reset password"}
    )

    assert reset.status_code == 204, reset.text
    assert await world.read(world.member) == 401
    assert (await world.client.get("/tasks", headers=world.member)).status_code == 401
