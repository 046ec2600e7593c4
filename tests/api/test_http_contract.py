"""What every response promises, whatever the endpoint: X-Request-ID, problem+json errors,
an access log line carrying the request id, health checks, and the documented contract
(/openapi.json, /docs served without a CDN)."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import APIRouter, FastAPI
from httpx import AsyncClient

from taskmanager.observability.logs import RequestIdLogFilter, request_id_var
from taskmanager.openapi import build_openapi, operation_id
from tests.support.problems import assert_problem

PROBLEM_JSON = "application/problem+json"
# The characters and length the middleware accepts from a client (and must itself produce).
VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")


# ─────────────────────────────── X-Request-ID


@pytest.mark.parametrize(
    ("method", "url", "json", "status"),
    [
        ("GET", "/tasks", None, 200),
        ("POST", "/tasks", {"title": "x"}, 201),
        ("POST", "/tasks", {"title": ""}, 422),
        ("GET", "/tasks/999999", None, 404),
        ("DELETE", "/tasks", None, 405),
        ("GET", "/no/such/route", None, 404),
        ("GET", "/health/live", None, 200),
        ("GET", "/openapi.json", None, 200),
    ],
)
async def test_every_response_carries_a_request_id(
    client: AsyncClient, method: str, url: str, json: Any, status: int
) -> None:
    response = await client.request(method, url, json=json)
    assert response.status_code == status
    assert VALID_REQUEST_ID.match(response.headers["x-request-id"])


async def test_generated_request_ids_differ_per_request(client: AsyncClient) -> None:
    ids = {(await client.get("/health/live")).headers["x-request-id"] for _ in range(5)}
    assert len(ids) == 5


@pytest.mark.parametrize("request_id", ["abc-123", "a" * 128, "trace:1/2@svc=x+y.z_w"])
async def test_valid_client_request_id_is_echoed(client: AsyncClient, request_id: str) -> None:
    response = await client.get("/tasks", headers={"X-Request-ID": request_id})
    assert response.headers["x-request-id"] == request_id


async def test_client_request_id_is_echoed_on_errors_too(client: AsyncClient) -> None:
    response = await client.get("/tasks/999999", headers={"X-Request-ID": "abc-123"})
    assert response.status_code == 404
    assert response.headers["x-request-id"] == "abc-123"


@pytest.mark.parametrize(
    "request_id",
    [
        pytest.param("a" * 300, id="300-chars"),
        pytest.param("a" * 129, id="129-chars"),
        pytest.param("has spaces in it", id="spaces"),
        pytest.param("new\\nline", id="backslash"),
        pytest.param("<script>", id="markup"),
        pytest.param("", id="empty"),
    ],
)
async def test_invalid_client_request_id_is_replaced(client: AsyncClient, request_id: str) -> None:
    response = await client.get("/tasks", headers={"X-Request-ID": request_id})
    echoed = response.headers["x-request-id"]
    assert echoed != request_id
    assert VALID_REQUEST_ID.match(echoed)


async def test_response_has_exactly_one_request_id_header(client: AsyncClient) -> None:
    response = await client.get("/tasks", headers={"X-Request-ID": "abc-123"})
    assert response.headers.get_list("x-request-id") == ["abc-123"]


# ─────────────────────────────── problem+json errors


async def test_unknown_route_is_404_problem(client: AsyncClient) -> None:
    body = assert_problem(await client.get("/no/such/route"), 404)
    assert body["detail"] == "Not Found"


@pytest.mark.parametrize(
    ("method", "url"),
    [("DELETE", "/tasks"), ("POST", "/tasks/1"), ("PUT", "/categories"), ("POST", "/health/live")],
)
async def test_wrong_method_is_405_problem_with_allow(
    client: AsyncClient, method: str, url: str
) -> None:
    response = await client.request(method, url)
    body = assert_problem(response, 405)
    assert body["detail"] == "Method Not Allowed"
    assert method not in response.headers["allow"]
    assert response.headers["allow"]


async def test_validation_problem_lists_each_failing_field(client: AsyncClient) -> None:
    response = await client.post(
        "/tasks", json={"title": "", "completed": "maybe", "extra": 1, "category_id": 0}
    )
    body = assert_problem(response, 422)
    assert body["type"] == "/problems/validation-error"
    fields = {error["field"] for error in body["errors"]}
    assert fields == {"body.title", "body.completed", "body.extra", "body.category_id"}
    for error in body["errors"]:
        assert error["message"]
        assert error["loc"][0] == "body"
        assert not error["message"].startswith("Value error, ")


async def test_not_found_problem_has_about_blank_type(client: AsyncClient) -> None:
    body = assert_problem(await client.get("/tasks/999999"), 404)
    assert body["type"] == "about:blank"
    assert body["title"] == "Not Found"


async def test_conflict_is_problem(client: AsyncClient) -> None:
    await client.post("/categories", json={"name": "Work"})
    body = assert_problem(await client.post("/categories", json={"name": "work"}), 409)
    assert body["title"] == "Conflict"


# ─────────────────────────────── health


async def test_liveness(client: AsyncClient) -> None:
    response = await client.get("/health/live")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readiness_with_the_test_engine(client: AsyncClient) -> None:
    response = await client.get("/health/ready")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


# ─────────────────────────────── the access log


@pytest.fixture
def access_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """caplog receiving taskmanager.access at INFO, with the request id filter on its handler.

    Propagation is forced on: `configure_logging` (called by the CLI, maybe by other tests)
    stops the "taskmanager" logger from propagating to the root logger caplog listens on.
    """
    loggers = [logging.getLogger("taskmanager"), logging.getLogger("taskmanager.access")]
    saved = [(logger.propagate, logger.disabled) for logger in loggers]
    for logger in loggers:
        logger.propagate = True
        logger.disabled = False
    request_id_filter = RequestIdLogFilter()
    caplog.handler.addFilter(request_id_filter)
    try:
        with caplog.at_level(logging.INFO, logger="taskmanager.access"):
            yield caplog
    finally:
        caplog.handler.removeFilter(request_id_filter)
        for logger, (propagate, disabled) in zip(loggers, saved, strict=True):
            logger.propagate = propagate
            logger.disabled = disabled


def access_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == "taskmanager.access"]


async def test_access_log_line_has_method_path_status_and_request_id(
    client: AsyncClient, access_log: pytest.LogCaptureFixture
) -> None:
    response = await client.get("/tasks/999999", headers={"X-Request-ID": "abc-123"})

    [record] = access_records(access_log)
    message = record.getMessage()
    assert record.levelno == logging.INFO
    assert "GET" in message
    assert "/tasks/999999" in message
    assert " 404 " in message
    assert response.headers["x-request-id"] == "abc-123"
    # Emitted while the request's context was active: the filter read the request's id.
    assert record.request_id == "abc-123"  # type: ignore[attr-defined]
    # ... and the context was reset afterwards.
    assert request_id_var.get() == "-"


async def test_access_log_carries_the_generated_request_id(
    client: AsyncClient, access_log: pytest.LogCaptureFixture
) -> None:
    first = await client.post("/tasks", json={"title": "logged"})
    second = await client.get("/tasks")

    records = access_records(access_log)
    assert [r.request_id for r in records] == [  # type: ignore[attr-defined]
        first.headers["x-request-id"],
        second.headers["x-request-id"],
    ]
    assert "POST" in records[0].getMessage()
    assert " 201 " in records[0].getMessage()
    assert "GET" in records[1].getMessage()
    assert " 200 " in records[1].getMessage()


async def test_access_log_records_validation_failures(
    client: AsyncClient, access_log: pytest.LogCaptureFixture
) -> None:
    await client.post("/tasks", json={"title": ""})
    [record] = access_records(access_log)
    assert "POST" in record.getMessage()
    assert "/tasks" in record.getMessage()
    assert " 422 " in record.getMessage()


# ─────────────────────────────── the documented contract


async def openapi(client: AsyncClient) -> dict[str, Any]:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    document: dict[str, Any] = response.json()
    return document


PROBLEM_REF = "#/components/schemas/Problem"
TOKEN_PROBLEM_REF = "#/components/schemas/TokenProblem"


def schema_refs(node: Any) -> Iterator[str]:
    """The names of every `#/components/schemas/...` referenced anywhere under `node`."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            assert ref.startswith("#/components/schemas/"), ref
            yield ref.removeprefix("#/components/schemas/")
        for value in node.values():
            yield from schema_refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from schema_refs(value)


