"""A create or an update answers with what is stored: every datetime field of every create
and update response is, character for character, what a GET of the same resource answers.

A moment sent with an offset (`+01:00`) is stored as a moment; PostgreSQL gives it back in
UTC (`Z`), and so must the answer to the request that wrote it.
"""

from __future__ import annotations

from typing import Any

from httpx import AsyncClient, Response

from tests.support.accounts import PASSWORD, Account, login

DUE = "2026-12-24T18:00:00+01:00"
DUE_STORED = "2026-12-24T17:00:00Z"


def datetimes(body: Any, path: str = "") -> dict[str, Any]:
    """Every `*_at` field of a JSON body, nested ones too, by its path."""
    found: dict[str, Any] = {}
    if isinstance(body, dict):
        for key, value in body.items():
            where = f"{path}.{key}" if path else key
            if key.endswith("_at"):
                found[where] = value
            found |= datetimes(value, where)
    elif isinstance(body, list):
        for index, value in enumerate(body):
            found |= datetimes(value, f"{path}[{index}]")
    return found


async def assert_answers_what_is_stored(
    client: AsyncClient, written: Response, url: str, **kwargs: Any
) -> dict[str, Any]:
    assert written.status_code in (200, 201), written.text
    read = await client.get(url, **kwargs)
    assert read.status_code == 200, read.text
    answered, stored = datetimes(written.json()), datetimes(read.json())
    assert answered, f"no datetime field in {written.json()}"
    assert answered == stored
    body: dict[str, Any] = written.json()
    return body


async def test_tasks(client: AsyncClient) -> None:
    created = await client.post(
        "/tasks", json={"title": "Wrap presents", "due_at": DUE, "completed": True}
    )
    task = await assert_answers_what_is_stored(client, created, f"/tasks/{created.json()['id']}")
    assert task["due_at"] == DUE_STORED
    assert task["completed_at"] is not None
    url = f"/tasks/{task['id']}"

    patched = await client.patch(url, json={"due_at": "2026-12-24T09:30:00-05:00"})
    task = await assert_answers_what_is_stored(client, patched, url)
    assert task["due_at"] == "2026-12-24T14:30:00Z"

    replaced = await client.put(url, json={"due_at": "2026-12-25T06:00:00+05:30"})
    task = await assert_answers_what_is_stored(client, replaced, url)
    assert task["due_at"] == "2026-12-25T00:30:00Z"

    reopened = await client.patch(url, json={"completed": False, "due_at": None})
    task = await assert_answers_what_is_stored(client, reopened, url)
    assert task["due_at"] is None
    assert task["completed_at"] is None

    done = await client.patch(url, json={"completed": True})
    await assert_answers_what_is_stored(client, done, url)


async def test_categories_and_labels(client: AsyncClient) -> None:
    for collection, body, change in (
        ("categories", {"name": "Errands"}, {"name": "Chores"}),
        ("labels", {"name": "urgent"}, {"colour": "#e53935"}),
    ):
        created = await client.post(f"/{collection}", json=body)
        url = f"/{collection}/{created.json()['id']}"
        await assert_answers_what_is_stored(client, created, url)
        await assert_answers_what_is_stored(client, await client.patch(url, json=change), url)


async def test_workspaces_and_invitations(client: AsyncClient, bob: Account) -> None:
    created = await client.post("/workspaces", json={"name": "Household"})
    url = f"/workspaces/{created.json()['id']}"
    await assert_answers_what_is_stored(client, created, url)
    renamed = await client.patch(url, json={"name": "Home"})
    await assert_answers_what_is_stored(client, renamed, url)

    invited = await client.post(f"{url}/invitations", json={"email": bob.email})
    assert invited.status_code == 202, invited.text
    (listed,) = (await client.get(f"{url}/invitations")).json()
    assert datetimes(invited.json()) == datetimes(listed)
    assert datetimes(invited.json()).keys() == {"created_at", "expires_at", "last_sent_at"}
    resent = await client.post(f"{url}/invitations/{listed['id']}/resend")
    assert resent.status_code == 429, resent.text  # mailed just now

    accepted = await client.post(f"/invitations/{listed['id']}/accept", headers=bob.headers)
    assert accepted.status_code == 200, accepted.text
    read = await client.get(url, headers=bob.headers)
    assert accepted.json()["created_at"] == read.json()["created_at"]


async def test_accounts(client: AsyncClient) -> None:
    email = "stored.account@example.com"
    registered = await client.post("/auth/register", json={"email": email, "password": PASSWORD})
    assert registered.status_code == 202, registered.text
    headers = await login(client, email)

    changed = await client.patch("/users/me", json={"display_name": "Stored"}, headers=headers)
    await assert_answers_what_is_stored(client, changed, "/users/me", headers=headers)
