"""The key the database checks callers with, and the proofs the service makes with it.

Every transaction of the service starts with `taskmanager_enter(user, session, purpose,
valid_until, proof)` (migration 0008): the database lets a transaction act as a caller only
with a proof, an HMAC-SHA256 over exactly those values with this key, and seals the caller
so that no later `set_config` can change it. SQL running in a request (say, injected) knows
neither the key nor a way to read it (the table holding it is the owner's alone), so it can
neither become another user nor read a password hash.

The key is derived from the signing key (settings, or the generated key file), so every
worker and every machine has it without another secret to deploy; `taskmanager db upgrade`
installs it in the database (taskmanager.postgres.deployment.install_caller_key). A new
signing key needs a new `db upgrade`, which also ends every issued login token (personal
access tokens are kept as a plain SHA-256, and outlive it).
"""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from dataclasses import dataclass, field
from typing import Literal

# What the caller of a transaction is there for (the policies of migration 0008 read it):
# request     - an API request with an access token (a user and their login session)
# login       - logging in, and counting password attempts
# register    - opening an account (the database allocates its id)
# refresh     - trading a refresh token
# operator    - an operator's command acting as an account (`users create`, `db seed`)
# maintenance - purging what has expired; checking the key
# token       - an API request with a personal access token (its hash is the subject; the
#               database finds the user, migration 0013)
# calendar    - reading a calendar feed by its secret URL (its hash is the subject; the
#               database finds the user, and lets it read tasks only: migration 0015)
Purpose = Literal[
    "request", "login", "register", "refresh", "operator", "maintenance", "token", "calendar"
]

# The subject of an operator's transaction whose changes write no activity (migration
# 0011 reads it from the sealed caller): `taskmanager db seed`'s made-up demo data.
UNLOGGED_SUBJECT = "unlogged"
# The subject of a registration the operator vouches for (`taskmanager users create`, the
# demo user of `db seed`): only such a transaction may insert an account whose address
# counts as verified (migration 0012's taskmanager_vouched()). POST /auth/register never
# enters with it.
VOUCHED_SUBJECT = "vouched"

# How long a proof for the service's own transactions is good for (the database accepts
# at most 15 minutes ahead of its own clock).
SERVICE_PROOF_SECONDS = 300
_CONTEXT = b"taskmanager: the key the database checks the caller of a transaction with"
_BLOCK = 64  # SHA-256's block size: HMAC pads its key to it


@dataclass(frozen=True, slots=True)
class Entry:
    """The arguments of one `taskmanager_enter` call."""

    user_id: int | None
    session_id: uuid.UUID | None
    purpose: Purpose
    valid_until: int
    # A credential for as long as valid_until: never in a repr (a log line, a traceback).
    proof: str = field(repr=False)
    # What a login or a registration counts attempts at ("<network>\n<username>"): the
    # only password-attempt counts its transaction may touch (migration 0008); for a
    # personal access token, its hash.
    subject: str | None = None


class CallerKey:
    """Makes proofs; never shows the key itself (not even in repr)."""

    __slots__ = ("_key",)

    def __init__(self, signing_key: str) -> None:
        self._key = hmac.new(signing_key.encode(), _CONTEXT, hashlib.sha256).digest()

    def __repr__(self) -> str:
        return "CallerKey(...)"

    def entry(
        self,
        purpose: Purpose,
        user_id: int | None = None,
        session_id: uuid.UUID | None = None,
        *,
        valid_until: int | None = None,
        subject: str | None = None,
    ) -> Entry:
        """A proof that lets a transaction act as (user_id, session_id) for `purpose`
        (and, counting attempts, at `subject`). A request's proof lives as long as its
        access token (`valid_until`); the service's own, SERVICE_PROOF_SECONDS."""
        if valid_until is None:
            valid_until = int(time.time()) + SERVICE_PROOF_SECONDS
        message = (
            f"enter|{_text(user_id)}|{_text(session_id)}|{purpose}|{valid_until}|{_text(subject)}"
        )
        return Entry(user_id, session_id, purpose, valid_until, self._mac(message), subject)

    def password_hash_proof(self, email: str) -> tuple[int, str]:
        """(valid_until, proof) for reading the password hash of the account `email`."""
        valid_until = int(time.time()) + SERVICE_PROOF_SECONDS
        return valid_until, self._mac(f"password-hash|{email}|{valid_until}")

    def mail_proof(
        self,
        kind: str,
        address: str | None,
        token_id: uuid.UUID,
        token_hash: str,
        lifetime_seconds: int,
    ) -> tuple[int, str]:
        """(valid_until, proof) for recording a mail with a token (taskmanager_record_mail,
        migration 0012): only the service may decide which hash a token row holds."""
        valid_until = int(time.time()) + SERVICE_PROOF_SECONDS
        message = (
            f"mail|{kind}|{_text(address)}|{token_id}|{token_hash}|{lifetime_seconds}|{valid_until}"
        )
        return valid_until, self._mac(message)

    def invitation_proof(
        self,
        invitation_id: uuid.UUID,
        workspace_id: int,
        address: str,
        role: str,
        token_hash: str,
        lifetime_seconds: int,
    ) -> tuple[int, str]:
        """(valid_until, proof) for recording an invitation and its mail
        (taskmanager_record_invitation, migration 0014)."""
        valid_until = int(time.time()) + SERVICE_PROOF_SECONDS
        message = (
            f"invitation|{invitation_id}|{workspace_id}|{address}|{role}|{token_hash}|"
            f"{lifetime_seconds}|{valid_until}"
        )
        return valid_until, self._mac(message)

    def invitation_resend_proof(self, invitation_id: uuid.UUID) -> tuple[int, str]:
        """(valid_until, proof) for mailing an invitation again
        (taskmanager_resend_invitation, migration 0014)."""
        valid_until = int(time.time()) + SERVICE_PROOF_SECONDS
        return valid_until, self._mac(f"invitation-resend|{invitation_id}|{valid_until}")

    def pads(self) -> tuple[bytes, bytes]:
        """The key as the database keeps it: HMAC's inner and outer padded keys."""
        padded = self._key.ljust(_BLOCK, b"\0")
        return bytes(b ^ 0x36 for b in padded), bytes(b ^ 0x5C for b in padded)

    def _mac(self, message: str) -> str:
        return hmac.new(self._key, message.encode(), hashlib.sha256).hexdigest()


def attempt_subject(network: str, username: str = "") -> str:
    """The subject of a login's or a registration's attempt counts (Entry.subject)."""
    return f"{network}\n{username}"


def _text(value: object) -> str:
    """A value as PostgreSQL's format('%s') writes it: NULL as nothing."""
    return "" if value is None else str(value)
