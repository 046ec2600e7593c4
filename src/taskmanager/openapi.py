"""The OpenAPI document and the interactive docs.

Every operation has a readable operationId (`get_task`, `health_live`), so a client
generated from the document has readable method names. Error responses are documented as
`application/problem+json` with the Problem schema (a refused login with TokenProblem,
which adds OAuth 2's members), the response headers a client may rely on (ETag, Location,
X-Total-Count, Link, Retry-After, X-Request-ID) where they are sent, and Swagger UI / ReDoc
are served from assets installed with the package (no CDN), so /docs works on a machine
without internet access. The two pages carry a Content-Security-Policy
that allows exactly those assets (their inline bootstrap by its hash), and may not be framed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Sequence
from importlib.resources import files
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from starlette.routing import BaseRoute

from taskmanager.problems import PROBLEM_JSON, Problem, TokenProblem
from taskmanager.schemas import without_null

DOCS_ASSETS_URL = "/docs-assets"

_DESCRIPTIONS = {
    401: "No valid access token: missing, expired, tampered with, or its login has ended.",
    403: "You can see this resource but your role does not allow this change; or your "
    "personal access token lacks the scope this operation needs (`x-token-scope`), or the "
    "operation needs a login session.",
    404: "Not found: no resource you can see has this id.",
    409: "Conflict with existing data (for example a duplicate category name), or a cap "
    "reached (workspaces per account, members per workspace).",
    412: "If-Match does not match the current ETag: it changed since you read it.",
    413: "The request body is larger than the configured limit.",
    422: "Validation failed; `errors` names each failing field.",
    429: "Too many attempts (see the operation); retry after `Retry-After` seconds.",
    503: "The database is unavailable or busy; retry after `Retry-After` seconds.",
}


_PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
_TOKEN_PROBLEM_REF = {"$ref": "#/components/schemas/TokenProblem"}

# The response headers a client may rely on, documented where they are sent.
RESPONSE_HEADERS: dict[str, dict[str, Any]] = {
    "ETag": {
        "description": "The row's version as a strong entity tag, for `If-Match` (a task's "
        "also names, after a hyphen, a digest of the category and labels it shows: "
        '`"3-9f86d081884c"`), and for `If-None-Match` on the reads that take it.',
        "required": True,
        "schema": {"type": "string", "pattern": '^"[0-9]+(-[0-9a-f]+)?"$'},
    },
    "Cache-Control": {
        "description": "`private, no-cache`: keep it for yourself only, and ask again (with "
        "`If-None-Match`) before using a kept copy.",
        "required": True,
        "schema": {"type": "string"},
    },
    "Location": {
        "description": "The URL of the resource just created.",
        "required": True,
        "schema": {"type": "string", "format": "uri"},
    },
    "Idempotent-Replayed": {
        "description": "`true` when this is the stored response to an earlier request with the "
        "same `Idempotency-Key`; nothing new was created.",
        "required": False,
        "schema": {"type": "string", "enum": ["true"]},
    },
    "X-Total-Count": {
        "description": "How many tasks match the filters, on all pages together. Sent on "
        "pages without `cursor` unless `count=false`, on cursor pages only with `count=true`.",
        "required": False,
        "schema": {"type": "integer", "minimum": 0},
    },
    "Link": {
        "description": 'RFC 8288: `<URL>; rel="next"`, the absolute URL of the next page '
        "(this request with its `cursor`, without `offset`); absent on the last page.",
        "required": False,
        "schema": {"type": "string"},
    },
    "WWW-Authenticate": {
        "description": "The authentication scheme to use: `Bearer` (RFC 6750), with "
        '`error="invalid_token"` when the token sent was refused.',
        "required": True,
        "schema": {"type": "string"},
    },
    "Retry-After": {
        "description": "Seconds to wait before retrying.",
        "required": True,
        "schema": {"type": "integer", "minimum": 0},
    },
    "X-Request-ID": {
        "description": "The client's X-Request-ID if it was valid, else one made up; it is in "
        "every log line about this request.",
        "required": True,
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:@/+=-]{1,128}$"},
    },
}
_PROBLEM_HEADERS = {
    401: ("WWW-Authenticate",),
    412: ("ETag",),
    429: ("Retry-After",),
    503: ("Retry-After",),
}


# A list page's ETag: a digest of everything the page shows, for If-None-Match.
PAGE_ETAG: dict[str, Any] = {
    "description": "A digest of this page (body and headers), for `If-None-Match`.",
    "required": True,
    "schema": {"type": "string", "pattern": '^"[0-9a-f]+"$'},
}


def not_modified_response(etag: dict[str, Any] | None = None) -> dict[int | str, dict[str, Any]]:
    """The 304 of a cacheable read (If-None-Match named the current ETag): no body."""
    return {
        304: {
            "description": "Not Modified: the copy `If-None-Match` named is still current.",
            "headers": {
                **response_headers("Cache-Control"),
                "ETag": etag or RESPONSE_HEADERS["ETag"],
            },
        }
    }


def response_headers(*names: str) -> dict[str, dict[str, Any]]:
    """The `headers` of an OpenAPI response object sending `names`."""
    return {name: RESPONSE_HEADERS[name] for name in names}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for the problem statuses an operation can return."""
    responses: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        responses[status] = {
            "description": _DESCRIPTIONS[status],
            "content": {PROBLEM_JSON: {"schema": _PROBLEM_REF}},
        }
        if status in _PROBLEM_HEADERS:
            responses[status]["headers"] = response_headers(*_PROBLEM_HEADERS[status])
    return responses


