# ruff: noqa: F811
"""Personal access tokens against every operation, as a matrix generated from the OpenAPI
document: every operation that takes a bearer token has a row in NEEDED, or the test fails.

The world is the BOLA matrix's (test_bola_matrix.py): alice owns a workspace with a task,
a category, a label and members of every role, and shares another workspace with dan.
alice makes the tokens (with her login), so her role (owner) allows everything and only the
token's scopes and workspace decide. For every operation:

- a token with exactly the scopes NEEDED gets what alice's login gets (the documented
  success), and the change happens;
- for each scope NEEDED, a token with every scope but that one (and but those that include
  it) gets 403, a problem naming that scope, and nothing changes;
- a token with every scope but bound to alice's other workspace gets 404 for the world's
  resources, byte for byte the answer for an id that does not exist, and nothing changes;
- an operation that needs a login session (making, listing, revoking tokens; logging out)
  answers any token 403 naming the login session, and nothing changes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from httpx import AsyncClient
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from taskmanager.models import AccessToken, Membership, User
from taskmanager.problems import FORBIDDEN
from taskmanager.security.access_tokens import TOKEN_SCOPES, TokenScope, with_implied

# The BOLA matrix's fixture, which pytest finds by its name here (the tests' parameters
# named `world` are that fixture, not a redefinition: hence F811 off for this file).
from tests.auth.test_bola_matrix import (
    BODIES,
    DOCUMENT,
    MISSING_IDS,
    NO_ROW_CHANGE,
    REFERENCE_QUERIES,
    World,
    snapshot,
    world,  # noqa: F401
)
from tests.support.problems import assert_problem
from tests.support.tokens import bearer, make_access_token

LOGIN = "a login session"


@dataclass(frozen=True)
class Needed:
    """What a token needs for the world's request, and what that request then answers."""

    status: int
    scopes: tuple[str, ...]  # the first is the one the operation names (x-token-scope)


def _needs(status: int, *scopes: str) -> Needed:
    return Needed(status, scopes)


