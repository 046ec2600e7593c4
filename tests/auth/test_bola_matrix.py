"""Broken object level authorization (OWASP API1), as a matrix generated from the OpenAPI
document: every operation whose path names an id, called by every kind of caller.

The resources live in a workspace alice owns (with adam an admin, carol a member, vic a
viewer and erin another member); dan shares a different workspace with alice; mallory
shares nothing; alice's workspace has a pending invitation of an address none of them has
(its managers list, revoke and resend it; accepting or declining it is nobody's here). For
every operation:

- alice (owner), adam (admin), carol (member) and vic (viewer) each get what their role may
  do: the documented success, or 403 for a change their role does not allow (they can see
  the workspace), with nothing changed;
- dan (member of another of alice's workspaces) and mallory (stranger) get 404 for every
  method, byte for byte the answer for an id that does not exist, and nothing changes;
- no token, or an expired one, is 401 with `WWW-Authenticate: Bearer`, and nothing changes.

An operation with an id that has no row in EXPECTED fails the test: a new route is in the
matrix the moment it is in the document. So does an operation whose body names the
workspace a new row goes in (`workspace_id`) without a row in CREATE_EXPECTED, the table of
what each role gets creating a task, category or label in alice's workspace.

A second table, generated from the same document, holds every id a request names in its
body or its query (a workspace, category or label: `workspace_id`, `label_ids`, `?label_id=`).
dan and mallory, each with a workspace, task, category and label of their own, send alice's
id there: the answer is the one for an id that does not exist (a 422 naming the field for
a body, an empty list for a query), and nothing changes; the same request naming their own
resource succeeds. A field of that kind without a row in REFERENCE_EXPECTED fails the test.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import pytest
from httpx import AsyncClient
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from taskmanager import schemas
from taskmanager.config import Settings
from taskmanager.main import create_app
from taskmanager.models import (
    AccessToken,
    CalendarFeed,
    CalendarSubscription,
    Category,
    Invitation,
    Label,
    Membership,
    Task,
    TaskLabel,
    WebhookDelivery,
    WebhookEndpoint,
    Workspace,
)
from taskmanager.observability.metrics import REGISTRY
from taskmanager.problems import FORBIDDEN
from tests.support.accounts import TEST_SECRET, Account
from tests.support.invitations import add_member, invite
from tests.support.problems import assert_problem, assert_validation_problem
from tests.support.tokens import (
    assert_unauthorized,
    bearer,
    expired_access_token,
    send_without_token,
)

# The path parameters that name a resource, and the world's value for each.
ID_PARAMETERS = (
    "task_id",
    "category_id",
    "label_id",
    "workspace_id",
    "user_id",
    "token_id",
    "invitation_id",
    "feed_id",
    "calendar_id",
    "webhook_id",
    "delivery_id",
)
# An id no row has (inside PostgreSQL's integer range, so it is looked up, not refused).
MISSING_ID = 2_147_483_000
# A personal access token's id and an invitation's are UUIDs: one no row has.
MISSING_UUID = "00000000-0000-4000-8000-000000000000"
MISSING_IDS: dict[str, int | str] = {
    **dict.fromkeys(ID_PARAMETERS, MISSING_ID),
    "token_id": MISSING_UUID,
    "invitation_id": MISSING_UUID,
    "feed_id": MISSING_UUID,
    "webhook_id": MISSING_UUID,
    "delivery_id": MISSING_UUID,
}
# The address of the world's pending invitation (no account has it).
INVITEE = "invitee.matrix@example.com"
# Where the world's webhook endpoint points (nothing is sent: no worker runs here).
WEBHOOK_URL = "http://127.0.0.1:9/matrix"

# The roles of alice's workspace, in the order of EXPECTED's columns.
WORKSPACE_ROLES = ("owner", "admin", "member", "viewer")
CALLERS = (*WORKSPACE_ROLES, "member_of_other", "stranger", "no_token", "expired_token")

# operationId -> the status for (the owner, an admin, a member, a viewer) of the workspace.
# The other callers' statuses are the same for every operation (see expected_status).
EXPECTED: dict[str, tuple[int, int, int, int]] = {
    "get_workspace": (200, 200, 200, 200),
    "rename_workspace": (200, 403, 403, 403),
    "delete_workspace": (204, 403, 403, 403),
    "transfer_workspace": (200, 403, 403, 403),
    "workspaces_get_member": (200, 200, 200, 200),
    "workspaces_change_member_role": (200, 200, 403, 403),
    "workspaces_remove_member": (204, 204, 403, 403),
    "get_task": (200, 200, 200, 200),
    "update_task": (200, 200, 200, 403),
    "replace_task": (200, 200, 200, 403),
    "delete_task": (204, 204, 204, 403),
    "get_category": (200, 200, 200, 200),
    "rename_category": (200, 200, 200, 403),
    "delete_category": (204, 204, 204, 403),
    "get_label": (200, 200, 200, 200),
    "update_label": (200, 200, 200, 403),
    "delete_label": (204, 204, 204, 403),
    "list_workspace_activity": (200, 200, 200, 200),
    "list_task_activity": (200, 200, 200, 200),
    # alice's own personal access token: nobody else's to revoke.
    "revoke_token": (204, 404, 404, 404),
    "create_invitation": (202, 202, 403, 403),
    "list_workspace_invitations": (200, 200, 403, 403),
    "revoke_invitation": (204, 204, 403, 403),
    "resend_invitation": (202, 202, 403, 403),
    # None of them is the invitee: to them an invitation to another address does not
    # exist, whoever manages its workspace.
    "accept_invitation": (404, 404, 404, 404),
    "decline_invitation": (404, 404, 404, 404),
    # alice's own calendar feed: nobody else's to regenerate or delete.
    "regenerate_calendar_feed": (200, 404, 404, 404),
    "delete_calendar_feed": (204, 404, 404, 404),
    # Subscribed calendars: shared content of the workspace, as categories and labels are.
    "create_calendar": (201, 201, 201, 403),
    "list_calendars": (200, 200, 200, 200),
    "delete_calendar": (204, 204, 204, 403),
    "refresh_calendar": (200, 200, 200, 403),
    # Webhooks: the managers' (members:write), like invitations.
    "create_webhook": (201, 201, 403, 403),
    "list_webhooks": (200, 200, 403, 403),
    "get_webhook": (200, 200, 403, 403),
    "update_webhook": (200, 200, 403, 403),
    "delete_webhook": (204, 204, 403, 403),
    "rotate_webhook_secret": (200, 200, 403, 403),
    "list_webhook_deliveries": (200, 200, 403, 403),
    "replay_webhook_delivery": (202, 202, 403, 403),
    "send_webhook_test": (202, 202, 403, 403),
}
# Changes that leave the matrix's rows as they were (a refresh fetches the feed; under the
# rolled-back session its state stays in the process): the answer names the resource.
NO_ROW_CHANGE = {"refresh_calendar"}
# The URL of the world's calendar: nothing listens there, so a refresh fails at once (a
# failing feed is still a 200).
MATRIX_CALENDAR_URL = "http://127.0.0.1:9/matrix.ics"

# Operations whose path holds a secret instead of naming a resource to a caller: they take
# no bearer token (a calendar app sends none), so no caller of the matrix has a role to try
# on them. tests/calendar/test_feeds.py holds their table: another user's or an unknown
# secret is the same 404, a feed of a workspace left is 404, a secret is no token.
SECRET_URLS = {"get_calendar_feed": "secret"}


# GET operations answering a list of what the path's id holds (each item names that id in
# the field given), not the resource itself.
LISTS = {
    "list_workspace_activity": "workspace_id",
    "list_workspace_invitations": "workspace_id",
    "list_task_activity": "object_id",
    "list_calendars": "workspace_id",
    "list_webhooks": "workspace_id",
    "list_webhook_deliveries": "endpoint_id",
}


@dataclass(frozen=True)
class World:
    """What the matrix acts on: alice's workspace and what is in it."""

    owner: Account
    admin: Account
    member: Account
    viewer: Account
    neighbour: Account
    stranger: Account
    target: Account
    workspace_id: int
    shared_workspace_id: int
    task_id: int
    category_id: int
    label_id: int
    token_id: str  # alice's personal access token
    invitation_id: str
    feed_id: str  # alice's calendar feed
    calendar_id: int
    webhook_id: str
    delivery_id: str

    def ids(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "category_id": self.category_id,
            "label_id": self.label_id,
            "workspace_id": self.workspace_id,
            "user_id": self.target.user_id,
            "token_id": self.token_id,
            "invitation_id": self.invitation_id,
            "feed_id": self.feed_id,
            "calendar_id": self.calendar_id,
            "webhook_id": self.webhook_id,
            "delivery_id": self.delivery_id,
        }


