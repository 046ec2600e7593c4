"""Calendar feeds: a secret iCalendar URL of your tasks with due dates, for calendar apps.

Managing them (make one, list them, regenerate one's URL, delete one) is a login
session's: these operations name no token scope, so a personal access token gets 403
(taskmanager.dependencies), and the database refuses any caller but a login too
(migration 0015).

The feed itself (GET /calendar/{secret}.ics) takes no Authorization header (a calendar app
sends none): its secret is the credential, and it enters the transaction as the feed's
caller, which the database lets read tasks and nothing else, in the workspaces its user
belongs to at that moment (its own workspace only, for a workspace's feed). An unknown
secret (never made, regenerated, deleted, revoked by a password reset, its membership
gone) is a 404 like any path that does not exist. The secret is looked up by its SHA-256
through a unique index, never compared as text, so its answer's timing tells nothing about
how much of a guess was right; a valid secret's answer takes longer (it has a body), which
tells only its holder what they know already.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from fastapi import APIRouter, HTTPException, Path, Query, Request, Response, status

from taskmanager.accounts.callers import enter_with_feed
from taskmanager.bad_input import BadInputError
from taskmanager.config import Settings
from taskmanager.database import ReadSessionDep, SessionDep
from taskmanager.dependencies import CurrentReaderDep, CurrentUserDep
from taskmanager.feeds.ics import FeedOptions, calendar_of
from taskmanager.models import CalendarFeed
from taskmanager.observability.logs import current_request_id, user_id_var
from taskmanager.openapi import (
    PAGE_ETAG,
    not_modified_response,
    problem_responses,
    response_headers,
)
from taskmanager.problems import LIMIT_REACHED, ProblemError
from taskmanager.repositories.calendar_feed_repository import CalendarFeedRepository
from taskmanager.repositories.task_repository import TaskRepository
from taskmanager.routes.preconditions import IfNoneMatch, none_match
from taskmanager.schemas import CalendarFeedCreate, CalendarFeedCreated, CalendarFeedResponse
from taskmanager.security.feed_secrets import NewFeedSecret, feed_secret_hash, new_feed_secret
from taskmanager.security.feed_secrets import well_formed as well_formed_secret

router = APIRouter(prefix="/calendar", tags=["calendar"])

FeedId = Annotated[uuid.UUID, Path(description="The calendar feed's id.")]
NOT_FOUND = "Calendar feed not found"
FEED_MEDIA_TYPE = "text/calendar; charset=utf-8"


def feed_path(secret: str) -> str:
    """The path of a feed's URL (the middleware keeps it out of the logs)."""
    return f"/calendar/{secret}.ics"


def _created(request: Request, feed: CalendarFeed, issued: NewFeedSecret) -> CalendarFeedCreated:
    base = request.app.state.settings.public_base_url
    url = base + feed_path(issued.secret)
    shown = CalendarFeedResponse.model_validate(feed)
    return CalendarFeedCreated(
        **shown.model_dump(), url=url, webcal_url="webcal://" + url.split("://", 1)[1]
    )


@router.post(
    "/feeds",
    response_model=CalendarFeedCreated,
    status_code=status.HTTP_201_CREATED,
    responses={
        201: {"headers": response_headers("Location")},
        **problem_responses(401, 403, 409, 413, 422, 503),
    },
)
async def create_calendar_feed(
    body: CalendarFeedCreate,
    user: CurrentUserDep,
    session: SessionDep,
    request: Request,
    response: Response,
) -> CalendarFeedCreated:
    """Make a calendar feed: answered once with its secret `url` (only a hash of it is
    kept). With `workspace_id`, the tasks of that workspace only (and it stops when you
    leave it); without, those of every workspace you belong to. Needs a login (a personal
    access token gets 403). 409 when you have as many feeds as an account may."""
    if body.workspace_id is not None and not user.can_see(body.workspace_id):
        raise BadInputError("body.workspace_id", "you are not a member of a workspace with this id")
    feeds = CalendarFeedRepository(session)
    cap = request.app.state.settings.max_calendar_feeds_per_user
    if await feeds.count(user.user_id) >= cap:
        raise ProblemError(
            LIMIT_REACHED.problem(
                f"you have {cap} calendar feeds, as many as an account may: delete one first "
                "(DELETE /calendar/feeds/{id})"
            )
        )
    issued = new_feed_secret()
    feed = await feeds.create(
        user_id=user.user_id,
        workspace_id=body.workspace_id,
        secret_hash=issued.secret_hash,
        prefix=issued.prefix,
    )
    response.headers["Location"] = str(request.url_for("list_calendar_feeds"))
    return _created(request, feed, issued)


