"""Tokens mailed to prove a mailbox (verifying an address, resetting a password).

A token is never stored anywhere, not even in the outbox: it is derived from its row's id
(`account_tokens.id`, a random UUID) with a key made from the signing key, when the row is
recorded (to store its SHA-256) and again when the mail is sent (to put it in the link).
This key is not the database's caller key: a dump of the database, which holds the caller
key's pads, holds no way to make a token either. A new signing key invalidates every token
mailed before it (as it ends every access token).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid

_CONTEXT = b"taskmanager: the key mailed tokens are derived with"


class MailTokenKey:
    """Derives tokens; never shows the key itself (not even in repr)."""

    __slots__ = ("_key",)

    def __init__(self, signing_key: str) -> None:
        self._key = hmac.new(signing_key.encode(), _CONTEXT, hashlib.sha256).digest()

    def __repr__(self) -> str:
        return "MailTokenKey(...)"

    def token(self, token_id: uuid.UUID) -> str:
        """The token of the row `token_id`: 256 bits, URL-safe (43 characters)."""
        mac = hmac.new(self._key, token_id.bytes, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def mail_token_hash(token: str) -> str:
    """What the database keeps of a token: a fast hash is enough for 256 random bits."""
    return hashlib.sha256(token.encode()).hexdigest()
