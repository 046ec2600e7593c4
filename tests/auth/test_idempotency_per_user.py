"""Idempotency-Key records belong to one user: the same key and body from two users are two
requests, and one user's stored response is never replayed to the other."""

from __future__ import annotations

import pytest
from httpx import AsyncClient
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from taskmanager.models import Category, IdempotencyKey, Task
from taskmanager.problems import IDEMPOTENCY_KEY_REUSED
from taskmanager.routes.idempotency import REPLAYED_HEADER
from tests.support.accounts import Account
from tests.support.problems import assert_problem

KEY = "7d4c1a52-shared-key"


@pytest.mark.parametrize(
    ("url", "body", "model"),
    [
        ("/tasks", {"title": "Same key, same body"}, Task),
        ("/categories", {"name": "Same key, same body"}, Category),
    ],
    ids=["tasks", "categories"],
)
async def test_the_same_key_from_two_users_creates_two_rows(
    client: AsyncClient,
    db_session: AsyncSession,
    account: Account,
    other_account: Account,
    url: str,
    body: dict[str, str],
    model: type[Task] | type[Category],
) -> None:
    alice = await client.post(url, json=body, headers={**account.headers, "Idempotency-Key": KEY})
    mallory = await client.post(
        url, json=body, headers={**other_account.headers, "Idempotency-Key": KEY}
    )

    assert alice.status_code == mallory.status_code == 201, (alice.text, mallory.text)
    assert REPLAYED_HEADER not in mallory.headers
    assert mallory.json()["id"] != alice.json()["id"]
    assert mallory.json()["workspace_id"] == other_account.personal_workspace_id
    assert alice.json()["workspace_id"] == account.personal_workspace_id
    assert mallory.headers["Location"] != alice.headers["Location"]
    stored = (
        await db_session.execute(
            select(model.id, model.workspace_id).where(
                model.id.in_([alice.json()["id"], mallory.json()["id"]])
            )
        )
    ).all()
    assert len(stored) == 2
    keys = (
        await db_session.execute(select(IdempotencyKey.user_id).where(IdempotencyKey.key == KEY))
    ).scalars()
    assert sorted(keys) == sorted([account.user_id, other_account.user_id])

    # Each one's retry replays their own response, and only theirs.
    for who, first in ((account, alice), (other_account, mallory)):
        retry = await client.post(url, json=body, headers={**who.headers, "Idempotency-Key": KEY})
        assert retry.status_code == 201, retry.text
        assert retry.headers[REPLAYED_HEADER] == "true"
        assert retry.json() == first.json()


async def test_another_users_key_with_another_body_is_not_a_conflict(
    client: AsyncClient, account: Account, other_account: Account
) -> None:
    """A key reused with a different body is a 422 for its owner; from someone else it is
    just a new key (nothing tells mallory alice used it)."""
    first = await client.post(
        "/tasks", json={"title": "alice's"}, headers={**account.headers, "Idempotency-Key": KEY}
    )
    assert first.status_code == 201, first.text

    theirs = await client.post(
        "/tasks",
        json={"title": "mallory's"},
        headers={**other_account.headers, "Idempotency-Key": KEY},
    )
    assert theirs.status_code == 201, theirs.text
    assert theirs.json()["title"] == "mallory's"

    reused = await client.post(
        "/tasks", json={"title": "changed"}, headers={**account.headers, "Idempotency-Key": KEY}
    )
    assert_problem(reused, 422, problem_type=IDEMPOTENCY_KEY_REUSED)
