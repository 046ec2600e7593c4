"""POST /auth/token: no account enumeration (the same answer and the same argon2 work for
an unknown email and a wrong password), password attempts limited in PostgreSQL per client
address (an IPv6 /64), per account at an address, and per account from the addresses it
has not logged in from lately, and stored hashes upgraded to today's argon2 parameters."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import argon2
import pytest
from fastapi import FastAPI
from httpx import AsyncClient, Response
from pwdlib.hashers.argon2 import Argon2Hasher
from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from taskmanager.config import Settings
from taskmanager.main import create_app
from taskmanager.models import LoginFailure, User
from taskmanager.problems import TOO_MANY_LOGIN_ATTEMPTS
from taskmanager.security.passwords import MEMORY_COST_KIB, PARALLELISM, TIME_COST, password_hash
from tests.auth.conftest import ClientAt
from tests.support.accounts import Account
from tests.support.live_app import from_address
from tests.support.problems import assert_problem
from tests.support.rolled_back import rolled_back_client
from tests.support.tokens import assert_unauthorized

# ASGITransport's client address.
ADDRESS_KEY = "address:127.0.0.1"
TODAYS_PARAMETERS = f"m={MEMORY_COST_KIB},t={TIME_COST},p={PARALLELISM}"


@dataclass
class Argon2Spy:
    """The hashes argon2 verified passwords against, in order."""

    hashes: list[str] = field(default_factory=list)

    def parameters(self) -> list[str]:
        return [_parameters(stored) for stored in self.hashes]


def _parameters(stored: str) -> str:
    match = re.match(r"^\$argon2id\$v=19\$(m=\d+,t=\d+,p=\d+)\$", stored)
    assert match, stored
    return match.group(1)


@pytest.fixture
def argon2_spy(monkeypatch: pytest.MonkeyPatch) -> Argon2Spy:
    spy = Argon2Spy()
    real_verify = argon2.PasswordHasher.verify

    def verify(self: argon2.PasswordHasher, hash: str | bytes, password: str | bytes) -> bool:
        spy.hashes.append(hash if isinstance(hash, str) else hash.decode())
        return real_verify(self, hash, password)

    monkeypatch.setattr(argon2.PasswordHasher, "verify", verify)
    return spy


async def log_in(client: AsyncClient, email: str, password: str) -> Response:
    return await client.post("/auth/token", data={"username": email, "password": password})


async def failures(db_session: AsyncSession, key: str) -> int | None:
    result = await db_session.execute(select(LoginFailure.failures).where(LoginFailure.key == key))
    value = result.scalar_one_or_none()
    return None if value is None else int(value)


def assert_too_many(response: Response, window_seconds: int = 900) -> int:
    assert_problem(response, 429, problem_type=TOO_MANY_LOGIN_ATTEMPTS)
    retry_after = int(response.headers["Retry-After"])
    assert 1 <= retry_after <= window_seconds
    return retry_after


def comparable_headers(response: Response) -> dict[str, str]:
    return {name: value for name, value in response.headers.items() if name != "x-request-id"}


# ─────────────────────────────── no account enumeration


async def test_unknown_email_and_wrong_password_get_the_same_answer_after_the_same_work(
    client: AsyncClient, db_session: AsyncSession, account: Account, argon2_spy: Argon2Spy
) -> None:
    unknown = await log_in(client, "nobody@example.com", account.password)
    wrong = await log_in(client, account.email, "not the password")
    await db_session.execute(update(User).where(User.id == account.user_id).values(is_active=False))
    await db_session.commit()
    disabled = await log_in(client, account.email, account.password)

    assert_unauthorized(unknown, token_given=False)
    assert unknown.content == wrong.content == disabled.content
    assert comparable_headers(unknown) == comparable_headers(wrong) == comparable_headers(disabled)
    # One argon2 verification each, at the same parameters: the unknown email is checked
    # against a decoy hash made like a real one, so it takes as long.
    assert len(argon2_spy.hashes) == 3
    assert argon2_spy.parameters() == [TODAYS_PARAMETERS] * 3


async def test_a_wrong_password_is_also_said_in_oauth_2s_words(
    client: AsyncClient, account: Account
) -> None:
    """RFC 6749 5.2's `error` and `error_description` beside the problem's own members: what
    an OAuth 2 client (Swagger UI's Authorize dialog) shows its user."""
    body = assert_problem(await log_in(client, account.email, "not the password"), 401)
    assert body["error"] == "invalid_grant"
    assert body["error_description"] == body["detail"] == "the email or the password is wrong"
    # Other problems carry neither.
    other = assert_problem(await client.get("/tasks/999999"), 404)
    assert "error" not in other
    assert "error_description" not in other


async def test_a_successful_login_answers_tokens(client: AsyncClient, account: Account) -> None:
    response = await log_in(client, account.email.upper(), account.password)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"access_token", "token_type", "expires_in", "refresh_token"}
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 15 * 60
    assert response.headers["Cache-Control"] == "no-store"


