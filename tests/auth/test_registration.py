"""POST /auth/register: the account and its personal workspace, the same 202 whether or not
the address is taken (its owner gets a mail instead), emails unique in any case,
passwords as NIST SP 800-63B asks (8 to 128 characters of any kind, never truncated), and
registrations limited per client address and from everywhere, counted before hashing."""

from __future__ import annotations

from typing import Any

import argon2
import pytest
from httpx import AsyncClient
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from taskmanager.accounts.callers import scope_of_account
from taskmanager.models import Membership, Outbox, User, Workspace
from taskmanager.repositories.user_repository import UserRepository
from taskmanager.routes.auth import REGISTRATION_ACCEPTED
from taskmanager.security.passwords import password_hash
from tests.auth.conftest import ClientAt
from tests.support.accounts import Account
from tests.support.databases import TEST_KEY
from tests.support.problems import assert_problem, assert_validation_problem
from tests.support.row_level_security import enter_scope, leave_scope
from tests.support.tokens import assert_unauthorized, send_without_token


async def register(client: AsyncClient, email: str, password: str, **extra: Any) -> Any:
    return await send_without_token(
        client, "POST", "/auth/register", json={"email": email, "password": password, **extra}
    )


async def log_in(client: AsyncClient, email: str, password: str) -> Any:
    return await client.post("/auth/token", data={"username": email, "password": password})


async def account_of(db_session: AsyncSession, email: str) -> User:
    return (await db_session.execute(select(User).where(User.email == email))).scalar_one()


async def outbox_to(db_session: AsyncSession, email: str) -> list[tuple[str, dict[str, Any]]]:
    """(kind, payload) of the mails recorded to `email` (as the superuser, past the policy)."""
    rows = await db_session.execute(
        select(Outbox.kind, Outbox.payload)
        .where(Outbox.payload["to"].astext == email)
        .order_by(Outbox.id)
    )
    return [(kind, payload) for kind, payload in rows]


async def test_register_creates_the_account_and_its_personal_workspace(
    client: AsyncClient, db_session: AsyncSession
) -> None:
    response = await register(
        client, "new.person@example.com", "a fine password", display_name="New"
    )

    assert response.status_code == 202, response.text
    assert response.json() == {"detail": REGISTRATION_ACCEPTED}
    assert "password" not in response.text
    user = await account_of(db_session, "new.person@example.com")
    assert user.display_name == "New"
    assert user.email_verified_at is None
    stored = (
        await db_session.execute(select(User.password_hash).where(User.id == user.id))
    ).scalar_one()
    assert stored.startswith("$argon2id$")
    assert "a fine password" not in stored
    workspace = (
        await db_session.execute(
            select(Workspace).where(Workspace.id == user.personal_workspace_id)
        )
    ).scalar_one()
    assert workspace.personal
    assert workspace.created_by == user.id
    members = (
        await db_session.execute(
            select(Membership.user_id, Membership.role).where(
                Membership.workspace_id == workspace.id
            )
        )
    ).all()
    assert [tuple(member) for member in members] == [(user.id, "owner")]
    # A link that verifies the address is on its way (sent after commit).
    ((kind, payload),) = await outbox_to(db_session, "new.person@example.com")
    assert kind == "mail.verify_email"
    assert payload["name"] == "New"

    # The new account logs in and sees exactly its personal workspace, unverified.
    token = (await log_in(client, "new.person@example.com", "a fine password")).json()
    headers = {"Authorization": f"Bearer {token['access_token']}"}
    listed = await client.get("/workspaces", headers=headers)
    assert [(w["id"], w["personal"], w["role"]) for w in listed.json()] == [
        (workspace.id, True, "owner")
    ]
    me = (await client.get("/users/me", headers=headers)).json()
    assert (me["id"], me["email_verified"], me["email_verified_at"]) == (user.id, False, None)
    await scope_of_account(db_session, TEST_KEY, user.id)
    assert await UserRepository(db_session).email_verified(user.id) is False
    await leave_scope(db_session)