# operationId -> the minimal valid body (operations without a request body have none).
BODIES: dict[str, Callable[[World], dict[str, Any]]] = {
    "rename_workspace": lambda world: {"name": "Renamed by the matrix"},
    "create_invitation": lambda world: {"email": "another.invitee@example.com"},
    "workspaces_change_member_role": lambda world: {"role": "viewer"},
    "transfer_workspace": lambda world: {"user_id": world.target.user_id},
    "update_task": lambda world: {"title": "Changed by the matrix"},
    "replace_task": lambda world: {"title": "Replaced by the matrix"},
    "rename_category": lambda world: {"name": "Renamed by the matrix"},
    "update_label": lambda world: {"name": "Renamed by the matrix"},
    "create_calendar": lambda world: {
        "url": "https://calendar.example.com/made-by-the-matrix.ics",
        "name": "Made by the matrix",
    },
    "create_webhook": lambda world: {"url": WEBHOOK_URL, "events": ["task.created"]},
    "update_webhook": lambda world: {"description": "Changed by the matrix"},
}


@dataclass(frozen=True)
class Operation:
    operation_id: str
    method: str
    path: str
    path_parameters: tuple[str, ...]
    documented: frozenset[int]
    body_schema: str | None  # the request body's schema name, if it has one

    def __str__(self) -> str:
        return f"{self.method} {self.path} ({self.operation_id})"


