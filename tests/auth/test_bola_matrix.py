"""Broken object level authorization (OWASP API1), as a matrix generated from the OpenAPI
document: every operation whose path names an id, called by every kind of caller.

The resources live in a workspace alice owns (with carol a member and erin another
member); dan shares a different workspace with alice; mallory shares nothing. For every
operation:

- alice (owner) gets the documented success; carol (member) what a member may do (a
  change only an owner may make is 403: she can see the workspace);
- dan (member of another of alice's workspaces) and mallory (stranger) get 404 for every
  method, byte for byte the answer for an id that does not exist, and nothing changes;
- no token, or an expired one, is 401 with `WWW-Authenticate: Bearer`, and nothing changes.

An operation with an id that has no row in EXPECTED fails the test: a new route is in the
matrix the moment it is in the document.
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

from taskmanager import schemas
from taskmanager.config import Settings
from taskmanager.main import create_app
from taskmanager.models import Category, Label, Membership, Task, TaskLabel, Workspace
from taskmanager.problems import FORBIDDEN
from tests.support.accounts import TEST_SECRET, Account
from tests.support.problems import assert_problem
from tests.support.tokens import (
    assert_unauthorized,
    bearer,
    expired_access_token,
    send_without_token,
)

# The path parameters that name a resource, and the world's value for each.
ID_PARAMETERS = ("task_id", "category_id", "label_id", "workspace_id", "user_id")
# An id no row has (inside PostgreSQL's integer range, so it is looked up, not refused).
MISSING_ID = 2_147_483_000

CALLERS = ("owner", "member", "member_of_other", "stranger", "no_token", "expired_token")

# operationId -> (status for the owner, status for a member of the same workspace).
# The other callers' statuses are the same for every operation (see expected_status).
EXPECTED: dict[str, tuple[int, int]] = {
    "get_workspace": (200, 200),
    "rename_workspace": (200, 403),
    "delete_workspace": (204, 403),
    "workspaces_add_member": (201, 403),
    "workspaces_get_member": (200, 200),
    "workspaces_remove_member": (204, 403),
    "get_task": (200, 200),
    "update_task": (200, 200),
    "replace_task": (200, 200),
    "delete_task": (204, 204),
    "get_category": (200, 200),
    "rename_category": (200, 200),
    "delete_category": (204, 204),
    "get_label": (200, 200),
    "update_label": (200, 200),
    "delete_label": (204, 204),
}


@dataclass(frozen=True)
class World:
    """What the matrix acts on: alice's workspace and what is in it."""

    owner: Account
    member: Account
    neighbour: Account
    stranger: Account
    target: Account
    workspace_id: int
    shared_workspace_id: int
    task_id: int
    category_id: int
    label_id: int

    def ids(self) -> dict[str, int]:
        return {
            "task_id": self.task_id,
            "category_id": self.category_id,
            "label_id": self.label_id,
            "workspace_id": self.workspace_id,
            "user_id": self.target.user_id,
        }


# operationId -> the minimal valid body (operations without a request body have none).
BODIES: dict[str, Callable[[World], dict[str, Any]]] = {
    "rename_workspace": lambda world: {"name": "Renamed by the matrix"},
    "workspaces_add_member": lambda world: {"email": world.neighbour.email},
    "update_task": lambda world: {"title": "Changed by the matrix"},
    "replace_task": lambda world: {"title": "Replaced by the matrix"},
    "rename_category": lambda world: {"name": "Renamed by the matrix"},
    "update_label": lambda world: {"name": "Renamed by the matrix"},
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
    owner, member = EXPECTED[operation.operation_id]
    return {
        "owner": owner,
        "member": member,
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


def test_every_body_is_valid_for_its_documented_schema(
    account: Account, other_account: Account
) -> None:
    """Each body passes the request model the document names, so a 404 or 401 in the
    matrix is about the id or the caller, never about a bad body."""
    world = World(
        owner=account,
        member=account,
        neighbour=other_account,
        stranger=other_account,
        target=other_account,
        workspace_id=1,
        shared_workspace_id=2,
        task_id=1,
        category_id=1,
        label_id=1,
    )
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
    account: Account,
    member_account: Account,
    neighbour_account: Account,
    other_account: Account,
    target_account: Account,
) -> World:
    """alice's workspace (carol and erin members) with a category and a task in it, and
    another workspace alice shares with dan; all made through the API as alice."""

    async def post(url: str, body: dict[str, Any]) -> dict[str, Any]:
        response = await client.post(url, json=body, headers=account.headers)
        assert response.status_code == 201, response.text
        data: dict[str, Any] = response.json()
        return data

    workspace_id = (await post("/workspaces", {"name": "The matrix"}))["id"]
    shared_id = (await post("/workspaces", {"name": "Shared with dan"}))["id"]
    await post(f"/workspaces/{shared_id}/members", {"email": neighbour_account.email})
    await post(f"/workspaces/{workspace_id}/members", {"email": member_account.email})
    await post(f"/workspaces/{workspace_id}/members", {"email": target_account.email})
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
    return World(
        owner=account,
        member=member_account,
        neighbour=neighbour_account,
        stranger=other_account,
        target=target_account,
        workspace_id=workspace_id,
        shared_workspace_id=shared_id,
        task_id=task["id"],
        category_id=category["id"],
        label_id=label["id"],
    )


async def snapshot(db_session: AsyncSession, world: World) -> dict[str, list[tuple[Any, ...]]]:
    """Every row the matrix could touch, as stored now (Core selects, fresh from the DB)."""
    workspaces = [world.workspace_id, world.shared_workspace_id]
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
    }
    return {
        name: sorted(tuple(row) for row in (await db_session.execute(statement)).all())
        for name, statement in statements.items()
    }


def _token_of(world: World, caller: str) -> str | None:
    return {
        "owner": world.owner.access_token,
        "member": world.member.access_token,
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
    ids: dict[str, int] | None = None,
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
    expected = expected_status(operation, caller)
    before = await snapshot(db_session, world)
    assert before["tasks"], "the world's rows must be visible to the checks"
    assert before["memberships"], "the world's rows must be visible to the checks"

    response = await call(client, operation, world, caller)

    assert response.status_code == expected, (str(operation), caller, response.text)
    after = await snapshot(db_session, world)
    if expected == 401:
        assert_unauthorized(response, token_given=caller != "no_token")
        assert after == before
    elif expected == 404:
        assert_problem(response, 404)
        # Not even the answer tells a foreign id from one that does not exist.
        missing = await call(
            client, operation, world, caller, ids=dict.fromkeys(ID_PARAMETERS, MISSING_ID)
        )
        assert missing.status_code == 404, missing.text
        assert response.content == missing.content
        assert after == before
    elif expected == 403:
        assert_problem(response, 403, problem_type=FORBIDDEN)
        assert after == before
    elif operation.method == "GET":
        body = response.json()
        # The resource the path's last id names: a member by its user id, others by id.
        asked = operation.path_parameters[-1]
        assert body["user_id" if asked == "user_id" else "id"] == world.ids()[asked], body
        assert after == before
    else:  # a change the caller may make: it happened
        assert after != before
