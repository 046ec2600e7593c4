"""Webhook signing secrets (Standard Webhooks) and the signatures made with them.

A secret is never stored: it is derived from a key of the service's own (made from the
signing key, like the mailed tokens' key: a dump of the database gives no way to make
one), the endpoint's id and a random nonce kept in the endpoint's row. A rotation stores a
new nonce (and keeps the old one for the overlap): the secret is shown once, at creation
and at each rotation, and derived again by the delivery worker for each send.

The format is Standard Webhooks': `whsec_` + base64 of 32 random-looking bytes; a message
is signed `v1,<base64 of HMAC-SHA256(secret bytes, "<id>.<timestamp>.<body>")>`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import uuid
from collections.abc import Iterable

_CONTEXT = b"taskmanager: the key webhook signing secrets are derived with"
SECRET_PREFIX = "whsec_"
NONCE_BYTES = 16


def new_nonce() -> bytes:
    return secrets.token_bytes(NONCE_BYTES)


class WebhookSecretKey:
    """Derives endpoints' secrets; never shows the key itself (not even in repr)."""

    __slots__ = ("_key",)

    def __init__(self, signing_key: str) -> None:
        self._key = hmac.new(signing_key.encode(), _CONTEXT, hashlib.sha256).digest()

    def __repr__(self) -> str:
        return "WebhookSecretKey(...)"

    def secret_bytes(self, endpoint_id: uuid.UUID, nonce: bytes) -> bytes:
        return hmac.new(self._key, endpoint_id.bytes + nonce, hashlib.sha256).digest()

    def secret(self, endpoint_id: uuid.UUID, nonce: bytes) -> str:
        """The endpoint's secret as its receiver configures it: `whsec_...`."""
        return SECRET_PREFIX + base64.b64encode(self.secret_bytes(endpoint_id, nonce)).decode()


def signature(secret: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    """One `v1,<base64>` signature of a message."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(secret, signed, hashlib.sha256).digest()).decode()


def signature_header(
    secrets_now: Iterable[bytes], message_id: str, timestamp: int, body: bytes
) -> str:
    """The `webhook-signature` header: one signature per secret that signs now (two during
    a rotation's overlap), space-separated."""
    return " ".join(signature(secret, message_id, timestamp, body) for secret in secrets_now)
