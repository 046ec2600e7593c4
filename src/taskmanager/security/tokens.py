"""Access tokens (JWT) and refresh tokens (opaque), following RFC 9700 and OWASP ASVS V9.

- The access token is a JWT signed with HS256, short-lived (15 minutes by default), with
  `sub` (the user id), `sid` (the login session it belongs to), `exp`, `iat`, `aud`, `iss`
  and `jti`. Verification names its one allowed algorithm, so `alg: none` or a token signed
  with another algorithm is refused, and requires every claim.
- The refresh token is 256 random bits, shown once and stored only as its SHA-256; it is
  rotated at every use, and a spent one presented again revokes its whole session.
"""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt

ALGORITHM = "HS256"
ISSUER = "taskmanager"
AUDIENCE = "taskmanager-api"
REQUIRED_CLAIMS = ("sub", "sid", "exp", "iat", "aud", "iss", "jti")
# A little clock skew between servers is forgiven when checking exp and iat.
LEEWAY_SECONDS = 5


class InvalidAccessTokenError(Exception):
    """The token cannot be trusted; the message says why (never the token itself)."""


@dataclass(frozen=True, slots=True)
class AccessClaims:
    user_id: int
    session_id: uuid.UUID
    expires_at: int  # the token's `exp`, in seconds since the epoch


def issue_access_token(
    secret: str, user_id: int, session_id: uuid.UUID, lifetime: timedelta
) -> str:
    now = datetime.now(UTC)
    claims = {
        "sub": str(user_id),
        "sid": str(session_id),
        "iat": now,
        "exp": now + lifetime,
        "aud": AUDIENCE,
        "iss": ISSUER,
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


# Tokens whose signature and claims were verified, with their claims: a client sends the
# same token with every request for its whole lifetime, and verifying it (PyJWT: base64,
# JSON, HMAC, seven claims) is ~60 µs of CPU per request. Only what passed every check is
# kept, under the token and the key it was checked with; all that can change afterwards is
# the clock, so `exp` is checked again at each use. Bounded: the oldest go first.
_VERIFIED: dict[tuple[str, str], AccessClaims] = {}
VERIFIED_TOKENS_KEPT = 4096


def read_access_token(secret: str, token: str) -> AccessClaims:
    """The claims of a valid access token; InvalidAccessTokenError if it is not (its message
    says why: expired, or not valid)."""
    claims = _VERIFIED.get((secret, token))
    if claims is None:
        claims = _verify_access_token(secret, token)
        if len(_VERIFIED) >= VERIFIED_TOKENS_KEPT:
            _VERIFIED.pop(next(iter(_VERIFIED)), None)
        _VERIFIED[(secret, token)] = claims
    elif time.time() >= claims.expires_at + LEEWAY_SECONDS:  # as PyJWT compares it
        _VERIFIED.pop((secret, token), None)
        raise InvalidAccessTokenError("the access token has expired")
    return claims


def _verify_access_token(secret: str, token: str) -> AccessClaims:
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            audience=AUDIENCE,
            issuer=ISSUER,
            leeway=LEEWAY_SECONDS,
            options={"require": list(REQUIRED_CLAIMS)},
        )
        return AccessClaims(
            user_id=int(claims["sub"]),
            session_id=uuid.UUID(claims["sid"]),
            expires_at=int(claims["exp"]),
        )
    except jwt.ExpiredSignatureError:
        raise InvalidAccessTokenError("the access token has expired") from None
    except (jwt.InvalidTokenError, ValueError, TypeError):
        raise InvalidAccessTokenError("the access token is not valid") from None


def new_refresh_token() -> str:
    """256 random bits, URL-safe."""
    return secrets.token_urlsafe(32)


def refresh_token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