def _operations_with_ids(document: dict[str, Any]) -> list[Operation]:
    operations = []
    for path, item in document["paths"].items():
        parameters = tuple(re.findall(r"{([^}]+)}", path))
        if not parameters:
            continue
        for method, operation in item.items():
            if method not in ("get", "put", "post", "patch", "delete", "head", "options"):
                continue
            if operation["operationId"] in SECRET_URLS:
                continue
            body = operation.get("requestBody", {}).get("content", {}).get("application/json")
            reference = body["schema"]["$ref"] if body else None
            operations.append(
                Operation(
                    operation_id=operation["operationId"],
                    method=method.upper(),
                    path=path,
                    path_parameters=parameters,
                    documented=frozenset(
                        int(code) for code in operation["responses"] if code.isdigit()
                    ),
                    body_schema=reference.rsplit("/", 1)[-1] if reference else None,
                )
            )
    return operations


DOCUMENT = create_app(Settings(jwt_secret=TEST_SECRET)).openapi()
OPERATIONS = _operations_with_ids(DOCUMENT)


def expected_status(operation: Operation, caller: str) -> int:
    by_role = dict(zip(WORKSPACE_ROLES, EXPECTED[operation.operation_id], strict=True))
    return {
        **by_role,
        "member_of_other": 404,
        "stranger": 404,
        "no_token": 401,
        "expired_token": 401,
    }[caller]


# ─────────────────────────────── the table is complete and right


def test_the_document_has_operations_with_ids() -> None:
    """The generator finds the routes it should (it would pass vacuously on none)."""
    found = {operation.operation_id for operation in OPERATIONS}
    assert {"get_task", "delete_category", "workspaces_remove_member"} <= found, found


def test_every_operation_with_an_id_has_a_row_and_every_row_an_operation() -> None:
    found = {operation.operation_id for operation in OPERATIONS}
    assert found - set(EXPECTED) == set(), "operations missing from the BOLA matrix"
    assert set(EXPECTED) - found == set(), "rows of the matrix for operations that are gone"


def test_the_operations_left_out_hold_a_secret_and_take_no_bearer_token() -> None:
    """What SECRET_URLS leaves out of the matrix is exactly that: its one path parameter
    is the secret it names, and the document asks no bearer token of it."""
    found = {}
    for path, item in DOCUMENT["paths"].items():
        for operation in item.values():
            if operation["operationId"] in SECRET_URLS:
                assert not operation.get("security"), path
                found[operation["operationId"]] = re.findall(r"{([^}]+)}", path)
    assert found == {name: [parameter] for name, parameter in SECRET_URLS.items()}


def test_every_path_parameter_is_an_id_the_matrix_knows() -> None:
    unknown = {
        (str(operation), name)
        for operation in OPERATIONS
        for name in operation.path_parameters
        if name not in ID_PARAMETERS
    }
    assert unknown == set(), "path parameters the matrix has no value for"


def test_bodies_are_given_for_exactly_the_operations_with_a_body() -> None:
    with_body = {op.operation_id for op in OPERATIONS if op.body_schema is not None}
    assert set(BODIES) == with_body


def _placeholder_world(account: Account, other_account: Account) -> World:
    """A world of made-up ids, for checking bodies against their schemas (nothing is sent)."""
    return World(
        owner=account,
        admin=account,
        member=account,
        viewer=account,
        neighbour=other_account,
        stranger=other_account,
        target=other_account,
        workspace_id=1,
        shared_workspace_id=2,
        task_id=1,
        category_id=1,
        label_id=1,
        token_id=MISSING_IDS["token_id"],
        invitation_id=MISSING_UUID,
        feed_id=MISSING_UUID,
        calendar_id=1,
        webhook_id=MISSING_UUID,
        delivery_id=MISSING_UUID,
    )


def test_every_body_is_valid_for_its_documented_schema(
    account: Account, other_account: Account
) -> None:
    """Each body passes the request model the document names, so a 404 or 401 in the
    matrix is about the id or the caller, never about a bad body."""
    world = _placeholder_world(account, other_account)
    for operation in OPERATIONS:
        if operation.body_schema is None:
            continue
        model = getattr(schemas, operation.body_schema)
        model.model_validate(BODIES[operation.operation_id](world), strict=False)


def test_every_expected_status_is_documented() -> None:
    """The matrix expects nothing the document does not promise (401 and 404 included)."""
    for operation in OPERATIONS:
        for caller in CALLERS:
            status = expected_status(operation, caller)
            assert status in operation.documented, (str(operation), caller, status)


# ─────────────────────────────── the world