# operationId -> the scopes a token needs (and alice's status), or LOGIN.
NEEDED: dict[str, Needed | str] = {
    "auth_logout": LOGIN,
    "auth_logout_all": LOGIN,
    "users_get_me": _needs(200, "account:read"),
    "users_update_me": _needs(200, "account:write"),
    "create_token": LOGIN,
    "list_tokens": LOGIN,
    "revoke_token": LOGIN,
    "revoke_all_tokens": LOGIN,
    "auth_resend_verification": LOGIN,
    # Answering an invitation joins a workspace: the account's own act, with a login.
    "list_my_invitations": LOGIN,
    "accept_invitation": LOGIN,
    "accept_invitation_by_token": LOGIN,
    "decline_invitation": LOGIN,
    "create_invitation": _needs(202, "members:write", "tasks:write"),
    "list_workspace_invitations": _needs(200, "members:write"),
    "revoke_invitation": _needs(204, "members:write", "tasks:write"),
    "resend_invitation": _needs(202, "members:write", "tasks:write"),
    "list_workspace_activity": _needs(200, "tasks:read"),
    "list_task_activity": _needs(200, "tasks:read"),
    "list_workspaces": _needs(200, "tasks:read"),
    "create_workspace": _needs(201, "workspaces:write"),
    "get_workspace": _needs(200, "tasks:read"),
    "rename_workspace": _needs(200, "workspaces:write"),
    "delete_workspace": _needs(204, "workspaces:write"),
    # The member changed or removed is one who writes: so must the token.
    "workspaces_get_member": _needs(200, "tasks:read"),
    "workspaces_remove_member": _needs(204, "members:write", "tasks:write"),
    "workspaces_change_member_role": _needs(200, "members:write", "tasks:write"),
    # Making someone an owner: everything an owner may do.
    "transfer_workspace": _needs(200, "workspaces:write", "members:write", "tasks:write"),
    "create_task": _needs(201, "tasks:write"),
    "list_tasks": _needs(200, "tasks:read"),
    "get_task": _needs(200, "tasks:read"),
    "update_task": _needs(200, "tasks:write"),
    "replace_task": _needs(200, "tasks:write"),
    "delete_task": _needs(204, "tasks:write"),
    "create_category": _needs(201, "tasks:write"),
    "list_categories": _needs(200, "tasks:read"),
    "get_category": _needs(200, "tasks:read"),
    "rename_category": _needs(200, "tasks:write"),
    "delete_category": _needs(204, "tasks:write"),
    "create_label": _needs(201, "tasks:write"),
    "list_labels": _needs(200, "tasks:read"),
    "get_label": _needs(200, "tasks:read"),
    "update_label": _needs(200, "tasks:write"),
    "delete_label": _needs(204, "tasks:write"),
    # A feed's URL reads tasks with no token at all: making one is the account's own act.
    "create_calendar_feed": LOGIN,
    "list_calendar_feeds": LOGIN,
    "regenerate_calendar_feed": LOGIN,
    "delete_calendar_feed": LOGIN,
    "create_calendar": _needs(201, "tasks:write"),
    "list_calendars": _needs(200, "tasks:read"),
    "delete_calendar": _needs(204, "tasks:write"),
    "refresh_calendar": _needs(200, "tasks:write"),
    "get_agenda": _needs(200, "tasks:read"),
    # Webhooks: a manager's (members:write), as invitations are.
    "create_webhook": _needs(201, "members:write"),
    "list_webhooks": _needs(200, "members:write"),
    "get_webhook": _needs(200, "members:write"),
    "update_webhook": _needs(200, "members:write"),
    "delete_webhook": _needs(204, "members:write"),
    "rotate_webhook_secret": _needs(200, "members:write"),
    "list_webhook_deliveries": _needs(200, "members:write"),
    "replay_webhook_delivery": _needs(202, "members:write"),
    "send_webhook_test": _needs(202, "members:write"),
}

# Bodies of the operations without an id in their path (the others' are BODIES').
MORE_BODIES: dict[str, Callable[[World], dict[str, Any]]] = {
    "users_update_me": lambda world: {"display_name": "Renamed by a token"},
    "create_workspace": lambda world: {"name": "Made by a token"},
    "create_task": lambda world: {"title": "Made by a token", "workspace_id": world.workspace_id},
    "create_category": lambda world: {"name": "Token", "workspace_id": world.workspace_id},
    "create_label": lambda world: {"name": "Token", "workspace_id": world.workspace_id},
    "create_token": lambda world: {"name": "Made by a token", "scopes": ["tasks:read"]},
    "auth_logout_all": lambda world: {"include_access_tokens": True},
    "accept_invitation_by_token": lambda world: {"token": "a-mailed-token"},
    "create_calendar_feed": lambda world: {},
}


@dataclass(frozen=True)
class Operation:
    operation_id: str
    method: str
    path: str
    path_parameters: tuple[str, ...]
    has_body: bool
    token_scope: str | None  # x-token-scope
    documented: frozenset[int]

    def __str__(self) -> str:
        return f"{self.method} {self.path} ({self.operation_id})"


def _operations(document: dict[str, Any]) -> list[Operation]:
    """Every operation that takes a bearer token."""
    found = []
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if not operation.get("security"):
                continue
            found.append(
                Operation(
                    operation_id=operation["operationId"],
                    method=method.upper(),
                    path=path,
                    path_parameters=tuple(re.findall(r"{([^}]+)}", path)),
                    has_body="requestBody" in operation,
                    token_scope=operation.get("x-token-scope"),
                    documented=frozenset(
                        int(code) for code in operation["responses"] if code.isdigit()
                    ),
                )
            )
    return found


