"""AccountTokenRepository: mails that carry a token (verify an address, reset a password),
and spending those tokens. Every statement is a database function of migration 0012: the
caller role has no privilege on `account_tokens` or on inserting into `outbox`, so these
are the only ways in, each doing one narrow thing. Flushes, never commits."""

from __future__ import annotations

import uuid
from typing import Literal

from sqlalchemy import BigInteger, Integer, Text, Uuid, bindparam, text
from sqlalchemy.ext.asyncio import AsyncSession

from taskmanager.cache.invalidation import note_callers_changed
from taskmanager.database import note_outbox_recorded
from taskmanager.security.caller_key import CallerKey
from taskmanager.security.mail_tokens import MailTokenKey, mail_token_hash

# verify_email: to the caller's own account, while its address is not verified;
# password_reset, registration_attempt: to the account with an address (both carry a
# password-reset token).
MailKind = Literal["verify_email", "password_reset", "registration_attempt"]

_RECORD_MAIL = text(
    "SELECT taskmanager_record_mail(:kind, :address, :token_id, :token_hash, :lifetime, "
    ":valid_until, :proof)"
).bindparams(
    bindparam("kind", type_=Text),
    bindparam("address", type_=Text),
    bindparam("token_id", type_=Uuid),
    bindparam("token_hash", type_=Text),
    bindparam("lifetime", type_=Integer),
    bindparam("valid_until", type_=BigInteger),
    bindparam("proof", type_=Text),
)
_VERIFY_EMAIL = text("SELECT taskmanager_verify_email(:token_hash)")
_RESET_VALID = text("SELECT taskmanager_password_reset_valid(:token_hash)")
_RESET_PASSWORD = text("SELECT taskmanager_reset_password(:token_hash, :new_hash)")
# The only delete (migration 0012): for a transaction entered for maintenance.
_PURGE = text("SELECT taskmanager_purge_account_tokens()")


class AccountTokenRepository:
    """Encapsulates all database operations on mailed tokens."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def record_mail(
        self,
        kind: MailKind,
        address: str | None,
        lifetime_seconds: int,
        key: CallerKey,
        tokens: MailTokenKey,
    ) -> bool:
        """Record a mail of `kind` with a new token valid for `lifetime_seconds`, in this
        transaction (sent after commit). Whether there was an account to mail: the caller's
        own unverified one (verify_email; `address` None), or the active one with `address`
        (any case). Nothing is recorded for none."""
        token_id = uuid.uuid4()
        token_hash = mail_token_hash(tokens.token(token_id))
        valid_until, proof = key.mail_proof(kind, address, token_id, token_hash, lifetime_seconds)
        recorded = (
            await self.session.execute(
                _RECORD_MAIL,
                {
                    "kind": kind,
                    "address": address,
                    "token_id": token_id,
                    "token_hash": token_hash,
                    "lifetime": lifetime_seconds,
                    "valid_until": valid_until,
                    "proof": proof,
                },
            )
        ).scalar_one()
        if recorded:
            note_outbox_recorded(self.session)
        return bool(recorded)

    async def verify_email(self, token: str) -> int | None:
        """Spend a verification token: the id of the account whose address is now
        verified, or None (unknown, spent or expired)."""
        result = await self.session.execute(_VERIFY_EMAIL, {"token_hash": mail_token_hash(token)})
        user_id: int | None = result.scalar_one()
        return user_id

    async def password_reset_valid(self, token: str) -> bool:
        """Whether a password reset would accept `token` now."""
        result = await self.session.execute(_RESET_VALID, {"token_hash": mail_token_hash(token)})
        return bool(result.scalar_one())

    async def reset_password(self, token: str, new_password_hash: str) -> int | None:
        """Spend a reset token: store the new hash and end every login session of its
        account. The account's id, or None (unknown, spent or expired)."""
        result = await self.session.execute(
            _RESET_PASSWORD, {"token_hash": mail_token_hash(token), "new_hash": new_password_hash}
        )
        user_id: int | None = result.scalar_one()
        if user_id is not None:  # its login sessions ended: so do their cached facts
            note_callers_changed(self.session, user_id)
        return user_id

    async def purge_spent(self) -> int:
        """Delete the tokens spent or expired more than a day ago (the transaction must have
        entered for maintenance); returns how many."""
        return int((await self.session.execute(_PURGE)).scalar_one())