# ─────────────────────────────── limits
#
# Keys of login_failures, as PostgreSQL writes them (the account in lower() case).


def at_address(email: str, address: str = "127.0.0.1") -> str:
    return f"account-address:{address} {email}"


def account_wide(email: str) -> str:
    return f"account:{email}"


async def age(db_session: AsyncSession, key: str, seconds: float) -> None:
    """Move `key`'s window (or remembered login) `seconds` into the past."""
    await db_session.execute(
        text(
            "UPDATE login_failures SET window_started_at = window_started_at "
            "- make_interval(secs => :seconds) WHERE key = :key"
        ),
        {"key": key, "seconds": seconds},
    )
    await db_session.commit()


async def test_failures_for_one_account_from_one_address_are_limited(
    client: AsyncClient,
    db_session: AsyncSession,
    account: Account,
    other_account: Account,
    argon2_spy: Argon2Spy,
) -> None:
    key = at_address(account.email)
    for attempt in range(5):  # login_failures_per_account_and_address; the email in any case
        email = account.email.upper() if attempt % 2 else account.email
        assert_unauthorized(await log_in(client, email, "wrong"), token_given=False)
    assert await failures(db_session, key) == 5
    verified = len(argon2_spy.hashes)

    # Even the right password is refused now, without spending argon2 work on it.
    blocked = await log_in(client, account.email, account.password)

    assert_too_many(blocked)
    assert len(argon2_spy.hashes) == verified
    # Attempts are counted before the password is checked (so a burst cannot slip past the
    # limit while the first guesses hash): the refused one counts too, the window stays.
    assert await failures(db_session, key) == 6
    # ...but not against the account as a whole: that one address is refused on its own.
    assert await failures(db_session, account_wide(account.email)) == 5
    # Another account from the same address still logs in.
    assert (await log_in(client, other_account.email, other_account.password)).status_code == 200


async def test_an_expired_window_no_longer_blocks(
    client: AsyncClient, db_session: AsyncSession, account: Account
) -> None:
    for _ in range(5):
        await log_in(client, account.email, "wrong")
    assert_too_many(await log_in(client, account.email, account.password))

    await age(db_session, at_address(account.email), 901)

    assert (await log_in(client, account.email, account.password)).status_code == 200


async def test_a_successful_login_forgives_its_addresss_failures_and_is_remembered(
    client: AsyncClient, db_session: AsyncSession, account: Account
) -> None:
    key = at_address(account.email)
    for _ in range(4):
        await log_in(client, account.email, "wrong")
    assert await failures(db_session, key) == 4

    assert (await log_in(client, account.email, account.password)).status_code == 200

    assert await failures(db_session, key) is None
    assert await failures(db_session, ADDRESS_KEY) == 4  # the success is not charged to it
    # The account-wide count keeps the failures (an owner who logs in often must not hand
    # the guesses made from elsewhere a fresh budget each time), not the success.
    assert await failures(db_session, account_wide(account.email)) == 4
    assert await failures(db_session, f"known-address:127.0.0.1 {account.email}") == 0
    # Four more failures still leave room for a login.
    for _ in range(4):
        assert_unauthorized(await log_in(client, account.email, "wrong"), token_given=False)
    assert (await log_in(client, account.email, account.password)).status_code == 200


