"""Invitations over HTTP, checked in the database: inviting answers the same whoever the
address is; only its verified owner sees and answers an invitation; answered, revoked and
expired ones stay closed; resending is limited; a workspace has a cap on pending ones.

alice (`account`, the client's default caller) owns the workspaces made here; bob and
carol (tests/api/conftest.py, verified addresses) are invited where a test needs them.
The mail itself, end to end over SMTP: tests/mail/test_invitation_mail.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from httpx import AsyncClient, Response
from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from taskmanager.config import Settings
from taskmanager.models import Invitation, Membership, Outbox
from taskmanager.problems import (
    CONFLICT,
    EMAIL_NOT_VERIFIED,
    FORBIDDEN,
    LIMIT_REACHED,
    TOO_MANY_MAILS,
)
from taskmanager.security.mail_tokens import MailTokenKey
from tests.support.accounts import TEST_SECRET, Account
from tests.support.invitations import add_member, invite
from tests.support.problems import assert_problem, assert_validation_problem

MISSING = "00000000-0000-4000-8000-000000000000"


async def new_workspace(client: AsyncClient, name: str = "Team") -> int:
    response = await client.post("/workspaces", json={"name": name})
    assert response.status_code == 201, response.text
    workspace_id: int = response.json()["id"]
    return workspace_id


async def roles_in(db_session: AsyncSession, workspace_id: int) -> dict[int, str]:
    rows = await db_session.execute(
        select(Membership.user_id, Membership.role).where(Membership.workspace_id == workspace_id)
    )
    return {row.user_id: row.role for row in rows}


async def mails_to(db_session: AsyncSession, email: str) -> list[dict[str, Any]]:
    """The invitation mails recorded for `email` (the test's superuser sees the outbox)."""
    rows = await db_session.execute(
        select(Outbox.payload)
        .where(Outbox.kind == "mail.invitation", Outbox.payload["to"].astext == email)
        .order_by(Outbox.id)
    )
    return list(rows.scalars())


async def age(db_session: AsyncSession, invitation_id: str, **values: Any) -> None:
    """Move an invitation's moments (as the superuser: the clock, not a caller)."""
    await db_session.execute(
        update(Invitation).where(Invitation.id == uuid.UUID(invitation_id)).values(**values)
    )
    # Released from the savepoint a refused request would roll back (the test's outer
    # transaction stays, and is rolled back at the end).
    await db_session.commit()


def accept(client: AsyncClient, invitation_id: str, who: Account) -> Any:
    return client.post(f"/invitations/{invitation_id}/accept", headers=who.headers)


# ─────────────────────────────── inviting


async def test_the_answer_is_the_same_with_or_without_an_account_or_a_membership(
    client: AsyncClient, db_session: AsyncSession, bob: Account, carol: Account
) -> None:
    workspace_id = await new_workspace(client)
    await add_member(client, workspace_id, carol.email, carol.headers)
    answers: list[Response] = []
    for email in (bob.email, "nobody.here@example.com", carol.email):
        answers.append(
            await client.post(
                f"/workspaces/{workspace_id}/invitations", json={"email": email, "role": "viewer"}
            )
        )

    varying = {"id", "email", "created_at", "expires_at", "last_sent_at"}
    shapes = []
    for answer in answers:
        assert answer.status_code == 202, answer.text
        body = answer.json()
        shapes.append({key: value for key, value in body.items() if key not in varying})
        assert body.keys() >= varying
    assert shapes[0] == shapes[1] == shapes[2]
    assert shapes[0]["status"] == "pending"
    # Each address is mailed alike, account or not, member or not.
    for email in (bob.email, "nobody.here@example.com", carol.email):
        mail = (await mails_to(db_session, email))[-1]
        assert mail["role"] == "viewer"
        assert mail["workspace"] == "Team"
        assert "token" not in mail  # only the row's id: the token is derived when it is sent


async def test_an_invitation_expires_after_seven_days_and_keeps_only_a_hash(
    client: AsyncClient, db_session: AsyncSession, bob: Account
) -> None:
    workspace_id = await new_workspace(client)
    invitation = await invite(client, workspace_id, bob.email)

    stored = (
        await db_session.execute(
            select(
                Invitation.token_hash,
                Invitation.expires_at - Invitation.created_at,
                Invitation.send_count,
            ).where(Invitation.id == uuid.UUID(invitation["id"]))
        )
    ).one()
    token = MailTokenKey(TEST_SECRET).token(uuid.UUID(invitation["id"]))
    assert stored.token_hash != token
    assert len(stored.token_hash) == 64
    assert stored[1].days == 7
    assert stored.send_count == 1


async def test_an_admin_invites_no_owner_and_a_personal_workspace_keeps_its_one(
    client: AsyncClient, db_session: AsyncSession, account: Account, bob: Account, carol: Account
) -> None:
    workspace_id = await new_workspace(client)
    await add_member(client, workspace_id, bob.email, bob.headers, "admin")
    refused = await client.post(
        f"/workspaces/{workspace_id}/invitations",
        json={"email": carol.email, "role": "owner"},
        headers=bob.headers,
    )
    assert_problem(refused, 403, problem_type=FORBIDDEN)
    personal = await client.post(
        f"/workspaces/{account.personal_workspace_id}/invitations",
        json={"email": carol.email, "role": "owner"},
    )
    assert_problem(personal, 409, problem_type=CONFLICT)
    # Any other role is fine in a personal workspace.
    await add_member(client, account.personal_workspace_id, carol.email, carol.headers)
    assert (await roles_in(db_session, account.personal_workspace_id))[carol.user_id] == "member"
    invited = await db_session.execute(
        select(func.count()).select_from(Invitation).where(Invitation.role == "owner")
    )
    assert invited.scalar_one() == 0


@pytest.fixture
def pending_cap(app: FastAPI, settings: Settings) -> Iterator[None]:
    app.state.settings = settings.model_copy(update={"max_pending_invitations_per_workspace": 2})
    try:
        yield
    finally:
        app.state.settings = settings


async def test_pending_invitations_are_capped_and_one_address_has_one(
    client: AsyncClient, db_session: AsyncSession, bob: Account, pending_cap: None
) -> None:
    workspace_id = await new_workspace(client)
    await invite(client, workspace_id, bob.email)
    duplicate = await client.post(
        f"/workspaces/{workspace_id}/invitations", json={"email": bob.email.upper()}
    )
    assert "pending already" in assert_problem(duplicate, 409, problem_type=CONFLICT)["detail"]
    await invite(client, workspace_id, "second@example.com")

    third = await client.post(
        f"/workspaces/{workspace_id}/invitations", json={"email": "third@example.com"}
    )

    assert "at most 2" in assert_problem(third, 409, problem_type=LIMIT_REACHED)["detail"]
    assert await mails_to(db_session, "third@example.com") == []
    # A revoked one no longer counts.
    listed = (await client.get(f"/workspaces/{workspace_id}/invitations")).json()
    revoked = await client.delete(f"/workspaces/{workspace_id}/invitations/{listed[0]['id']}")
    assert revoked.status_code == 204, revoked.text
    await invite(client, workspace_id, "third@example.com")


# ─────────────────────────────── the invitee


async def test_the_invitee_sees_it_accepts_it_and_is_a_member_with_its_role(
    client: AsyncClient, db_session: AsyncSession, account: Account, bob: Account
) -> None:
    workspace_id = await new_workspace(client, "Lab")
    invitation = await invite(client, workspace_id, bob.email.upper(), "admin")

    mine = await client.get("/invitations", headers=bob.headers)
    assert mine.status_code == 200, mine.text
    (seen,) = mine.json()
    assert (seen["id"], seen["workspace_id"], seen["workspace_name"], seen["role"]) == (
        invitation["id"],
        workspace_id,
        "Lab",
        "admin",
    )
    assert seen["invited_by"] == "alice"
    assert bob.user_id not in await roles_in(db_session, workspace_id)  # not before accepting

    accepted = await accept(client, invitation["id"], bob)

    assert accepted.status_code == 200, accepted.text
    assert (accepted.json()["id"], accepted.json()["role"]) == (workspace_id, "admin")
    assert await roles_in(db_session, workspace_id) == {
        account.user_id: "owner",
        bob.user_id: "admin",
    }
    assert (await client.get("/invitations", headers=bob.headers)).json() == []
    listed = await client.get(f"/workspaces/{workspace_id}/invitations?status=accepted")
    assert [(i["id"], i["status"]) for i in listed.json()] == [(invitation["id"], "accepted")]
    again = await accept(client, invitation["id"], bob)
    assert "accepted already" in assert_problem(again, 409, problem_type=CONFLICT)["detail"]


async def test_the_mailed_token_accepts_and_is_only_the_invitees(
    client: AsyncClient, db_session: AsyncSession, bob: Account, carol: Account
) -> None:
    workspace_id = await new_workspace(client)
    invitation = await invite(client, workspace_id, bob.email, "viewer")
    token = MailTokenKey(TEST_SECRET).token(uuid.UUID(invitation["id"]))

    for who, body in ((carol, {"token": token}), (bob, {"token": "made-up"})):
        wrong = await client.post("/invitations/accept", json=body, headers=who.headers)
        assert_validation_problem(wrong, "body.token")
    assert bob.user_id not in await roles_in(db_session, workspace_id)
    assert carol.user_id not in await roles_in(db_session, workspace_id)

    accepted = await client.post("/invitations/accept", json={"token": token}, headers=bob.headers)

    assert accepted.status_code == 200, accepted.text
    assert (await roles_in(db_session, workspace_id))[bob.user_id] == "viewer"


async def test_an_unverified_invitee_is_told_to_verify_first(
    client: AsyncClient, db_session: AsyncSession, bob: Account
) -> None:
    workspace_id = await new_workspace(client)
    invitation = await invite(client, workspace_id, bob.email)
    await db_session.execute(
        text("UPDATE users SET email_verified_at = NULL WHERE id = :id"), {"id": bob.user_id}
    )
    await db_session.commit()  # as in age()
    token = MailTokenKey(TEST_SECRET).token(uuid.UUID(invitation["id"]))

    for response in (
        await client.get("/invitations", headers=bob.headers),
        await accept(client, invitation["id"], bob),
        await client.post(f"/invitations/{invitation['id']}/decline", headers=bob.headers),
        await client.post("/invitations/accept", json={"token": token}, headers=bob.headers),
    ):
        body = assert_problem(response, 403, problem_type=EMAIL_NOT_VERIFIED)
        assert "verify your email address first" in body["detail"]
    assert bob.user_id not in await roles_in(db_session, workspace_id)
    stored = await db_session.execute(
        select(Invitation.accepted_at, Invitation.declined_at).where(
            Invitation.id == uuid.UUID(invitation["id"])
        )
    )
    assert stored.one() == (None, None)


async def test_nobody_but_the_invitee_sees_or_answers_it(
    client: AsyncClient, db_session: AsyncSession, bob: Account, carol: Account
) -> None:
    workspace_id = await new_workspace(client)
    invitation = await invite(client, workspace_id, bob.email)

    assert (await client.get("/invitations", headers=carol.headers)).json() == []
    for who in (carol, None):  # another account, and alice, who manages its workspace
        headers = who.headers if who else {}
        for action in ("accept", "decline"):
            theirs = await client.post(f"/invitations/{invitation['id']}/{action}", headers=headers)
            missing = await client.post(f"/invitations/{MISSING}/{action}", headers=headers)
            assert_problem(theirs, 404)
            assert theirs.content == missing.content
    # Someone who is no manager of the workspace neither lists, revokes nor resends it.
    url = f"/workspaces/{workspace_id}/invitations"
    for response in (
        await client.get(url, headers=carol.headers),
        await client.delete(f"{url}/{invitation['id']}", headers=carol.headers),
        await client.post(f"{url}/{invitation['id']}/resend", headers=carol.headers),
    ):
        assert_problem(response, 404)
    stored = await db_session.execute(
        select(Invitation.accepted_at, Invitation.declined_at, Invitation.revoked_at).where(
            Invitation.id == uuid.UUID(invitation["id"])
        )
    )
    assert stored.one() == (None, None, None)
    assert set(await roles_in(db_session, workspace_id)) == {(await me(client))}


async def me(client: AsyncClient) -> int:
    user_id: int = (await client.get("/users/me")).json()["id"]
    return user_id


@pytest.mark.parametrize("closed", ["expired", "revoked", "declined"])
async def test_an_expired_revoked_or_declined_invitation_cannot_be_accepted(
    client: AsyncClient, db_session: AsyncSession, bob: Account, closed: str
) -> None:
    workspace_id = await new_workspace(client)
    invitation = await invite(client, workspace_id, bob.email)
    if closed == "expired":
        await age(db_session, invitation["id"], expires_at=func.now() - text("interval '1 s'"))
        # Gone from the invitee's list; listed as expired for the managers.
        assert (await client.get("/invitations", headers=bob.headers)).json() == []
    elif closed == "revoked":
        url = f"/workspaces/{workspace_id}/invitations/{invitation['id']}"
        assert (await client.delete(url)).status_code == 204
        assert_problem(await client.delete(url), 409, problem_type=CONFLICT)
    else:
        declined = await client.post(
            f"/invitations/{invitation['id']}/decline", headers=bob.headers
        )
        assert declined.status_code == 204, declined.text
    listed = await client.get(f"/workspaces/{workspace_id}/invitations?status={closed}")
    assert [i["id"] for i in listed.json()] == [invitation["id"]]

    response = await accept(client, invitation["id"], bob)

    assert closed in assert_problem(response, 409, problem_type=CONFLICT)["detail"]
    assert bob.user_id not in await roles_in(db_session, workspace_id)


async def test_a_member_invited_again_is_told_so_when_accepting(
    client: AsyncClient, db_session: AsyncSession, bob: Account
) -> None:
    workspace_id = await new_workspace(client)
    await add_member(client, workspace_id, bob.email, bob.headers, "viewer")
    invitation = await invite(client, workspace_id, bob.email, "admin")

    response = await accept(client, invitation["id"], bob)

    detail = assert_problem(response, 409, problem_type=CONFLICT)["detail"]
    assert "member of this workspace already" in detail
    assert (await roles_in(db_session, workspace_id))[bob.user_id] == "viewer"


# ─────────────────────────────── resending


async def test_resending_waits_ten_minutes_and_stops_after_three_mails(
    client: AsyncClient, db_session: AsyncSession, bob: Account
) -> None:
    workspace_id = await new_workspace(client)
    invitation = await invite(client, workspace_id, bob.email)
    url = f"/workspaces/{workspace_id}/invitations/{invitation['id']}/resend"

    soon = await client.post(url)
    assert_problem(soon, 429, problem_type=TOO_MANY_MAILS)
    assert 590 <= int(soon.headers["Retry-After"]) <= 600
    for count in (2, 3):
        await age(db_session, invitation["id"], last_sent_at=func.now() - text("interval '11 min'"))
        resent = await client.post(url)
        assert resent.status_code == 202, resent.text
        assert resent.json()["send_count"] == count
        assert resent.json()["expires_at"] == invitation["expires_at"]  # the same link
    await age(db_session, invitation["id"], last_sent_at=func.now() - text("interval '1 day'"))

    fourth = await client.post(url)

    assert "3 times" in assert_problem(fourth, 409, problem_type=LIMIT_REACHED)["detail"]
    assert len(await mails_to(db_session, bob.email)) == 3
    # Expired, it is not mailed again either.
    await age(db_session, invitation["id"], expires_at=func.now() - text("interval '1 s'"))
    assert_problem(await client.post(url), 409, problem_type=CONFLICT)