OPERATIONS = _operations(DOCUMENT)
WITH_SCOPES = [op for op in OPERATIONS if isinstance(NEEDED.get(op.operation_id), Needed)]
LOGIN_ONLY = [op for op in OPERATIONS if NEEDED.get(op.operation_id) == LOGIN]
IN_A_WORKSPACE = [op for op in WITH_SCOPES if op.path_parameters]


def _needed(operation: Operation) -> Needed:
    needed = NEEDED[operation.operation_id]
    assert isinstance(needed, Needed), operation
    return needed


# (operation, the scope its token lacks)
WITHOUT = [(op, scope) for op in WITH_SCOPES for scope in _needed(op).scopes]


def _without(scope: str) -> list[str]:
    """Every scope but `scope` and those that include it."""
    return [other for other in TOKEN_SCOPES if scope not in with_implied([TokenScope(other)])]


# ─────────────────────────────── the table is complete and right


def test_the_document_has_the_operations() -> None:
    found = {operation.operation_id for operation in OPERATIONS}
    assert {"get_task", "create_token", "users_get_me", "auth_logout"} <= found, found


# The operations that take no bearer token at all, so the matrix (which reads the others off
# the document's `security`) cannot miss a route that checks its caller some other way.
PUBLIC = {
    "auth_register",
    "auth_login",
    "auth_refresh",
    "auth_verify_email",
    "auth_request_password_reset",
    "auth_confirm_password_reset",
    "health_live",
    "health_ready",
    # Its secret URL is its credential (a calendar app sends no header): tests/calendar.
    "get_calendar_feed",
}


def test_every_operation_without_a_bearer_token_is_a_known_public_one() -> None:
    public = {
        operation["operationId"]
        for item in DOCUMENT["paths"].values()
        for operation in item.values()
        if not operation.get("security")
    }
    assert public == PUBLIC


def test_every_operation_with_a_bearer_token_has_a_row_and_every_row_an_operation() -> None:
    found = {operation.operation_id for operation in OPERATIONS}
    assert found - set(NEEDED) == set(), "operations missing from the access token matrix"
    assert set(NEEDED) - found == set(), "rows for operations that are gone"


def test_the_document_names_each_operations_scope_as_the_table_does() -> None:
    for operation in OPERATIONS:
        needed = NEEDED[operation.operation_id]
        expected = needed.scopes[0] if isinstance(needed, Needed) else None
        assert operation.token_scope == expected, str(operation)


def test_every_status_is_documented() -> None:
    for operation in OPERATIONS:
        needed = NEEDED[operation.operation_id]
        statuses = {403} | ({needed.status} if isinstance(needed, Needed) else set())
        if operation.path_parameters and isinstance(needed, Needed):
            statuses.add(404)
        assert statuses <= operation.documented, (str(operation), statuses)


def test_bodies_are_given_for_exactly_the_operations_with_a_body() -> None:
    with_body = {op.operation_id for op in OPERATIONS if op.has_body}
    assert with_body == (set(BODIES) | set(MORE_BODIES)) & set(NEEDED)


# ─────────────────────────────── the matrix


async def _snapshot(db_session: AsyncSession, world: World) -> dict[str, list[tuple[Any, ...]]]:
    """The BOLA matrix's rows, alice's account and workspaces, and the tokens."""
    rows = await snapshot(db_session, world)
    rows["account"] = [
        tuple(row)
        for row in await db_session.execute(
            select(User.display_name, User.password_hash).where(User.id == world.owner.user_id)
        )
    ]
    rows["alices_workspaces"] = sorted(
        await db_session.scalars(
            select(Membership.workspace_id).where(Membership.user_id == world.owner.user_id)
        )
    )
    rows["tokens"] = sorted(
        tuple(row) for row in await db_session.execute(select(AccessToken.id, AccessToken.name))
    )
    return rows