async def test_failures_from_another_address_do_not_lock_the_owner_out(
    client_at: ClientAt, db_session: AsyncSession, account: Account
) -> None:
    """One address guessing (or just hammering to lock the owner out) is refused on its
    own: the owner keeps logging in, from home and from a new address alike."""
    home, attacker, elsewhere = (
        client_at(address) for address in ("198.51.100.7", "203.0.113.66", "192.0.2.10")
    )
    assert (await log_in(home, account.email, account.password)).status_code == 200

    answers = [await log_in(attacker, account.email, f"guess {n}") for n in range(20)]

    assert [answer.status_code for answer in answers] == [401] * 5 + [429] * 15
    assert (await log_in(home, account.email, account.password)).status_code == 200
    assert (await log_in(elsewhere, account.email, account.password)).status_code == 200
    # And the attacker's address is still refused, whatever it sends.
    assert_too_many(await log_in(attacker, account.email, account.password))


async def test_a_botnet_gets_few_guesses_at_an_account_and_the_owner_still_logs_in(
    client_at: ClientAt, db_session: AsyncSession, account: Account, argon2_spy: Argon2Spy
) -> None:
    """Thirty addresses, one guess each: the account as a whole allows ten per window
    (login_failures_per_account), checked at all; an address the account logged in from
    lately is not held back by them."""
    home = client_at("198.51.100.7")
    assert (await log_in(home, account.email, account.password)).status_code == 200
    verified = len(argon2_spy.hashes)

    answers = [
        await log_in(client_at(f"203.0.113.{n}"), account.email, f"guess {n}") for n in range(1, 31)
    ]

    assert [answer.status_code for answer in answers] == [401] * 10 + [429] * 20
    assert len(argon2_spy.hashes) - verified == 10
    assert await failures(db_session, account_wide(account.email)) == 30
    # The price: a login from an address the account has not used lately waits too...
    assert_too_many(await log_in(client_at("192.0.2.10"), account.email, account.password))
    # ...but not the owner at home.
    assert (await log_in(home, account.email, account.password)).status_code == 200


async def test_a_slow_campaign_is_bounded_per_day(
    client_at: ClientAt, db_session: AsyncSession, account: Account
) -> None:
    limits = {"login_failures_per_account": 2, "login_failures_per_account_per_day": 3}

    async def guess(number: int) -> Response:
        return await log_in(client_at(f"203.0.113.{number}", **limits), account.email, "wrong")

    assert [(await guess(n)).status_code for n in (1, 2)] == [401, 401]
    assert_too_many(await guess(3))  # the 15-minute window's limit
    await age(db_session, account_wide(account.email), 901)

    assert (await guess(4)).status_code == 401  # a new window: the day's third guess
    refused = await guess(5)

    # Guesses the window refused (the third) were not counted per day.
    assert assert_too_many(refused, window_seconds=24 * 60 * 60) > 900
    assert await failures(db_session, f"account-day:{account.email}") == 4


async def test_an_address_remembered_too_long_ago_is_held_back_like_any(
    client_at: ClientAt, db_session: AsyncSession, account: Account
) -> None:
    home = client_at("198.51.100.7", login_failures_per_account=1)
    assert (await log_in(home, account.email, account.password)).status_code == 200
    assert (await log_in(client_at("203.0.113.1"), account.email, "wrong")).status_code == 401
    await age(db_session, f"known-address:198.51.100.7 {account.email}", 31 * 24 * 60 * 60)

    assert_too_many(await log_in(home, account.email, account.password))


