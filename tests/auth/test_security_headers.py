"""Security headers on every answer, errors included: `X-Content-Type-Options: nosniff`
always, `Cache-Control: no-store` on every answer to a request with credentials and on
everything under /auth/. The HTML pages (/docs, /redoc) also forbid framing, send no referrer
and carry a Content-Security-Policy allowing only their own assets. CORS: no origin allowed
unless configured, and then only those."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from httpx import AsyncClient, Response
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from taskmanager.config import Settings
from taskmanager.main import create_app
from taskmanager.repositories.task_repository import TaskRepository
from tests.support.accounts import Account
from tests.support.rolled_back import rolled_back_client
from tests.support.tokens import bearer, send_without_token


@dataclass(frozen=True)
class Case:
    method: str
    url: str
    status: int
    authenticated: bool = True
    kwargs: dict[str, Any] = field(default_factory=dict)
    # A cacheable read (docs/cache.md): only its caller may keep it, and must ask again.
    cache_control: str = "no-store"


CASES = {
    "200 list": Case("GET", "/tasks", 200, cache_control="private, no-cache"),
    "201 created": Case("POST", "/tasks", 201, kwargs={"json": {"title": "headers"}}),
    "204 logout": Case("POST", "/auth/logout", 204),
    "404 problem": Case("GET", "/tasks/2147483000", 404),
    "422 problem": Case("GET", "/tasks/not-a-number", 422),
    "405 problem": Case("PUT", "/tasks", 405),
    "413 problem": Case("POST", "/tasks", 413, kwargs={"content": b"x" * (1024 * 1024 + 1)}),
    "401 bad token": Case("GET", "/users/me", 401, kwargs={"headers": bearer("garbage")}),
    "401 no token": Case("GET", "/users/me", 401, authenticated=False),
    "health": Case("GET", "/health/live", 200, authenticated=False),
    "openapi": Case("GET", "/openapi.json", 200, authenticated=False),
    "docs": Case("GET", "/docs", 200, authenticated=False),
    "404 no route": Case("GET", "/nowhere", 404, authenticated=False),
    "register 202": Case(
        "POST",
        "/auth/register",
        202,
        authenticated=False,
        kwargs={"json": {"email": "headers@example.com", "password": "a fine password"}},
    ),
    "register 422": Case(
        "POST", "/auth/register", 422, authenticated=False, kwargs={"json": {"email": "x"}}
    ),
    "token 401": Case(
        "POST",
        "/auth/token",
        401,
        authenticated=False,
        kwargs={"data": {"username": "nobody@example.com", "password": "wrong password"}},
    ),
    "refresh 401": Case(
        "POST",
        "/auth/refresh",
        401,
        authenticated=False,
        kwargs={"json": {"refresh_token": "not-a-token"}},
    ),
}


async def send(client: AsyncClient, case: Case) -> Response:
    if case.authenticated:
        return await client.request(case.method, case.url, **case.kwargs)
    return await send_without_token(client, case.method, case.url, **case.kwargs)


@pytest.mark.parametrize("name", CASES)
async def test_every_answer_has_the_security_headers(client: AsyncClient, name: str) -> None:
    case = CASES[name]

    response = await send(client, case)

    assert response.status_code == case.status, response.text
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    if case.authenticated or case.url.startswith("/auth/"):
        assert response.headers.get("Cache-Control") == case.cache_control, response.headers


async def test_a_token_answer_is_never_stored(client: AsyncClient, account: Account) -> None:
    """RFC 6749 5.1: the answer carrying tokens has `Cache-Control: no-store`."""
    response = await send_without_token(
        client,
        "POST",
        "/auth/token",
        data={"username": account.email, "password": account.password},
    )
    assert response.status_code == 200, response.text
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Content-Type-Options"] == "nosniff"


async def test_a_server_error_has_the_security_headers(
    client: AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(self: TaskRepository, task_id: int) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(TaskRepository, "get_view", broken)

    response = await client.get("/tasks/1")

    assert response.status_code == 500
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Cache-Control"] == "no-store"


# ─────────────────────────────── The docs pages

_INLINE = re.compile(r"<(script|style)>(.*?)</\1>", re.DOTALL)


def content_security_policy(header: str) -> dict[str, list[str]]:
    """The policy's directives, each with its sources."""
    directives = [part.split() for part in header.split(";") if part.strip()]
    return {name: sources for name, *sources in directives}


def sha256_source(text: str) -> str:
    return f"'sha256-{base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()}'"


# ReDoc's styled-components writes <style> elements while it renders: their text is not
# known to the server, so that page alone allows inline styles (never inline scripts).
INLINE_STYLES = {"/docs": False, "/redoc": True}