def token_problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """problem_responses for the token endpoint (POST /auth/token), whose 401 is a refused
    login, a TokenProblem (the problem in OAuth 2's words too)."""
    responses = problem_responses(*statuses)
    if 401 in responses:
        responses[401] = {
            **responses[401],
            "description": "The email or the password is wrong, or the account is disabled.",
            "content": {PROBLEM_JSON: {"schema": _TOKEN_PROBLEM_REF}},
        }
    return responses


def operation_id(route: APIRoute) -> str:
    """The route's name (`get_task`), prefixed with its tag when the name does not say which
    resource it acts on (`live` under `health` -> `health_live`): stable while the route
    keeps its name, and readable as a generated client's method name."""
    if not route.tags:
        return route.name
    tag = str(route.tags[0])
    # Tags are mostly plural nouns ("tasks", "categories"); a name may use the singular, or
    # the plural of a singular tag ("list_calendars" under "calendar").
    singular = tag.removesuffix("ies") + "y" if tag.endswith("ies") else tag.removesuffix("s")
    if {tag, singular, tag + "s"} & set(route.name.split("_")):
        return route.name
    return f"{tag}_{route.name}"


def build_openapi(app: FastAPI, routes: Sequence[BaseRoute] | None = None) -> dict[str, Any]:
    """The app's OpenAPI document, with the Problem schemas (and TokenProblem's) in its
    components; its operations in the order of `routes` (default: the app's)."""
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes if routes is None else routes,
            webhooks=app.webhooks.routes,
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in (Problem, TokenProblem):
            definitions = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(definitions.pop("$defs", {}))
            components[model.__name__] = definitions
        operation_ids: set[str] = set()
        for path, operations in schema.get("paths", {}).items():
            for method, operation in operations.items():
                # FastAPI only warns; a generated client would silently lose a method.
                if operation["operationId"] in operation_ids:
                    raise RuntimeError(
                        f"duplicate operationId {operation['operationId']!r}: "
                        f"{method.upper()} {path}"
                    )
                operation_ids.add(operation["operationId"])
                # Whatever takes a bearer token answers a personal access token without the
                # scope it needs (or any token, where it needs a login) with 403.
                if operation.get("security"):
                    operation["responses"].setdefault("403", problem_responses(403)[403])
                # A query or header parameter is absent (required: false) or text, never null.
                for parameter in operation.get("parameters", []):
                    parameter["schema"] = without_null(parameter["schema"])
                for response in operation.get("responses", {}).values():
                    response.setdefault("headers", {})["X-Request-ID"] = RESPONSE_HEADERS[
                        "X-Request-ID"
                    ]
        # The webhooks section describes what we send: a receiver's validation error is
        # none of the document's business (FastAPI adds one to every operation with a body).
        for operations in schema.get("webhooks", {}).values():
            for operation in operations.values():
                operation.get("responses", {}).pop("422", None)
        if "HTTPValidationError" not in json.dumps(schema.get("paths", {})):
            components.pop("HTTPValidationError", None)
            components.pop("ValidationError", None)
        app.openapi_schema = schema
    return app.openapi_schema


