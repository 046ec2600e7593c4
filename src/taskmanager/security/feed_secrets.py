"""The secrets of calendar feed URLs (GET /calendar/{secret}.ics): their format, how they
are kept.

A calendar app cannot send a header, so the secret is the URL's path: whoever holds the
URL reads the feed, and nothing else (migration 0015: its caller may only read tasks).
It is made as a personal access token is (taskmanager.security.access_tokens): `tm_cal_`
+ 32 random base62 characters (190 bits) + a 6-character CRC32 checksum, so a secret
scanner recognises one, and a mistyped or truncated URL is answered without asking the
database. Only its SHA-256 is stored; the first characters are kept to tell feeds apart.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field

from taskmanager.security.access_tokens import (
    ALPHABET,
    CHECKSUM_LENGTH,
    SECRET_LENGTH,
    checksum,
)

PREFIX = "tm_cal_"
FEED_SECRET_LENGTH = len(PREFIX) + SECRET_LENGTH + CHECKSUM_LENGTH
# How much of the secret is kept readable (the prefix and 4 random characters, 24 bits).
SHOWN_LENGTH = len(PREFIX) + 4


@dataclass(frozen=True, slots=True)
class NewFeedSecret:
    """A secret just made: shown once (in its URL), then only its hash and prefix are kept."""

    secret: str = field(repr=False)
    secret_hash: str = field(repr=False)
    prefix: str


def new_feed_secret() -> NewFeedSecret:
    random_part = "".join(secrets.choice(ALPHABET) for _ in range(SECRET_LENGTH))
    secret = f"{PREFIX}{random_part}{checksum(random_part)}"
    return NewFeedSecret(secret, feed_secret_hash(secret), secret[:SHOWN_LENGTH])


def well_formed(secret: str) -> bool:
    """Whether `secret` has the format and its checksum matches (no database needed)."""
    if len(secret) != FEED_SECRET_LENGTH or not secret.startswith(PREFIX):
        return False
    body = secret[len(PREFIX) :]
    if any(character not in ALPHABET for character in body):
        return False
    random_part, given = body[:SECRET_LENGTH], body[SECRET_LENGTH:]
    return secrets.compare_digest(checksum(random_part), given)


def feed_secret_hash(secret: str) -> str:
    """What is stored of a secret, and what the database looks its feed up by."""
    return hashlib.sha256(secret.encode()).hexdigest()
