"""Accounts for tests: made once per database through the real registration code, with
access tokens signed by the test key, so a test client can send `Authorization` like any
client does."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from httpx import AsyncClient
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from taskmanager.accounts.registration import register_account
from taskmanager.database import create_session_factory
from taskmanager.repositories.auth_session_repository import AuthSessionRepository
from taskmanager.repositories.task_repository import TaskRepository as _TaskRepository
from taskmanager.repositories.user_repository import UserRepository
from taskmanager.security.caller_key import CallerKey, Entry
from taskmanager.security.scope import Scope
from taskmanager.security.tokens import issue_access_token

# At least 32 bytes, as the settings demand of any signing key.
TEST_SECRET = "test-signing-key-that-is-long-enough-0123456789"
PASSWORD = "correct horse battery staple"


@dataclass
class Account:
    """A registered user with a live login session and an access token for it."""

    user_id: int
    email: str
    personal_workspace_id: int
    session_id: uuid.UUID
    access_token: str
    refresh_token: str
    password: str = PASSWORD
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}


async def create_account(
    engine: AsyncEngine, email: str, *, secret: str = TEST_SECRET, password: str = PASSWORD
) -> Account:
    """Register `email` (committed, its address verified, as an operator's account is) and
    log it in, without HTTP."""
    key = CallerKey(secret)
    async with create_session_factory(engine)() as session, session.begin():
        user = await register_account(session, key, email, password, verified=True)
        user_id, personal = user.id, user.personal_workspace_id
    async with create_session_factory(engine)() as session, session.begin():
        await UserRepository(session).enter(key.entry("login", user_id))
        session_id, refresh_token = await AuthSessionRepository(session).open(
            user_id, datetime.now(UTC) + timedelta(days=1)
        )
    assert personal is not None
    return Account(
        user_id=user_id,
        email=email,
        personal_workspace_id=personal,
        session_id=session_id,
        access_token=issue_access_token(secret, user_id, session_id, timedelta(hours=2)),
        refresh_token=refresh_token,
        password=password,
    )


async def register_and_login(
    client: AsyncClient, email: str, password: str = PASSWORD
) -> dict[str, str]:
    """Through the API, as a client would: the Authorization header for the new account
    (registration answers 202 for a new address and a taken one alike: the login that
    follows is what shows the account exists with this password)."""
    response = await client.post("/auth/register", json={"email": email, "password": password})
    assert response.status_code == 202, response.text
    return await login(client, email, password)


async def login(client: AsyncClient, email: str, password: str = PASSWORD) -> dict[str, str]:
    response = await client.post("/auth/token", data={"username": email, "password": password})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


async def created_by(
    client: AsyncClient,
    account: Account,
    url: str,
    body: dict[str, Any],
    headers: dict[str, str] | None = None,
) -> Any:
    """POST `body` to `url` as `account`: the 201's body."""
    response = await client.post(url, json=body, headers={**account.headers, **(headers or {})})
    assert response.status_code == 201, response.text
    return response.json()


def request_entry(account: Account, secret: str = TEST_SECRET) -> Entry:
    """What a request with `account`'s access token enters its transaction with."""
    valid_until = int((datetime.now(UTC) + timedelta(hours=2)).timestamp())
    return CallerKey(secret).entry(
        "request", account.user_id, account.session_id, valid_until=valid_until
    )


def TaskRepository(session: AsyncSession) -> _TaskRepository:  # noqa: N802 (the lecture's name)
    """The lecture's `TaskRepository(session)` (Part 6), for a session that has entered a
    test account's scope (tests/lecture/conftest.py): since Week 9 every repository also
    takes the caller's Scope."""
    scope: Scope = session.info["scope"]
    return _TaskRepository(session, scope)


@dataclass(frozen=True)
class ServedLogin:
    """An account registered and logged in over HTTP on a served process."""

    user_id: int
    email: str
    personal_workspace_id: int
    access_token: str
    refresh_token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}


def register_over_http(base_url: str, email: str, password: str = PASSWORD) -> ServedLogin:
    """POST /auth/register then /auth/token on a running server (a real socket), as any
    client would: for the tests that start `taskmanager serve`."""
    with httpx.Client(base_url=base_url, timeout=30) as http:
        registered = http.post("/auth/register", json={"email": email, "password": password})
        assert registered.status_code == 202, registered.text
        tokens = login_over_http(http, email, password)
        me = http.get("/users/me", headers={"Authorization": f"Bearer {tokens['access_token']}"})
        assert me.status_code == 200, me.text
    user = me.json()
    return ServedLogin(
        user_id=user["id"],
        email=email,
        personal_workspace_id=user["personal_workspace_id"],
        access_token=tokens["access_token"],
        refresh_token=tokens["refresh_token"],
    )


def login_over_http(http: httpx.Client, email: str, password: str = PASSWORD) -> dict[str, Any]:
    """POST /auth/token (the OAuth2 password flow's form): the token response's body."""
    response = http.post("/auth/token", data={"username": email, "password": password})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body
