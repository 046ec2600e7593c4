"""Every change of a workspace's data writes its activity rows, and nothing else does: a
sweep over every mutating operation of the OpenAPI document (POST, PUT, PATCH, DELETE).

Each operation has a row in EXPECTED: the request that succeeds (sent to the operation's
own path, its ids from the world of conftest.py) and the rows it must write, exactly (kind,
object, workspace, actor, the fields before and after, and the request id: the response's
X-Request-ID). Operations that change no workspace data (logging in, a display name) are
there too, writing nothing. FAILURES holds, for each operation that writes, a request that
fails (404, 409, 412, 422): it writes none. An operation missing from either table fails
the sweep, so a new route is checked the moment it is in the document.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import httpx
import pytest
from httpx import AsyncClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from taskmanager.config import Settings
from taskmanager.main import create_app
from taskmanager.security.mail_tokens import MailTokenKey
from tests.activity.conftest import World, activity_after, last_activity_id
from tests.support.accounts import PASSWORD, TEST_SECRET, Account

MUTATING = ("post", "put", "patch", "delete")
DOCUMENT = create_app(Settings(jwt_secret=TEST_SECRET)).openapi()
MISSING_ID = 2_147_483_000
MISSING_UUID = "00000000-0000-4000-8000-000000000000"
NEW_EMAIL = "newcomer.activity@example.com"


@dataclass(frozen=True)
class Operation:
    operation_id: str
    method: str
    path: str

    def __str__(self) -> str:
        return f"{self.method} {self.path} ({self.operation_id})"


OPERATIONS = [
    Operation(operation["operationId"], method.upper(), path)
    for path, item in DOCUMENT["paths"].items()
    for method, operation in item.items()
    if method in MUTATING
]


@dataclass(frozen=True)
class Row:
    """An activity row as expected: made by alice ("owner"), by the account the request
    itself made ("new"), or by olga ("outsider", answering her invitation)."""

    kind: str
    object_id: Callable[[World, httpx.Response], int]
    workspace_id: Callable[[World, httpx.Response], int]
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    actor: str = "owner"


@dataclass(frozen=True)
class Call:
    """One request of an operation: path ids beyond the world's, a body, headers, and
    whether it goes without alice's token (the auth operations); the status it gets and
    the rows it writes."""

    status: int
    rows: tuple[Row, ...] = ()
    body: Callable[[World], dict[str, Any]] | None = None
    form: dict[str, str] | None = None
    ids: dict[str, int | str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    token: bool = True
    # Whose token it sends: alice's ("owner") or olga's ("outsider": the invitee).
    caller: str = "owner"


def _workspace(world: World, response: httpx.Response) -> int:
    return world.workspace_id


def _task(world: World, response: httpx.Response) -> int:
    return world.task_id


def _created(world: World, response: httpx.Response) -> int:
    made: int = response.json()["id"]
    return made


def _created_id(world: World, response: httpx.Response) -> str:
    made: str = response.json()["id"]
    return made


def _invitation(world: World, response: httpx.Response) -> str:
    assert world.invitation_id is not None
    return world.invitation_id


def _outsider(world: World, response: httpx.Response) -> int:
    return world.outsider.user_id


def _token_of(world: World) -> str:
    """The token of the mailed link of the world's invitation (derived as the mail's is)."""
    assert world.invitation_id is not None
    return MailTokenKey(TEST_SECRET).token(uuid.UUID(world.invitation_id))


def _new_user(world: World, response: httpx.Response) -> int:
    assert world.new_account is not None
    return world.new_account[0]


def _new_personal_workspace(world: World, response: httpx.Response) -> int:
    assert world.new_account is not None
    return world.new_account[1]


@dataclass(frozen=True)
class Placeholder:
    """A value of the table that only the world knows (an id)."""

    name: str


OWNER = Placeholder("alice's user id")
STAMP = Placeholder("a moment (when the change was made, or an invitation expires)")
NEW = Placeholder("the new account's user id")
CATEGORY = Placeholder("the world's category id")
LABEL = Placeholder("the world's label id")

TASK_FIELDS = {
    "title": "Buy bread",
    "description": None,
    "completed": False,
    "category_id": None,
    "due_at": None,
    "priority": "low",
    "completed_at": None,
}

ACCEPTED = (
    Row(
        "invitation.accepted",
        _invitation,
        _workspace,
        before={"accepted_at": None},
        after={"accepted_at": STAMP},
        actor="outsider",
    ),
    Row("member.added", _outsider, _workspace, after={"role": "member"}, actor="outsider"),
)

# operationId -> the request that succeeds and what it writes.
EXPECTED: dict[str, Call] = {
    # The address and the token's hash are not logged: the log is every member's to read,
    # a workspace's invitations are its managers'.
    "create_invitation": Call(
        202,
        (
            Row(
                "invitation.created",
                _created_id,
                _workspace,
                after={
                    "role": "viewer",
                    "invited_by": OWNER,
                    "expires_at": STAMP,
                    "accepted_at": None,
                    "declined_at": None,
                    "revoked_at": None,
                    "send_count": 1,
                },
            ),
        ),
        body=lambda world: {"email": "fresh.invitee@example.com", "role": "viewer"},
    ),
    "revoke_invitation": Call(
        204,
        (
            Row(
                "invitation.revoked",
                _invitation,
                _workspace,
                before={"revoked_at": None},
                after={"revoked_at": STAMP},
            ),
        ),
    ),
    "resend_invitation": Call(
        202,
        (
            Row(
                "invitation.resent",
                _invitation,
                _workspace,
                before={"send_count": 1},
                after={"send_count": 2},
            ),
        ),
    ),
    "accept_invitation": Call(200, ACCEPTED, caller="outsider"),
    "accept_invitation_by_token": Call(
        200, ACCEPTED, body=lambda world: {"token": _token_of(world)}, caller="outsider"
    ),
    "decline_invitation": Call(
        204,
        (
            Row(
                "invitation.declined",
                _invitation,
                _workspace,
                before={"declined_at": None},
                after={"declined_at": STAMP},
                actor="outsider",
            ),
        ),
        caller="outsider",
    ),
    "auth_register": Call(
        202,
        (
            Row(
                "workspace.created",
                _new_personal_workspace,
                _new_personal_workspace,
                after={"name": "Personal", "personal": True, "created_by": NEW},
                actor="new",
            ),
            Row(
                "member.added",
                _new_user,
                _new_personal_workspace,
                after={"role": "owner"},
                actor="new",
            ),
        ),
        body=lambda world: {"email": NEW_EMAIL, "password": PASSWORD},
        token=False,
    ),
    # The flows of mailed links change accounts only (users, account_tokens, auth_sessions:
    # no workspace's data). Their successes need a mailed token (tests/mail); here, a token
    # that is not one, and a resend for an address already verified, write nothing either.
    "auth_verify_email": Call(422, body=lambda world: {"token": "not-a-mailed-token"}, token=False),
    "auth_resend_verification": Call(409),
    "auth_request_password_reset": Call(
        202, body=lambda world: {"email": world.owner.email}, token=False
    ),
    "auth_confirm_password_reset": Call(
        422,
        body=lambda world: {"token": "not-a-mailed-token", "new_password": PASSWORD},
        token=False,
    ),
    "auth_login": Call(200, form={"username": "alice@example.com", "password": PASSWORD}),
    "auth_refresh": Call(200, body=lambda world: {"refresh_token": world.owner.refresh_token}),
    "auth_logout": Call(204),
    "auth_logout_all": Call(204),
    "users_update_me": Call(200, body=lambda world: {"display_name": "Alice A."}),
    # Personal access tokens are the account's, not a workspace's.
    "create_token": Call(201, body=lambda world: {"name": "sweep", "scopes": ["tasks:read"]}),
    "revoke_token": Call(404, ids={"token_id": "00000000-0000-4000-8000-000000000000"}),
    "revoke_all_tokens": Call(204),
    "create_workspace": Call(
        201,
        (
            Row(
                "workspace.created",
                _created,
                _created,
                after={"name": "Garden", "personal": False, "created_by": OWNER},
            ),
            Row("member.added", lambda w, r: w.owner.user_id, _created, after={"role": "owner"}),
        ),
        body=lambda world: {"name": "Garden"},
    ),
    "rename_workspace": Call(
        200,
        (
            Row(
                "workspace.renamed",
                _workspace,
                _workspace,
                before={"name": "Activity"},
                after={"name": "Chores"},
            ),
        ),
        body=lambda world: {"name": "Chores"},
    ),
    # Its members, tasks, categories and labels go with it, unlogged: see test_cascades.
    "delete_workspace": Call(
        204,
        (
            Row(
                "workspace.deleted",
                _workspace,
                _workspace,
                before={"name": "Activity", "personal": False, "created_by": OWNER},
            ),
        ),
    ),
    "workspaces_remove_member": Call(
        204,
        (
            Row(
                "member.removed",
                lambda w, r: w.member.user_id,
                _workspace,
                before={"role": "member"},
            ),
        ),
    ),
    "workspaces_change_member_role": Call(
        200,
        (
            Row(
                "member.role_changed",
                lambda w, r: w.member.user_id,
                _workspace,
                before={"role": "member"},
                after={"role": "viewer"},
            ),
        ),
        body=lambda world: {"role": "viewer"},
    ),
    # The new owner first, then the old one steps down to admin.
    "transfer_workspace": Call(
        200,
        (
            Row(
                "member.role_changed",
                lambda w, r: w.member.user_id,
                _workspace,
                before={"role": "member"},
                after={"role": "owner"},
            ),
            Row(
                "member.role_changed",
                lambda w, r: w.owner.user_id,
                _workspace,
                before={"role": "owner"},
                after={"role": "admin"},
            ),
        ),
        body=lambda world: {"user_id": world.member.user_id},
    ),
    "create_task": Call(
        201,
        (
            Row("task.created", _created, _workspace, after=TASK_FIELDS),
            Row("task.label_added", _created, _workspace, after={"label_id": LABEL}),
        ),
        body=lambda world: {
            "title": "Buy bread",
            "workspace_id": world.workspace_id,
            "label_ids": [world.label_id],
        },
    ),
    "update_task": Call(
        200,
        (
            Row(
                "task.updated",
                _task,
                _workspace,
                before={"title": "Buy milk", "priority": "low"},
                after={"title": "Buy oat milk", "priority": "high"},
            ),
        ),
        body=lambda world: {"title": "Buy oat milk", "priority": "high"},
    ),
    "replace_task": Call(
        200,
        (
            Row(
                "task.updated",
                _task,
                _workspace,
                before={"title": "Buy milk"},
                after={"title": "Buy oat milk"},
            ),
        ),
        body=lambda world: {"title": "Buy oat milk"},
    ),
    # Its label goes with it, unlogged.
    "delete_task": Call(
        204,
        (
            Row(
                "task.deleted",
                _task,
                _workspace,
                before={**TASK_FIELDS, "title": "Buy milk", "category_id": CATEGORY},
            ),
        ),
    ),
    "create_category": Call(
        201,
        (Row("category.created", _created, _workspace, after={"name": "Garden"}),),
        body=lambda world: {"name": "Garden", "workspace_id": world.workspace_id},
    ),
    "rename_category": Call(
        200,
        (
            Row(
                "category.renamed",
                lambda w, r: w.category_id,
                _workspace,
                before={"name": "Errands"},
                after={"name": "Shopping"},
            ),
        ),
        body=lambda world: {"name": "Shopping"},
    ),
    # The task that had it loses it: its history says so.
    "delete_category": Call(
        204,
        (
            Row(
                "category.deleted",
                lambda w, r: w.category_id,
                _workspace,
                before={"name": "Errands"},
            ),
            Row(
                "task.updated",
                _task,
                _workspace,
                before={"category_id": CATEGORY},
                after={"category_id": None},
            ),
        ),
    ),
    "create_label": Call(
        201,
        (Row("label.created", _created, _workspace, after={"name": "later", "colour": "#00ff00"}),),
        body=lambda world: {
            "name": "later",
            "colour": "#00FF00",
            "workspace_id": world.workspace_id,
        },
    ),
    "update_label": Call(
        200,
        (
            Row(
                "label.updated",
                lambda w, r: w.label_id,
                _workspace,
                before={"colour": None},
                after={"colour": "#112233"},
            ),
        ),
        body=lambda world: {"colour": "#112233"},
    ),
    # The task that had it loses it: its history says so.
    "delete_label": Call(
        204,
        (
            Row(
                "label.deleted",
                lambda w, r: w.label_id,
                _workspace,
                before={"name": "soon", "colour": None},
            ),
            Row("task.label_removed", _task, _workspace, before={"label_id": LABEL}),
        ),
    ),
    # Webhook endpoints are the managers' configuration, not the workspace's data: not in
    # the log every member reads (it would show viewers where the data goes, and the log is
    # what webhooks send). A replay or a test event is a delivery, not a change.
    "create_webhook": Call(
        201, body=lambda world: {"url": "http://127.0.0.1:9/more", "events": ["task.deleted"]}
    ),
    "update_webhook": Call(200, body=lambda world: {"description": "changed"}),
    "delete_webhook": Call(204),
    "rotate_webhook_secret": Call(200),
    "replay_webhook_delivery": Call(202),
    "send_webhook_test": Call(202),
    # A calendar feed is its owner's, not the workspace's; a subscribed calendar is
    # fetched, not edited, and its state is the fetcher's: neither is a change of the
    # workspace's content that its members' log shows.
    "create_calendar_feed": Call(201, body=lambda world: {}),
    "regenerate_calendar_feed": Call(200),
    "delete_calendar_feed": Call(204),
    "create_calendar": Call(
        201, body=lambda world: {"url": "http://127.0.0.1:9/sweep.ics", "name": "Sweep"}
    ),
    "delete_calendar": Call(204),
    "refresh_calendar": Call(200),
}

# operationId -> a request of it that fails, for every operation that writes activity.
FAILURES: dict[str, Call] = {
    "create_invitation": Call(409, body=lambda world: {"email": world.outsider.email.upper()}),
    "revoke_invitation": Call(404, ids={"invitation_id": MISSING_UUID}),
    "resend_invitation": Call(404, ids={"invitation_id": MISSING_UUID}),
    # alice is not the invitee.
    "accept_invitation": Call(404),
    "decline_invitation": Call(404),
    "accept_invitation_by_token": Call(
        422, body=lambda world: {"token": "not-an-invitation-token"}, caller="outsider"
    ),
    "auth_register": Call(
        422, body=lambda world: {"email": NEW_EMAIL, "password": "short"}, token=False
    ),
    "create_workspace": Call(422, body=lambda world: {"name": "   "}),
    "rename_workspace": Call(412, body=lambda world: {"name": "x"}, headers={"If-Match": '"99"'}),
    "delete_workspace": Call(404, ids={"workspace_id": MISSING_ID}),
    "workspaces_remove_member": Call(404, ids={"user_id": MISSING_ID}),
    "workspaces_change_member_role": Call(
        404, body=lambda world: {"role": "viewer"}, ids={"user_id": MISSING_ID}
    ),
    "transfer_workspace": Call(422, body=lambda world: {"user_id": MISSING_ID}),
    "create_task": Call(
        422,
        body=lambda world: {
            "title": "x",
            "workspace_id": world.workspace_id,
            "label_ids": [MISSING_ID],
        },
    ),
    "update_task": Call(412, body=lambda world: {"title": "x"}, headers={"If-Match": '"99"'}),
    "replace_task": Call(404, body=lambda world: {"title": "x"}, ids={"task_id": MISSING_ID}),
    "delete_task": Call(412, headers={"If-Match": '"99"'}),
    "create_category": Call(
        409, body=lambda world: {"name": "errands", "workspace_id": world.workspace_id}
    ),
    "rename_category": Call(422, body=lambda world: {"name": ""}),
    "delete_category": Call(404, ids={"category_id": MISSING_ID}),
    "create_label": Call(
        409, body=lambda world: {"name": "SOON", "workspace_id": world.workspace_id}
    ),
    "update_label": Call(422, body=lambda world: {"colour": "green"}),
    "delete_label": Call(412, headers={"If-Match": '"99"'}),
}


def _url(operation: Operation, world: World, call: Call) -> str:
    return operation.path.format(**{**world.ids(), **call.ids})


async def send(
    client: AsyncClient, operation: Operation, world: World, call: Call, request_id: str
) -> httpx.Response:
    headers = {"X-Request-ID": request_id, **call.headers}
    if call.token:
        headers.update(getattr(world, call.caller).headers)
    else:
        client.headers.pop("Authorization", None)
    kwargs: dict[str, Any] = {"headers": headers}
    if call.body is not None:
        kwargs["json"] = call.body(world)
    if call.form is not None:
        kwargs["data"] = call.form
    return await client.request(operation.method, _url(operation, world, call), **kwargs)


class _AnyMoment:
    """Equal to any timestamp as the log writes one (JSON text)."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and re.fullmatch(r"\d{4}-\d\d-\d\dT.+", other) is not None

    def __hash__(self) -> int:
        return 0

    def __repr__(self) -> str:
        return "<any moment>"