@pytest.mark.parametrize(
    ("path", "method", "status"),
    [
        ("/tasks", "post", "422"),
        ("/tasks", "get", "422"),
        ("/tasks/{task_id}", "get", "404"),
        ("/tasks/{task_id}", "patch", "404"),
        ("/tasks/{task_id}", "patch", "422"),
        ("/tasks/{task_id}", "delete", "404"),
        ("/categories", "post", "409"),
        ("/categories", "post", "422"),
        ("/categories/{category_id}", "get", "404"),
        ("/categories/{category_id}", "patch", "409"),
        ("/categories/{category_id}", "delete", "404"),
        ("/labels", "post", "409"),
        ("/labels", "post", "422"),
        ("/labels/{label_id}", "get", "404"),
        ("/labels/{label_id}", "patch", "409"),
        ("/labels/{label_id}", "delete", "404"),
        ("/workspaces/{workspace_id}/invitations", "post", "409"),
        ("/invitations/{invitation_id}/accept", "post", "409"),
        ("/workspaces/{workspace_id}/members/{user_id}", "get", "404"),
        ("/health/ready", "get", "503"),
    ],
)
async def test_openapi_documents_problem_responses(
    client: AsyncClient, path: str, method: str, status: str
) -> None:
    responses = (await openapi(client))["paths"][path][method]["responses"]
    assert status in responses
    assert responses[status]["content"][PROBLEM_JSON]["schema"] == {"$ref": PROBLEM_REF}


