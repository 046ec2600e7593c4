"""Webhooks out: a workspace's admins and owners register endpoints that receive its
events (signed as Standard Webhooks says), read their delivery log, replay a delivery and
send a test event. Other members get 403, anyone else 404 (the workspace is not theirs).

Who may: the members:write action (admins and owners; a personal access token with that
scope), as for invitations: an endpoint sends the workspace's data out, which is the
same trust as choosing who gets in. The events themselves are recorded by PostgreSQL in
the transaction of each change (migration 0015), never here."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, FastAPI, HTTPException, Path, Query, Request, Response, status

from taskmanager.bad_input import BadInputError
from taskmanager.database import ReadSessionDep, SessionDep
from taskmanager.dependencies import CurrentReaderDep, CurrentUserDep, token_scope
from taskmanager.integrations.outbound import UnsafeDestination
from taskmanager.integrations.webhook_events import (
    EVENT_TYPES,
    EVENTS,
    TEST_EVENT,
    EventPayloadV1,
    TestEventPayloadV1,
)
from taskmanager.openapi import problem_responses, response_headers
from taskmanager.problems import LIMIT_REACHED, ProblemError
from taskmanager.repositories.webhook_repository import (
    DeliveryView,
    EndpointView,
    WebhookRepository,
)
from taskmanager.routes.permissions import require
from taskmanager.schemas import (
    INT4_MAX,
    WebhookCreate,
    WebhookCreated,
    WebhookDeliveryQueued,
    WebhookDeliveryResponse,
    WebhookResponse,
    WebhookRotated,
    WebhookUpdate,
)
from taskmanager.security.access_tokens import TokenScope
from taskmanager.security.roles import Action
from taskmanager.security.scope import Scope
from taskmanager.security.webhook_secrets import WebhookSecretKey, new_nonce

router = APIRouter(prefix="/workspaces", tags=["webhooks"])

WorkspaceId = Annotated[int, Path(ge=1, le=INT4_MAX, description="The workspace's id.")]
WebhookId = Annotated[uuid.UUID, Path(description="The webhook endpoint's id.")]
DeliveryId = Annotated[uuid.UUID, Path(description="The delivery's id.")]
WORKSPACE_NOT_FOUND = "Workspace not found"
NOT_FOUND = "Webhook not found"
DELIVERY_NOT_FOUND = "Delivery not found"
SCOPE = token_scope(TokenScope.MEMBERS_WRITE)


def _managing(user: Scope, workspace_id: int) -> None:
    """404 for a workspace the caller cannot see; 403 unless they may manage it."""
    require(user, workspace_id, Action.MEMBERS_WRITE, WORKSPACE_NOT_FOUND)


def _checked_url(request: Request, url: str) -> str:
    """The URL if the service may send to it (static checks: scheme, credentials, a
    literal private address...; the resolved address is checked at every connection);
    else 422 naming body.url."""
    try:
        return str(request.app.state.outbound.check_url(url))
    except UnsafeDestination as error:
        raise BadInputError("body.url", str(error)) from None


def _checked_events(events: list[str]) -> list[str]:
    unknown = sorted({event for event in events if event not in EVENT_TYPES})
    if unknown:
        raise BadInputError(
            "body.events",
            f"unknown event type{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
            f"the known ones are {', '.join(EVENT_TYPES)}",
        )
    return list(dict.fromkeys(events))  # each once, in the order given


def _secret_key(request: Request) -> WebhookSecretKey:
    key: WebhookSecretKey = request.app.state.webhook_secret_key
    return key


def _found(endpoint: EndpointView | None) -> EndpointView:
    if endpoint is None:
        raise HTTPException(status_code=404, detail=NOT_FOUND)
    return endpoint


@router.post(
    "/{workspace_id}/webhooks",
    response_model=WebhookCreated,
    status_code=status.HTTP_201_CREATED,
    responses={
        201: {"headers": response_headers("Location")},
        **problem_responses(401, 403, 404, 409, 413, 422, 503),
    },
    openapi_extra=SCOPE,
)
async def create_webhook(
    workspace_id: WorkspaceId,
    body: WebhookCreate,
    user: CurrentUserDep,
    session: SessionDep,
    request: Request,
    response: Response,
) -> WebhookCreated:
    """Register an endpoint for the workspace's events (admins and owners). The answer
    carries its signing `secret`, shown this once. 422 names a URL the service may not
    send to or an unknown event type; 409 past the cap on endpoints per workspace."""
    _managing(user, workspace_id)
    url = _checked_url(request, body.url)
    events = _checked_events(body.events)
    webhooks = WebhookRepository(session)
    cap = request.app.state.settings.max_webhooks_per_workspace
    if await webhooks.count_locked(user, workspace_id) >= cap:
        raise ProblemError(
            LIMIT_REACHED.problem(
                f"this workspace has {cap} webhook endpoints, as many as it may: delete one "
                "first (DELETE /workspaces/{id}/webhooks/{webhook_id})"
            )
        )
    endpoint_id, nonce = uuid.uuid4(), new_nonce()
    endpoint = await webhooks.create(
        user, workspace_id, endpoint_id, url, body.description, events, nonce
    )
    response.headers["Location"] = str(
        request.url_for("get_webhook", workspace_id=workspace_id, webhook_id=endpoint_id)
    )
    return WebhookCreated.model_validate(
        {
            **WebhookResponse.model_validate(endpoint).model_dump(),
            "secret": _secret_key(request).secret(endpoint_id, nonce),
        }
    )


@router.get(
    "/{workspace_id}/webhooks",
    response_model=list[WebhookResponse],
    responses=problem_responses(401, 403, 404, 422, 503),
    openapi_extra=SCOPE,
)
async def list_webhooks(
    workspace_id: WorkspaceId, user: CurrentReaderDep, session: ReadSessionDep
) -> list[EndpointView]:
    """The workspace's endpoints, oldest first (admins and owners)."""
    _managing(user, workspace_id)
    return await WebhookRepository(session).list_all(user, workspace_id)