def _expected_value(value: Any, world: World, actor: int) -> Any:
    """A value of the table, a placeholder as the world has it."""
    if not isinstance(value, Placeholder):
        return value
    if value is STAMP:
        return _AnyMoment()
    return {
        OWNER: world.owner.user_id,
        NEW: actor,
        CATEGORY: world.category_id,
        LABEL: world.label_id,
    }[value]


def _fields(values: dict[str, Any] | None, world: World, actor: int) -> dict[str, Any] | None:
    if values is None:
        return None
    return {name: _expected_value(value, world, actor) for name, value in values.items()}


# ─────────────────────────────── the tables are complete


def test_the_document_has_mutating_operations() -> None:
    found = {operation.operation_id for operation in OPERATIONS}
    assert {"create_task", "delete_workspace", "auth_register"} <= found, found


def test_every_mutating_operation_has_an_expectation_and_every_expectation_an_operation() -> None:
    found = {operation.operation_id for operation in OPERATIONS}
    assert found - set(EXPECTED) == set(), "mutating operations missing from EXPECTED"
    assert set(EXPECTED) - found == set(), "rows of EXPECTED for operations that are gone"


def test_every_operation_that_writes_has_a_failure() -> None:
    writing = {name for name, call in EXPECTED.items() if call.rows}
    assert set(FAILURES) == writing