async def test_an_email_in_use_in_any_case_gets_the_same_answer_and_its_owner_a_mail(
    client: AsyncClient, db_session: AsyncSession, account: Account, hashings: list[str]
) -> None:
    new = await register(client, "someone.new@example.com", "a fine password")
    taken = await register(client, account.email.upper(), "another password")

    assert (taken.status_code, taken.json()) == (new.status_code, new.json())
    assert new.status_code == 202
    # The same work both ways: each password was hashed.
    assert hashings == ["a fine password", "another password"]
    same = (
        await db_session.execute(
            select(User.id).where(User.email.ilike(account.email))  # no second row
        )
    ).all()
    assert len(same) == 1
    ((kind, payload),) = await outbox_to(db_session, account.email)
    assert kind == "mail.registration_attempt"
    assert set(payload) == {"to", "name", "token_id", "valid_minutes"}
    # The stranger's password opens nothing.
    assert_unauthorized(await log_in(client, account.email, "another password"), token_given=False)


async def test_the_operators_accounts_count_as_verified(
    db_session: AsyncSession, account: Account
) -> None:
    """Accounts made directly (`taskmanager users create`, the tests' accounts) need no
    mail: the operator vouches for the address."""
    await enter_scope(db_session, account)
    assert await UserRepository(db_session).email_verified(account.user_id) is True
    await leave_scope(db_session)


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
        assert response.status_code == 202, response.text
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
    assert (await register(client, "unicode@example.com", password)).status_code == 202
    assert (await log_in(client, "unicode@example.com", password)).status_code == 200
    assert_unauthorized(
        await log_in(client, "unicode@example.com", password[:-1]), token_given=False
    )


@pytest.mark.parametrize("base", ["a" * 127, "é" * 127, "🔑" * 127])
async def test_the_last_of_128_characters_counts(client: AsyncClient, base: str) -> None:
    """No truncation anywhere (bcrypt's 72 bytes would lose the end of these)."""
    password = base + "1"
    assert (await register(client, "long@example.com", password)).status_code == 202

    assert_unauthorized(await log_in(client, "long@example.com", base + "2"), token_given=False)
    assert (await log_in(client, "long@example.com", password)).status_code == 200


async def test_the_stored_hash_is_of_the_whole_password(
    client: AsyncClient, db_session: AsyncSession
) -> None:
    password = "🔑" * 100 + "end"
    assert (await register(client, "whole@example.com", password)).status_code == 202
    stored = (
        await db_session.execute(
            select(User.password_hash).where(User.email == "whole@example.com")
        )
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
    # An email in use is answered only after its password was hashed: it counts too.
    assert (await register(flooding, account.email, "a fine password")).status_code == 202
    for number in range(9):  # registrations_per_address: 10 per hour
        response = await register(flooding, f"flood{number}@example.com", "a fine password")
        assert response.status_code == 202, response.text
    assert len(hashings) == 10

    refused = await register(flooding, "flood.more@example.com", "a fine password")

    assert_too_many_registrations(refused, 3600)
    assert len(hashings) == 10  # refused before its password was hashed
    # Someone at another address is not held back.
    elsewhere = await register(
        client_at("198.51.100.21", **only_per_address), "other@example.com", "a password"
    )
    assert elsewhere.status_code == 202, elsewhere.text


async def test_registrations_from_everywhere_are_limited(client_at: ClientAt) -> None:
    limits = {"registrations_per_address": 2, "registrations_total": 4}

    async def from_host(host: int, count: int = 1) -> list[int]:
        client = client_at(f"192.0.2.{host}", **limits)
        return [
            (await register(client, f"user{n}.of.{host}@example.com", "a password")).status_code
            for n in range(count)
        ]

    # One client past its own limit is refused by it alone: it uses up two of the four.
    assert await from_host(1, 5) == [202, 202, 429, 429, 429]
    assert await from_host(2) == [202]
    assert await from_host(3) == [202]

    refused = await register(client_at("192.0.2.4", **limits), "late@example.com", "a password")

    assert_too_many_registrations(refused, 10)


async def test_an_address_taken_meanwhile_leaves_the_registration_going_on(
    db_session: AsyncSession, account: Account
) -> None:
    """Two registrations of one address at once: the second finds it taken only when it
    inserts. It gets None (and answers as for any taken address), not an error, and its
    transaction goes on."""
    users = UserRepository(db_session)
    entered = await users.enter(TEST_KEY.entry("register"))
    assert entered is not None
    assert entered.user_id is not None

    taken = await users.create_unless_taken(
        entered.user_id, account.email.upper(), "Second", "$argon2id$not-used"
    )

    assert taken is None
    assert await users.get_by_id(account.user_id) is None  # still this caller: sees no one else
    await leave_scope(db_session)
    same = (await db_session.execute(select(User.id).where(User.email.ilike(account.email)))).all()
    assert len(same) == 1
