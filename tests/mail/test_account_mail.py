"""Registration, address verification and password reset end to end: the real app (its
lifespan, its outbox worker) on this module's own database, mailing a real SMTP server,
and the links in the mails that arrive."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest_asyncio
from httpx import AsyncClient, Response
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from taskmanager.routes.auth import REGISTRATION_ACCEPTED, RESET_ACCEPTED
from taskmanager.security.mail_tokens import mail_token_hash
from tests.support.accounts import PASSWORD, login
from tests.support.live_app import live_client
from tests.support.mail import Arrived, SmtpServer, smtp_settings
from tests.support.problems import assert_problem, assert_validation_problem
from tests.support.tokens import assert_unauthorized

NEW_PASSWORD = "a brand new password"
MAILS_PER_ACCOUNT = 3


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def http(own_database_url: str, smtp: SmtpServer) -> AsyncIterator[AsyncClient]:
    async with live_client(
        own_database_url,
        **smtp_settings(smtp),
        registrations_total=1000,
        registrations_per_address=1000,
        mails_per_account=MAILS_PER_ACCOUNT,
        mails_per_address=1000,
    ) as client:
        yield client


async def register(http: AsyncClient, email: str, password: str = PASSWORD) -> Response:
    return await http.post("/auth/register", json={"email": email, "password": password})


async def registered(http: AsyncClient, smtp: SmtpServer, email: str) -> Arrived:
    """Register `email`: its verification mail."""
    assert (await register(http, email)).status_code == 202
    (mail,) = await smtp.wait_for(email)
    return mail


async def mailed(smtp: SmtpServer, email: str, subject: str, count: int = 1) -> Arrived:
    """The last mail with `subject` to `email`, once `count` of them arrived."""
    for _ in range(300):
        found = [mail for mail in smtp.to(email) if mail.subject == subject]
        if len(found) >= count:
            return found[-1]
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {count} mails {subject!r} to {email}: {smtp.to(email)}")


async def me(http: AsyncClient, headers: dict[str, str]) -> Any:
    response = await http.get("/users/me", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


async def reset_mail(http: AsyncClient, smtp: SmtpServer, email: str, count: int = 1) -> Arrived:
    asked = await http.post("/auth/password-reset", json={"email": email})
    assert asked.status_code == 202, asked.text
    return await mailed(smtp, email, "Reset your password", count)


# ─────────────────────────────── verification


async def test_the_mailed_link_verifies_the_address(http: AsyncClient, smtp: SmtpServer) -> None:
    response = await register(http, "verify.me@example.com")
    assert response.status_code == 202, response.text
    assert response.json() == {"detail": REGISTRATION_ACCEPTED}
    headers = await login(http, "verify.me@example.com")
    before = await me(http, headers)
    assert (before["email_verified"], before["email_verified_at"]) == (False, None)
    # Unverified, the account works in its own workspace.
    task = await http.post("/tasks", json={"title": "before verifying"}, headers=headers)
    assert task.status_code == 201, task.text

    (mail,) = await smtp.wait_for("verify.me@example.com")
    assert mail.subject == "Confirm your email address"
    assert mail.link.startswith("https://tasks.example/verify-email?token=")
    assert {part.get_content_type() for part in mail.message.iter_parts()} == {
        "text/plain",
        "text/html",
    }
    verified = await http.post("/auth/verify-email", json={"token": mail.token})

    assert verified.status_code == 204, verified.text
    after = await me(http, headers)
    assert after["email_verified"] is True
    assert after["email_verified_at"] is not None
    again = await http.post("/auth/verify-email", json={"token": mail.token})
    assert_validation_problem(again, "body.token")


async def test_an_unknown_token_verifies_nothing(http: AsyncClient) -> None:
    for token in ("made-up", "x" * 43):
        response = await http.post("/auth/verify-email", json={"token": token})
        assert_validation_problem(response, "body.token")


async def test_a_new_link_can_be_asked_for_a_few_times_an_hour(
    http: AsyncClient, smtp: SmtpServer
) -> None:
    email = "resend@example.com"
    await registered(http, smtp, email)
    headers = await login(http, email)
    for number in range(MAILS_PER_ACCOUNT):
        resent = await http.post("/auth/verify-email/resend", headers=headers)
        assert resent.status_code == 202, resent.text
        await mailed(smtp, email, "Confirm your email address", count=2 + number)

    refused = await http.post("/auth/verify-email/resend", headers=headers)

    assert_problem(refused, 429, problem_type="/problems/too-many-mails")
    assert 1 <= int(refused.headers["Retry-After"]) <= 3600
    await asyncio.sleep(0.3)
    assert len(smtp.to(email)) == 1 + MAILS_PER_ACCOUNT  # nothing more was sent
    # Each link works; once verified, asking again is a conflict.
    latest = await mailed(smtp, email, "Confirm your email address", 1 + MAILS_PER_ACCOUNT)
    assert (await http.post("/auth/verify-email", json={"token": latest.token})).status_code == 204
    assert_problem(await http.post("/auth/verify-email/resend", headers=headers), 409)


async def test_resending_needs_a_login(http: AsyncClient) -> None:
    assert_unauthorized(await http.post("/auth/verify-email/resend"), token_given=False)


# ─────────────────────────────── registration of a taken address


async def test_a_taken_address_gets_the_same_answer_and_its_owner_a_mail(
    http: AsyncClient, smtp: SmtpServer, observer: AsyncEngine
) -> None:
    owner = "taken@example.com"
    first = await register(http, owner)
    await smtp.wait_for(owner)

    again = await register(http, owner.upper(), "the stranger's password")

    assert (again.status_code, again.json()) == (first.status_code, first.json())
    tried = await mailed(smtp, owner, "Someone tried to register with your address")
    assert tried.link.startswith("https://tasks.example/reset-password?token=")
    async with observer.connect() as connection:
        accounts = (
            await connection.execute(
                text("SELECT count(*) FROM users WHERE lower(email) = :email"), {"email": owner}
            )
        ).scalar_one()
    assert accounts == 1
    stranger = await http.post(
        "/auth/token", data={"username": owner, "password": "the stranger's password"}
    )
    assert_unauthorized(stranger, token_given=False)
    await login(http, owner)  # the owner's own password still works
    # The mail's link lets the owner choose a new password.
    confirm = {"token": tried.token, "new_password": NEW_PASSWORD}
    assert (await http.post("/auth/password-reset/confirm", json=confirm)).status_code == 204
    await login(http, owner, NEW_PASSWORD)


async def test_a_failing_mail_server_does_not_fail_the_request(
    http: AsyncClient, smtp: SmtpServer
) -> None:
    smtp.refuse = 2

    response = await register(http, "patient@example.com")

    assert response.status_code == 202, response.text
    (mail,) = await smtp.wait_for("patient@example.com")  # retried until it was accepted
    assert smtp.refused == 2
    assert mail.link.startswith("https://tasks.example/verify-email?token=")


# ─────────────────────────────── password reset


async def test_a_reset_answers_the_same_for_known_and_unknown_addresses(
    http: AsyncClient, smtp: SmtpServer
) -> None:
    await registered(http, smtp, "known@example.com")

    known = await http.post("/auth/password-reset", json={"email": "KNOWN@example.com"})
    unknown = await http.post("/auth/password-reset", json={"email": "unknown@example.com"})

    assert (known.status_code, known.json()) == (202, {"detail": RESET_ACCEPTED})
    assert (unknown.status_code, unknown.json()) == (202, {"detail": RESET_ACCEPTED})
    reset = await mailed(smtp, "known@example.com", "Reset your password")
    assert reset.link.startswith("https://tasks.example/reset-password?token=")
    await asyncio.sleep(0.5)
    assert smtp.to("unknown@example.com") == []


async def test_the_mailed_token_sets_the_password_and_ends_every_login_and_access_token(
    http: AsyncClient, smtp: SmtpServer
) -> None:
    email = "forgetful@example.com"
    await registered(http, smtp, email)
    phone = await login(http, email)
    tokens = await http.post("/auth/token", data={"username": email, "password": PASSWORD})
    laptop = {"Authorization": f"Bearer {tokens.json()['access_token']}"}
    script = await http.post(
        "/users/me/tokens",
        json={"name": "a script", "scopes": ["account:read"]},
        headers=phone,
    )
    assert script.status_code == 201, script.text
    pat = {"Authorization": f"Bearer {script.json()['token']}"}
    assert (await http.get("/users/me", headers=pat)).status_code == 200
    mail = await reset_mail(http, smtp, email)

    confirmed = await http.post(
        "/auth/password-reset/confirm", json={"token": mail.token, "new_password": NEW_PASSWORD}
    )

    assert confirmed.status_code == 204, confirmed.text
    old = await http.post("/auth/token", data={"username": email, "password": PASSWORD})
    assert_unauthorized(old, token_given=False)
    # Every login session ended, and the personal access tokens too: a reset recovers the
    # account, and a token taken before it must not outlive it.
    for headers in (phone, laptop, pat):
        assert_unauthorized(await http.get("/users/me", headers=headers), token_given=True)
    refreshed = await http.post(
        "/auth/refresh", json={"refresh_token": tokens.json()["refresh_token"]}
    )
    assert_unauthorized(refreshed, token_given=False)
    now = await login(http, email, NEW_PASSWORD)
    assert (await me(http, now))["email_verified"] is True  # the token proved the mailbox
    # Single use.
    again = await http.post(
        "/auth/password-reset/confirm",
        json={"token": mail.token, "new_password": "yet another one"},
    )
    assert_validation_problem(again, "body.token")
    await login(http, email, NEW_PASSWORD)


async def test_an_expired_or_made_up_token_is_refused(
    http: AsyncClient, smtp: SmtpServer, observer: AsyncEngine
) -> None:
    email = "slow@example.com"
    await registered(http, smtp, email)
    mail = await reset_mail(http, smtp, email)
    async with observer.begin() as connection:  # 30 minutes later, as the tables' owner sees it
        moved = await connection.execute(
            text(
                "UPDATE account_tokens SET expires_at = now() - interval '1 second' "
                "WHERE token_hash = :hash"
            ),
            {"hash": mail_token_hash(mail.token)},
        )
        assert moved.rowcount == 1

    for token in (mail.token, "made-up-token"):
        response = await http.post(
            "/auth/password-reset/confirm", json={"token": token, "new_password": NEW_PASSWORD}
        )
        assert_validation_problem(response, "body.token")
    await login(http, email)  # the password did not change


async def test_a_new_password_must_be_a_valid_password(http: AsyncClient, smtp: SmtpServer) -> None:
    email = "short@example.com"
    await registered(http, smtp, email)
    mail = await reset_mail(http, smtp, email)
    response = await http.post(
        "/auth/password-reset/confirm", json={"token": mail.token, "new_password": "short"}
    )
    assert_validation_problem(response, "body.new_password")
    ok = await http.post(
        "/auth/password-reset/confirm", json={"token": mail.token, "new_password": NEW_PASSWORD}
    )
    assert ok.status_code == 204  # the refused attempt did not spend the token


async def test_tokens_are_kept_only_as_hashes(
    http: AsyncClient, smtp: SmtpServer, observer: AsyncEngine
) -> None:
    email = "hashed@example.com"
    verification = await registered(http, smtp, email)
    reset = await reset_mail(http, smtp, email)
    async with observer.connect() as connection:
        tokens = (
            await connection.execute(
                text(
                    "SELECT t.purpose, t.token_hash, row_to_json(t)::text AS whole "
                    "FROM account_tokens t WHERE t.email = :email ORDER BY t.created_at"
                ),
                {"email": email},
            )
        ).all()
        outbox = (
            await connection.execute(
                text("SELECT payload::text FROM outbox WHERE payload->>'to' = :email"),
                {"email": email},
            )
        ).scalars()
        stored = " ".join([*(row.whole for row in tokens), *outbox])
    assert [(row.purpose, row.token_hash) for row in tokens] == [
        ("verify_email", mail_token_hash(verification.token)),
        ("password_reset", mail_token_hash(reset.token)),
    ]
    for token in (verification.token, reset.token):
        assert token not in stored