@router.get(
    "/{workspace_id}/webhooks/{webhook_id}",
    response_model=WebhookResponse,
    responses=problem_responses(401, 403, 404, 422, 503),
    openapi_extra=SCOPE,
)
async def get_webhook(
    workspace_id: WorkspaceId,
    webhook_id: WebhookId,
    user: CurrentReaderDep,
    session: ReadSessionDep,
) -> EndpointView:
    """One endpoint: where it sends, what, and whether (why it was disabled)."""
    _managing(user, workspace_id)
    return _found(await WebhookRepository(session).get(user, workspace_id, webhook_id))


@router.patch(
    "/{workspace_id}/webhooks/{webhook_id}",
    response_model=WebhookResponse,
    responses=problem_responses(401, 403, 404, 413, 422, 503),
    openapi_extra=SCOPE,
)
async def update_webhook(
    workspace_id: WorkspaceId,
    webhook_id: WebhookId,
    body: WebhookUpdate,
    user: CurrentUserDep,
    session: SessionDep,
    request: Request,
) -> EndpointView:
    """Change an endpoint's url, events, description, or enable or disable it. Enabling
    one clears why it was disabled and since when it was failing; deliveries it missed
    while disabled are not sent (replay them from its delivery log)."""
    _managing(user, workspace_id)
    changes = body.model_dump(exclude_unset=True)
    for field, value in changes.items():
        if value is None:
            raise BadInputError(f"body.{field}", "may not be null")
    if "url" in changes:
        changes["url"] = _checked_url(request, changes["url"])
    if "events" in changes:
        changes["events"] = _checked_events(changes["events"])
    webhooks = WebhookRepository(session)
    if not changes:
        return _found(await webhooks.get(user, workspace_id, webhook_id))
    return _found(await webhooks.update(user, workspace_id, webhook_id, changes))


@router.delete(
    "/{workspace_id}/webhooks/{webhook_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=problem_responses(401, 403, 404, 422, 503),
    openapi_extra=SCOPE,
)
async def delete_webhook(
    workspace_id: WorkspaceId, webhook_id: WebhookId, user: CurrentUserDep, session: SessionDep
) -> None:
    """Delete an endpoint, its pending deliveries and its delivery log."""
    _managing(user, workspace_id)
    if not await WebhookRepository(session).delete(user, workspace_id, webhook_id):
        raise HTTPException(status_code=404, detail=NOT_FOUND)


@router.post(
    "/{workspace_id}/webhooks/{webhook_id}/rotate-secret",
    response_model=WebhookRotated,
    responses=problem_responses(401, 403, 404, 422, 503),
    openapi_extra=SCOPE,
)
async def rotate_webhook_secret(
    workspace_id: WorkspaceId,
    webhook_id: WebhookId,
    user: CurrentUserDep,
    session: SessionDep,
    request: Request,
) -> WebhookRotated:
    """A new signing secret, shown this once. For the next 24 hours (the setting
    TASKMANAGER_WEBHOOK_ROTATION_OVERLAP_HOURS) every request is signed with both the new
    and the previous secret, so the receiver can switch at any moment in between."""
    _managing(user, workspace_id)
    webhooks = WebhookRepository(session)
    overlap = round(request.app.state.settings.webhook_rotation_overlap_hours * 3600)
    nonce = await webhooks.rotate(user, workspace_id, webhook_id, overlap)
    if nonce is None:
        raise HTTPException(status_code=404, detail=NOT_FOUND)
    endpoint = _found(await webhooks.get(user, workspace_id, webhook_id))
    return WebhookRotated(
        secret=_secret_key(request).secret(webhook_id, nonce),
        previous_secret_valid_until=endpoint.previous_secret_valid_until,
    )


