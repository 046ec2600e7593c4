"""TASKMANAGER_LOG_FORMAT=json on a real `serve`: every line of its output is one JSON object,
access lines name the request id, the user, the route template, the status and the duration,
slow statements carry the request id that ran them, and no secret is ever written.

The slow-statement threshold is set so low that every statement is logged: the strictest
check that statements are logged without their parameters (emails, password hashes,
refresh-token digests).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.accounts import PASSWORD, TEST_SECRET
from tests.support.processes import clean_env, serve

pytestmark = pytest.mark.server

METRICS_TOKEN = "metrics-token-that-must-never-be-logged-42"
WRONG_PASSWORD = "wrong-password-that-must-never-be-logged"
EMAIL = "logged@example.com"
TITLE = "a title only ever sent as a parameter"


def test_json_logs_name_request_user_route_and_never_a_secret(
    make_database: Callable[[str], str], tmp_path: Path
) -> None:
    env = clean_env(
        DATABASE_URL=make_database("service_json_logs"),
        TASKMANAGER_JWT_SECRET=TEST_SECRET,
        TASKMANAGER_METRICS_TOKEN=METRICS_TOKEN,
        TASKMANAGER_LOG_FORMAT="json",
        TASKMANAGER_LOG_LEVEL="INFO",
        TASKMANAGER_SLOW_STATEMENT_MS="0.001",
    )
    secrets: list[str] = [PASSWORD, WRONG_PASSWORD, METRICS_TOKEN, TEST_SECRET]
    with serve(env, tmp_path) as server, httpx.Client(base_url=server.base_url) as http:
        registered = http.post("/auth/register", json={"email": EMAIL, "password": PASSWORD})
        assert registered.status_code == 202, registered.text
        refused = http.post("/auth/token", data={"username": EMAIL, "password": WRONG_PASSWORD})
        assert refused.status_code == 401
        login = http.post("/auth/token", data={"username": EMAIL, "password": PASSWORD})
        assert login.status_code == 200, login.text
        first = login.json()
        refreshed = http.post("/auth/refresh", json={"refresh_token": first["refresh_token"]})
        assert refreshed.status_code == 200, refreshed.text
        tokens = refreshed.json()
        secrets += [first["access_token"], first["refresh_token"]]
        secrets += [tokens["access_token"], tokens["refresh_token"]]
        bearer = {"Authorization": f"Bearer {tokens['access_token']}"}

        me = http.get("/users/me", headers=bearer | {"X-Request-ID": "me-request-1"})
        assert me.status_code == 200, me.text
        user_id = me.json()["id"]
        created = http.post(
            "/tasks", json={"title": TITLE}, headers=bearer | {"X-Request-ID": "task-request-1"}
        )
        assert created.status_code == 201, created.text
        bad_token = http.get("/users/me", headers={"Authorization": "Bearer not.a.jwt"})
        assert bad_token.status_code == 401
        metrics = http.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
        assert metrics.status_code == 200
        assert http.post("/auth/logout", headers=bearer).status_code == 204
        assert server.interrupt() == 0
        output = server.output()

    lines = [line for line in output.splitlines() if line.strip()]
    assert lines
    entries: list[dict[str, Any]] = []
    for line in lines:
        entry = json.loads(line)  # every line, the banner and uvicorn's included
        assert isinstance(entry, dict), line
        assert {"timestamp", "level", "logger", "message", "request_id"} <= entry.keys(), line
        entries.append(entry)

    for secret in secrets:
        assert secret not in output, "a secret reached the log"
    assert "Bearer " not in output
    assert "authorization" not in output.lower()
    assert "argon2" not in output  # no password hash either

    access = [e for e in entries if e["logger"] == "taskmanager.access"]
    (me_line,) = [e for e in access if e["request_id"] == "me-request-1"]
    assert me_line["user_id"] == user_id
    assert me_line["route"] == "/users/me"
    assert me_line["method"] == "GET"
    assert me_line["status"] == 200
    assert isinstance(me_line["duration_ms"], float)
    assert me_line["duration_ms"] > 0
    (task_line,) = [e for e in access if e["request_id"] == "task-request-1"]
    assert task_line["route"] == "/tasks"
    assert task_line["status"] == 201
    assert task_line["user_id"] == user_id
    # A request that did not authenticate names no user.
    (refused_line,) = [e for e in access if e["status"] == 401 and e["route"] == "/auth/token"]
    assert "user_id" not in refused_line

    statements = [e for e in entries if e["logger"] == "taskmanager.sql"]
    by_request = {e["request_id"] for e in statements}
    assert {"me-request-1", "task-request-1"} <= by_request
    task_statements = [e["message"] for e in statements if e["request_id"] == "task-request-1"]
    assert any("INSERT INTO tasks" in message for message in task_statements), task_statements
    assert all(isinstance(e["duration_ms"], float) for e in statements)
    # Statements, never their values: the email was a parameter of several of them.
    assert not [e for e in statements if EMAIL in e["message"]]
    assert not [e for e in statements if TITLE in e["message"]]
