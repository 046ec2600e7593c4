"""Access tokens the server must refuse: each is a 401 problem with `WWW-Authenticate:
Bearer` (`error="invalid_token"` when a token was presented), on a route that only reads
(GET /users/me) and on one that writes (POST /tasks, which then creates nothing)."""

from __future__ import annotations

import base64
import json
import secrets
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from httpx import AsyncClient
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from taskmanager.models import Task, User
from taskmanager.security.tokens import REQUIRED_CLAIMS
from tests.support.accounts import Account
from tests.support.tokens import (
    assert_unauthorized,
    bearer,
    claims_of,
    expired_access_token,
    forged,
    segments,
    send_without_token,
    signed,
)

# (method, url, body): a route behind the read-only session, and one behind the writing one.
ROUTES = {
    "read": ("GET", "/users/me", None),
    "write": ("POST", "/tasks", {"title": "Must not be created"}),
}


def _flip(segment: str, at: int) -> str:
    """`segment` with one base64url character changed (so its bytes change too)."""
    replacement = "A" if segment[at] != "A" else "B"
    return segment[:at] + replacement + segment[at + 1 :]


def _tampered_signature(alice: Account, mallory: Account) -> str:
    header, payload, signature = segments(alice.access_token)
    return f"{header}.{payload}.{_flip(signature, len(signature) // 2)}"


def _tampered_payload(alice: Account, mallory: Account) -> str:
    """alice's signature on claims rewritten to be mallory's."""
    header, payload, signature = segments(alice.access_token)
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = str(mallory.user_id)
    claims["sid"] = str(mallory.session_id)
    rewritten = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{rewritten}.{signature}"


def _alg_none(alice: Account, mallory: Account) -> str:
    return forged({"alg": "none", "typ": "JWT"}, claims_of(alice))


def _alg_none_keeping_a_signature(alice: Account, mallory: Account) -> str:
    _, _, signature = segments(alice.access_token)
    unsigned = forged({"alg": "none", "typ": "JWT"}, claims_of(alice))
    return unsigned + signature


def _rs256(alice: Account, mallory: Account) -> str:
    """An RS256 token, as signed by someone else's private key."""
    return forged({"alg": "RS256", "typ": "JWT"}, claims_of(alice), secrets.token_bytes(256))


def _without(claim: str) -> Callable[[Account, Account], str]:
    """A token signed with the right key whose claims lack `claim`."""

    def make(alice: Account, mallory: Account) -> str:
        return signed(claims_of(alice, **{claim: None}))

    return make


BAD_TOKENS: dict[str, Callable[[Account, Account], str]] = {
    "expired": lambda alice, mallory: expired_access_token(alice),
    "tampered signature": _tampered_signature,
    "tampered payload": _tampered_payload,
    "alg none": _alg_none,
    "alg none with a signature": _alg_none_keeping_a_signature,
    # The right key, an algorithm outside the allow-list.
    "HS512": lambda alice, mallory: signed(claims_of(alice), algorithm="HS512"),
    "HS384": lambda alice, mallory: signed(claims_of(alice), algorithm="HS384"),
    "RS256": _rs256,
    "another key": lambda alice, mallory: signed(claims_of(alice), secret="k" * 48),
    "wrong audience": lambda alice, mallory: signed(claims_of(alice, aud="another-api")),
    "wrong issuer": lambda alice, mallory: signed(claims_of(alice, iss="someone-else")),
    "issued in the future": lambda alice, mallory: signed(
        claims_of(
            alice,
            iat=int((datetime.now(UTC) + timedelta(hours=1)).timestamp()),
            exp=int((datetime.now(UTC) + timedelta(hours=2)).timestamp()),
        )
    ),
    **{f"without {claim}": _without(claim) for claim in REQUIRED_CLAIMS},
    "sub not a number": lambda alice, mallory: signed(claims_of(alice, sub="alice")),
    "sid not a uuid": lambda alice, mallory: signed(claims_of(alice, sid="not-a-uuid")),
    "a session that never existed": lambda alice, mallory: signed(
        claims_of(alice, sid=str(uuid.uuid4()))
    ),
    "another user's session": lambda alice, mallory: signed(
        claims_of(alice, sid=str(mallory.session_id))
    ),
    "a user that does not exist": lambda alice, mallory: signed(claims_of(alice, sub="2147483000")),
    "garbage": lambda alice, mallory: "garbage",
    "three garbage segments": lambda alice, mallory: "a.b.c",
    "header that is not JSON": lambda alice, mallory: (
        "bm90IGpzb24." + segments(alice.access_token)[1] + "." + segments(alice.access_token)[2]
    ),
    "the refresh token": lambda alice, mallory: alice.refresh_token,
}


