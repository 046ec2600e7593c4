"""Making someone a member the only way there is: an invitation, accepted by its invitee.

`add_member` does both through the API in two requests (no mail read: a verified invitee
accepts by the invitation's id), and answers the membership as the workspace lists it.
Accounts made by tests.support.accounts.create_account are verified; one registered over
HTTP is not until `verify_address` (SQL as the superuser: the mailed link's flow has tests
of its own in tests/mail)."""

from __future__ import annotations

from typing import Any

from httpx import AsyncClient

from tests.support.databases import run_as, superuser_url


async def invite(
    client: AsyncClient,
    workspace_id: int,
    email: str,
    role: str = "member",
    *,
    inviter: dict[str, str] | None = None,
) -> dict[str, Any]:
    """POST the invitation (as `inviter`, else the client's own caller): its 202's body."""
    response = await client.post(
        f"/workspaces/{workspace_id}/invitations",
        json={"email": email, "role": role},
        headers=inviter or {},
    )
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    return body


async def add_member(
    client: AsyncClient,
    workspace_id: int,
    invitee_email: str,
    invitee: dict[str, str],
    role: str = "member",
    *,
    inviter: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Invite `invitee_email` as `role` and accept as `invitee` (their Authorization
    header): the new membership, as GET /workspaces/{id}/members/{user_id} answers it."""
    invitation = await invite(client, workspace_id, invitee_email, role, inviter=inviter)
    accepted = await client.post(f"/invitations/{invitation['id']}/accept", headers=invitee)
    assert accepted.status_code == 200, accepted.text
    assert (accepted.json()["id"], accepted.json()["role"]) == (workspace_id, role)
    me = await client.get("/users/me", headers=invitee)
    assert me.status_code == 200, me.text
    member = await client.get(
        f"/workspaces/{workspace_id}/members/{me.json()['id']}", headers=invitee
    )
    assert member.status_code == 200, member.text
    body: dict[str, Any] = member.json()
    return body


async def verify_address(database_url: str, email: str) -> None:
    """Mark the account with `email` verified, as its mailed link would."""
    await run_as(
        superuser_url(database_url),
        "UPDATE users SET email_verified_at = now() WHERE lower(email) = lower(:email)",
        email=email,
    )
