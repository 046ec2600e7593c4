"""Calendar subscriptions of a workspace, and the agenda: HTTP only.

A subscription is added and removed by a role that may write in the workspace (tasks:write;
403 for a viewer), read by any member; a workspace the caller is no member of is 404. The
URL is checked before it is stored (422 naming `body.url`), and again before every
connection the fetcher makes.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, Request, Response, status

from taskmanager.accounts.agenda import calendar_response, feed_of, stored_view
from taskmanager.bad_input import BadInputError
from taskmanager.dependencies import (
    AgendaDep,
    CalendarReaderDep,
    CalendarRepositoryDep,
    SubscribedCalendarsDep,
    token_scope,
)
from taskmanager.integrations.outbound import UnsafeDestination
from taskmanager.integrations.subscribed_calendars import RefreshTooSoonError
from taskmanager.models import CalendarSubscription
from taskmanager.openapi import problem_responses, response_headers
from taskmanager.problems import TOO_MANY_REFRESHES, ProblemError
from taskmanager.repositories.calendar_subscription_repository import (
    CalendarSubscriptionRepository,
)
from taskmanager.routes.permissions import require
from taskmanager.schemas import INT4_MAX, AgendaResponse, CalendarCreate, CalendarResponse
from taskmanager.security.access_tokens import TokenScope
from taskmanager.security.roles import Action

router = APIRouter(tags=["calendar"])
agenda_router = APIRouter(tags=["agenda"])

WorkspaceId = Annotated[int, Path(ge=1, le=INT4_MAX, description="The workspace's id.")]
CalendarId = Annotated[int, Path(ge=1, le=INT4_MAX, description="The calendar subscription's id.")]
NOT_FOUND = "Calendar not found"
WORKSPACE_NOT_FOUND = "Workspace not found"
# The longest window an agenda covers.
AGENDA_MAX_SPAN = timedelta(days=92)


@router.post(
    "/workspaces/{workspace_id}/calendars",
    response_model=CalendarResponse,
    status_code=status.HTTP_201_CREATED,
    responses={
        201: {"headers": response_headers("Location")},
        **problem_responses(401, 403, 404, 409, 413, 422, 503),
    },
    openapi_extra=token_scope(TokenScope.TASKS_WRITE),
)
async def create_calendar(
    workspace_id: WorkspaceId,
    body: CalendarCreate,
    repo: CalendarRepositoryDep,
    feeds: SubscribedCalendarsDep,
    request: Request,
    response: Response,
) -> CalendarResponse:
    """Subscribe the workspace to an iCalendar feed (403 for a viewer; 409 for a URL it
    has already, or past the workspace's limit). Its events show in the agenda of every
    member from the first agenda that fetches it."""
    require(repo.scope, workspace_id, Action.TASKS_WRITE, WORKSPACE_NOT_FOUND)
    try:
        url = feeds.client.check_url(body.url)
    except UnsafeDestination as error:
        raise BadInputError("body.url", error.reason) from None
    limit = request.app.state.settings.max_calendars_per_workspace
    subscription = await repo.create(workspace_id, url, body.name, limit=limit)
    response.headers["Location"] = str(request.url_for("list_calendars", workspace_id=workspace_id))
    return calendar_response(subscription, stored_view(subscription, feeds))


@router.get(
    "/workspaces/{workspace_id}/calendars",
    response_model=list[CalendarResponse],
    responses=problem_responses(401, 404, 422, 503),
    openapi_extra=token_scope(TokenScope.TASKS_READ),
)
async def list_calendars(
    workspace_id: WorkspaceId, repo: CalendarReaderDep, feeds: SubscribedCalendarsDep
) -> list[CalendarResponse]:
    """The workspace's calendar subscriptions, oldest first, each with how its feed
    stands as this server knows it (no fetch)."""
    require(repo.scope, workspace_id, Action.TASKS_READ, WORKSPACE_NOT_FOUND)
    return [
        calendar_response(subscription, stored_view(subscription, feeds))
        for subscription in await repo.list_in_workspace(workspace_id)
    ]


@router.delete(
    "/workspaces/{workspace_id}/calendars/{calendar_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=problem_responses(401, 403, 404, 422, 503),
    openapi_extra=token_scope(TokenScope.TASKS_WRITE),
)
async def delete_calendar(
    workspace_id: WorkspaceId, calendar_id: CalendarId, repo: CalendarRepositoryDep
) -> None:
    """Unsubscribe (403 for a viewer): its events leave every agenda."""
    await repo.delete(await _subscription(repo, workspace_id, calendar_id, Action.TASKS_WRITE))


@router.post(
    "/workspaces/{workspace_id}/calendars/{calendar_id}/refresh",
    response_model=CalendarResponse,
    responses={
        429: {"headers": response_headers("Retry-After")},
        **problem_responses(401, 403, 404, 422, 429, 503),
    },
    openapi_extra=token_scope(TokenScope.TASKS_WRITE),
)
async def refresh_calendar(
    workspace_id: WorkspaceId,
    calendar_id: CalendarId,
    repo: CalendarReaderDep,
    feeds: SubscribedCalendarsDep,
) -> CalendarResponse:
    """Fetch the feed now, even while it is skipped for failing (403 for a viewer); how
    it stands after (a feed that fails is a 200 saying so, with its last good copy still
    served). One manual refresh per feed every few seconds (429 with Retry-After)."""
    subscription = await _subscription(
        repo, workspace_id, calendar_id, Action.TASKS_WRITE, with_events=True
    )
    # The request changes no row (the fetcher records the outcome in a transaction of its
    # own): its read transaction and connection end before the fetch's seconds.
    await repo.end_reading()
    try:
        view = await feeds.refresh(feed_of(subscription, with_events=True))
    except RefreshTooSoonError as error:
        problem = TOO_MANY_REFRESHES.problem(
            f"this calendar was refreshed moments ago; try again in {error.wait} seconds"
        )
        raise ProblemError(problem, headers={"Retry-After": str(error.wait)}) from None
    return calendar_response(subscription, view)


async def _subscription(
    repo: CalendarSubscriptionRepository,
    workspace_id: int,
    calendar_id: int,
    action: Action,
    *,
    with_events: bool = False,
) -> CalendarSubscription:
    """The subscription, if the caller sees it (else 404) and may do `action` (else 403)."""
    subscription = await repo.get_by_id(workspace_id, calendar_id, with_events=with_events)
    if subscription is None:
        raise HTTPException(status_code=404, detail=NOT_FOUND)
    require(repo.scope, subscription.workspace_id, action, NOT_FOUND)
    return subscription


@agenda_router.get(
    "/agenda",
    response_model=AgendaResponse,
    responses=problem_responses(401, 422, 503),
    openapi_extra=token_scope(TokenScope.TASKS_READ),
)
async def get_agenda(
    agenda: AgendaDep,
    start: Annotated[
        datetime,
        Query(
            alias="from",
            description="The window's start (ISO 8601 with a time zone).",
            examples=["2026-12-01T00:00:00Z"],
        ),
    ],
    end: Annotated[
        datetime,
        Query(
            alias="to",
            description="The window's end, after `from`, at most 92 days later.",
            examples=["2026-12-31T00:00:00Z"],
        ),
    ],
    workspace_id: Annotated[
        int | None, Query(ge=1, le=INT4_MAX, description="Only this workspace's.")
    ] = None,
) -> AgendaResponse:
    """Your due tasks (in every workspace you belong to) and the events of your
    workspaces' subscribed calendars between `from` and `to`, by start time, each saying
    its `source`; and how each feed stands (`fresh`, `stale` with `as_of`, or `failing`
    with its error and until when it is skipped). A slow or failing feed never delays the
    answer beyond a short budget: its last good copy is served and marked."""
    for name, value in (("query.from", start), ("query.to", end)):
        if value.tzinfo is None:
            raise BadInputError(name, "give a time zone (e.g. Z or +01:00)")
    if end <= start:
        raise BadInputError("query.to", "must be after `from`")
    if end - start > AGENDA_MAX_SPAN:
        raise BadInputError("query.to", f"at most {AGENDA_MAX_SPAN.days} days after `from`")
    return await agenda.between(start, end, workspace_id)
