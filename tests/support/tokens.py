"""Access tokens made by hand, for the tests that present a bad one, and requests sent
with no token at all; one check of the 401 every such request must get."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt

from taskmanager.problems import UNAUTHORIZED
from taskmanager.security.tokens import AUDIENCE, ISSUER, issue_access_token
from tests.support.accounts import TEST_SECRET, Account
from tests.support.problems import assert_problem

INVALID_TOKEN_CHALLENGE = 'Bearer error="invalid_token"'


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def expired_access_token(account: Account) -> str:
    """A token of `account`'s live session, signed with the right key, expired a minute
    ago (well past the leeway the server forgives)."""
    return issue_access_token(
        TEST_SECRET, account.user_id, account.session_id, timedelta(minutes=-1)
    )


def claims_of(account: Account, **changes: Any) -> dict[str, Any]:
    """The claims the server would put in a token of `account`'s session, with `changes`
    applied (a value of None removes that claim)."""
    now = datetime.now(UTC)
    claims: dict[str, Any] = {
        "sub": str(account.user_id),
        "sid": str(account.session_id),
        "iat": int(now.timestamp()),
        "exp": int((now + timedelta(minutes=10)).timestamp()),
        "aud": AUDIENCE,
        "iss": ISSUER,
        "jti": uuid.uuid4().hex,
    }
    for name, value in changes.items():
        if value is None:
            claims.pop(name, None)
        else:
            claims[name] = value
    return claims


def signed(claims: dict[str, Any], *, algorithm: str = "HS256", secret: str = TEST_SECRET) -> str:
    return jwt.encode(claims, secret, algorithm=algorithm)


def _segment(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    """A token with any header (e.g. `alg: none`) and signature, as an attacker writes one."""
    return ".".join(
        (
            _segment(json.dumps(header).encode()),
            _segment(json.dumps(claims).encode()),
            _segment(signature),
        )
    )


def segments(token: str) -> tuple[str, str, str]:
    header, payload, signature = token.split(".")
    return header, payload, signature


async def send_without_token(
    client: httpx.AsyncClient, method: str, url: str, **kwargs: Any
) -> httpx.Response:
    """`method url` through `client` with no Authorization header, whatever the client's
    defaults hold."""
    request = client.build_request(method, url, **kwargs)
    if "Authorization" in request.headers:
        del request.headers["Authorization"]
    return await client.send(request)


def assert_unauthorized(response: httpx.Response, *, token_given: bool) -> dict[str, Any]:
    """A 401 problem of the `unauthorized` type with the RFC 6750 challenge: `invalid_token`
    when a token was presented, a bare `Bearer` when none was."""
    body = assert_problem(response, 401, problem_type=UNAUTHORIZED)
    expected = INVALID_TOKEN_CHALLENGE if token_given else "Bearer"
    assert response.headers.get("WWW-Authenticate") == expected, response.headers
    return body


async def make_access_token(
    client: httpx.AsyncClient,
    account: Account,
    scopes: list[str],
    **body: Any,
) -> dict[str, Any]:
    """POST /users/me/tokens as `account` (with its login): the 201's body, whose `token`
    is the personal access token."""
    response = await client.post(
        "/users/me/tokens",
        json={"name": body.pop("name", "a script"), "scopes": scopes, **body},
        headers=account.headers,
    )
    assert response.status_code == 201, response.text
    made: dict[str, Any] = response.json()
    return made
