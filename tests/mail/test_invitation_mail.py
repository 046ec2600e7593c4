"""An invitation end to end: the real app (its outbox worker) mails a real SMTP server, and
the link in the mail that arrives, opened by the invitee once registered and verified,
makes them a member with the invited role."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest_asyncio
from httpx import AsyncClient

from tests.support.accounts import PASSWORD, login
from tests.support.databases import run_as, superuser_url
from tests.support.live_app import live_client
from tests.support.mail import Arrived, SmtpServer, smtp_settings
from tests.support.problems import assert_problem

SUBJECT = "You are invited to a taskmanager workspace"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def http(own_database_url: str, smtp: SmtpServer) -> AsyncIterator[AsyncClient]:
    async with live_client(
        own_database_url,
        **smtp_settings(smtp),
        registrations_total=1000,
        registrations_per_address=1000,
    ) as client:
        yield client


async def verified(http: AsyncClient, smtp: SmtpServer, email: str) -> dict[str, str]:
    """Register `email`, follow its verification link: its Authorization header."""
    registered = await http.post("/auth/register", json={"email": email, "password": PASSWORD})
    assert registered.status_code == 202, registered.text
    mail = await mail_to(smtp, email, "Confirm your email address")
    confirmed = await http.post("/auth/verify-email", json={"token": mail.token})
    assert confirmed.status_code == 204, confirmed.text
    return await login(http, email)


async def mail_to(smtp: SmtpServer, email: str, subject: str, count: int = 1) -> Arrived:
    for _ in range(300):
        found = [mail for mail in smtp.to(email) if mail.subject == subject]
        if len(found) >= count:
            return found[-1]
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {count} mails {subject!r} to {email}: {smtp.to(email)}")


async def test_an_invitation_mailed_to_a_new_address_is_accepted_through_its_link(
    http: AsyncClient, smtp: SmtpServer
) -> None:
    ada = await verified(http, smtp, "ada.inviter@example.com")
    await http.patch("/users/me", json={"display_name": "Ada <Lovelace>"}, headers=ada)
    team = await http.post("/workspaces", json={"name": "Engines & Co"}, headers=ada)
    assert team.status_code == 201, team.text
    workspace_id = team.json()["id"]

    # No account has the address yet: it is mailed all the same.
    invited = await http.post(
        f"/workspaces/{workspace_id}/invitations",
        json={"email": "Bob.Invitee@example.com", "role": "admin"},
        headers=ada,
    )
    assert invited.status_code == 202, invited.text
    mail = await mail_to(smtp, "Bob.Invitee@example.com", SUBJECT)
    assert mail.link.startswith("https://tasks.example/accept-invitation?token=")
    text = mail.part("text/plain")
    assert (
        'Ada <Lovelace> invited you (Bob.Invitee@example.com) to the workspace "Engines & Co"'
        in (" ".join(text.split()))
    )
    assert "as admin" in text
    assert "7 days" in text
    html = mail.part("text/html")
    assert "Ada &lt;Lovelace&gt;" in html
    assert "Engines &amp; Co" in html

    # Bob registers with the address in another case, verifies it, and follows the link.
    bob = await verified(http, smtp, "bob.invitee@example.com")
    pending = await http.get("/invitations", headers=bob)
    assert [(i["workspace_name"], i["role"], i["invited_by"]) for i in pending.json()] == [
        ("Engines & Co", "admin", "Ada <Lovelace>")
    ]
    accepted = await http.post("/invitations/accept", json={"token": mail.token}, headers=bob)

    assert accepted.status_code == 200, accepted.text
    assert (accepted.json()["id"], accepted.json()["role"]) == (workspace_id, "admin")
    workspaces = await http.get("/workspaces", headers=bob)
    assert (workspace_id, "admin") in [(w["id"], w["role"]) for w in workspaces.json()]
    again = await http.post("/invitations/accept", json={"token": mail.token}, headers=bob)
    assert_problem(again, 409)


async def test_a_resent_invitation_mails_the_same_link(
    http: AsyncClient, smtp: SmtpServer, own_database_url: str
) -> None:
    ada = await verified(http, smtp, "ada.resender@example.com")
    workspace_id = (await http.post("/workspaces", json={"name": "R"}, headers=ada)).json()["id"]
    invited = await http.post(
        f"/workspaces/{workspace_id}/invitations",
        json={"email": "resent@example.com"},
        headers=ada,
    )
    first = await mail_to(smtp, "resent@example.com", SUBJECT)
    await run_as(
        superuser_url(own_database_url),
        "UPDATE invitations SET last_sent_at = now() - interval '1 hour' WHERE id = :id",
        id=invited.json()["id"],
    )

    resent = await http.post(
        f"/workspaces/{workspace_id}/invitations/{invited.json()['id']}/resend", headers=ada
    )

    assert resent.status_code == 202, resent.text
    second = await mail_to(smtp, "resent@example.com", SUBJECT, count=2)
    assert second.token == first.token
