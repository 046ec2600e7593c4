"""Mails anyone can ask for (password resets) are limited per client address and per
account address, counted before any work and the same for addresses without an account:
429 with Retry-After, problem type /problems/too-many-mails, and nothing recorded."""

from __future__ import annotations

from typing import Any

from httpx import AsyncClient
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from taskmanager.models import Outbox
from tests.auth.conftest import ClientAt
from tests.support.accounts import Account
from tests.support.problems import assert_problem


async def ask_reset(client: AsyncClient, email: str) -> Any:
    return await client.post("/auth/password-reset", json={"email": email})


def assert_too_many_mails(response: Any) -> None:
    assert_problem(response, 429, problem_type="/problems/too-many-mails")
    assert 1 <= int(response.headers["Retry-After"]) <= 3600


async def resets_recorded(db_session: AsyncSession, email: str) -> int:
    count = await db_session.execute(
        select(func.count())
        .select_from(Outbox)
        .where(Outbox.kind == "mail.password_reset", Outbox.payload["to"].astext == email)
    )
    return int(count.scalar_one())


async def test_one_client_address_is_limited_whatever_accounts_it_names(
    client_at: ClientAt, account: Account, db_session: AsyncSession
) -> None:
    limits = {"mails_per_address": 3, "mails_per_account": 100}
    asking = client_at("198.51.100.40", **limits)
    for email in ("nobody.1@example.com", "nobody.2@example.com", account.email):
        assert (await ask_reset(asking, email)).status_code == 202

    assert_too_many_mails(await ask_reset(asking, account.email))

    assert await resets_recorded(db_session, account.email) == 1  # the refused one: nothing
    # Another client address is not held back.
    elsewhere = client_at("198.51.100.41", **limits)
    assert (await ask_reset(elsewhere, account.email)).status_code == 202
    assert await resets_recorded(db_session, account.email) == 2


async def test_one_account_is_limited_from_every_address_known_or_not(
    client_at: ClientAt, account: Account
) -> None:
    limits = {"mails_per_address": 100, "mails_per_account": 2}
    for email in (account.email, "no.account@example.com"):
        answers = [
            (await ask_reset(client_at(f"203.0.113.{n}", **limits), email.upper())).status_code
            for n in range(1, 4)
        ]
        # An address with an account and one without are answered alike.
        assert answers == [202, 202, 429], email