def test_the_table_covers_every_required_claim() -> None:
    for claim in ("sub", "sid", "exp", "iat", "aud", "iss", "jti"):
        assert f"without {claim}" in BAD_TOKENS


async def _task_count(db_session: AsyncSession) -> int:
    return int((await db_session.execute(select(func.count()).select_from(Task))).scalar_one())


@pytest.mark.parametrize("route", ROUTES)
async def test_a_good_token_works(client: AsyncClient, account: Account, route: str) -> None:
    """The control: the same requests with alice's own token succeed."""
    method, url, body = ROUTES[route]
    response = await client.request(method, url, json=body, headers=account.headers)
    assert response.status_code in (200, 201), response.text


# HS384/HS512 signed with the (HS256-sized) real key: pyjwt warns the key is short for them.
@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("case", BAD_TOKENS)
async def test_a_bad_token_is_401(
    client: AsyncClient,
    db_session: AsyncSession,
    account: Account,
    other_account: Account,
    case: str,
    route: str,
) -> None:
    token = BAD_TOKENS[case](account, other_account)
    method, url, body = ROUTES[route]
    tasks_before = await _task_count(db_session)

    response = await client.request(method, url, json=body, headers=bearer(token))

    problem = assert_unauthorized(response, token_given=True)
    assert token not in problem["detail"]
    assert await _task_count(db_session) == tasks_before


@pytest.mark.parametrize("route", ROUTES)
async def test_no_token_is_401_with_a_bare_challenge(client: AsyncClient, route: str) -> None:
    method, url, body = ROUTES[route]
    response = await send_without_token(client, method, url, json=body)
    assert_unauthorized(response, token_given=False)


@pytest.mark.parametrize(
    "authorization", ["Basic YWxpY2U6cGFzc3dvcmQ=", "Bearer", "Bearer ", "Token abc"]
)
async def test_no_bearer_token_is_401_with_a_bare_challenge(
    client: AsyncClient, authorization: str
) -> None:
    response = await client.get("/users/me", headers={"Authorization": authorization})
    assert_unauthorized(response, token_given=False)


async def test_a_token_in_the_query_string_is_not_accepted(
    client: AsyncClient, account: Account
) -> None:
    """RFC 9700 2.4 / RFC 6750 2.3: no access token in a URL (it ends up in logs)."""
    response = await send_without_token(
        client, "GET", "/users/me", params={"access_token": account.access_token}
    )
    assert_unauthorized(response, token_given=False)


async def test_the_token_of_a_logged_out_session_is_401(
    client: AsyncClient, account: Account
) -> None:
    login = await client.post(
        "/auth/token", data={"username": account.email, "password": account.password}
    )
    assert login.status_code == 200, login.text
    headers = bearer(login.json()["access_token"])
    assert (await client.get("/users/me", headers=headers)).status_code == 200

    assert (await client.post("/auth/logout", headers=headers)).status_code == 204

    assert_unauthorized(await client.get("/users/me", headers=headers), token_given=True)
    assert_unauthorized(
        await client.post("/tasks", json={"title": "after logout"}, headers=headers),
        token_given=True,
    )
    # The account's other session (the fixture's) is untouched.
    assert (await client.get("/users/me", headers=account.headers)).status_code == 200


async def test_the_token_of_a_deactivated_user_is_401(
    client: AsyncClient, db_session: AsyncSession, account: Account
) -> None:
    assert (await client.get("/users/me", headers=account.headers)).status_code == 200
    await db_session.execute(update(User).where(User.id == account.user_id).values(is_active=False))
    await db_session.commit()  # into the test's transaction: a refused request rolls back

    assert_unauthorized(await client.get("/users/me", headers=account.headers), token_given=True)
    assert_unauthorized(
        await client.post("/tasks", json={"title": "while disabled"}, headers=account.headers),
        token_given=True,
    )
