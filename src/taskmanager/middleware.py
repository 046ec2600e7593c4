"""Request context: X-Request-ID and the security headers on every response, one access log
line per request, and the last-resort 500 problem for bugs (so even that answer carries
the request id).

The access log names the method, the path (never the query string), the route template and the
status: no header, body or token ever reaches it. The path is logged as decoded, so it may hold
a newline or U+2028: the formatters in taskmanager.observability.logs escape those, keeping one
request one line. A path that is a credential (a calendar feed's secret URL,
/calendar/{secret}.ics) is logged with the secret replaced by `[secret]` (`loggable_path`).
The same place counts the request in the metrics (taskmanager.observability.metrics), by
route template."""

from __future__ import annotations

import logging
import re
import time
import uuid

from fastapi import HTTPException
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from taskmanager.errors import internal_error_response
from taskmanager.observability.logs import request_id_var, user_id_var
from taskmanager.observability.metrics import record_request, route_template
from taskmanager.problems import http_problem

REQUEST_ID_HEADER = "X-Request-ID"
# Echo a client's id only if it is short and printable, so it is safe in logs and headers.
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")

# Any other method a client makes up is counted as OTHER: label values stay a fixed set.
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

# A path segment that is a credential: a calendar feed's secret (taskmanager.routes.
# calendar_feeds), and whatever else a client sends where one would be (a mistyped or
# guessed secret is someone's secret too, nearly). /calendar/feeds is the API's own.
_SECRET_IN_PATH = re.compile(r"^/calendar/(?!feeds(?:/|$))[^/]+")
REDACTED_PATH = "/calendar/[secret]"


def loggable_path(path: str) -> str:
    """`path` as a log line or a metric may show it: no secret from it."""
    return _SECRET_IN_PATH.sub(REDACTED_PATH, path, count=1)


access_log = logging.getLogger("taskmanager.access")
error_log = logging.getLogger("taskmanager.errors")


def _request_id_from(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            candidate: str = value.decode("latin-1")
            if _VALID_REQUEST_ID.match(candidate):
                return candidate
            break
    return uuid.uuid4().hex


def _is_private(scope: Scope) -> bool:
    """An answer meant for one caller: any request with credentials, and everything under
    /auth (tokens: RFC 6749 5.1 asks for no-store)."""
    if scope["path"].startswith("/auth/"):
        return True
    return any(name == b"authorization" for name, _ in scope.get("headers", ()))


class RequestContextMiddleware:
    """Pure ASGI middleware (no BaseHTTPMiddleware overhead on the hot path)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        request_id = _request_id_from(scope)
        private = _is_private(scope)
        token = request_id_var.set(request_id)
        user_token = user_id_var.set(None)
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_with_request_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                headers = MutableHeaders(scope=message)
                headers[REQUEST_ID_HEADER] = request_id
                # The body is what Content-Type says, never sniffed into something else.
                headers["X-Content-Type-Options"] = "nosniff"
                # No shared or browser cache keeps one caller's answer; a cacheable read
                # says itself that only its caller may keep it (`private, no-cache`).
                if private and "Cache-Control" not in headers:
                    headers["Cache-Control"] = "no-store"
            await send(message)

        try:
            await self.app(scope, receive, send_with_request_id)
        except Exception:
            error_log.exception(
                "unhandled error in %s %s", scope["method"], loggable_path(scope["path"])
            )
            if response_started:
                raise  # too late for a clean answer; the server closes the connection
            await internal_error_response()(scope, receive, send_with_request_id)
        finally:
            seconds = time.perf_counter() - started
            method = scope["method"]
            route = route_template(scope)
            record_request(method if method in _KNOWN_METHODS else "OTHER", route, status, seconds)
            if access_log.isEnabledFor(logging.INFO):
                client = scope.get("client")
                path = loggable_path(scope["path"])
                access_log.info(
                    '%s - "%s %s HTTP/%s" %d %.1fms',
                    f"{client[0]}:{client[1]}" if client else "-",
                    method,
                    path,
                    scope.get("http_version", "1.1"),
                    status,
                    seconds * 1000,
                    extra={
                        "access": {
                            "method": method,
                            "path": path,
                            "route": route,
                            "status": status,
                            "duration_ms": round(seconds * 1000, 3),
                        }
                    },
                )
            user_id_var.reset(user_token)
            request_id_var.reset(token)


class RequestBodyTooLarge(HTTPException):
    """Raised while the body is read; errors.py renders it as a 413 problem."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            status_code=413,
            detail=f"body: the request body is larger than the limit of {limit:,} bytes",
        )


class BodySizeLimitMiddleware:
    """Refuse request bodies above `max_bytes` with 413, without reading them into memory:
    at once when Content-Length says so, else as soon as the streamed body passes it."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    break  # the server rejects a malformed Content-Length itself
                if declared > self.max_bytes:
                    detail = RequestBodyTooLarge(self.max_bytes).detail
                    response = http_problem(413).problem(detail).response()
                    await response(scope, receive, send)
                    return
                break

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise RequestBodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, limited_receive, send)
