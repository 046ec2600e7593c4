"""Personal access tokens for scripts: their format, their scopes, how they are kept.

A token reads `tm_pat_` + 32 random base62 characters (190 bits) + 6 characters of
checksum (the CRC32 of the random part, in base62), as GitHub's are made: the prefix lets
secret scanners find a leaked one, and the checksum tells a mistyped or truncated token
from a real one without asking the database.

Only the SHA-256 of a token is stored. A key (an HMAC) would add nothing: 190 random bits
cannot be guessed, whether or not a hash is known, and a keyed hash would stop every
script the day the signing key is rotated. The first characters of the token (`prefix`)
are kept in the clear so its owner can tell tokens apart; the rest stays over 160 bits.

The scopes are the roles matrix's actions (taskmanager.security.roles) plus the account's:
what a token may do in a workspace is its user's role's actions there AND its scopes
(`Scope.actions_in`; taskmanager_caller_permissions() in the database).
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from taskmanager.security.roles import Action

PREFIX = "tm_pat_"
ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
SECRET_LENGTH = 32  # 32 * log2(62) = 190.5 bits
CHECKSUM_LENGTH = 6  # 62**6 > 2**32: any CRC32 fits
TOKEN_LENGTH = len(PREFIX) + SECRET_LENGTH + CHECKSUM_LENGTH
# How much of the token is kept readable (the prefix and 4 random characters, 24 bits).
SHOWN_LENGTH = len(PREFIX) + 4


class TokenScope(StrEnum):
    """What a personal access token may be used for."""

    TASKS_READ = Action.TASKS_READ.value
    TASKS_WRITE = Action.TASKS_WRITE.value
    MEMBERS_WRITE = Action.MEMBERS_WRITE.value
    WORKSPACES_WRITE = Action.WORKSPACES_WRITE.value
    # GET /users/me.
    ACCOUNT_READ = "account:read"
    # PATCH /users/me (the display name; a password change needs a login).
    ACCOUNT_WRITE = "account:write"


TOKEN_SCOPES: tuple[str, ...] = tuple(str(scope) for scope in TokenScope)

# A scope that changes something also reads: a change starts by finding what it changes.
IMPLIED: dict[TokenScope, frozenset[TokenScope]] = {
    TokenScope.TASKS_WRITE: frozenset({TokenScope.TASKS_READ}),
    TokenScope.MEMBERS_WRITE: frozenset({TokenScope.TASKS_READ}),
    TokenScope.WORKSPACES_WRITE: frozenset({TokenScope.TASKS_READ}),
    TokenScope.ACCOUNT_WRITE: frozenset({TokenScope.ACCOUNT_READ}),
}


def with_implied(scopes: Iterable[TokenScope]) -> frozenset[TokenScope]:
    """`scopes` and what they imply (what a token made with them is stored with)."""
    asked = frozenset(scopes)
    return asked.union(*(IMPLIED.get(scope, frozenset()) for scope in asked))


def as_action(scope: TokenScope) -> Action | None:
    """The workspace action a scope grants, if it is one."""
    return Action(scope.value) if scope.value in Action._value2member_map_ else None


@dataclass(frozen=True, slots=True)
class TokenGrant:
    """What the access token a request came with allows (the database answered it)."""

    token_id: uuid.UUID
    scopes: frozenset[TokenScope]
    # The one workspace it may act in; None: any of its user's.
    workspace_id: int | None

    def allows(self, scope: TokenScope) -> bool:
        return scope in self.scopes

    def actions(self) -> frozenset[Action]:
        return frozenset(action for scope in self.scopes if (action := as_action(scope)))


@dataclass(frozen=True, slots=True)
class NewAccessToken:
    """A token just made: shown once, then only its hash and its prefix are kept."""

    token: str = field(repr=False)
    token_hash: str = field(repr=False)
    prefix: str


def _base62(number: int, width: int) -> str:
    digits = []
    while number:
        number, digit = divmod(number, 62)
        digits.append(ALPHABET[digit])
    return "".join(reversed(digits)).rjust(width, ALPHABET[0])


def checksum(secret: str) -> str:
    """The checksum of a token's random part (its CRC32 in base62), as it ends the token
    (also the calendar feeds' secrets: taskmanager.security.feed_secrets)."""
    return _base62(zlib.crc32(secret.encode()), CHECKSUM_LENGTH)


def new_access_token() -> NewAccessToken:
    secret = "".join(secrets.choice(ALPHABET) for _ in range(SECRET_LENGTH))
    token = f"{PREFIX}{secret}{checksum(secret)}"
    return NewAccessToken(token, access_token_hash(token), token[:SHOWN_LENGTH])


def is_access_token(token: str) -> bool:
    """Whether a bearer token is meant as a personal access token (not a JWT)."""
    return token.startswith(PREFIX)


def well_formed(token: str) -> bool:
    """Whether `token` has the format and its checksum matches (no database needed)."""
    if len(token) != TOKEN_LENGTH or not token.startswith(PREFIX):
        return False
    body = token[len(PREFIX) :]
    if any(character not in ALPHABET for character in body):
        return False
    secret, given = body[:SECRET_LENGTH], body[SECRET_LENGTH:]
    return secrets.compare_digest(checksum(secret), given)


def access_token_hash(token: str) -> str:
    """What is stored of a token, and what the database looks it up by."""
    return hashlib.sha256(token.encode()).hexdigest()