async def test_openapi_a_workspace_lists_its_members_as_a_member_reads(
    client: AsyncClient,
) -> None:
    """An item of the workspace's `members` has the schema of GET .../members/{user_id}."""
    document = await openapi(client)
    member = {"$ref": "#/components/schemas/MemberResponse"}
    read = document["paths"]["/workspaces/{workspace_id}/members/{user_id}"]["get"]["responses"]
    assert read["200"]["content"]["application/json"]["schema"] == member
    detail = document["components"]["schemas"]["WorkspaceDetailResponse"]
    assert detail["properties"]["members"]["items"] == member
    # Members are not added: invited, and they accept.
    assert "post" not in document["paths"].get("/workspaces/{workspace_id}/members", {})


async def test_openapi_every_error_response_is_problem_json(client: AsyncClient) -> None:
    document = await openapi(client)
    checked = 0
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if int(status) < 400:
                    continue
                content = response.get("content", {})
                assert list(content) == [PROBLEM_JSON], (path, method, status)
                # A refused login is a TokenProblem: a Problem with OAuth 2's members too.
                ref = TOKEN_PROBLEM_REF if (path, status) == ("/auth/token", "401") else PROBLEM_REF
                assert content[PROBLEM_JSON]["schema"] == {"$ref": ref}
                checked += 1
    assert checked >= 20


async def test_openapi_a_token_problem_is_a_problem_with_oauth_2s_members(
    client: AsyncClient,
) -> None:
    schemas = (await openapi(client))["components"]["schemas"]
    problem, token_problem = schemas["Problem"], schemas["TokenProblem"]
    assert "error" not in problem["properties"]
    assert token_problem["properties"] == {
        **problem["properties"],
        "error": token_problem["properties"]["error"],
        "error_description": token_problem["properties"]["error_description"],
    }
    assert set(token_problem["required"]) == {*problem["required"], "error", "error_description"}