@router.get(
    "/{workspace_id}/webhooks/{webhook_id}/deliveries",
    response_model=list[WebhookDeliveryResponse],
    responses={
        200: {"headers": response_headers("Link")},
        **problem_responses(401, 403, 404, 422, 503),
    },
    openapi_extra=SCOPE,
)
async def list_webhook_deliveries(
    workspace_id: WorkspaceId,
    webhook_id: WebhookId,
    user: CurrentReaderDep,
    session: ReadSessionDep,
    request: Request,
    response: Response,
    limit: Annotated[int, Query(ge=1, le=100, description="At most this many.")] = 20,
    before: Annotated[
        uuid.UUID | None,
        Query(description="The page after this delivery (the `Link: rel=next` header)."),
    ] = None,
) -> list[DeliveryView]:
    """The endpoint's delivery log, newest first: each delivery's status and its
    attempts (when, the answer's status, latency and first 1000 characters, or the
    error). A full page links the next in `Link: <...>; rel="next"`."""
    _managing(user, workspace_id)
    webhooks = WebhookRepository(session)
    _found(await webhooks.get(user, workspace_id, webhook_id))
    page = await webhooks.deliveries(user, workspace_id, webhook_id, limit, before)
    if len(page) == limit:
        following = request.url.include_query_params(before=str(page[-1].id), limit=limit)
        response.headers["Link"] = f'<{following}>; rel="next"'
    return page


@router.post(
    "/{workspace_id}/webhooks/{webhook_id}/deliveries/{delivery_id}/replay",
    response_model=WebhookDeliveryQueued,
    status_code=status.HTTP_202_ACCEPTED,
    responses=problem_responses(401, 403, 404, 409, 422, 503),
    openapi_extra=SCOPE,
)
async def replay_webhook_delivery(
    workspace_id: WorkspaceId,
    webhook_id: WebhookId,
    delivery_id: DeliveryId,
    user: CurrentUserDep,
    session: SessionDep,
) -> WebhookDeliveryQueued:
    """Send a delivery's event again, as a new delivery with its own attempts. It keeps
    the event's `webhook-id` (Standard Webhooks: the same message resent), so a receiver
    that processed it already can tell. 409 if the endpoint is disabled (enable it
    first), or if it has 100 test events and replays waiting to be sent already."""
    _managing(user, workspace_id)
    webhooks = WebhookRepository(session)
    if not await webhooks.delivery_exists(user, workspace_id, webhook_id, delivery_id):
        raise HTTPException(status_code=404, detail=DELIVERY_NOT_FOUND)
    made = await webhooks.replay(user, workspace_id, delivery_id)
    if made is None:
        raise HTTPException(status_code=404, detail=DELIVERY_NOT_FOUND)
    return WebhookDeliveryQueued(delivery_id=made)


@router.post(
    "/{workspace_id}/webhooks/{webhook_id}/test",
    response_model=WebhookDeliveryQueued,
    status_code=status.HTTP_202_ACCEPTED,
    responses=problem_responses(401, 403, 404, 409, 422, 503),
    openapi_extra=SCOPE,
)
async def send_webhook_test(
    workspace_id: WorkspaceId,
    webhook_id: WebhookId,
    user: CurrentUserDep,
    session: SessionDep,
) -> WebhookDeliveryQueued:
    """Send a `webhook.test` event to the endpoint (even a disabled one: testing is how
    to see it works again). It is tried once, never retried; its outcome is in the
    delivery log. 409 if the endpoint has 100 test events and replays waiting to be
    sent already."""
    _managing(user, workspace_id)
    made = await WebhookRepository(session).send_test(user, workspace_id, webhook_id)
    if made is None:
        raise HTTPException(status_code=404, detail=NOT_FOUND)
    return WebhookDeliveryQueued(delivery_id=made)


def document_events(app: FastAPI) -> None:
    """The OpenAPI document's `webhooks` section: one entry per event type, with the body
    we POST (version 1) and the headers that sign it. Documentation only: no route."""
    signed = (
        "Signed as Standard Webhooks says: headers `webhook-id` (the same on every retry "
        "and replay), `webhook-timestamp` (seconds) and `webhook-signature` (`v1,<base64 "
        "HMAC-SHA256 of id.timestamp.body>`, two space-separated during a secret's "
        "rotation). Answer 2xx within 10 s; 410 disables the endpoint; anything else is "
        "retried. See docs/webhooks.md."
    )
    for event, meaning in {**EVENTS, TEST_EVENT: "A test event (POST .../test)."}.items():
        model = TestEventPayloadV1 if event == TEST_EVENT else EventPayloadV1

        async def receive(body: EventPayloadV1) -> None:
            """Documented only."""

        # The annotations are strings here (postponed): name the model itself.
        receive.__annotations__ = {"body": model, "return": None}

        app.webhooks.add_api_route(
            event,
            receive,
            methods=["POST"],
            summary=meaning,
            description=f"{meaning}\n\n{signed}",
            operation_id=f"webhook_{event.replace('.', '_')}",
            status_code=200,
            response_class=Response,
            responses={200: {"description": "Received (any 2xx)."}},
        )