@pytest.fixture
async def world(
    client: AsyncClient,
    db_session: AsyncSession,
    account: Account,
    admin_account: Account,
    member_account: Account,
    viewer_account: Account,
    neighbour_account: Account,
    other_account: Account,
    target_account: Account,
) -> World:
    """alice's workspace (adam its admin, carol and erin members, vic a viewer) with a
    category and a task in it, and another workspace alice shares with dan; all made
    through the API as alice."""

    async def post(url: str, body: dict[str, Any]) -> dict[str, Any]:
        response = await client.post(url, json=body, headers=account.headers)
        assert response.status_code == 201, response.text
        data: dict[str, Any] = response.json()
        return data

    owner = account.headers
    workspace_id = (await post("/workspaces", {"name": "The matrix"}))["id"]
    shared_id = (await post("/workspaces", {"name": "Shared with dan"}))["id"]
    await add_member(
        client, shared_id, neighbour_account.email, neighbour_account.headers, inviter=owner
    )
    for who, role in (
        (admin_account, "admin"),
        (member_account, "member"),
        (viewer_account, "viewer"),
        (target_account, "member"),
    ):
        await add_member(client, workspace_id, who.email, who.headers, role, inviter=owner)
    # A pending invitation, last mailed long enough ago to be mailed again.
    invitation = await invite(client, workspace_id, INVITEE, inviter=owner)
    await db_session.execute(
        update(Invitation)
        .where(Invitation.id == uuid.UUID(invitation["id"]))
        .values(last_sent_at=func.now() - timedelta(hours=1))
    )
    # A webhook endpoint, subscribed before the task is made: the task's delivery is in
    # its log.
    webhook = await post(
        f"/workspaces/{workspace_id}/webhooks", {"url": WEBHOOK_URL, "events": ["task.created"]}
    )
    category = await post("/categories", {"name": "Matrix", "workspace_id": workspace_id})
    label = await post("/labels", {"name": "Matrix", "workspace_id": workspace_id})
    task = await post(
        "/tasks",
        {
            "title": "Matrix task",
            "workspace_id": workspace_id,
            "category_id": category["id"],
            "label_ids": [label["id"]],
        },
    )
    token = await post("/users/me/tokens", {"name": "Matrix", "scopes": ["tasks:read"]})
    feed = await post("/calendar/feeds", {"workspace_id": workspace_id})
    calendar = await post(
        f"/workspaces/{workspace_id}/calendars", {"url": MATRIX_CALENDAR_URL, "name": "Matrix"}
    )
    delivery_id = await db_session.scalar(
        select(WebhookDelivery.id).where(WebhookDelivery.endpoint_id == uuid.UUID(webhook["id"]))
    )
    return World(
        owner=account,
        admin=admin_account,
        member=member_account,
        viewer=viewer_account,
        neighbour=neighbour_account,
        stranger=other_account,
        target=target_account,
        workspace_id=workspace_id,
        shared_workspace_id=shared_id,
        task_id=task["id"],
        category_id=category["id"],
        label_id=label["id"],
        token_id=token["id"],
        invitation_id=invitation["id"],
        feed_id=feed["id"],
        calendar_id=calendar["id"],
        webhook_id=webhook["id"],
        delivery_id=str(delivery_id),
    )


async def snapshot(
    db_session: AsyncSession, world: World, *more_workspaces: int
) -> dict[str, list[tuple[Any, ...]]]:
    """Every row the matrix could touch (in the world's workspaces and `more_workspaces`),
    as stored now (Core selects, fresh from the DB)."""
    workspaces = [world.workspace_id, world.shared_workspace_id, *more_workspaces]
    statements = {
        "workspaces": select(Workspace.id, Workspace.name, Workspace.version).where(
            Workspace.id.in_(workspaces)
        ),
        "memberships": select(Membership.workspace_id, Membership.user_id, Membership.role).where(
            Membership.workspace_id.in_(workspaces)
        ),
        "categories": select(Category.id, Category.name, Category.version).where(
            Category.workspace_id.in_(workspaces)
        ),
        "tasks": select(Task.id, Task.title, Task.version, Task.category_id).where(
            Task.workspace_id.in_(workspaces)
        ),
        "labels": select(Label.id, Label.name, Label.colour, Label.version).where(
            Label.workspace_id.in_(workspaces)
        ),
        "task_labels": select(TaskLabel.task_id, TaskLabel.label_id).where(
            TaskLabel.workspace_id.in_(workspaces)
        ),
        "access_tokens": select(AccessToken.id, AccessToken.user_id, AccessToken.workspace_id),
        "calendar_feeds": select(
            CalendarFeed.id,
            CalendarFeed.user_id,
            CalendarFeed.workspace_id,
            CalendarFeed.token_hash,
        ),
        "invitations": select(
            Invitation.id,
            Invitation.email,
            Invitation.role,
            Invitation.send_count,
            Invitation.accepted_at,
            Invitation.declined_at,
            Invitation.revoked_at,
        ).where(Invitation.workspace_id.in_(workspaces)),
        "calendar_subscriptions": select(
            CalendarSubscription.id, CalendarSubscription.url, CalendarSubscription.name
        ).where(CalendarSubscription.workspace_id.in_(workspaces)),
        "webhook_endpoints": select(
            WebhookEndpoint.id,
            WebhookEndpoint.description,
            WebhookEndpoint.version,
        ).where(WebhookEndpoint.workspace_id.in_(workspaces)),
        "webhook_deliveries": select(WebhookDelivery.id, WebhookDelivery.event_type).where(
            WebhookDelivery.workspace_id.in_(workspaces)
        ),
    }
    return {
        name: sorted(tuple(row) for row in (await db_session.execute(statement)).all())
        for name, statement in statements.items()
    }


def _token_of(world: World, caller: str) -> str | None:
    return {
        "owner": world.owner.access_token,
        "admin": world.admin.access_token,
        "member": world.member.access_token,
        "viewer": world.viewer.access_token,
        "member_of_other": world.neighbour.access_token,
        "stranger": world.stranger.access_token,
        "no_token": None,
        "expired_token": expired_access_token(world.owner),
    }[caller]


async def call(
    client: AsyncClient,
    operation: Operation,
    world: World,
    caller: str,
    ids: dict[str, Any] | None = None,
) -> httpx.Response:
    url = operation.path.format(**(ids or world.ids()))
    kwargs: dict[str, Any] = {}
    if operation.body_schema is not None:
        kwargs["json"] = BODIES[operation.operation_id](world)
    token = _token_of(world, caller)
    if token is None:
        return await send_without_token(client, operation.method, url, **kwargs)
    return await client.request(operation.method, url, headers=bearer(token), **kwargs)


