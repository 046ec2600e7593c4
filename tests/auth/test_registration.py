"""POST /auth/register: the account and its personal workspace, emails unique in any case,
passwords as NIST SP 800-63B asks (8 to 128 characters of any kind, never truncated), and
registrations limited per client address and from everywhere, counted before hashing."""

from __future__ import annotations

from typing import Any

import argon2
import pytest
from httpx import AsyncClient
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from taskmanager.models import Membership, User, Workspace
from taskmanager.security.passwords import password_hash
from tests.auth.conftest import ClientAt
from tests.support.accounts import Account
from tests.support.problems import assert_problem, assert_validation_problem
from tests.support.tokens import assert_unauthorized, send_without_token


async def register(client: AsyncClient, email: str, password: str, **extra: Any) -> Any:
    return await send_without_token(
        client, "POST", "/auth/register", json={"email": email, "password": password, **extra}
    )


async def log_in(client: AsyncClient, email: str, password: str) -> Any:
    return await client.post("/auth/token", data={"username": email, "password": password})


async def test_register_creates_the_account_and_its_personal_workspace(
    client: AsyncClient, db_session: AsyncSession
) -> None:
    response = await register(
        client, "new.person@example.com", "a fine password", display_name="New"
    )

    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == {"id", "email", "display_name", "personal_workspace_id", "created_at"}
    assert body["email"] == "new.person@example.com"
    assert body["display_name"] == "New"
    assert response.headers["Location"].endswith("/users/me")
    assert "password" not in response.text
    stored = (
        await db_session.execute(select(User.password_hash).where(User.id == body["id"]))
    ).scalar_one()
    assert stored.startswith("$argon2id$")
    assert "a fine password" not in stored
    workspace = (
        await db_session.execute(
            select(Workspace).where(Workspace.id == body["personal_workspace_id"])
        )
    ).scalar_one()
    assert workspace.personal
    assert workspace.created_by == body["id"]
    members = (
        await db_session.execute(
            select(Membership.user_id, Membership.role).where(
                Membership.workspace_id == workspace.id
            )
        )
    ).all()
    assert [tuple(member) for member in members] == [(body["id"], "owner")]

    # The new account logs in and sees exactly its personal workspace.
    token = (await log_in(client, "new.person@example.com", "a fine password")).json()
    listed = await client.get(
        "/workspaces", headers={"Authorization": f"Bearer {token['access_token']}"}
    )
    assert [(w["id"], w["personal"], w["role"]) for w in listed.json()] == [
        (workspace.id, True, "owner")
    ]


async def test_an_email_in_use_in_another_case_is_409(
    client: AsyncClient, db_session: AsyncSession, account: Account
) -> None:
    response = await register(client, account.email.upper(), "another password")

    assert_problem(response, 409, field="body.email")
    same = (
        await db_session.execute(
            select(User.id).where(User.email.ilike(account.email))  # no second row
        )
    ).all()
    assert len(same) == 1


async def test_an_invalid_email_is_422(client: AsyncClient) -> None:
    assert_validation_problem(
        await register(client, "not-an-email", "a fine password"), "body.email"
    )


@pytest.mark.parametrize(
    ("password", "accepted"),
    [
        ("x" * 7, False),
        ("x" * 8, True),
        ("x" * 128, True),
        ("x" * 129, False),
        # Counted in characters, not bytes: 8 four-byte emoji are 8 characters...
        ("🔑" * 8, True),
        ("🔑" * 7, False),
        # ...and 128 of them (512 bytes of UTF-8) are still allowed.
        ("🔑" * 128, True),
        ("🔑" * 129, False),
    ],
    ids=["7", "8", "128", "129", "8-emoji", "7-emoji", "128-emoji", "129-emoji"],
)
async def test_password_length_limits(client: AsyncClient, password: str, accepted: bool) -> None:
    response = await register(client, "length@example.com", password)
    if accepted:
        assert response.status_code == 201, response.text
        assert (await log_in(client, "length@example.com", password)).status_code == 200
    else:
        assert_validation_problem(response, "body.password")
        assert password not in response.text


