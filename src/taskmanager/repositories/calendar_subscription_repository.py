"""CalendarSubscriptionRepository: a workspace's calendar subscriptions, and the fetch
state the service's fetcher records for them. Flushes, never commits.

The rows are read within the caller's Scope (any member reads; row-level security hides
the rest) and added or removed where the caller's role may write (migration 0016). The
fetch state is written only in a transaction entered for 'maintenance': `record_fetch`
is the fetcher's (taskmanager.integrations.subscribed_calendars), and `claim_due` the
background refresher's (taskmanager.outbox.calendar_refresher), never a request's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Float, bindparam, cast, func, insert, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import undefer

from taskmanager.database import end_read_session
from taskmanager.models import CalendarSubscription
from taskmanager.repositories.array_parameters import scope_parameters, scoped
from taskmanager.security.scope import Scope

_BY_ID = select(CalendarSubscription).where(
    CalendarSubscription.id == bindparam("subscription_id"),
    CalendarSubscription.workspace_id == bindparam("workspace_id"),
    scoped(CalendarSubscription.workspace_id),
)
_BY_ID_WITH_EVENTS = _BY_ID.options(undefer(CalendarSubscription.events))
_IN_WORKSPACE = (
    select(CalendarSubscription)
    .where(
        CalendarSubscription.workspace_id == bindparam("workspace_id"),
        scoped(CalendarSubscription.workspace_id),
    )
    .order_by(CalendarSubscription.id)
)
# Every subscription of the caller's workspaces, with its last good copy of events.
_WITH_EVENTS = (
    select(CalendarSubscription)
    .options(undefer(CalendarSubscription.events))
    .where(scoped(CalendarSubscription.workspace_id))
    .order_by(CalendarSubscription.workspace_id, CalendarSubscription.id)
)
# As invitations and members do: additions to one workspace queue on its row (any member may
# lock it, 0010), but not the foreign-key checks of rows that refer to it.
_LOCK_WORKSPACE = text("SELECT id FROM workspaces WHERE id = :workspace_id FOR NO KEY UPDATE")
_COUNT_IN_WORKSPACE = (
    select(func.count())
    .select_from(CalendarSubscription)
    .where(CalendarSubscription.workspace_id == bindparam("workspace_id"))
)


class CalendarLimitError(Exception):
    """The workspace has as many subscriptions as it may."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"a workspace may subscribe to at most {limit} calendars")
        self.limit = limit


class CalendarSubscriptionRepository:
    """A workspace's calendar subscriptions, within the caller's Scope."""

    def __init__(self, session: AsyncSession, scope: Scope) -> None:
        self.session = session
        self.scope = scope
        self._in_scope = scope_parameters(scope)

    async def get_by_id(
        self, workspace_id: int, subscription_id: int, *, with_events: bool = False
    ) -> CalendarSubscription | None:
        """The subscription `subscription_id` of `workspace_id`, if the caller sees it (with
        its last good copy of events, if asked)."""
        parameters = {
            "subscription_id": subscription_id,
            "workspace_id": workspace_id,
            **self._in_scope,
        }
        stmt = _BY_ID_WITH_EVENTS if with_events else _BY_ID
        result = await self.session.execute(stmt, parameters)
        found: CalendarSubscription | None = result.scalar_one_or_none()
        return found

    async def list_in_workspace(self, workspace_id: int) -> list[CalendarSubscription]:
        """The workspace's subscriptions, oldest first."""
        parameters = {"workspace_id": workspace_id, **self._in_scope}
        result = await self.session.execute(_IN_WORKSPACE, parameters)
        return list(result.scalars().all())

    async def list_with_events(self, workspace_id: int | None = None) -> list[CalendarSubscription]:
        """Every subscription of the caller's workspaces (of one, if given), with the last
        good copy of its events (for the agenda)."""
        stmt = _WITH_EVENTS
        if workspace_id is not None:
            stmt = stmt.where(CalendarSubscription.workspace_id == workspace_id)
        result = await self.session.execute(stmt, self._in_scope)
        return list(result.scalars().all())

    async def end_reading(self) -> None:
        """Done with the database for this request (a read session's transaction ends and
        its connection goes back to the pool) before a wait on the network."""
        await end_read_session(self.session)

    async def create(
        self, workspace_id: int, url: str, name: str, *, limit: int
    ) -> CalendarSubscription:
        """A new subscription of `workspace_id` (the caller may write there: checked by the
        route, and by the policy); CalendarLimitError when the workspace has `limit`
        already; a URL the workspace has already fails the unique constraint (409). The
        workspace's row is locked first, so two additions cannot both pass the count."""
        await self.session.execute(_LOCK_WORKSPACE, {"workspace_id": workspace_id})
        count = (
            await self.session.execute(_COUNT_IN_WORKSPACE, {"workspace_id": workspace_id})
        ).scalar_one()
        if count >= limit:
            raise CalendarLimitError(limit)
        stmt = (
            insert(CalendarSubscription)
            .values(workspace_id=workspace_id, url=url, name=name, created_by=self.scope.user_id)
            .returning(CalendarSubscription)
        )
        created: CalendarSubscription = (await self.session.scalars(stmt)).one()
        return created

    async def delete(self, subscription: CalendarSubscription) -> None:
        await self.session.delete(subscription)
        await self.session.flush()