# ─────────────────────────────── the matrix


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda operation: operation.operation_id)
async def test_bola_matrix(
    client: AsyncClient,
    db_session: AsyncSession,
    world: World,
    operation: Operation,
    caller: str,
) -> None:
    assert operation.operation_id in EXPECTED, f"{operation} has no row in the BOLA matrix"
    before = await snapshot(db_session, world)
    assert before["tasks"], "the world's rows must be visible to the checks"
    assert before["memberships"], "the world's rows must be visible to the checks"

    response = await call(client, operation, world, caller)

    await check_answer(client, db_session, world, operation, caller, response, before)


async def check_answer(
    client: AsyncClient,
    db_session: AsyncSession,
    world: World,
    operation: Operation,
    caller: str,
    response: httpx.Response,
    before: dict[str, list[tuple[Any, ...]]],
) -> None:
    """`response` is what the matrix expects of `operation` called by `caller`, and the
    rows changed only if it was a change the caller may make."""
    expected = expected_status(operation, caller)
    assert response.status_code == expected, (str(operation), caller, response.text)
    after = await snapshot(db_session, world)
    if expected == 401:
        assert_unauthorized(response, token_given=caller != "no_token")
        assert after == before
    elif expected == 404:
        assert_problem(response, 404)
        # Not even the answer tells a foreign id from one that does not exist.
        missing = await call(client, operation, world, caller, ids=MISSING_IDS)
        assert missing.status_code == 404, missing.text
        assert response.content == missing.content
        assert after == before
    elif expected == 403:
        body = assert_problem(response, 403, problem_type=FORBIDDEN)
        # It names the roles that would do, and the caller's.
        assert body["detail"].endswith(f"in this workspace; yours is {caller}"), body
        assert after == before
    elif operation.operation_id in LISTS:
        asked = operation.path_parameters[-1]
        items = response.json()
        assert items, (str(operation), "the world's own rows must be listed")
        named = {str(item[LISTS[operation.operation_id]]) for item in items}
        assert named == {str(world.ids()[asked])}, items
        assert after == before
    elif operation.method == "GET" or operation.operation_id in NO_ROW_CHANGE:
        body = response.json()
        # The resource the path's last id names: a member by its user id, others by id.
        asked = operation.path_parameters[-1]
        assert body["user_id" if asked == "user_id" else "id"] == world.ids()[asked], body
        assert after == before
    else:  # a change the caller may make: it happened
        assert after != before


# ─────────────────────────────── the matrix's reads, with the cache on

GET_OPERATIONS = [operation for operation in OPERATIONS if operation.method == "GET"]
# The reads that go through the cache: their own call must be answered from it.
CACHED_READS = {"get_task"}


def _hits(kind: str) -> float:
    return REGISTRY.get_sample_value("taskmanager_cache_hits_total", {"kind": kind}) or 0.0


def test_the_cached_reads_are_reads_of_the_matrix() -> None:
    assert {operation.operation_id for operation in GET_OPERATIONS} >= CACHED_READS


@pytest.mark.parametrize("caller", CALLERS)
async def test_bola_matrix_reads_with_the_cache(
    cached_client: AsyncClient, db_session: AsyncSession, world: World, caller: str
) -> None:
    """Each read of the matrix with the cache on, after the owner and the caller have both
    read the same URL twice (their caller facts and the task are in Redis): the same
    statuses and bodies; a cached task is answered from the cache only to whoever may read
    it."""
    client = cached_client
    for operation in GET_OPERATIONS:
        url = operation.path.format(**world.ids())
        for _ in range(2):
            warm = await client.get(url, headers=world.owner.headers)
            assert warm.status_code == 200, (str(operation), warm.text)
            await call(client, operation, world, caller)
        before = await snapshot(db_session, world)
        hits = _hits("task")

        response = await call(client, operation, world, caller)

        await check_answer(client, db_session, world, operation, caller, response, before)
        if operation.operation_id in CACHED_READS and caller not in ("no_token", "expired_token"):
            # A caller who may read the task gets it from the cache; anyone else gets the
            # database's 404, as for an id that does not exist (nothing to time).
            allowed = expected_status(operation, caller) == 200
            assert _hits("task") == hits + allowed, (str(operation), caller, allowed)


# ─────────────────────────────── each role creating in the workspace

# operationId -> the status for (the owner, an admin, a member, a viewer) creating a row
# in alice's workspace: every operation whose body names the workspace a new row goes in.
CREATE_EXPECTED: dict[str, tuple[int, int, int, int]] = {
    "create_task": (201, 201, 201, 403),
    "create_category": (201, 201, 201, 403),
    "create_label": (201, 201, 201, 403),
    # A personal access token bound to the workspace: any member may make one.
    "create_token": (201, 201, 201, 201),
    # So is a calendar feed of the workspace: every role reads its tasks.
    "create_calendar_feed": (201, 201, 201, 201),
}