@router.get(
    "/feeds",
    response_model=list[CalendarFeedResponse],
    responses=problem_responses(401, 403, 503),
)
async def list_calendar_feeds(
    user: CurrentReaderDep, session: ReadSessionDep
) -> Sequence[CalendarFeed]:
    """Your calendar feeds, newest first, without their URLs. Needs a login."""
    return await CalendarFeedRepository(session).list_mine(user.user_id)


@router.post(
    "/feeds/{feed_id}/regenerate",
    response_model=CalendarFeedCreated,
    responses=problem_responses(401, 403, 404, 422, 503),
)
async def regenerate_calendar_feed(
    feed_id: FeedId, user: CurrentUserDep, session: SessionDep, request: Request
) -> CalendarFeedCreated:
    """Give one of your feeds a new secret URL, answered this once: the old URL is 404 from
    now on (subscribe again with the new one). Needs a login."""
    issued = new_feed_secret()
    feed = await CalendarFeedRepository(session).regenerate(
        user.user_id, feed_id, secret_hash=issued.secret_hash, prefix=issued.prefix
    )
    if feed is None:
        raise HTTPException(status_code=404, detail=NOT_FOUND)
    return _created(request, feed, issued)


@router.delete(
    "/feeds/{feed_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=problem_responses(401, 403, 404, 422, 503),
)
async def delete_calendar_feed(feed_id: FeedId, user: CurrentUserDep, session: SessionDep) -> None:
    """Delete one of your calendar feeds: its URL is 404 from now on. Needs a login."""
    if not await CalendarFeedRepository(session).delete(user.user_id, feed_id):
        raise HTTPException(status_code=404, detail=NOT_FOUND)


# ─────────────────────────────── the feed itself

FEED_ETAG: dict[str, Any] = {
    **PAGE_ETAG,
    "description": "A digest of the feed's body, for `If-None-Match`.",
}
FEED_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The feed (RFC 5545).",
        "content": {"text/calendar": {"schema": {"type": "string"}}},
        "headers": {**response_headers("Cache-Control"), "ETag": FEED_ETAG},
    },
    **not_modified_response(FEED_ETAG),
    **problem_responses(404, 422, 503),
}


def _options(settings: Settings, name: str, as_events: bool) -> FeedOptions:
    alarm = settings.calendar_alarm_minutes
    return FeedOptions(
        host=urlsplit(settings.public_base_url).hostname or "localhost",
        name=name,
        refresh=timedelta(minutes=settings.calendar_feed_refresh_minutes),
        alarm_before=timedelta(minutes=alarm) if alarm else None,
        as_events=as_events,
    )


@router.get(
    "/{secret}.ics",
    response_class=Response,
    responses=FEED_RESPONSES,
)
async def get_calendar_feed(
    secret: Annotated[
        str,
        Path(
            description="The feed's secret, as its URL holds it (POST /calendar/feeds).",
        ),
    ],
    request: Request,
    session: ReadSessionDep,
    if_none_match: IfNoneMatch = None,
    shape: Annotated[
        Literal["todos", "events"],
        Query(
            alias="as",
            description="`todos` (VTODO, with alarms); `events` (VEVENT at each due time), "
            "for calendar apps that show no to-dos of a subscribed calendar (Google Calendar, "
            "Apple Calendar).",
        ),
    ] = "todos",
) -> Response:
    """A calendar feed: your tasks with due dates as iCalendar (RFC 5545), for a calendar
    app to subscribe to. The URL is the credential (no Authorization header); an unknown
    or revoked one is 404. It shows the tasks due in the last
    TASKMANAGER_CALENDAR_FEED_PAST_DAYS days and all later ones (at most
    TASKMANAGER_CALENDAR_FEED_MAX_TASKS, soonest first), completed ones marked, of the
    workspaces you belong to as the feed is read. 304 while `If-None-Match` names the
    current ETag."""
    entered = (
        await enter_with_feed(
            session,
            request.app.state.caller_key,
            feed_secret_hash(secret),
            current_request_id(),
        )
        if well_formed_secret(secret)
        else None
    )
    if entered is None:
        raise HTTPException(status_code=404, detail="Not Found")
    scope = entered.scope
    user_id_var.set(scope.user_id)
    settings: Settings = request.app.state.settings
    since = datetime.now(UTC) - timedelta(days=settings.calendar_feed_past_days)
    tasks = await TaskRepository(session, scope).due_since(since, settings.calendar_feed_max_tasks)
    name = entered.workspace_name or "My tasks"
    body = calendar_of(tasks, _options(settings, f"{name} (taskmanager)", shape == "events"))
    etag = f'"{hashlib.sha256(body).hexdigest()[:32]}"'
    headers = {
        "ETag": etag,
        # The URL is a credential: no shared cache keeps its answer.
        "Cache-Control": f"private, max-age={settings.calendar_feed_refresh_minutes * 60}",
    }
    if if_none_match is not None and none_match(if_none_match, etag):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=FEED_MEDIA_TYPE, headers=headers)