@pytest.mark.parametrize(
    "password",
    [
        "pässwörd mit Umlaut",
        "пароль-кириллица",
        "密码很长很长很长",
        "🔐🔑 emoji 🗝️✨",
        "tab\tand space ",
    ],
)
async def test_any_characters_work(client: AsyncClient, password: str) -> None:
    assert (await register(client, "unicode@example.com", password)).status_code == 201
    assert (await log_in(client, "unicode@example.com", password)).status_code == 200
    assert_unauthorized(
        await log_in(client, "unicode@example.com", password[:-1]), token_given=False
    )


@pytest.mark.parametrize("base", ["a" * 127, "é" * 127, "🔑" * 127])
async def test_the_last_of_128_characters_counts(client: AsyncClient, base: str) -> None:
    """No truncation anywhere (bcrypt's 72 bytes would lose the end of these)."""
    password = base + "1"
    assert (await register(client, "long@example.com", password)).status_code == 201

    assert_unauthorized(await log_in(client, "long@example.com", base + "2"), token_given=False)
    assert (await log_in(client, "long@example.com", password)).status_code == 200


async def test_the_stored_hash_is_of_the_whole_password(
    client: AsyncClient, db_session: AsyncSession
) -> None:
    password = "🔑" * 100 + "end"
    body = (await register(client, "whole@example.com", password)).json()
    stored = (
        await db_session.execute(select(User.password_hash).where(User.id == body["id"]))
    ).scalar_one()
    assert password_hash().verify(password, stored)
    assert not password_hash().verify(password[:-1], stored)


# ─────────────────────────────── limits


@pytest.fixture
def hashings(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The passwords argon2 hashed, in order."""
    hashed: list[str] = []
    real_hash = argon2.PasswordHasher.hash

    def spy(self: argon2.PasswordHasher, password: str | bytes, **kwargs: Any) -> str:
        hashed.append(password if isinstance(password, str) else password.decode())
        return real_hash(self, password, **kwargs)

    monkeypatch.setattr(argon2.PasswordHasher, "hash", spy)
    return hashed


def assert_too_many_registrations(response: Any, window_seconds: int) -> None:
    assert_problem(response, 429, problem_type="/problems/too-many-registrations")
    assert 1 <= int(response.headers["Retry-After"]) <= window_seconds


async def test_registrations_from_one_address_are_limited(
    client_at: ClientAt, account: Account, hashings: list[str]
) -> None:
    only_per_address = {"registrations_total": 1000}  # the total has a test of its own
    flooding = client_at("198.51.100.20", **only_per_address)
    # An email in use is refused only after its password was hashed: it counts too.
    assert_problem(await register(flooding, account.email, "a fine password"), 409)
    for number in range(9):  # registrations_per_address: 10 per hour
        response = await register(flooding, f"flood{number}@example.com", "a fine password")
        assert response.status_code == 201, response.text
    assert len(hashings) == 10

    refused = await register(flooding, "flood.more@example.com", "a fine password")

    assert_too_many_registrations(refused, 3600)
    assert len(hashings) == 10  # refused before its password was hashed
    # Someone at another address is not held back.
    elsewhere = await register(
        client_at("198.51.100.21", **only_per_address), "other@example.com", "a password"
    )
    assert elsewhere.status_code == 201, elsewhere.text


async def test_registrations_from_everywhere_are_limited(client_at: ClientAt) -> None:
    limits = {"registrations_per_address": 2, "registrations_total": 4}

    async def from_host(host: int, count: int = 1) -> list[int]:
        client = client_at(f"192.0.2.{host}", **limits)
        return [
            (await register(client, f"user{n}.of.{host}@example.com", "a password")).status_code
            for n in range(count)
        ]

    # One client past its own limit is refused by it alone: it uses up two of the four.
    assert await from_host(1, 5) == [201, 201, 429, 429, 429]
    assert await from_host(2) == [201]
    assert await from_host(3) == [201]

    refused = await register(client_at("192.0.2.4", **limits), "late@example.com", "a password")

    assert_too_many_registrations(refused, 10)
