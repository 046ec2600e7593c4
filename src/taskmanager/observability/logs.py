"""Logging set-up: every line carries the request id of the request that wrote it.

Two formats (TASKMANAGER_LOG_FORMAT): `text`, one readable line, and `json`, one JSON object
per line with the timestamp, level, logger, message, request id and, once the request is
authenticated, the user id; access lines add method, path, route template, status and
duration. Statements slower than TASKMANAGER_SLOW_STATEMENT_MS are logged with the request
id that ran them: the statement's text, never its parameters.

What reaches a log line is chosen here and in the middleware, never a header: no password,
token or Authorization header is ever written.

One record is one physical line in either format, whatever it carries (a request's path, an
exception's text, a traceback): control characters (C0, DEL, C1 with NEL) and the Unicode
line and paragraph separators are escaped, so no client can forge a line or cut one in two.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s [%(request_id)s] %(message)s"

slow_statement_log = logging.getLogger("taskmanager.sql")

# The request a line is written for, set by the request middleware (taskmanager.middleware).
request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
# The authenticated caller's id, set by taskmanager.dependencies once the request's scope is
# known.
user_id_var: contextvars.ContextVar[int | None] = contextvars.ContextVar("user_id", default=None)


def current_request_id() -> str | None:
    """The id of the request being served (X-Request-ID), None outside a request."""
    request_id = request_id_var.get()
    return None if request_id == "-" else request_id


class RequestIdLogFilter(logging.Filter):
    """Adds `request_id` to every log record, for formats that print it."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        record.user_id = user_id_var.get()
        return True


_STARTED = "taskmanager_statement_started"

# Everything a terminal, `grep`, `str.splitlines` or a log shipper may take for a line break
# or a terminal command: C0 controls, DEL, C1 controls (NEL is U+0085), LS and PS.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# What json.dumps(ensure_ascii=False) leaves raw of them (it escapes C0 itself).
_RAW_IN_JSON = re.compile(r"[\x7f-\x9f\u2028\u2029]")
_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[char]
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def escape_controls(text: str) -> str:
    """`text` with every control character and line separator written as a Python-style
    escape (`\\n`, `\\x85`, `\\u2028`): printable, and on one line."""
    return _CONTROL.sub(_escape, text)


def _json_escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


class TextFormatter(logging.Formatter):
    """LOG_FORMAT, on one line: the whole formatted record escaped, a traceback included
    (its line breaks become `\\n`), so everything about one event stays on its line."""

    def __init__(self) -> None:
        super().__init__(LOG_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        return escape_controls(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line. Readers decoding the JSON get every value
    exactly as logged; readers splitting lines see no separator inside one."""

    def format(self, record: logging.LogRecord) -> str:
        request_id = getattr(record, "request_id", "-")
        entry: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": None if request_id == "-" else request_id,
        }
        user_id = getattr(record, "user_id", None)
        if user_id is not None:
            entry["user_id"] = user_id
        access = getattr(record, "access", None)
        if isinstance(access, dict):
            entry.update(access)
        duration_ms = getattr(record, "duration_ms", None)
        if duration_ms is not None:
            entry["duration_ms"] = duration_ms
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        line = json.dumps(entry, default=str, ensure_ascii=False)
        # Outside strings JSON is plain ASCII, so these are inside one: \uXXXX is the same
        # character to a JSON reader, and no line break to anything reading lines.
        return _RAW_IN_JSON.sub(_json_escape, line)


def configure_logging(level: str, log_format: Literal["text", "json"] = "text") -> None:
    """Send taskmanager's and uvicorn's logs to stderr in one format, at `level`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(RequestIdLogFilter())
    for name in ("taskmanager", "uvicorn", "uvicorn.error", "sqlalchemy.engine"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler] if name in ("taskmanager", "uvicorn") else []
        logger.propagate = name not in ("taskmanager", "uvicorn")
    logging.getLogger("taskmanager").setLevel(level)
    logging.getLogger("uvicorn").setLevel(level)
    # uvicorn's own access log lacks the request id; ours (taskmanager.access) has it.
    logging.getLogger("uvicorn.access").disabled = True


def log_slow_statements(engine: AsyncEngine, threshold_ms: float) -> None:
    """Log each statement `engine` runs that takes longer than `threshold_ms` (0: none).

    The events run in the request's context (SQLAlchemy's greenlets carry it), so the line
    has the request id. The parameters are never logged: they hold emails, password
    hashes and refresh-token digests."""
    if threshold_ms <= 0:
        return
    threshold = threshold_ms / 1000

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        conn.info[_STARTED] = time.perf_counter()

    def after(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        started = conn.info.pop(_STARTED, None)
        if started is None:
            return
        elapsed = time.perf_counter() - started
        if elapsed >= threshold:
            slow_statement_log.warning(
                "slow statement (%.1f ms): %s",
                elapsed * 1000,
                " ".join(statement.split()),
                extra={"duration_ms": round(elapsed * 1000, 3)},
            )

    event.listen(engine.sync_engine, "before_cursor_execute", before)
    event.listen(engine.sync_engine, "after_cursor_execute", after)