async def test_unicode_case_variants_of_an_email_count_as_that_account(
    client_at: ClientAt, db_session: AsyncSession, argon2_spy: Argon2Spy
) -> None:
    """PostgreSQL's lower('İ') is 'i' (the account lookup and the unique index use it);
    Python's is 'i̇'. Every spelling that finds an account counts in that account's keys."""
    email, password = "vivian.irving@example.com", "a fine password"
    client = client_at()
    registered = await client.post("/auth/register", json={"email": email, "password": password})
    assert registered.status_code == 202, registered.text
    positions = [index for index, letter in enumerate(email) if letter == "i"]
    variants = [email[:index] + "İ" + email[index + 1 :] for index in positions]
    variants.append(email.replace("i", "İ"))
    assert len(variants) == 5
    # A variant is the account's name too: it logs in (here from another address).
    assert (await log_in(client_at("198.51.100.1"), variants[0], password)).status_code == 200

    for variant in variants:
        assert_unauthorized(await log_in(client, variant, "wrong"), token_given=False)
    verified = len(argon2_spy.hashes)

    # Five guesses at the account: the right password is refused now, in any spelling.
    assert_too_many(await log_in(client, email, password))
    assert_too_many(await log_in(client, variants[1], password))
    assert len(argon2_spy.hashes) == verified
    assert await failures(db_session, at_address(email)) == 7
    assert await failures(db_session, account_wide(email)) == 5


async def test_an_ipv6_64_counts_as_one_address(
    client_at: ClientAt, db_session: AsyncSession, account: Account
) -> None:
    """Whoever holds an IPv6 address holds its whole /64: 2^64 addresses to choose from."""
    for number, host in enumerate(("2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:a:b:c:d")):
        guessing = client_at(host, login_failures_per_address=3)
        response = await log_in(guessing, f"guess{number}@example.com", "wrong")
        assert_unauthorized(response, token_given=False)
    same_64 = client_at("2001:db8:1:2:ffff::9", login_failures_per_address=3)
    next_64 = client_at("2001:db8:1:3::1", login_failures_per_address=3)

    assert_too_many(await log_in(same_64, account.email, account.password))
    assert (await log_in(next_64, account.email, account.password)).status_code == 200
    assert await failures(db_session, "address:2001:db8:1:2::/64") == 4


async def test_an_ipv4_mapped_ipv6_address_counts_as_its_ipv4_address(
    client_at: ClientAt, db_session: AsyncSession, account: Account
) -> None:
    for number in range(3):
        guessing = client_at("203.0.113.9", login_failures_per_address=3)
        await log_in(guessing, f"guess{number}@example.com", "wrong")

    mapped = client_at("::ffff:203.0.113.9", login_failures_per_address=3)
    assert_too_many(await log_in(mapped, account.email, account.password))
    assert await failures(db_session, "address:203.0.113.9") == 4


@pytest.fixture
async def strict_client(
    settings: Settings, engine: AsyncEngine, db_session: AsyncSession
) -> AsyncIterator[AsyncClient]:
    """The app allowing 3 failed logins per address (and the default 5 per account), on
    the test's rolled-back session."""
    app: FastAPI = create_app(settings.model_copy(update={"login_failures_per_address": 3}))
    async with rolled_back_client(app, engine, db_session) as client:
        yield client


async def test_failures_from_one_address_are_limited(
    strict_client: AsyncClient, db_session: AsyncSession, account: Account
) -> None:
    for number in range(3):  # three accounts tried once each: no account limit is reached
        response = await log_in(strict_client, f"guess{number}@example.com", "wrong")
        assert_unauthorized(response, token_given=False)
    assert await failures(db_session, ADDRESS_KEY) == 3

    blocked = await log_in(strict_client, account.email, account.password)

    assert_too_many(blocked)
    # Counted at the address like any attempt, and refused before its password was
    # checked; not against the account as a whole, which this address's limit refused.
    assert await failures(db_session, at_address(account.email)) == 1
    assert await failures(db_session, account_wide(account.email)) is None