# Both pages fetch /openapi.json (Swagger UI's "Try it out" calls the API too), style with
# their own CSS and draw icons from data: URLs; anything else on the page is refused.
_PAGE_POLICY = {
    "default-src": "'none'",
    "script-src": "'self'",
    "style-src": "'self'",
    "img-src": "'self' data:",
    "font-src": "'self'",
    "connect-src": "'self'",
    "base-uri": "'none'",
    "object-src": "'none'",
    "form-action": "'none'",
    "frame-ancestors": "'none'",
}
_INLINE = re.compile(r"<(script|style)>(.*?)</\1>", re.DOTALL)


def _sha256_source(text: str) -> str:
    return f"'sha256-{base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()}'"


def with_page_headers(
    page: HTMLResponse, *, worker_src: str | None = None, inline_styles: bool = False
) -> HTMLResponse:
    """`page` with its Content-Security-Policy and the anti-framing headers.

    The inline blocks of the page as served (its openapi URL, hence root_path, is part of
    the text) are allowed by their SHA-256, never scripts by 'unsafe-inline'. `inline_styles`
    allows styles a script writes into <style> elements it makes at run time (their text is
    not known here), `worker_src` the workers the page may start."""
    policy = dict(_PAGE_POLICY)
    if worker_src is not None:
        policy["worker-src"] = worker_src
    if inline_styles:
        policy["style-src"] += " 'unsafe-inline'"
    for kind, text in _INLINE.findall(bytes(page.body).decode()):
        # Beside a hash, a browser ignores 'unsafe-inline': the two must not meet.
        if not (kind == "style" and inline_styles):
            policy[f"{kind}-src"] += f" {_sha256_source(text)}"
    page.headers["Content-Security-Policy"] = "; ".join(
        f"{name} {sources}" for name, sources in policy.items()
    )
    page.headers["X-Frame-Options"] = "DENY"  # for browsers older than frame-ancestors
    page.headers["Referrer-Policy"] = "no-referrer"
    return page


# Swagger UI's Authorize dialog, for the password flow of POST /auth/token: only the email
# (OAuth 2's `username`) and the password. The client id and secret, where to send them,
# and the paragraph on scopes are for OAuth 2 clients this service has none of.
_AUTHORIZE_DIALOG_STYLE = """
.auth-container .scope-def,
.auth-container h4 ~ p,
.auth-container .wrapper:has(> label[for="password_type"]),
.auth-container .wrapper:has(> label[for^="client_id"]),
.auth-container .wrapper:has(> label[for^="client_secret"]) { display: none; }
.auth-container label[for="oauth_username"] { font-size: 0; }
.auth-container label[for="oauth_username"]::before { content: "email:"; font-size: 12px; }
"""


def _with_style(page: HTMLResponse, style: str) -> HTMLResponse:
    """`page` with `style` in a <style> element of its <head> (allowed by its hash)."""
    html = bytes(page.body).decode().replace("</head>", f"<style>{style}</style>\n</head>", 1)
    return HTMLResponse(html, status_code=page.status_code)


def install_docs(app: FastAPI) -> None:
    """Serve /docs (Swagger UI) and /redoc from local assets."""
    assets = files("fastapi_offline") / "static"
    app.mount(DOCS_ASSETS_URL, StaticFiles(directory=str(assets)), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        page = get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS_URL}/favicon.png",
            # Else, on any host but localhost, a badge image from validator.swagger.io (told
            # the document's URL): offline it fails, and the policy refuses it anyway.
            swagger_ui_parameters={"validatorUrl": None},
        )
        return with_page_headers(_with_style(page, _AUTHORIZE_DIALOG_STYLE))

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        page = get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{DOCS_ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{DOCS_ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )
        # ReDoc runs its search index in a worker made from a blob: URL, and styles itself
        # with styled-components, which writes <style> elements as it renders. Its script
        # is only the one file from 'self': no inline script runs on this page.
        return with_page_headers(page, worker_src="blob:", inline_styles=True)