def _creations(document: dict[str, Any]) -> list[Operation]:
    """The operations whose request body has a `workspace_id`: where a new row goes."""
    schemas_of = document["components"]["schemas"]
    found = []
    for path, item in document["paths"].items():
        for method, operation in item.items():
            body = operation.get("requestBody", {}).get("content", {}).get("application/json")
            if not body:
                continue
            name = body["schema"]["$ref"].rsplit("/", 1)[-1]
            if "workspace_id" in schemas_of[name]["properties"]:
                found.append(
                    Operation(
                        operation_id=operation["operationId"],
                        method=method.upper(),
                        path=path,
                        path_parameters=(),
                        documented=frozenset(
                            int(code) for code in operation["responses"] if code.isdigit()
                        ),
                        body_schema=name,
                    )
                )
    return found


CREATIONS = _creations(DOCUMENT)


def test_every_creation_in_a_workspace_has_a_row_and_every_row_an_operation() -> None:
    found = {operation.operation_id for operation in CREATIONS}
    assert "create_task" in found, found  # the generator finds what it should
    assert found == set(CREATE_EXPECTED)
    for operation in CREATIONS:
        for status in CREATE_EXPECTED[operation.operation_id]:
            assert status in operation.documented, (str(operation), status)


@pytest.mark.parametrize("caller", WORKSPACE_ROLES)
@pytest.mark.parametrize("operation", CREATIONS, ids=lambda operation: operation.operation_id)
async def test_each_role_creating_in_the_workspace(
    client: AsyncClient,
    db_session: AsyncSession,
    world: World,
    operation: Operation,
    caller: str,
) -> None:
    by_role = dict(zip(WORKSPACE_ROLES, CREATE_EXPECTED[operation.operation_id], strict=True))
    expected = by_role[caller]
    before = await snapshot(db_session, world)
    body = {**REFERENCE_BODIES[operation.operation_id], "workspace_id": world.workspace_id}
    token = _token_of(world, caller)
    assert token is not None

    response = await client.request(
        operation.method, operation.path, json=body, headers=bearer(token)
    )

    assert response.status_code == expected, (str(operation), caller, response.text)
    after = await snapshot(db_session, world)
    if expected == 403:
        problem = assert_problem(response, 403, problem_type=FORBIDDEN)
        assert problem["detail"].endswith(f"yours is {caller}"), problem
        assert after == before
    else:
        assert response.json()["workspace_id"] == world.workspace_id
        assert after != before


# ─────────────────────────────── another tenant's id in a body or a query

# A body's or a query's field that names a resource (by its id, or a list of ids), and the
# world's id it is given by an attacker (World.ids()).
REFERENCE_FIELD = re.compile(r"_ids?$")
NAMES = {
    "task_id": "task_id",
    "actor_id": "user_id",
    "workspace_id": "workspace_id",
    "category_id": "category_id",
    "label_id": "label_id",
    "label_ids": "label_id",
    "user_id": "user_id",
}
ATTACKERS = ("member_of_other", "stranger")

# (operationId, field) -> what an attacker who sends the victim's id there gets, the same
# as for an id no row has: 422 (naming the field) for a body, 200 with an empty list for
# a query.
REFERENCE_EXPECTED: dict[tuple[str, str], int] = {
    ("create_task", "workspace_id"): 422,
    ("create_task", "category_id"): 422,
    ("create_task", "label_ids"): 422,
    ("update_task", "category_id"): 422,
    ("update_task", "label_ids"): 422,
    ("replace_task", "category_id"): 422,
    ("replace_task", "label_ids"): 422,
    ("create_category", "workspace_id"): 422,
    ("create_label", "workspace_id"): 422,
    ("list_tasks", "workspace_id"): 200,
    ("list_tasks", "category_id"): 200,
    ("list_tasks", "label_id"): 200,
    ("list_categories", "workspace_id"): 200,
    ("list_labels", "workspace_id"): 200,
    ("transfer_workspace", "user_id"): 422,
    ("list_workspace_activity", "task_id"): 200,
    ("list_workspace_activity", "actor_id"): 200,
    ("create_token", "workspace_id"): 422,
    ("create_calendar_feed", "workspace_id"): 422,
    ("get_agenda", "workspace_id"): 200,
}

# operationId -> the rest of the query, for the operations of the table that need more.
REFERENCE_QUERIES: dict[str, dict[str, str]] = {
    "get_agenda": {"from": "2026-01-01T00:00:00Z", "to": "2026-02-01T00:00:00Z"},
}
# operationId -> an answer with nothing in it, for the queries whose answer is not a list.
EMPTY_ANSWERS: dict[str, Any] = {
    "get_agenda": {
        "from": "2026-01-01T00:00:00Z",
        "to": "2026-02-01T00:00:00Z",
        "items": [],
        "calendars": [],
        "tasks_truncated": False,
    },
}

# operationId -> the minimal valid body, for the operations of the table without an id in
# their path (the others' are in BODIES); the field under test is added to it.
REFERENCE_BODIES: dict[str, dict[str, Any]] = {
    "create_task": {"title": "Made by the matrix"},
    "create_category": {"name": "Made by the matrix"},
    "create_label": {"name": "Made by the matrix"},
    "create_token": {"name": "Made by the matrix", "scopes": ["tasks:read"]},
    "create_calendar_feed": {},
}