# ─────────────────────────────── the sweep


@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda operation: operation.operation_id)
async def test_a_success_writes_exactly_its_activity(
    client: AsyncClient, db_session: AsyncSession, invited_world: World, operation: Operation
) -> None:
    world = invited_world
    assert operation.operation_id in EXPECTED, f"{operation} has no row in EXPECTED"
    call = EXPECTED[operation.operation_id]
    before = await last_activity_id(db_session)

    response = await send(client, operation, world, call, f"sweep-{operation.operation_id}")

    assert response.status_code == call.status, (str(operation), response.text)
    assert response.headers["X-Request-ID"] == f"sweep-{operation.operation_id}"
    written = await activity_after(db_session, before)
    actor = world.owner.user_id
    if any(row.actor == "new" for row in call.rows):
        made = await db_session.execute(
            text("SELECT id, personal_workspace_id FROM users WHERE email = :email"),
            {"email": NEW_EMAIL},
        )
        world = replace(world, new_account=tuple(made.one()))
        actor = _new_user(world, response)
    got = [
        (
            row.kind,
            row.object_type,
            row.object_id,
            row.workspace_id,
            row.actor_id,
            row.before,
            row.after,
            row.request_id,
        )
        for row in written
    ]
    expected = [
        (
            row.kind,
            row.kind.split(".")[0],
            str(row.object_id(world, response)),
            row.workspace_id(world, response),
            world.outsider.user_id if row.actor == "outsider" else actor,
            _fields(row.before, world, actor),
            _fields(row.after, world, actor),
            response.headers["X-Request-ID"],
        )
        for row in call.rows
    ]
    assert got == expected, str(operation)