async def test_openapi_problem_schema_and_refs_resolve(client: AsyncClient) -> None:
    document = await openapi(client)
    schemas = document["components"]["schemas"]
    problem = schemas["Problem"]
    assert set(problem["required"]) == {"type", "title", "status", "detail"}
    assert "HTTPValidationError" not in schemas  # FastAPI's default 422 shape is not served

    refs = set(schema_refs(document))
    assert "Problem" in refs
    assert "FieldError" in refs
    assert refs <= set(schemas), refs - set(schemas)


# Every operation's id, which a generated client uses as its method name: renaming one
# breaks client code, so it is a change made here on purpose.
OPERATION_IDS = {
    ("POST", "/auth/register"): "auth_register",
    ("POST", "/auth/verify-email"): "auth_verify_email",
    ("POST", "/auth/verify-email/resend"): "auth_resend_verification",
    ("POST", "/auth/password-reset"): "auth_request_password_reset",
    ("POST", "/auth/password-reset/confirm"): "auth_confirm_password_reset",
    ("POST", "/auth/token"): "auth_login",
    ("POST", "/auth/refresh"): "auth_refresh",
    ("POST", "/auth/logout"): "auth_logout",
    ("POST", "/auth/logout-all"): "auth_logout_all",
    ("GET", "/users/me"): "users_get_me",
    ("PATCH", "/users/me"): "users_update_me",
    ("POST", "/users/me/tokens"): "create_token",
    ("GET", "/users/me/tokens"): "list_tokens",
    ("DELETE", "/users/me/tokens"): "revoke_all_tokens",
    ("DELETE", "/users/me/tokens/{token_id}"): "revoke_token",
    ("POST", "/calendar/feeds"): "create_calendar_feed",
    ("GET", "/calendar/feeds"): "list_calendar_feeds",
    ("POST", "/calendar/feeds/{feed_id}/regenerate"): "regenerate_calendar_feed",
    ("DELETE", "/calendar/feeds/{feed_id}"): "delete_calendar_feed",
    ("GET", "/calendar/{secret}.ics"): "get_calendar_feed",
    ("POST", "/workspaces/{workspace_id}/calendars"): "create_calendar",
    ("GET", "/workspaces/{workspace_id}/calendars"): "list_calendars",
    ("DELETE", "/workspaces/{workspace_id}/calendars/{calendar_id}"): "delete_calendar",
    ("POST", "/workspaces/{workspace_id}/calendars/{calendar_id}/refresh"): "refresh_calendar",
    ("GET", "/agenda"): "get_agenda",
    ("POST", "/workspaces/{workspace_id}/webhooks"): "create_webhook",
    ("GET", "/workspaces/{workspace_id}/webhooks"): "list_webhooks",
    ("GET", "/workspaces/{workspace_id}/webhooks/{webhook_id}"): "get_webhook",
    ("PATCH", "/workspaces/{workspace_id}/webhooks/{webhook_id}"): "update_webhook",
    ("DELETE", "/workspaces/{workspace_id}/webhooks/{webhook_id}"): "delete_webhook",
    (
        "POST",
        "/workspaces/{workspace_id}/webhooks/{webhook_id}/rotate-secret",
    ): "rotate_webhook_secret",
    (
        "GET",
        "/workspaces/{workspace_id}/webhooks/{webhook_id}/deliveries",
    ): "list_webhook_deliveries",
    (
        "POST",
        "/workspaces/{workspace_id}/webhooks/{webhook_id}/deliveries/{delivery_id}/replay",
    ): "replay_webhook_delivery",
    ("POST", "/workspaces/{workspace_id}/webhooks/{webhook_id}/test"): "send_webhook_test",
    ("GET", "/workspaces"): "list_workspaces",
    ("POST", "/workspaces"): "create_workspace",
    ("GET", "/workspaces/{workspace_id}"): "get_workspace",
    ("PATCH", "/workspaces/{workspace_id}"): "rename_workspace",
    ("DELETE", "/workspaces/{workspace_id}"): "delete_workspace",
    ("POST", "/workspaces/{workspace_id}/invitations"): "create_invitation",
    ("GET", "/workspaces/{workspace_id}/invitations"): "list_workspace_invitations",
    ("DELETE", "/workspaces/{workspace_id}/invitations/{invitation_id}"): "revoke_invitation",
    ("POST", "/workspaces/{workspace_id}/invitations/{invitation_id}/resend"): "resend_invitation",
    ("GET", "/invitations"): "list_my_invitations",
    ("POST", "/invitations/accept"): "accept_invitation_by_token",
    ("POST", "/invitations/{invitation_id}/accept"): "accept_invitation",
    ("POST", "/invitations/{invitation_id}/decline"): "decline_invitation",
    ("GET", "/workspaces/{workspace_id}/members/{user_id}"): "workspaces_get_member",
    ("DELETE", "/workspaces/{workspace_id}/members/{user_id}"): "workspaces_remove_member",
    ("PATCH", "/workspaces/{workspace_id}/members/{user_id}"): "workspaces_change_member_role",
    ("POST", "/workspaces/{workspace_id}/transfer"): "transfer_workspace",
    ("POST", "/tasks"): "create_task",
    ("GET", "/tasks"): "list_tasks",
    ("GET", "/tasks/{task_id}"): "get_task",
    ("PATCH", "/tasks/{task_id}"): "update_task",
    ("PUT", "/tasks/{task_id}"): "replace_task",
    ("DELETE", "/tasks/{task_id}"): "delete_task",
    ("POST", "/categories"): "create_category",
    ("GET", "/categories"): "list_categories",
    ("GET", "/categories/{category_id}"): "get_category",
    ("PATCH", "/categories/{category_id}"): "rename_category",
    ("DELETE", "/categories/{category_id}"): "delete_category",
    ("POST", "/labels"): "create_label",
    ("GET", "/labels"): "list_labels",
    ("GET", "/labels/{label_id}"): "get_label",
    ("PATCH", "/labels/{label_id}"): "update_label",
    ("DELETE", "/labels/{label_id}"): "delete_label",
    ("GET", "/workspaces/{workspace_id}/activity"): "list_workspace_activity",
    ("GET", "/tasks/{task_id}/activity"): "list_task_activity",
    ("GET", "/health/live"): "health_live",
    ("GET", "/health/ready"): "health_ready",
}