@dataclass(frozen=True)
class Reference:
    """One field of one operation's body or query that names a resource by its id."""

    operation_id: str
    method: str
    path: str
    where: str  # "body" or "query"
    field: str
    many: bool  # the field takes a list of ids
    counted: bool  # the 200 answer carries X-Total-Count
    documented: frozenset[int]
    body_schema: str | None

    def __str__(self) -> str:
        return f"{self.method} {self.path} {self.where}.{self.field} ({self.operation_id})"


def _takes_a_list(schema: dict[str, Any]) -> bool:
    return schema.get("type") == "array" or any(
        option.get("type") == "array" for option in schema.get("anyOf", [])
    )


def _references(document: dict[str, Any]) -> Iterator[Reference]:
    schemas_of = document["components"]["schemas"]
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method not in ("get", "put", "post", "patch", "delete", "head", "options"):
                continue
            body = operation.get("requestBody", {}).get("content", {}).get("application/json")
            reference = body["schema"]["$ref"] if body else None
            body_schema = reference.rsplit("/", 1)[-1] if reference else None
            fields = [
                ("query", parameter["name"], parameter["schema"])
                for parameter in operation.get("parameters", [])
                if parameter["in"] == "query"
            ]
            if body_schema is not None:
                properties = schemas_of[body_schema]["properties"]
                fields += [("body", name, schema) for name, schema in properties.items()]
            success = operation["responses"].get("200", {})
            for where, name, schema in fields:
                if REFERENCE_FIELD.search(name):
                    yield Reference(
                        operation_id=operation["operationId"],
                        method=method.upper(),
                        path=path,
                        where=where,
                        field=name,
                        many=_takes_a_list(schema),
                        counted="X-Total-Count" in success.get("headers", {}),
                        documented=frozenset(
                            int(code) for code in operation["responses"] if code.isdigit()
                        ),
                        body_schema=body_schema,
                    )


REFERENCES = list(_references(DOCUMENT))


def _body_of(reference: Reference, world: World) -> dict[str, Any]:
    if reference.operation_id in BODIES:
        return BODIES[reference.operation_id](world)
    return dict(REFERENCE_BODIES[reference.operation_id])


def test_the_document_has_ids_in_bodies_and_queries() -> None:
    """The generator finds the fields it should (it would pass vacuously on none)."""
    found = {(reference.operation_id, reference.field) for reference in REFERENCES}
    assert {("create_task", "label_ids"), ("list_tasks", "label_id")} <= found, found


def test_every_id_in_a_body_or_a_query_has_a_row_and_every_row_a_field() -> None:
    found = {(reference.operation_id, reference.field) for reference in REFERENCES}
    assert found - set(REFERENCE_EXPECTED) == set(), "ids in bodies or queries missing"
    assert set(REFERENCE_EXPECTED) - found == set(), "rows for fields that are gone"


def test_every_id_in_a_body_or_a_query_names_a_resource_the_matrix_has() -> None:
    unknown = {str(reference) for reference in REFERENCES if reference.field not in NAMES}
    assert unknown == set(), "fields the matrix has no value for"


def test_a_body_answers_422_and_a_query_an_empty_list_as_documented() -> None:
    for reference in REFERENCES:
        status = REFERENCE_EXPECTED[(reference.operation_id, reference.field)]
        assert status == (422 if reference.where == "body" else 200), str(reference)
        assert status in reference.documented, str(reference)


def test_every_reference_body_is_valid_for_its_documented_schema(
    account: Account, other_account: Account
) -> None:
    """Each body, with the field under test set, passes the request model the document
    names: a 422 in the table is about the id, never about a bad body."""
    world = _placeholder_world(account, other_account)
    for reference in REFERENCES:
        if reference.where != "body":
            continue
        assert reference.body_schema is not None
        body = {**_body_of(reference, world), reference.field: [1] if reference.many else 1}
        getattr(schemas, reference.body_schema).model_validate(body, strict=False)


# Operations whose control needs a team of the attacker's, not their personal workspace
# (which cannot be transferred): the path names that team, and the attacker's own id for
# the field is their team's other member.
IN_A_TEAM = {"transfer_workspace"}


@dataclass(frozen=True)
class Attacker:
    """dan or mallory, and what they have of their own: a workspace, a category, a label
    and a task carrying both; and a team workspace the other one is a member of."""

    account: Account
    own: dict[str, int]
    team: dict[str, int]

    def of(self, reference: Reference) -> dict[str, int]:
        """Their own ids, for `reference`'s path and control."""
        return self.team if reference.operation_id in IN_A_TEAM else self.own


@pytest.fixture
async def attackers(
    client: AsyncClient, neighbour_account: Account, other_account: Account
) -> dict[str, Attacker]:
    """dan's and mallory's own rows, made through the API as each of them."""
    made = {}
    pairs = (
        ("member_of_other", neighbour_account, other_account),
        ("stranger", other_account, neighbour_account),
    )
    for caller, account, partner in pairs:

        async def post(url: str, body: dict[str, Any], account: Account = account) -> int:
            response = await client.post(url, json=body, headers=account.headers)
            assert response.status_code == 201, response.text
            made_id: int = response.json()["id"]
            return made_id

        category_id = await post("/categories", {"name": "Their own"})
        label_id = await post("/labels", {"name": "Their own"})
        task_id = await post(
            "/tasks",
            {"title": "Their own", "category_id": category_id, "label_ids": [label_id]},
        )
        team_id = await post("/workspaces", {"name": "Their team"})
        await add_member(client, team_id, partner.email, partner.headers, inviter=account.headers)
        made[caller] = Attacker(
            account,
            {
                "workspace_id": account.personal_workspace_id,
                "category_id": category_id,
                "label_id": label_id,
                "task_id": task_id,
                "user_id": account.user_id,
            },
            {"workspace_id": team_id, "user_id": partner.user_id},
        )
    return made


