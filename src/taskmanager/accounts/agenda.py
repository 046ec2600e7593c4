"""The agenda, and the service side of calendar subscriptions: "external API data with
database data, both through their own repositories" (the lecture's Week 8).

The database side: the caller's due tasks (TaskRepository) and the subscriptions of their
workspaces, with each one's stored state (CalendarSubscriptionRepository), both under the
caller's Scope and row-level security. The external side: the feeds (SubscribedCalendars), asked
only for the subscriptions the database showed the caller, so nothing about a feed is
authorized by the cache or by the feed. This module puts the two together, sorted by time;
the route only says what it wants.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from taskmanager.integrations.subscribed_calendars import (
    Feed,
    FeedState,
    FeedView,
    Persist,
    SubscribedCalendars,
)
from taskmanager.models import CalendarSubscription
from taskmanager.repositories.calendar_subscription_repository import (
    CalendarFetchRepository,
    CalendarSubscriptionRepository,
    FetchRecord,
)
from taskmanager.repositories.task_repository import TaskRepository
from taskmanager.repositories.user_repository import UserRepository
from taskmanager.schemas import AgendaItem, AgendaResponse, CalendarResponse, CalendarStatus
from taskmanager.security.caller_key import CallerKey

# The most tasks one agenda lists (soonest first); `tasks_truncated` says when there were
# more.
AGENDA_MAX_TASKS = 1000


def feed_of(subscription: CalendarSubscription, *, with_events: bool) -> Feed:
    """The subscription as the feeds see it: its id, URL and the state its row holds."""
    events = subscription.events if with_events else None
    return Feed(
        subscription.id,
        subscription.url,
        FeedState(
            url=subscription.url,
            etag=subscription.etag,
            last_modified=subscription.last_modified,
            fetched_at=subscription.last_fetched_at,
            success_at=subscription.last_success_at,
            error=subscription.last_error,
            failures=subscription.consecutive_failures,
            skip_until=subscription.skip_until,
            events=tuple(events) if events is not None else None,
        ),
    )


def status_of(subscription: CalendarSubscription, view: FeedView) -> CalendarStatus:
    state = view.state
    return CalendarStatus(
        calendar_id=subscription.id,
        workspace_id=subscription.workspace_id,
        name=subscription.name,
        status=view.status,
        as_of=state.success_at,
        error=state.error,
        consecutive_failures=state.failures,
        skipped_until=state.skip_until,
        event_count=len(state.events or ()),
        truncated=state.truncated,
    )


def calendar_response(subscription: CalendarSubscription, view: FeedView) -> CalendarResponse:
    return CalendarResponse(
        id=subscription.id,
        workspace_id=subscription.workspace_id,
        url=subscription.url,
        name=subscription.name,
        created_by=subscription.created_by,
        created_at=subscription.created_at,
        feed=status_of(subscription, view),
    )


def stored_view(subscription: CalendarSubscription, feeds: SubscribedCalendars) -> FeedView:
    """The feed's view from what its row holds alone (no fetch), for lists."""
    feed = feed_of(subscription, with_events=False)
    return feeds.view_of(feed)


def _events_in(
    subscription: CalendarSubscription, view: FeedView, start: datetime, end: datetime
) -> list[AgendaItem]:
    items = []
    for event in view.state.events or ():
        begins = datetime.fromisoformat(event["start"])
        ends = datetime.fromisoformat(event["end"]) if event.get("end") else None
        # In the window if it overlaps it; an event without an end is an instant.
        finish = ends if ends is not None and ends > begins else None
        if begins >= end or (finish <= start if finish is not None else begins < start):
            continue
        items.append(
            AgendaItem(
                source="calendar",
                start=begins,
                end=ends,
                all_day=bool(event.get("all_day")),
                title=str(event.get("summary") or ""),
                workspace_id=subscription.workspace_id,
                calendar_id=subscription.id,
                uid=event.get("uid"),
                location=event.get("location"),
            )
        )
    return items


@dataclass(frozen=True, slots=True)
class Agenda:
    """The caller's agenda, from their repositories and the feeds."""

    tasks: TaskRepository
    subscriptions: CalendarSubscriptionRepository
    feeds: SubscribedCalendars

    async def between(
        self, start: datetime, end: datetime, workspace_id: int | None = None
    ) -> AgendaResponse:
        """The due tasks and the subscribed calendars' events in [start, end), by start
        time (tasks before events at the same moment), and each feed's status. A
        `workspace_id` the caller is no member of is an empty agenda (as one with
        nothing in it)."""
        if workspace_id is not None and not self.tasks.scope.can_see(workspace_id):
            return AgendaResponse.model_validate(
                {"from": start, "to": end, "items": [], "calendars": [], "tasks_truncated": False}
            )
        due = await self.tasks.due_between(
            start, end, workspace_id=workspace_id, limit=AGENDA_MAX_TASKS + 1
        )
        subscriptions = await self.subscriptions.list_with_events(workspace_id)
        # The database has said all it will: no transaction nor pooled connection is held
        # while the feeds are waited for (up to the agenda's budget).
        await self.subscriptions.end_reading()
        views = await self.feeds.current(
            [feed_of(s, with_events=True) for s in subscriptions],
            budget=self.feeds.limits.agenda_budget_seconds,
        )
        items = [
            AgendaItem(
                source="task",
                start=task.due_at,
                end=None,
                all_day=False,
                title=task.title,
                workspace_id=task.workspace_id,
                task_id=task.id,
                completed=task.completed,
            )
            for task in due[:AGENDA_MAX_TASKS]
            if task.due_at is not None
        ]
        for subscription in subscriptions:
            items += _events_in(subscription, views[subscription.id], start, end)
        items.sort(key=_order)
        return AgendaResponse.model_validate(
            {
                "from": start,
                "to": end,
                "items": items,
                "calendars": [status_of(s, views[s.id]) for s in subscriptions],
                "tasks_truncated": len(due) > AGENDA_MAX_TASKS,
            }
        )


def _order(item: AgendaItem) -> tuple[Any, ...]:
    return (
        item.start,
        item.source != "task",
        item.task_id or 0,
        item.calendar_id or 0,
        item.uid or "",
    )


def database_persist(session_factory: async_sessionmaker[AsyncSession], key: CallerKey) -> Persist:
    """What SubscribedCalendars calls to store a fetch's outcome in the subscription's row: a
    short transaction of its own, entered for 'maintenance' (the one caller the policy
    lets write the fetch state)."""

    async def persist(subscription_id: int, state: FeedState) -> None:
        record = FetchRecord(
            subscription_id=subscription_id,
            url=state.url,
            fetched_at=state.fetched_at or datetime.now().astimezone(),
            etag=state.etag,
            last_modified=state.last_modified,
            last_success_at=state.success_at,
            last_error=state.error,
            consecutive_failures=state.failures,
            skip_until=state.skip_until,
            events=_kept(state.events),
        )
        try:
            async with session_factory() as session, session.begin():
                await UserRepository(session).enter(key.entry("maintenance"))
                await CalendarFetchRepository(session).record_fetch(record)
        except (SQLAlchemyError, OSError) as exc:
            raise RuntimeError(f"the database did not store it ({type(exc).__name__})") from exc

    return persist


def _kept(events: Sequence[dict[str, Any]] | None) -> Sequence[dict[str, Any]] | None:
    return list(events) if events is not None else None
