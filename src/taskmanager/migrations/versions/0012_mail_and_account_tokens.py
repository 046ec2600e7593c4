"""an outbox for side effects after commit, mailed tokens, verified addresses

- `outbox`: what must happen once a transaction has committed (a mail now, webhooks later):
  a kind, a jsonb payload, and the delivery's state (attempts, next_attempt_at, sent_at,
  last_error). The caller role has no INSERT on it: a row is recorded by a SECURITY DEFINER
  function that decides what it holds (taskmanager_record_mail names the recipient from the
  account, never from the caller's input), in the same transaction as the change that causes
  it. Only a transaction entered for 'maintenance' (the service's outbox worker) sees rows,
  claims them (FOR UPDATE SKIP LOCKED) and marks them sent: a request sees none, and can
  neither mark one sent nor delete one.
- `account_tokens`: the tokens mailed to prove a mailbox (verifying an address, resetting a
  password), kept only as SHA-256 hashes. The service derives a token from the row's id with
  a key of its own (taskmanager.security.mail_tokens, from the signing key, never in the
  database), so the outbox payload holds the id alone: no secret at rest, and a dump of the
  database (caller_key included) gives no usable token. A row is written only by
  taskmanager_record_mail, with a proof made by the service (as taskmanager_password_hash
  wants one): SQL in a request cannot plant a hash of its choosing for anyone. The caller
  role has no privilege on the table at all; the token flows (verify, reset) go through
  functions that take the token's hash as their proof and do one narrow thing each.
  Spent and expired tokens are deleted by `taskmanager db purge-mail-tokens`, through
  taskmanager_purge_account_tokens (for a transaction entered for 'maintenance' only), a day
  after the token was spent or expired, not sooner: a link clicked again is refused with or
  without its row, and the day keeps the recent rows for looking into a complaint about one.
- `users.email_verified_at`: set by a verification (or a password reset, which proves the
  same mailbox). Readable by the caller role; written only by those functions, or at
  INSERT by an account the operator vouches for (`taskmanager users create`, `db seed`):
  its transaction enters for 'register' with the sealed subject 'vouched'
  (taskmanager_vouched()), which POST /auth/register never enters with. A restrictive
  policy (users_verified_only_vouched) refuses any other INSERT of a verified account, so
  SQL in a public registration's transaction cannot make one for someone else's address
  (and take the invitations sent to it, 0014).
- taskmanager_attempt_keys() (0008) also lets a login's subject count the mail keys:
  'mail-address:<network>' and 'mail-account:<account>' (password-reset requests and
  verification resends).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07 17:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from taskmanager.migrations.schema_statements import (
    PIN,
    grant_to_caller,
    hmac,
    in_current_schema,
    refuse_a_tampered_session,
    revoke_from_caller,
)

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


RECORD_MAIL = "taskmanager_record_mail(text, text, uuid, text, integer, bigint, text)"
VERIFY_EMAIL = "taskmanager_verify_email(text)"
RESET_VALID = "taskmanager_password_reset_valid(text)"
RESET_PASSWORD = "taskmanager_reset_password(text, text)"
PURGE_ACCOUNT_TOKENS = "taskmanager_purge_account_tokens()"
VOUCHED = "taskmanager_vouched()"
FUNCTIONS = (
    RECORD_MAIL,
    VERIFY_EMAIL,
    RESET_VALID,
    RESET_PASSWORD,
    PURGE_ACCOUNT_TOKENS,
    VOUCHED,
)
ATTEMPT_KEYS_FUNCTION = "taskmanager_attempt_keys()"

# Longest a mailed token may be made to last, whatever the service asks (30 days).
MAX_TOKEN_SECONDS = 30 * 24 * 3600
# How long a spent or expired token's row stays before the purge may delete it.
SPENT_TOKENS_KEPT = "1 day"

# The caller role's privileges on the new tables and column.
OUTBOX_GRANT = (
    "SELECT, DELETE, UPDATE (attempts, next_attempt_at, sent_at, last_error) ON {schema}.outbox"
)
USERS_GRANT = "SELECT (email_verified_at), INSERT (email_verified_at) ON {schema}.users"

PURPOSE = "(SELECT taskmanager_purpose())"

# The subject (0008: sealed with the caller, as taskmanager_enter keeps it: hex of its
# UTF-8) of a registration the operator vouches for: its account may be made verified
# (taskmanager.security.caller_key.VOUCHED_SUBJECT).
VOUCHED_SUBJECT = "vouched"
# Only such a registration inserts an account whose address counts as verified.
VERIFIED_ONLY_VOUCHED = "users_verified_only_vouched"


def _attempt_keys(mail_keys: bool) -> str:
    """0008's ATTEMPT_KEYS, with the mail keys when `mail_keys` (the downgrade: without)."""
    mail = (
        """
              'mail-address:' || s.network,
              'mail-account:' || s.account,"""
        if mail_keys
        else ""
    )
    # A vouched registration (the operator's) counts no attempts.
    counted = (
        f"parts[4] NOT IN ('', '{VOUCHED_SUBJECT.encode().hex()}')"
        if mail_keys
        else "parts[4] <> ''"
    )
    return f"""(SELECT CASE WHEN parts[3] IN ('login', 'register') AND {counted} THEN
        ARRAY['address:' || s.network,
              'account-address:' || s.network || ' ' || s.account,
              'account:' || s.account,
              'account-day:' || s.account,
              'known-address:' || s.network || ' ' || s.account,
              'registration-address:' || s.network,{mail}
              'registrations:all']
        ELSE '{{}}'::text[] END
    FROM (SELECT split_part(t.subject, E'\\n', 1) AS network,
                 left(lower(substr(t.subject, strpos(t.subject, E'\\n') + 1)), 320) AS account
          FROM (SELECT convert_from(decode(parts[4], 'hex'), 'UTF8') COLLATE "default"
                AS subject) t) s)"""