async def _call(
    client: AsyncClient,
    operation: Operation,
    world: World,
    token: str,
    ids: dict[str, int | str] | None = None,
) -> httpx.Response:
    url = operation.path.format(**(ids or world.ids()))
    kwargs: dict[str, Any] = {}
    if operation.has_body:
        bodies = {**BODIES, **MORE_BODIES}
        kwargs["json"] = bodies[operation.operation_id](world)
    if operation.operation_id in REFERENCE_QUERIES:
        kwargs["params"] = REFERENCE_QUERIES[operation.operation_id]
    return await client.request(operation.method, url, headers=bearer(token), **kwargs)


async def _token(client: AsyncClient, world: World, scopes: list[str], **body: Any) -> str:
    made = await make_access_token(client, world.owner, scopes, **body)
    return str(made["token"])


@pytest.mark.parametrize("operation", WITH_SCOPES, ids=lambda operation: operation.operation_id)
async def test_a_token_with_exactly_the_scopes_needed_succeeds(
    client: AsyncClient, db_session: AsyncSession, world: World, operation: Operation
) -> None:
    needed = _needed(operation)
    token = await _token(client, world, list(needed.scopes))
    before = await _snapshot(db_session, world)

    response = await _call(client, operation, world, token)

    assert response.status_code == needed.status, (str(operation), response.text)
    after = await _snapshot(db_session, world)
    if operation.method == "GET" or operation.operation_id in NO_ROW_CHANGE:
        assert after == before
    else:
        assert after != before


@pytest.mark.parametrize(
    ("operation", "scope"), WITHOUT, ids=lambda value: getattr(value, "operation_id", value)
)
async def test_a_token_without_a_scope_needed_gets_403_naming_it(
    client: AsyncClient,
    db_session: AsyncSession,
    world: World,
    operation: Operation,
    scope: str,
) -> None:
    token = await _token(client, world, _without(scope))
    before = await _snapshot(db_session, world)

    response = await _call(client, operation, world, token)

    problem = assert_problem(response, 403, problem_type=FORBIDDEN)
    assert re.search(rf"\bscopes? (\S+, )*{scope}\b", problem["detail"]), problem
    assert await _snapshot(db_session, world) == before


@pytest.mark.parametrize("operation", IN_A_WORKSPACE, ids=lambda operation: operation.operation_id)
async def test_a_token_bound_to_another_workspace_gets_404(
    client: AsyncClient, db_session: AsyncSession, world: World, operation: Operation
) -> None:
    token = await _token(client, world, list(TOKEN_SCOPES), workspace_id=world.shared_workspace_id)
    before = await _snapshot(db_session, world)

    response = await _call(client, operation, world, token)
    missing = await _call(client, operation, world, token, ids=MISSING_IDS)

    assert_problem(response, 404)
    assert missing.status_code == 404, missing.text
    assert response.content == missing.content
    assert await _snapshot(db_session, world) == before


@pytest.mark.parametrize("operation", LOGIN_ONLY, ids=lambda operation: operation.operation_id)
async def test_a_token_gets_403_where_a_login_session_is_needed(
    client: AsyncClient, db_session: AsyncSession, world: World, operation: Operation
) -> None:
    token = await _token(client, world, list(TOKEN_SCOPES))
    before = await _snapshot(db_session, world)

    response = await _call(client, operation, world, token)

    problem = assert_problem(response, 403, problem_type=FORBIDDEN)
    assert "login session" in problem["detail"], problem
    assert await _snapshot(db_session, world) == before


async def test_a_bound_tokens_lists_hold_its_workspace_only(
    client: AsyncClient, world: World
) -> None:
    token = await _token(client, world, ["tasks:read"], workspace_id=world.shared_workspace_id)
    for url in ("/tasks", "/categories", "/labels"):
        listed = await client.get(url, headers=bearer(token))
        assert listed.status_code == 200, listed.text
        assert [row["workspace_id"] for row in listed.json()] == [], url
        everything = await client.get(url)  # alice's login sees the world's
        assert world.workspace_id in [row["workspace_id"] for row in everything.json()], url
    workspaces = await client.get("/workspaces", headers=bearer(token))
    assert [w["id"] for w in workspaces.json()] == [world.shared_workspace_id]