async def send(
    client: AsyncClient, reference: Reference, world: World, attacker: Attacker, named: int
) -> httpx.Response:
    """`reference`'s operation, as `attacker`, on their own resource where the path names
    one, with `named` as the field's id."""
    url = reference.path.format(**attacker.of(reference))
    headers = attacker.account.headers
    value: int | list[int] = [named] if reference.many else named
    if reference.where == "body":
        body = {**_body_of(reference, world), reference.field: value}
        return await client.request(reference.method, url, json=body, headers=headers)
    query = {**REFERENCE_QUERIES.get(reference.operation_id, {}), reference.field: value}
    return await client.request(reference.method, url, params=query, headers=headers)


def _as_sent(content: bytes, named: int) -> bytes:
    """An answer's bytes with the id it was sent, where its text names it (a 422 for
    label_ids says which id it refuses), written as `<id>`."""
    return re.sub(rb"(?<= )%d(?![0-9])" % named, b"<id>", content)


@pytest.mark.parametrize("caller", ATTACKERS)
@pytest.mark.parametrize("reference", REFERENCES, ids=str)
async def test_another_tenants_id_in_a_body_or_a_query_is_one_that_does_not_exist(
    client: AsyncClient,
    db_session: AsyncSession,
    world: World,
    attackers: dict[str, Attacker],
    reference: Reference,
    caller: str,
) -> None:
    key = (reference.operation_id, reference.field)
    assert key in REFERENCE_EXPECTED, f"{reference} has no row in the BOLA matrix"
    expected = REFERENCE_EXPECTED[key]
    attacker = attackers[caller]
    theirs = world.ids()[NAMES[reference.field]]
    before = await snapshot(db_session, world, attacker.of(reference)["workspace_id"])
    assert before["tasks"], "the world's rows must be visible to the checks"

    response = await send(client, reference, world, attacker, theirs)
    missing = await send(client, reference, world, attacker, MISSING_ID)

    assert response.status_code == expected, (str(reference), caller, response.text)
    if expected == 422:
        assert_validation_problem(response, f"body.{reference.field}")
    else:
        empty = EMPTY_ANSWERS.get(reference.operation_id, [])
        assert response.json() == empty, (str(reference), caller)
        if reference.counted:
            assert response.headers["X-Total-Count"] == "0"
    # Not even the answer tells another tenant's id from one that does not exist.
    assert missing.status_code == response.status_code, missing.text
    for header in ("content-type", "X-Total-Count", "Link"):
        assert response.headers.get(header) == missing.headers.get(header), header
    assert _as_sent(response.content, theirs) == _as_sent(missing.content, MISSING_ID)
    assert await snapshot(db_session, world, attacker.of(reference)["workspace_id"]) == before

    # The control: naming their own resource instead, the same request does its work.
    own_id = attacker.of(reference)[NAMES[reference.field]]
    own = await send(client, reference, world, attacker, own_id)
    if expected == 422:
        assert own.status_code in (200, 201), own.text
    else:
        assert own.status_code == 200, own.text
        if reference.operation_id in EMPTY_ANSWERS:
            # Their own workspace's agenda: its calendars listed (none are subscribed).
            assert own.json()["from"] == EMPTY_ANSWERS[reference.operation_id]["from"]
        else:
            assert own.json() != [], (str(reference), caller)


CACHED_QUERIES = [reference for reference in REFERENCES if reference.operation_id == "list_tasks"]


@pytest.mark.parametrize("caller", ATTACKERS)
async def test_another_tenants_id_in_a_query_with_the_cache(
    cached_client: AsyncClient,
    world: World,
    attackers: dict[str, Attacker],
    caller: str,
) -> None:
    """The task list's filters naming alice's ids, with the cache on and the attacker's
    pages already cached: an empty list, as for an id that does not exist, from the
    cache; and their own id still lists their own task."""
    assert CACHED_QUERIES, "the generator finds the task list's id filters"
    client, attacker = cached_client, attackers[caller]
    for reference in CACHED_QUERIES:
        theirs = world.ids()[NAMES[reference.field]]
        own_id = attacker.of(reference)[NAMES[reference.field]]
        for named in (theirs, MISSING_ID, own_id, theirs, MISSING_ID, own_id):  # cached
            assert (await send(client, reference, world, attacker, named)).status_code == 200
        hits = _hits("page")

        response = await send(client, reference, world, attacker, theirs)
        missing = await send(client, reference, world, attacker, MISSING_ID)
        own = await send(client, reference, world, attacker, own_id)

        assert _hits("page") == hits + 3, (str(reference), "not from the cache")
        assert (response.status_code, response.json()) == (200, []), str(reference)
        assert response.headers["X-Total-Count"] == "0"
        for header in ("content-type", "X-Total-Count", "Link"):
            assert response.headers.get(header) == missing.headers.get(header), header
        assert response.content == missing.content
        assert own.status_code == 200, own.text
        assert [task["id"] for task in own.json()] == [attacker.own["task_id"]], str(reference)