async def test_usernames_too_long_to_be_an_email_are_counted_too(
    strict_client: AsyncClient, db_session: AsyncSession, account: Account, argon2_spy: Argon2Spy
) -> None:
    """No account has such an email, so each is an unknown email: the same 401 after the
    same argon2 work, and counted against the address like any other failure (a key too
    long for the table must not let failures, and the hashing they cost, go uncounted)."""
    for number in range(3):
        username = f"{number}{'x' * 1000}@example.com"
        response = await log_in(strict_client, username, "wrong")
        assert_unauthorized(response, token_given=False)
    assert len(argon2_spy.hashes) == 3
    assert await failures(db_session, ADDRESS_KEY) == 3

    assert_too_many(await log_in(strict_client, account.email, account.password))


# ─────────────────────────────── hash upgrade


async def test_a_hash_with_older_parameters_is_upgraded_at_login(
    client: AsyncClient, db_session: AsyncSession
) -> None:
    email, password = "old.hash@example.com", "an old but good password"
    registered = await client.post("/auth/register", json={"email": email, "password": password})
    assert registered.status_code == 202, registered.text
    user_id = (await db_session.execute(select(User.id).where(User.email == email))).scalar_one()
    old_hash = Argon2Hasher(time_cost=1, memory_cost=8 * 1024, parallelism=1).hash(password)
    assert _parameters(old_hash) != TODAYS_PARAMETERS
    await db_session.execute(update(User).where(User.id == user_id).values(password_hash=old_hash))
    await db_session.commit()

    assert (await log_in(client, email, password)).status_code == 200

    upgraded = (
        await db_session.execute(select(User.password_hash).where(User.id == user_id))
    ).scalar_one()
    assert upgraded != old_hash
    assert _parameters(upgraded) == TODAYS_PARAMETERS
    assert password_hash().verify(password, upgraded)
    # A hash at today's parameters is left as it is.
    assert (await log_in(client, email, password)).status_code == 200
    again = (
        await db_session.execute(select(User.password_hash).where(User.id == user_id))
    ).scalar_one()
    assert again == upgraded


async def test_a_burst_of_guesses_cannot_slip_past_the_limit(live: AsyncClient) -> None:
    """Twenty wrong passwords sent at the same moment: each attempt is counted (and
    committed) before its password is checked, so only the first five are checked at all."""
    email = "burst.target@example.com"
    registered = await live.post(
        "/auth/register", json={"email": email, "password": "right password"}
    )
    assert registered.status_code == 202, registered.text

    answers = await asyncio.gather(*(log_in(live, email, "wrong password") for _ in range(20)))

    statuses = sorted(answer.status_code for answer in answers)
    assert statuses == [401] * 5 + [429] * 15


async def test_a_botnet_burst_cannot_slip_past_the_account_limit(live: AsyncClient) -> None:
    """Thirty addresses guessing at one account at the same moment: the account as a whole
    counts each attempt atomically, so exactly ten are checked."""
    email = "botnet.target@example.com"
    registered = await live.post(
        "/auth/register", json={"email": email, "password": "right password"}
    )
    assert registered.status_code == 202, registered.text
    bots = [from_address(live, f"203.0.113.{number}") for number in range(1, 31)]

    try:
        answers = await asyncio.gather(*(log_in(bot, email, "wrong password") for bot in bots))
    finally:
        for bot in bots:
            await bot.aclose()

    statuses = sorted(answer.status_code for answer in answers)
    assert statuses == [401] * 10 + [429] * 20


async def test_the_longest_keys_fit_the_table(client_at: ClientAt, account: Account) -> None:
    """The longest client name a key takes and the longest account (320 characters): still
    a 401 or 200, never a key too long for the table (a 500 would count nothing)."""
    longest = client_at("x" * 1000)
    response = await log_in(longest, f"{'x' * 1000}@example.com", "wrong")
    assert_unauthorized(response, token_given=False)
    assert (await log_in(longest, account.email, account.password)).status_code == 200