@dataclass(frozen=True, slots=True)
class FetchRecord:
    """How fetching one subscription went, as the fetcher records it."""

    subscription_id: int
    url: str
    fetched_at: datetime
    etag: str | None
    last_modified: str | None
    last_success_at: datetime | None
    last_error: str | None
    consecutive_failures: int
    skip_until: datetime | None
    # The last good copy (None: keep the stored one, e.g. after a failure or a 304).
    events: Sequence[dict[str, Any]] | None


def _seconds_ago(parameter: str) -> Any:
    """now() minus the seconds bound to `parameter` (PostgreSQL's clock: one for every
    process that claims)."""
    seconds = cast(bindparam(parameter), Float)
    return func.now() - func.make_interval(0, 0, 0, 0, 0, 0, seconds)


# The subscriptions whose copy is older than the refresh interval (or that were never
# fetched) and whose breaker is closed, oldest copy first, that no other refresher holds.
_DUE = (
    select(CalendarSubscription)
    .options(undefer(CalendarSubscription.events))
    .where(
        or_(
            CalendarSubscription.last_fetched_at.is_(None),
            CalendarSubscription.last_fetched_at <= _seconds_ago("refresh"),
        ),
        or_(
            CalendarSubscription.skip_until.is_(None),
            CalendarSubscription.skip_until <= func.now(),
        ),
    )
    .order_by(CalendarSubscription.last_fetched_at.asc().nulls_first(), CalendarSubscription.id)
    .limit(bindparam("batch"))
    .with_for_update(skip_locked=True)
)
# The lease: the claimed rows' last attempt is set to a moment that makes them due again
# `lease` seconds from now (at once due for nobody else; due again if this refresher dies
# before it records the fetch). The fetch's own record replaces it.
_LEASE = (
    update(CalendarSubscription)
    .where(CalendarSubscription.id.in_(bindparam("ids", expanding=True)))
    .values(last_fetched_at=_seconds_ago("held_back"))
    .execution_options(synchronize_session=False)
)


class CalendarFetchRepository:
    """The fetch state, for a transaction entered for 'maintenance' (only it passes the
    policy that lets the state change, and shows every workspace's subscriptions)."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def claim_due(
        self, batch: int, refresh_seconds: float, lease_seconds: float
    ) -> list[CalendarSubscription]:
        """Up to `batch` subscriptions due for a fetch (copy older than `refresh_seconds`,
        breaker closed) that no other transaction holds (SKIP LOCKED), leased to the
        caller for `lease_seconds`: until then no other claim returns them, once this
        transaction committed. The rows come back as they were before the lease (their
        last attempt, validators and last good copy), for the fetch to start from."""
        result = await self.session.execute(_DUE, {"batch": batch, "refresh": refresh_seconds})
        claimed = list(result.scalars().all())
        if claimed:
            # Leaves the loaded objects alone (synchronize_session=False): they keep the
            # state the fetch starts from.
            held_back = max(refresh_seconds - lease_seconds, 0.0)
            await self.session.execute(
                _LEASE, {"ids": [row.id for row in claimed], "held_back": held_back}
            )
        return claimed

    async def record_fetch(self, record: FetchRecord) -> bool:
        """Store how a fetch went, if the subscription still exists with that URL;
        whether it did."""
        values: dict[str, Any] = {
            "etag": record.etag,
            "last_modified": record.last_modified,
            "last_fetched_at": record.fetched_at,
            "last_success_at": record.last_success_at,
            "last_error": record.last_error,
            "consecutive_failures": record.consecutive_failures,
            "skip_until": record.skip_until,
        }
        if record.events is not None:
            values["events"] = list(record.events)
        stmt = (
            update(CalendarSubscription)
            .where(
                CalendarSubscription.id == record.subscription_id,
                CalendarSubscription.url == record.url,
            )
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        result = await self.session.execute(stmt)
        return bool(getattr(result, "rowcount", 0))
