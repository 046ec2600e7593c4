"""A Python client generated from /openapi.json, as a new user would make one, drives the
real app: readable method names, typed models, and problems parsed as the `Problem` model.

openapi-python-client reads the document from a file (no network) and runs ruff on its
output; the client's async functions are sent through the live app in this event loop
(httpx ASGITransport), so no server process or port is involved.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import pytest_asyncio
from httpx import AsyncClient

from tests.support.accounts import PASSWORD, login
from tests.support.invitations import verify_address

PACKAGE = "taskmanager_client"
GENERATE_WITHIN = 60.0  # seconds; about 5 on an idle machine


@dataclass
class GeneratedClient:
    """The generated package, imported, and its `Client` sending through the live app."""

    client: Any

    @staticmethod
    def operation(tag: str, name: str) -> ModuleType:
        return importlib.import_module(f"{PACKAGE}.api.{tag}.{name}")

    @staticmethod
    def model(name: str) -> Any:
        return getattr(importlib.import_module(f"{PACKAGE}.models"), name)


def generate(document: Path, output: Path) -> None:
    """Run the generator's CLI on `document`; any warning (a skipped piece, ruff missing) fails."""
    bin_dir = Path(sys.executable).parent  # ruff, which the generator runs, is installed here
    env = os.environ | {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "openapi_python_client",
            "generate",
            "--path",
            str(document),
            "--output-path",
            str(output),
            "--meta",
            "none",
            "--fail-on-warning",
        ],
        env=env,
        cwd=document.parent,
        capture_output=True,
        text=True,
        timeout=GENERATE_WITHIN,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def generated(
    live: AsyncClient, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[GeneratedClient]:
    """A client generated from the live app's /openapi.json, imported from a temporary dir."""
    directory = tmp_path_factory.mktemp("generated-client")
    document = directory / "openapi.json"
    response = await live.get("/openapi.json")
    assert response.status_code == 200
    document.write_bytes(response.content)
    await asyncio.to_thread(generate, document, directory / PACKAGE)

    sys.path.insert(0, str(directory))
    try:
        package = importlib.import_module(PACKAGE)
        # The live app's own httpx client: requests go through its ASGI transport.
        client = package.Client(base_url=str(live.base_url), raise_on_unexpected_status=True)
        client.set_async_httpx_client(live)
        yield GeneratedClient(client)
    finally:
        sys.path.remove(str(directory))
        for name in [name for name in sys.modules if name.partition(".")[0] == PACKAGE]:
            del sys.modules[name]


def test_method_names_are_the_readable_operation_ids(generated: GeneratedClient) -> None:
    api = Path(importlib.import_module(f"{PACKAGE}.api").__file__ or "").parent
    methods = {
        tag.name: sorted(module.stem for module in tag.glob("*.py") if module.stem != "__init__")
        for tag in api.iterdir()
        if tag.is_dir() and (tag / "__init__.py").exists()
    }
    assert methods == {
        "auth": [
            "auth_confirm_password_reset",
            "auth_login",
            "auth_logout",
            "auth_logout_all",
            "auth_refresh",
            "auth_register",
            "auth_request_password_reset",
            "auth_resend_verification",
            "auth_verify_email",
        ],
        "users": ["users_get_me", "users_update_me"],
        "tokens": ["create_token", "list_tokens", "revoke_all_tokens", "revoke_token"],
        "calendar": [
            "create_calendar",
            "create_calendar_feed",
            "delete_calendar",
            "delete_calendar_feed",
            "get_calendar_feed",
            "list_calendar_feeds",
            "list_calendars",
            "refresh_calendar",
            "regenerate_calendar_feed",
        ],
        "agenda": ["get_agenda"],
        "webhooks": [
            "create_webhook",
            "delete_webhook",
            "get_webhook",
            "list_webhook_deliveries",
            "list_webhooks",
            "replay_webhook_delivery",
            "rotate_webhook_secret",
            "send_webhook_test",
            "update_webhook",
        ],
        "workspaces": [
            "create_workspace",
            "delete_workspace",
            "get_workspace",
            "list_workspaces",
            "rename_workspace",
            "transfer_workspace",
            "workspaces_change_member_role",
            "workspaces_get_member",
            "workspaces_remove_member",
        ],
        "invitations": [
            "accept_invitation",
            "accept_invitation_by_token",
            "create_invitation",
            "decline_invitation",
            "list_my_invitations",
            "list_workspace_invitations",
            "resend_invitation",
            "revoke_invitation",
        ],
        "tasks": [
            "create_task",
            "delete_task",
            "get_task",
            "list_tasks",
            "replace_task",
            "update_task",
        ],
        "categories": [
            "create_category",
            "delete_category",
            "get_category",
            "list_categories",
            "rename_category",
        ],
        "labels": [
            "create_label",
            "delete_label",
            "get_label",
            "list_labels",
            "update_label",
        ],
        "activity": ["list_task_activity", "list_workspace_activity"],
        "health": ["health_live", "health_ready"],
    }


async def test_create_get_and_list_tasks(generated: GeneratedClient) -> None:
    create_task = generated.operation("tasks", "create_task")
    get_task = generated.operation("tasks", "get_task")
    list_tasks = generated.operation("tasks", "list_tasks")
    task_create = generated.model("TaskCreate")
    task_response = generated.model("TaskWithCategoryResponse")

    created = await create_task.asyncio_detailed(
        client=generated.client,
        body=task_create(title="Generated client task", description="typed"),
    )
    assert created.status_code == 201
    assert isinstance(created.parsed, task_response)
    assert created.parsed.title == "Generated client task"
    assert created.headers["location"].endswith(f"/tasks/{created.parsed.id}")

    fetched = await get_task.asyncio(client=generated.client, task_id=created.parsed.id)
    assert isinstance(fetched, task_response)
    assert (fetched.id, fetched.title, fetched.description) == (
        created.parsed.id,
        "Generated client task",
        "typed",
    )

    listed = await list_tasks.asyncio_detailed(client=generated.client, q="Generated client")
    assert listed.status_code == 200
    assert isinstance(listed.parsed, list)
    assert [task.id for task in listed.parsed] == [created.parsed.id]
    assert all(isinstance(task, task_response) for task in listed.parsed)
    assert listed.headers["x-total-count"] == "1"


async def test_invite_and_accept_then_read_the_member(
    generated: GeneratedClient, live: AsyncClient, own_database_url: str
) -> None:
    email = "generated.member@example.com"
    registered = await live.post("/auth/register", json={"email": email, "password": PASSWORD})
    assert registered.status_code == 202, registered.text
    await verify_address(own_database_url, email)
    create_workspace = generated.operation("workspaces", "create_workspace")
    create_invitation = generated.operation("invitations", "create_invitation")
    get_member = generated.operation("workspaces", "workspaces_get_member")
    workspace = await create_workspace.asyncio(
        client=generated.client, body=generated.model("WorkspaceCreate")(name="Generated")
    )

    invited = await create_invitation.asyncio_detailed(
        client=generated.client,
        workspace_id=workspace.id,
        body=generated.model("InvitationCreate")(email=email),
    )

    assert invited.status_code == 202
    assert isinstance(invited.parsed, generated.model("InvitationResponse"))
    assert (invited.parsed.email, str(invited.parsed.role)) == (email, "member")
    assert str(invited.parsed.status) == "pending"
    headers = await login(live, email)
    accepted = await live.post(f"/invitations/{invited.parsed.id}/accept", headers=headers)
    assert accepted.status_code == 200, accepted.text
    member_id = (await live.get("/users/me", headers=headers)).json()["id"]
    fetched = await get_member.asyncio(
        client=generated.client, workspace_id=workspace.id, user_id=member_id
    )
    assert isinstance(fetched, generated.model("MemberResponse"))
    assert (fetched.email, str(fetched.role)) == (email, "member")


async def test_invalid_body_parses_as_a_422_problem(generated: GeneratedClient) -> None:
    create_task = generated.operation("tasks", "create_task")
    problem = generated.model("Problem")

    # The generated models do not validate: the server does, and says so as a problem.
    response = await create_task.asyncio_detailed(
        client=generated.client, body=generated.model("TaskCreate")(title="   ")
    )

    assert response.status_code == 422
    assert isinstance(response.parsed, problem)
    assert response.parsed.status == 422
    assert [error.field for error in response.parsed.errors] == ["body.title"]


async def test_stale_if_match_parses_as_a_412_problem(generated: GeneratedClient) -> None:
    create_task = generated.operation("tasks", "create_task")
    update_task = generated.operation("tasks", "update_task")
    task_update = generated.model("TaskUpdate")
    created = await create_task.asyncio_detailed(
        client=generated.client, body=generated.model("TaskCreate")(title="Read once")
    )
    assert created.status_code == 201
    task_id, read_etag = created.parsed.id, created.headers["etag"]

    changed = await update_task.asyncio_detailed(
        client=generated.client,
        task_id=task_id,
        body=task_update(completed=True),
        if_match=read_etag,
    )
    assert changed.status_code == 200
    assert changed.headers["etag"] != read_etag

    stale = await update_task.asyncio_detailed(
        client=generated.client,
        task_id=task_id,
        body=task_update(title="Lost update"),
        if_match=read_etag,
    )

    assert stale.status_code == 412
    assert isinstance(stale.parsed, generated.model("Problem"))
    assert stale.parsed.status == 412
    assert stale.headers["etag"] == changed.headers["etag"]


async def test_log_in_with_the_readably_named_login_form(generated: GeneratedClient) -> None:
    """The form of POST /auth/token is the model `LoginForm`, not a name made up from the
    route (`BodyAuthLoginAuthTokenPost`)."""
    models = importlib.import_module(f"{PACKAGE}.models")
    assert [name for name in models.__all__ if name.startswith("Body")] == []
    auth_login = generated.operation("auth", "auth_login")

    answer = await auth_login.asyncio_detailed(
        client=generated.client,
        body=generated.model("LoginForm")(username="live@example.com", password=PASSWORD),
    )

    assert answer.status_code == 200
    assert isinstance(answer.parsed, generated.model("TokenResponse"))
    assert answer.parsed.token_type.lower() == "bearer"
    wrong = await auth_login.asyncio_detailed(
        client=generated.client,
        body=generated.model("LoginForm")(username="live@example.com", password="not it"),
    )
    assert wrong.status_code == 401
    assert wrong.parsed.error == "invalid_grant"
