"""Never log a password, a token or an Authorization header: every log record of an
account's life (register, log in, use, refresh, a failed login, a bad token, a password
change, a server error, log out), captured at DEBUG from every logger (the access log and
SQLAlchemy's statements and parameters included), is searched for them."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import httpx
import pytest
from httpx import AsyncClient

from taskmanager.repositories.task_repository import TaskRepository
from taskmanager.repositories.user_repository import AccountSecret
from taskmanager.security.caller_key import CallerKey
from tests.support.tokens import bearer, send_without_token

PASSWORD = "the first secret password"
NEW_PASSWORD = "the second secret password"
WRONG_PASSWORD = "a wrong secret password"
EMAIL = "logged@example.com"
# Loggers that may have been quietened or cut off from the root by an earlier app start
# in this process (configure_logging): opened up for the test, then put back.
LOGGERS = ("taskmanager", "taskmanager.access", "uvicorn", "sqlalchemy.engine", "sqlalchemy.pool")


@pytest.fixture(autouse=True)
def everything_logged(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Autouse, so it runs before the session fixtures open their connection: SQLAlchemy
    decides whether to log statements when a connection is made."""
    saved = {
        name: (logging.getLogger(name).level, logging.getLogger(name).propagate) for name in LOGGERS
    }
    for name in LOGGERS:
        logging.getLogger(name).propagate = True
        logging.getLogger(name).setLevel(logging.DEBUG)
    caplog.set_level(logging.DEBUG)
    try:
        yield
    finally:
        for name, (level, propagate) in saved.items():
            logging.getLogger(name).setLevel(level)
            logging.getLogger(name).propagate = propagate


def logged_text(caplog: pytest.LogCaptureFixture, leave_out: tuple[str, ...] = ()) -> str:
    """Every record as written: message, arguments, and any traceback (but the records of
    the loggers named in `leave_out`, and theirs below them)."""
    records = [
        record
        for record in caplog.records
        if not any(record.name == name or record.name.startswith(f"{name}.") for name in leave_out)
    ]
    parts = [caplog.handler.format(record) for record in records] if leave_out else [caplog.text]
    for record in records:
        parts.append(record.getMessage())
        parts.append(repr(record.args))
        if record.exc_info and record.exc_info[1] is not None:
            parts.append(repr(record.exc_info[1]))
    return "\n".join(parts)


async def test_no_password_or_token_is_ever_logged(
    client: AsyncClient, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    registered = await send_without_token(
        client, "POST", "/auth/register", json={"email": EMAIL, "password": PASSWORD}
    )
    assert registered.status_code == 202, registered.text
    login = await send_without_token(
        client, "POST", "/auth/token", data={"username": EMAIL, "password": PASSWORD}
    )
    assert login.status_code == 200, login.text
    access, refresh = login.json()["access_token"], login.json()["refresh_token"]
    headers = bearer(access)

    assert (await client.get("/users/me", headers=headers)).status_code == 200
    created = await client.post("/tasks", json={"title": "logged"}, headers=headers)
    assert created.status_code == 201, created.text
    assert (await client.get("/tasks", headers=headers)).status_code == 200

    rotated = await client.post("/auth/refresh", json={"refresh_token": refresh})
    assert rotated.status_code == 200, rotated.text
    access2, refresh2 = rotated.json()["access_token"], rotated.json()["refresh_token"]
    headers = bearer(access2)

    failed = await send_without_token(
        client, "POST", "/auth/token", data={"username": EMAIL, "password": WRONG_PASSWORD}
    )
    assert failed.status_code == 401
    tampered = access2[:-4] + ("AAAA" if not access2.endswith("AAAA") else "BBBB")
    assert (await client.get("/users/me", headers=bearer(tampered))).status_code == 401

    changed = await client.patch(
        "/users/me",
        json={"password": NEW_PASSWORD, "current_password": PASSWORD},
        headers=headers,
    )
    assert changed.status_code == 200, changed.text

    async def broken(self: TaskRepository, task_id: int) -> None:
        raise RuntimeError("a bug while serving an authenticated request")

    monkeypatch.setattr(TaskRepository, "get_view", broken)
    assert (await client.get(f"/tasks/{created.json()['id']}", headers=headers)).status_code == 500
    monkeypatch.undo()

    reused = await client.post("/auth/refresh", json={"refresh_token": refresh})
    assert reused.status_code == 401
    assert (await client.post("/auth/logout", headers=headers)).status_code == 401

    logged = logged_text(caplog)
    # The capture works: the access log and SQLAlchemy's statements are in it.
    assert "POST /auth/token" in logged
    assert "POST /auth/refresh" in logged
    assert "GET /users/me" in logged
    assert "unhandled error" in logged
    assert "SELECT" in logged
    assert EMAIL in logged  # statements' parameters too
    for secret in (PASSWORD, NEW_PASSWORD, WRONG_PASSWORD, access, refresh, access2, refresh2):
        assert secret not in logged
    assert tampered not in logged
    assert "Bearer " not in logged
    for record in caplog.records:
        assert "authorization" not in record.getMessage().lower()


def test_a_proof_and_a_password_hash_stay_out_of_reprs() -> None:
    """A caller's proof (a credential as long as the token lasts) and a stored password hash
    never show in a repr: a log line or a traceback's locals cannot leak them."""
    entry = CallerKey("k" * 48).entry("login", 1)
    assert entry.proof not in repr(entry)
    assert "user_id=1" in repr(entry)
    secret = AccountSecret(user_id=1, password_hash="$argon2id$v=19$secret", is_active=True)
    assert "argon2id" not in repr(secret)
    assert "is_active=True" in repr(secret)


async def test_a_calendar_feeds_secret_is_never_logged(
    client: AsyncClient, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A feed's URL is its credential: made, fetched (200 and 304), regenerated, fetched
    when dead (404), and failing with a bug (500), its secret reaches no log record; the
    access log shows the path as /calendar/[secret]."""
    made = await client.post("/calendar/feeds", json={})
    assert made.status_code == 201, made.text
    old_path = httpx.URL(made.json()["url"]).path
    fetched = await send_without_token(client, "GET", old_path)
    assert fetched.status_code == 200, fetched.text
    unchanged = await send_without_token(
        client, "GET", old_path, headers={"If-None-Match": fetched.headers["etag"]}
    )
    assert unchanged.status_code == 304
    regenerated = await client.post(f"/calendar/feeds/{made.json()['id']}/regenerate")
    assert regenerated.status_code == 200, regenerated.text
    new_path = httpx.URL(regenerated.json()["url"]).path
    assert (await send_without_token(client, "GET", old_path)).status_code == 404

    async def broken(self: TaskRepository, since: object, most: int) -> None:
        raise RuntimeError("a bug while serving a feed")

    monkeypatch.setattr(TaskRepository, "due_since", broken)
    assert (await send_without_token(client, "GET", new_path)).status_code == 500
    monkeypatch.undo()

    # The test's own HTTP client (httpx) logs the URLs it asks for: the client's records,
    # not the service's, are left out.
    logged = logged_text(caplog, leave_out=("httpx", "httpcore"))
    assert "GET /calendar/[secret] " in logged  # the capture holds the feed's requests
    assert "unhandled error in GET /calendar/[secret]" in logged
    assert "SELECT" in logged
    for path in (old_path, new_path):
        secret = path.removeprefix("/calendar/").removesuffix(".ics")
        assert secret.startswith("tm_cal_")
        assert secret not in logged
        assert secret[len("tm_cal_") :] not in logged
