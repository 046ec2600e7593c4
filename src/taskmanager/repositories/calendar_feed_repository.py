"""CalendarFeedRepository: a user's calendar feeds. Flushes only.

Listing, making, regenerating and deleting them is a login session's (the policies of
migration 0015 refuse any other caller); a feed's own caller (purpose 'calendar') sees
its own row only (`entered`)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import delete, func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from taskmanager.models import CalendarFeed, User, Workspace

# The entered caller's session: a calendar caller's is its feed's id (migration 0015).
_ENTERED_SESSION = text("NULLIF((taskmanager_caller())[2], '')::uuid")


@dataclass(frozen=True, slots=True)
class EnteredFeed:
    """The feed a calendar caller entered with."""

    feed: CalendarFeed
    # Its workspace's name; None for a feed of all its user's workspaces.
    workspace_name: str | None


class CalendarFeedRepository:
    """Encapsulates all database operations for calendar feeds."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def count(self, user_id: int) -> int:
        """How many feeds the user has, with the user's row locked until the transaction
        ends: two requests making feeds at once queue here, and the second counts what the
        first made."""
        await self.session.execute(
            select(User.id).where(User.id == user_id).with_for_update(key_share=True)
        )
        count = await self.session.scalar(
            select(func.count()).select_from(CalendarFeed).where(CalendarFeed.user_id == user_id)
        )
        return int(count or 0)

    async def create(
        self, *, user_id: int, workspace_id: int | None, secret_hash: str, prefix: str
    ) -> CalendarFeed:
        feed_id = uuid.uuid4()
        await self.session.execute(
            insert(CalendarFeed).values(
                id=feed_id,
                user_id=user_id,
                workspace_id=workspace_id,
                token_hash=secret_hash,
                prefix=prefix,
            )
        )
        return await self._get(feed_id)

    async def list_mine(self, user_id: int) -> Sequence[CalendarFeed]:
        """The user's feeds, newest first."""
        result = await self.session.scalars(
            select(CalendarFeed)
            .where(CalendarFeed.user_id == user_id)
            .order_by(CalendarFeed.created_at.desc(), CalendarFeed.id)
        )
        return result.all()

    async def regenerate(
        self, user_id: int, feed_id: uuid.UUID, *, secret_hash: str, prefix: str
    ) -> CalendarFeed | None:
        """Give one of the user's feeds a new secret (the old URL finds nothing from the
        commit on); None if they have no feed with this id."""
        result = await self.session.execute(
            update(CalendarFeed)
            .where(CalendarFeed.user_id == user_id, CalendarFeed.id == feed_id)
            .values(token_hash=secret_hash, prefix=prefix, regenerated_at=func.now())
            .returning(CalendarFeed.id)
        )
        if result.scalar_one_or_none() is None:
            return None
        return await self._get(feed_id)

    async def delete(self, user_id: int, feed_id: uuid.UUID) -> bool:
        """Delete one of the user's feeds; False if they have none with this id."""
        result = await self.session.execute(
            delete(CalendarFeed).where(CalendarFeed.user_id == user_id, CalendarFeed.id == feed_id)
        )
        return bool(getattr(result, "rowcount", 0))

    async def entered(self) -> EnteredFeed | None:
        """The feed a calendar caller entered with, and the name of its workspace if it is
        bound to one (None for any other caller)."""
        row = (
            await self.session.execute(
                select(CalendarFeed, Workspace.name)
                .outerjoin(Workspace, Workspace.id == CalendarFeed.workspace_id)
                .where(CalendarFeed.id == _ENTERED_SESSION)
            )
        ).first()
        return None if row is None else EnteredFeed(row[0], row[1])

    async def _get(self, feed_id: uuid.UUID) -> CalendarFeed:
        feed = await self.session.scalar(
            select(CalendarFeed)
            .where(CalendarFeed.id == feed_id)
            .execution_options(populate_existing=True)
        )
        if feed is None:
            raise LookupError(f"the calendar feed {feed_id} just written is not visible")
        return feed