async def test_openapi_operation_ids_are_the_readable_unique_ones(client: AsyncClient) -> None:
    document = await openapi(client)
    operation_ids = {
        (method.upper(), path): operation["operationId"]
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
    }
    assert operation_ids == OPERATION_IDS
    assert len(set(operation_ids.values())) == len(operation_ids)


def test_openapi_refuses_a_duplicate_operation_id() -> None:
    app = FastAPI(generate_unique_id_function=operation_id)
    first, second = APIRouter(prefix="/a", tags=["tasks"]), APIRouter(prefix="/b", tags=["tasks"])

    @first.get("")
    async def get_task() -> None: ...

    @second.get("", name="get_task")
    async def get_task_again() -> None: ...

    app.include_router(first)
    app.include_router(second)
    with (
        pytest.warns(UserWarning, match="Duplicate Operation ID get_task"),  # FastAPI's own
        pytest.raises(RuntimeError, match="duplicate operationId 'get_task': GET /b"),
    ):
        build_openapi(app)


async def test_docs_are_served_from_local_assets(client: AsyncClient) -> None:
    response = await client.get("/docs")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    assert "/docs-assets/swagger-ui-bundle.js" in html
    assert "/docs-assets/swagger-ui.css" in html
    assert "/openapi.json" in html
    assert "cdn" not in html.lower()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)

    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        served = await client.get(f"/docs-assets/{asset}")
        assert served.status_code == 200
        assert len(served.content) > 1000


async def test_redoc_is_served_from_local_assets(client: AsyncClient) -> None:
    response = await client.get("/redoc")
    assert response.status_code == 200
    assert "/docs-assets/redoc.standalone.js" in response.text
    assert "cdn" not in response.text.lower()
    assert "fonts.googleapis" not in response.text
    assert (await client.get("/docs-assets/redoc.standalone.js")).status_code == 200
