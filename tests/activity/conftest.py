"""The activity log's tests: accounts committed once per run, a workspace of alice's with
something of each kind in it (made through the API), and the log's rows as stored."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

import pytest_asyncio
from httpx import AsyncClient
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from taskmanager.models import Activity, Invitation
from tests.support.accounts import Account, create_account
from tests.support.invitations import add_member, invite


@pytest_asyncio.fixture(scope="session")
async def viewer_account(engine: AsyncEngine) -> Account:
    """A member of alice's workspace in the world below: reads its activity."""
    return await create_account(engine, "vera.activity@example.com")


@pytest_asyncio.fixture(scope="session")
async def second_member_account(engine: AsyncEngine) -> Account:
    """Another member of that workspace: the one the sweep removes."""
    return await create_account(engine, "sam.activity@example.com")


@pytest_asyncio.fixture(scope="session")
async def outsider_account(engine: AsyncEngine) -> Account:
    """Belongs to none of alice's workspaces: added by the sweep, never a reader."""
    return await create_account(engine, "olga.activity@example.com")


@dataclass(frozen=True)
class World:
    """alice's workspace (vera and sam members) with a category, a label and a task that
    carries both."""

    owner: Account
    viewer: Account
    member: Account
    outsider: Account
    workspace_id: int
    task_id: int
    category_id: int
    label_id: int
    # The account a registration in the sweep made (its id, its personal workspace): the
    # answer (202) names neither, so the sweep looks it up.
    new_account: tuple[int, int] | None = None
    # A pending invitation of the outsider's, where a test made one (`invited_world`).
    invitation_id: str | None = None
    # A webhook endpoint of the workspace, and the delivery of the task's creation to it.
    webhook_id: str | None = None
    delivery_id: str | None = None
    # alice's calendar feed of the workspace, and the workspace's subscribed calendar.
    feed_id: str | None = None
    calendar_id: int | None = None

    def ids(self) -> dict[str, int | str]:
        ids: dict[str, int | str] = {
            "workspace_id": self.workspace_id,
            "task_id": self.task_id,
            "category_id": self.category_id,
            "label_id": self.label_id,
            "user_id": self.member.user_id,
        }
        if self.invitation_id is not None:
            ids["invitation_id"] = self.invitation_id
        if self.webhook_id is not None and self.delivery_id is not None:
            ids |= {"webhook_id": self.webhook_id, "delivery_id": self.delivery_id}
        if self.feed_id is not None and self.calendar_id is not None:
            ids |= {"feed_id": self.feed_id, "calendar_id": self.calendar_id}
        return ids


@pytest_asyncio.fixture
async def world(
    client: AsyncClient,
    account: Account,
    viewer_account: Account,
    second_member_account: Account,
    outsider_account: Account,
) -> World:
    async def post(url: str, body: dict[str, Any]) -> dict[str, Any]:
        response = await client.post(url, json=body, headers=account.headers)
        assert response.status_code == 201, response.text
        made: dict[str, Any] = response.json()
        return made

    workspace_id = (await post("/workspaces", {"name": "Activity"}))["id"]
    for invitee in (viewer_account, second_member_account):
        await add_member(
            client, workspace_id, invitee.email, invitee.headers, inviter=account.headers
        )
    webhook = await post(
        f"/workspaces/{workspace_id}/webhooks",
        {"url": "http://127.0.0.1:9/activity", "events": ["task.created"]},
    )
    category = await post("/categories", {"name": "Errands", "workspace_id": workspace_id})
    label = await post("/labels", {"name": "soon", "workspace_id": workspace_id})
    task = await post(
        "/tasks",
        {
            "title": "Buy milk",
            "workspace_id": workspace_id,
            "category_id": category["id"],
            "label_ids": [label["id"]],
        },
    )
    feed = await post("/calendar/feeds", {"workspace_id": workspace_id})
    calendar = await post(
        f"/workspaces/{workspace_id}/calendars",
        {"url": "http://127.0.0.1:9/activity.ics", "name": "Activity"},
    )
    (delivery,) = (
        await client.get(
            f"/workspaces/{workspace_id}/webhooks/{webhook['id']}/deliveries",
            headers=account.headers,
        )
    ).json()
    return World(
        owner=account,
        viewer=viewer_account,
        member=second_member_account,
        outsider=outsider_account,
        workspace_id=workspace_id,
        task_id=task["id"],
        category_id=category["id"],
        label_id=label["id"],
        webhook_id=webhook["id"],
        delivery_id=delivery["id"],
        feed_id=feed["id"],
        calendar_id=calendar["id"],
    )


async def last_activity_id(db_session: AsyncSession) -> int:
    """The newest row's id (0 for none), as stored (the test's superuser sees every row)."""
    return int(
        (await db_session.execute(select(func.coalesce(func.max(Activity.id), 0)))).scalar_one()
    )


async def activity_after(db_session: AsyncSession, after: int) -> list[Activity]:
    """The rows written since the row `after`, oldest first."""
    db_session.expunge_all()
    rows = await db_session.scalars(
        select(Activity).where(Activity.id > after).order_by(Activity.id)
    )
    return list(rows.all())


@pytest_asyncio.fixture
async def invited_world(client: AsyncClient, db_session: AsyncSession, world: World) -> World:
    """The world, and alice's pending invitation of olga (the outsider) as a member, last
    mailed an hour ago (so it may be mailed again)."""
    invitation = await invite(
        client, world.workspace_id, world.outsider.email, inviter=world.owner.headers
    )
    await db_session.execute(
        update(Invitation)
        .where(Invitation.id == uuid.UUID(invitation["id"]))
        .values(last_sent_at=func.now() - timedelta(hours=1))
    )
    return replace(world, invitation_id=invitation["id"])