# As 0008's SEAL, over the caller's parts.
SEAL = (
    "format('seal|%s|%s|%s', array_to_string(parts[1:4], '|'), pg_backend_pid(), "
    "(extract(epoch FROM transaction_timestamp()) * 1000000)::bigint)"
)


def _attempt_keys_function(mail_keys: bool) -> None:
    """taskmanager_attempt_keys() as 0008 made it (the seal checked the same way), with or
    without the mail keys."""
    in_current_schema(
        f"""
        CREATE OR REPLACE FUNCTION {{schema}}.taskmanager_attempt_keys() RETURNS text[]
        LANGUAGE plpgsql STABLE SECURITY DEFINER {PIN}
        AS $$
        DECLARE
            setting text := current_setting('taskmanager.caller', true);
            parts text[];
            key record;
        BEGIN
            IF setting IS NULL OR setting = '' THEN
                RETURN NULL;
            END IF;
            parts := string_to_array(setting, '|');
            SELECT k.inner_pad, k.outer_pad INTO key FROM {{schema}}.caller_key k;
            IF cardinality(parts) = 5 AND parts[5] = {hmac(SEAL)} THEN
                RETURN {_attempt_keys(mail_keys)};
            END IF;
            RAISE EXCEPTION 'the caller of this transaction was not entered through '
                'taskmanager_enter' USING ERRCODE = '42501';
        END $$
        """
    )