@pytest.mark.parametrize("page", INLINE_STYLES)
async def test_the_docs_pages_forbid_framing_and_anything_not_their_own(
    client: AsyncClient, page: str
) -> None:
    response = await send_without_token(client, "GET", page)

    assert response.status_code == 200, response.text
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    policy = content_security_policy(response.headers["Content-Security-Policy"])
    assert policy["default-src"] == ["'none'"]  # whatever is not named below is refused
    assert policy["frame-ancestors"] == ["'none'"]
    assert policy["base-uri"] == ["'none'"]
    assert policy["object-src"] == ["'none'"]
    # This origin only: no other host, no scheme but data: icons and blob: workers, no eval.
    for name, sources in policy.items():
        for source in sources:
            allowed = {"'self'", "'none'", "data:", "blob:"}
            if name == "style-src" and INLINE_STYLES[page]:
                allowed.add("'unsafe-inline'")
            assert source in allowed or source.startswith("'sha256-"), (name, source)
    assert "'self'" in policy["script-src"]
    # Every inline script the page carries, and every inline style unless inline styles are
    # allowed, is allowed by its hash, one by one: nothing else inline runs.
    inline = _INLINE.findall(response.text)
    for kind, text in inline:
        if kind == "script" or not INLINE_STYLES[page]:
            assert sha256_source(text) in policy[f"{kind}-src"], (kind, text)
    hashed = [s for s in policy["script-src"] if s.startswith("'sha256-")]
    assert len(hashed) == len([text for kind, text in inline if kind == "script"])
    if INLINE_STYLES[page]:  # a hash beside it would make browsers ignore 'unsafe-inline'
        assert not [s for s in policy["style-src"] if s.startswith("'sha256-")]


async def test_swagger_ui_asks_no_online_validator(client: AsyncClient) -> None:
    """Swagger UI would show a badge loaded from validator.swagger.io (sending it the
    document's URL) on any host but localhost: the policy refuses it, so it is turned off."""
    response = await send_without_token(client, "GET", "/docs")

    assert response.status_code == 200
    assert '"validatorUrl": null' in response.text


async def test_the_api_answers_are_not_html_pages(client: AsyncClient) -> None:
    """The page policy stays on the pages: a JSON answer carries none of it."""
    response = await client.get("/tasks")

    assert response.status_code == 200
    assert "Content-Security-Policy" not in response.headers


# ─────────────────────────────── CORS

ALLOWED = "https://app.example"
OTHER = "https://evil.example"


def preflight(origin: str, method: str = "DELETE") -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": "authorization, if-match",
    }


async def test_no_origin_is_allowed_by_default(client: AsyncClient) -> None:
    answer = await client.options("/tasks/1", headers=preflight(ALLOWED))
    assert "Access-Control-Allow-Origin" not in answer.headers
    assert "Access-Control-Allow-Methods" not in answer.headers

    response = await client.get("/tasks", headers={"Origin": ALLOWED})
    assert response.status_code == 200
    assert "Access-Control-Allow-Origin" not in response.headers


@pytest.fixture
async def cors_client(
    settings: Settings, engine: AsyncEngine, db_session: AsyncSession, account: Account
) -> AsyncIterator[AsyncClient]:
    """The app with one allowed origin, on the test's rolled-back session, logged in."""
    app = create_app(settings.model_copy(update={"cors_origins": [ALLOWED]}))
    async with rolled_back_client(app, engine, db_session) as client:
        client.headers.update(account.headers)
        yield client


async def test_a_configured_origin_may_call(cors_client: AsyncClient) -> None:
    answer = await send_without_token(
        cors_client, "OPTIONS", "/tasks/1", headers=preflight(ALLOWED)
    )

    assert answer.status_code == 200, answer.text
    assert answer.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert "DELETE" in answer.headers["Access-Control-Allow-Methods"]
    allowed_headers = answer.headers["Access-Control-Allow-Headers"].lower()
    assert "authorization" in allowed_headers
    assert "if-match" in allowed_headers
    assert "Access-Control-Allow-Credentials" not in answer.headers  # tokens, not cookies
    assert answer.headers["X-Content-Type-Options"] == "nosniff"

    response = await cors_client.get("/tasks", headers={"Origin": ALLOWED})
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == ALLOWED
    exposed = response.headers["Access-Control-Expose-Headers"].lower()
    assert "x-total-count" in exposed
    assert "link" in exposed  # a browser client can follow cursor pages
    assert "etag" in exposed


async def test_another_origin_may_not(cors_client: AsyncClient) -> None:
    answer = await send_without_token(cors_client, "OPTIONS", "/tasks/1", headers=preflight(OTHER))

    assert answer.status_code == 400
    assert "Access-Control-Allow-Origin" not in answer.headers

    response = await cors_client.get("/tasks", headers={"Origin": OTHER})
    assert "Access-Control-Allow-Origin" not in response.headers
