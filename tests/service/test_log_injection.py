"""No request can forge a log line: a path carrying a newline, a carriage return, U+2028 or
U+0085 once decoded still yields exactly one access line, in both log formats, and what
follows the separator never stands as a line of its own.

A real `serve` writes the log, so what is checked is what an operator's terminal, `grep` or a
log shipper reads. Lines are split with `str.splitlines`, which breaks at every separator a
line-oriented reader might honour (U+2028, U+2029, U+0085, VT, FF and FS/GS/RS included).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Literal
from urllib.parse import quote

import httpx
import pytest

from taskmanager.observability import logs
from tests.support.accounts import TEST_SECRET
from tests.support.processes import clean_env, serve

# Percent-encoded as the brief's attacker sends them; decoded by the server into the path.
SEPARATORS = {"LF": "%0A", "CR": "%0D", "LS": "%E2%80%A8", "NEL": "%C2%85"}


def forged(name: str) -> str:
    """A whole access line, in the text format, that the attacker wants the log to show."""
    request = f"GET /forged-{name}/admin HTTP/1.1"
    return f'INFO    taskmanager.access [-] 10.0.0.1:1 - "{request}" 200 1.0ms'


def forged_json(name: str) -> str:
    entry = {"level": "INFO", "logger": "taskmanager.access", "path": f"/forged-{name}/admin"}
    return json.dumps(entry)


@pytest.mark.server
@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_path_cannot_forge_a_log_line(
    log_format: Literal["text", "json"],
    make_database: Callable[[str], str],
    tmp_path: Path,
) -> None:
    env = clean_env(
        DATABASE_URL=make_database(f"service_log_injection_{log_format}"),
        TASKMANAGER_JWT_SECRET=TEST_SECRET,
        TASKMANAGER_LOG_FORMAT=log_format,
        TASKMANAGER_LOG_LEVEL="INFO",
    )
    payload = forged if log_format == "text" else forged_json
    sent: dict[str, str] = {}
    with serve(env, tmp_path) as server, httpx.Client(base_url=server.base_url) as http:
        for name, separator in SEPARATORS.items():
            path = f"/probe-{name}{separator}{quote(payload(name), safe='')}"
            response = http.get(path, headers={"X-Request-ID": f"probe-{name}"})
            assert response.status_code == 404, response.text
            sent[name] = path
        assert server.interrupt() == 0
        output = server.output()

    lines = output.splitlines()
    for name in SEPARATORS:
        # Exactly one line tells of this request: its access line, the whole path inside it.
        about = [line for line in lines if f"probe-{name}" in line or f"forged-{name}" in line]
        assert len(about) == 1, about
        (line,) = about
        assert "taskmanager.access" in line
        assert f"forged-{name}/admin" in line
        # Nothing the attacker sent begins a line, nor shows up on a line of its own.
        assert not [other for other in lines if other.lstrip().startswith(payload(name))]
    if log_format == "json":
        entries = [json.loads(line) for line in lines if line.strip()]
        by_request = {e["request_id"]: e for e in entries if e["logger"] == "taskmanager.access"}
        for name, separator in SEPARATORS.items():
            # JSON escapes, it never alters: the reader gets the path exactly as it arrived.
            decoded = httpx.URL(sent[name]).path
            assert by_request[f"probe-{name}"]["path"] == decoded
            assert separator not in decoded
    # No raw separator anywhere in the output (the file ends with the last line's newline).
    assert output.count("\n") == len(lines)
    for raw in ("\r", "\u2028", "\u2029", "\x85"):
        assert raw not in output


CONTROLS = "tab\tnul\x00bell\x07vt\x0bff\x0cfs\x1cdel\x7fcsi\x9bnel\x85ls\u2028ps\u2029end"


def record_with(message: str, arg: str, exc: BaseException) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__)
    record = logging.LogRecord(
        "taskmanager.test", logging.ERROR, __file__, 1, message, (arg,), exc_info
    )
    record.request_id = "-"  # what the handler's RequestIdLogFilter adds outside a request
    return record


def raised(message: str) -> BaseException:
    try:
        raise ValueError(message)
    except ValueError as error:
        return error  # with its traceback


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_every_control_character_is_escaped_in_message_and_exception(log_format: str) -> None:
    """Messages, their arguments and exception text alike: one record, one physical line."""
    formatter = logs.JsonFormatter() if log_format == "json" else logs.TextFormatter()
    exc = raised(f"bad value\n{CONTROLS}")
    line = formatter.format(record_with("failed on %s", f"/path\r\n{CONTROLS}", exc=exc))

    assert len(line.splitlines()) == 1, line
    assert not [c for c in line if ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F]
    assert "\u2028" not in line
    assert "\u2029" not in line
    if log_format == "json":
        entry = json.loads(line)
        assert entry["message"] == f"failed on /path\r\n{CONTROLS}"  # escaped, not altered
        assert f"ValueError: bad value\n{CONTROLS}" in entry["exception"]
    else:
        assert "failed on /path\\r\\ntab\\tnul\\x00bell\\x07vt\\x0bff\\x0cfs\\x1c" in line
        assert "del\\x7fcsi\\x9bnel\\x85ls\\u2028ps\\u2029end" in line
        assert "Traceback (most recent call last):\\n" in line
        assert "ValueError: bad value\\ntab\\t" in line