@pytest.mark.parametrize("operation_id", sorted(FAILURES))
async def test_a_failed_request_writes_no_activity(
    client: AsyncClient, db_session: AsyncSession, invited_world: World, operation_id: str
) -> None:
    world = invited_world
    (operation,) = [op for op in OPERATIONS if op.operation_id == operation_id]
    call = FAILURES[operation_id]
    before = await last_activity_id(db_session)

    response = await send(client, operation, world, call, f"failed-{operation_id}")

    assert response.status_code == call.status, (str(operation), response.text)
    assert await activity_after(db_session, before) == []


async def _sequence(db_session: AsyncSession) -> int:
    return int(
        (await db_session.execute(text("SELECT last_value FROM activity_id_seq"))).scalar_one()
    )


async def test_a_change_rolled_back_after_its_activity_was_written_leaves_none(
    client: AsyncClient, db_session: AsyncSession, world: World, account: Account
) -> None:
    """PATCH replaces the task's labels first (written, and logged: the sequence moves),
    then its category of no workspace fails the foreign key: 422, and the transaction's
    rows, the activity row among them, are gone."""
    other_label = (
        await client.post(
            "/labels",
            json={"name": "other", "workspace_id": world.workspace_id},
            headers=account.headers,
        )
    ).json()["id"]
    before = await last_activity_id(db_session)
    drawn = await _sequence(db_session)

    response = await client.patch(
        f"/tasks/{world.task_id}",
        json={"label_ids": [other_label], "category_id": MISSING_ID},
        headers=account.headers,
    )

    assert response.status_code == 422, response.text
    assert await _sequence(db_session) > drawn, "the labels' activity was never written"
    assert await activity_after(db_session, before) == []


def test_the_request_ids_of_the_sweep_are_what_the_middleware_echoes() -> None:
    """The sweep sends its own X-Request-ID; the middleware keeps one of that shape."""
    assert all(
        re.fullmatch(r"[A-Za-z0-9._:@/+=-]{1,128}", f"sweep-{op.operation_id}") for op in OPERATIONS
    )