def _tables() -> None:
    op.add_column(
        "users", sa.Column("email_verified_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.create_table(
        "outbox",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("kind", sa.String(100), nullable=False),
        sa.Column("payload", postgresql.JSONB(), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column(
            "next_attempt_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_outbox"),
    )
    # What the worker claims: the unsent rows that are due, soonest first.
    op.create_index(
        "ix_outbox_next_attempt_at",
        "outbox",
        ["next_attempt_at"],
        postgresql_where=sa.text("sent_at IS NULL"),
    )
    op.create_table(
        "account_tokens",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("purpose", sa.String(20), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "purpose IN ('verify_email', 'password_reset')", name="ck_account_tokens_purpose_known"
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name="fk_account_tokens_user_id_users",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_account_tokens"),
        sa.UniqueConstraint("token_hash", name="uq_account_tokens_token_hash"),
    )
    op.create_index("ix_account_tokens_user_id", "account_tokens", ["user_id"])
    # No policy lets the caller role at either table's rows but the worker's below; the
    # functions run as the owner, who is not subject to them (no FORCE).
    op.execute("ALTER TABLE outbox ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE account_tokens ENABLE ROW LEVEL SECURITY")
    op.execute(
        f"CREATE POLICY outbox_worker ON outbox USING ({PURPOSE} = 'maintenance') "
        f"WITH CHECK ({PURPOSE} = 'maintenance')"
    )
    # Said outright: no caller sees or writes a token row, whatever is granted later.
    op.execute(
        "CREATE POLICY account_tokens_functions_only ON account_tokens USING (false) "
        "WITH CHECK (false)"
    )


def _functions() -> None:
    # Whether the transaction entered for 'register' with the subject VOUCHED_SUBJECT: a
    # registration the operator vouches for (taskmanager_purpose() checks the seal; a
    # caller set by hand is refused, 42501). The service enters so only for an operator's
    # account, never for POST /auth/register.
    vouched = VOUCHED_SUBJECT.encode().hex()
    in_current_schema(
        f"""
        CREATE FUNCTION {{schema}}.taskmanager_vouched() RETURNS boolean
        LANGUAGE plpgsql STABLE SECURITY DEFINER {PIN}
        AS $$
        DECLARE
            -- First: it checks the seal (or refuses), whatever follows.
            purpose text := {{schema}}.taskmanager_purpose();
            caller text[] := string_to_array(current_setting('taskmanager.caller', true), '|');
        BEGIN
            RETURN coalesce(purpose = 'register' AND caller[4] = '{vouched}', false);
        END $$
        """
    )
    # Record a mail with a token: the token's row (its hash only) and the outbox row, in the
    # caller's transaction. `kind` 'verify_email' is for the caller's own account (not yet
    # verified); 'password_reset' and 'registration_attempt' for the active account with
    # the address `address` (any case). False, and nothing recorded, when there is no such
    # account. The proof is the service's (taskmanager.security.caller_key.mail_proof):
    # over every argument, good for 15 minutes at most.
    in_current_schema(
        f"""
        CREATE FUNCTION {{schema}}.taskmanager_record_mail(
            kind text, address text, token_id uuid, token_hash text, lifetime_seconds integer,
            valid_until bigint, proof text)
        RETURNS boolean
        LANGUAGE plpgsql VOLATILE SECURITY DEFINER {PIN}
        AS $$
        DECLARE
            key record;
            account record;
            lifetime integer := least(greatest(lifetime_seconds, 60), {MAX_TOKEN_SECONDS});
            mail_kind text := taskmanager_record_mail.kind;
        BEGIN
            {refuse_a_tampered_session("taskmanager_record_mail")}
            SELECT k.inner_pad, k.outer_pad INTO key FROM {{schema}}.caller_key k;
            IF proof IS NULL OR proof IS DISTINCT FROM {
            hmac(
                "format('mail|%s|%s|%s|%s|%s|%s', mail_kind, address, token_id, "
                "taskmanager_record_mail.token_hash, lifetime_seconds, valid_until)"
            )
        }
               OR valid_until < extract(epoch FROM now())
               OR valid_until > extract(epoch FROM now()) + 900 THEN
                RAISE EXCEPTION 'taskmanager_record_mail: the proof is not valid'
                    USING ERRCODE = '42501';
            END IF;
            IF mail_kind = 'verify_email' THEN
                SELECT u.id, u.email, u.display_name INTO account FROM {{schema}}.users u
                WHERE u.id = {{schema}}.taskmanager_user_id() AND u.is_active
                  AND u.email_verified_at IS NULL;
            ELSIF mail_kind IN ('password_reset', 'registration_attempt') THEN
                SELECT u.id, u.email, u.display_name INTO account FROM {{schema}}.users u
                WHERE lower(u.email) = lower(address) AND u.is_active;
            ELSE
                RAISE EXCEPTION 'taskmanager_record_mail: unknown kind %', mail_kind
                    USING ERRCODE = '22023';
            END IF;
            IF NOT FOUND THEN
                RETURN false;
            END IF;
            INSERT INTO {{schema}}.account_tokens
                (id, user_id, purpose, token_hash, email, expires_at)
            VALUES (token_id, account.id,
                    CASE WHEN mail_kind = 'verify_email' THEN 'verify_email'
                         ELSE 'password_reset' END,
                    taskmanager_record_mail.token_hash, account.email,
                    now() + make_interval(secs => lifetime));
            INSERT INTO {{schema}}.outbox (kind, payload)
            VALUES ('mail.' || mail_kind, jsonb_build_object(
                'to', account.email, 'name', account.display_name, 'token_id', token_id,
                'valid_minutes', lifetime / 60));
            RETURN true;
        END $$
        """
    )
    # Verify an address: spend the verification token whose hash is `token_hash` (the
    # mailbox's owner alone has the token) and mark the account's address verified, if it
    # is still the address the token was mailed to. The account's id, or NULL (unknown,
    # spent or expired token).
    in_current_schema(
        f"""
        CREATE FUNCTION {{schema}}.taskmanager_verify_email(token_hash text)
        RETURNS integer
        LANGUAGE plpgsql VOLATILE SECURITY DEFINER {PIN}
        AS $$
        DECLARE
            spent record;
        BEGIN
            {refuse_a_tampered_session("taskmanager_verify_email")}
            UPDATE {{schema}}.account_tokens t SET used_at = now()
            WHERE t.token_hash = taskmanager_verify_email.token_hash
              AND t.purpose = 'verify_email' AND t.used_at IS NULL AND t.expires_at > now()
            RETURNING t.user_id, t.email INTO spent;
            IF NOT FOUND THEN
                RETURN NULL;
            END IF;
            UPDATE {{schema}}.users u SET email_verified_at = coalesce(u.email_verified_at, now())
            WHERE u.id = spent.user_id AND lower(u.email) = lower(spent.email);
            IF NOT FOUND THEN
                RETURN NULL;
            END IF;
            RETURN spent.user_id;
        END $$
        """
    )
    # Whether `token_hash` is a password-reset token that would be accepted now (checked
    # before the new password is hashed, so junk tokens cost no hashing).
    in_current_schema(
        f"""
        CREATE FUNCTION {{schema}}.taskmanager_password_reset_valid(token_hash text)
        RETURNS boolean
        LANGUAGE plpgsql STABLE SECURITY DEFINER {PIN}
        AS $$
        BEGIN
            {refuse_a_tampered_session("taskmanager_password_reset_valid")}
            RETURN EXISTS (
                SELECT FROM {{schema}}.account_tokens t
                JOIN {{schema}}.users u ON u.id = t.user_id
                WHERE t.token_hash = taskmanager_password_reset_valid.token_hash
                  AND t.purpose = 'password_reset' AND t.used_at IS NULL
                  AND t.expires_at > now() AND u.is_active);
        END $$
        """
    )
    # Reset a password: spend the reset token whose hash is `token_hash`, store the new
    # hash, spend the account's other reset tokens, and end every login session of the
    # account (its access tokens answer 401 from the next request on). The token proves
    # the mailbox, so the address counts as verified too. The account's id, or NULL.
    in_current_schema(
        f"""
        CREATE FUNCTION {{schema}}.taskmanager_reset_password(
            token_hash text, new_password_hash text)
        RETURNS integer
        LANGUAGE plpgsql VOLATILE SECURITY DEFINER {PIN}
        AS $$
        DECLARE
            spent record;
        BEGIN
            {refuse_a_tampered_session("taskmanager_reset_password")}
            IF new_password_hash IS NULL OR new_password_hash NOT LIKE '$argon2%' THEN
                RAISE EXCEPTION 'taskmanager_reset_password: not a password hash'
                    USING ERRCODE = '22023';
            END IF;
            UPDATE {{schema}}.account_tokens t SET used_at = now()
            WHERE t.token_hash = taskmanager_reset_password.token_hash
              AND t.purpose = 'password_reset' AND t.used_at IS NULL AND t.expires_at > now()
              AND EXISTS (SELECT FROM {{schema}}.users u WHERE u.id = t.user_id AND u.is_active)
            RETURNING t.user_id, t.email INTO spent;
            IF NOT FOUND THEN
                RETURN NULL;
            END IF;
            UPDATE {{schema}}.users u
            SET password_hash = new_password_hash, password_changed_at = now(),
                email_verified_at = CASE WHEN lower(u.email) = lower(spent.email)
                    THEN coalesce(u.email_verified_at, now()) ELSE u.email_verified_at END
            WHERE u.id = spent.user_id;
            UPDATE {{schema}}.account_tokens t SET used_at = now()
            WHERE t.user_id = spent.user_id AND t.purpose = 'password_reset'
              AND t.used_at IS NULL;
            UPDATE {{schema}}.auth_sessions s
            SET revoked_at = now(), revoked_reason = 'password_reset'
            WHERE s.user_id = spent.user_id AND s.revoked_at IS NULL;
            RETURN spent.user_id;
        END $$
        """
    )

    # The only delete of account_tokens (but an account's own, which takes its tokens
    # along): the rows spent or expired more than SPENT_TOKENS_KEPT ago, for maintenance.
    in_current_schema(
        f"""
        CREATE FUNCTION {{schema}}.taskmanager_purge_account_tokens() RETURNS bigint
        LANGUAGE plpgsql VOLATILE SECURITY DEFINER {PIN}
        AS $$
        DECLARE
            purged bigint;
        BEGIN
            IF {{schema}}.taskmanager_purpose() IS DISTINCT FROM 'maintenance' THEN
                RAISE EXCEPTION 'taskmanager_purge_account_tokens: only for maintenance'
                    USING ERRCODE = '42501';
            END IF;
            -- least() passes over NULL: whichever came first, spent or expired.
            DELETE FROM {{schema}}.account_tokens t
            WHERE least(t.used_at, t.expires_at) < now() - interval '{SPENT_TOKENS_KEPT}';
            GET DIAGNOSTICS purged = ROW_COUNT;
            RETURN purged;
        END $$
        """
    )


def upgrade() -> None:
    _tables()
    _functions()
    # The caller role may INSERT email_verified_at (an operator's account is made verified),
    # but only a registration the operator vouches for may set it.
    op.execute(
        f"CREATE POLICY {VERIFIED_ONLY_VOUCHED} ON users AS RESTRICTIVE FOR INSERT "
        "WITH CHECK (email_verified_at IS NULL OR (SELECT taskmanager_vouched()))"
    )
    _attempt_keys_function(mail_keys=True)
    for function in FUNCTIONS:
        op.execute(f"REVOKE ALL ON FUNCTION {function} FROM PUBLIC")
        grant_to_caller(f"EXECUTE ON FUNCTION {{schema}}.{function}")
    grant_to_caller(OUTBOX_GRANT)
    grant_to_caller(USERS_GRANT)


def downgrade() -> None:
    revoke_from_caller(USERS_GRANT)
    op.execute(f"DROP POLICY {VERIFIED_ONLY_VOUCHED} ON users")
    _attempt_keys_function(mail_keys=False)
    for function in FUNCTIONS:
        op.execute(f"DROP FUNCTION {function}")
    op.execute("DELETE FROM login_failures WHERE key LIKE 'mail-%'")
    op.drop_table("account_tokens")
    op.drop_table("outbox")
    op.drop_column("users", "email_verified_at")
