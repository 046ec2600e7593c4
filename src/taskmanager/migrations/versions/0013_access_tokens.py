"""personal access tokens: a caller that is a token, bounded by its scopes and workspace

Before: every caller of a request was a login session (purpose 'request'), and what it may
do in a workspace was its role's actions (taskmanager_caller_permissions(), 0010).

After:
- `access_tokens`: a user's personal access tokens for scripts. Only the SHA-256 of a
  token is kept (`token_hash`), with a short prefix of it to recognise it by, its name,
  its scopes (the roles matrix's actions, plus account:read and account:write), the one
  workspace it may be bound to, its expiry and when it was last used. A token bound to a
  workspace references the user's membership there: leaving the workspace deletes it.
- `taskmanager_enter` (same signature and answer, 0008's body otherwise unchanged) takes a
  purpose 'token': the proof names no user and no session, and the token's hash as its
  subject; the door finds the token, refuses it (no row) when it is unknown, expired or
  its account is disabled, and enters as its user with the token's id as the session. Its
  answer lists only the workspaces the token may read.
- `taskmanager_caller_permissions()`, the one place the database decides what a caller
  may do in a workspace: for a token, its role's actions there AND the token's scopes,
  and only in its workspace if it is bound to one. Every write policy reads it (through
  taskmanager_workspace_ids_allowing and taskmanager_manageable_memberships), so a token
  with only tasks:read cannot write, whatever the application does.
- `taskmanager_workspace_ids()`, which the read policies and the search use: the
  workspaces where the caller may do tasks:read (for a login: all of its memberships,
  since every role may; for a token: as above). Same signature, one computation per
  statement as before (the policies' InitPlan).
- `taskmanager_workspace_roles()` answers the same workspaces' roles.
- `taskmanager_caller_token()`: the entered token's id, scopes, workspace and whether its
  last_used_at is a minute old, for the service's first statement (NULL for any other
  caller); `taskmanager_token_used()` stamps last_used_at, at most once a minute.
- `taskmanager_token_allows(scope, anywhere)`: false only for a token without `scope` (or,
  with `anywhere`, one bound to a workspace). Restrictive policies use it where no
  workspace action decides: changing the account (account:write), leaving a workspace
  (members:write), creating one (workspaces:write, unbound). A token never touches login
  sessions, and only a login session reads, makes or revokes access tokens.
- A token never changes its account's password (nor password_changed_at, nor the personal
  workspace), even with account:write: a trigger on users
  (taskmanager_token_keeps_the_password) refuses it (42501), whatever the SQL. Otherwise
  SQL run as a token could set a password hash of its own and log in: a token would be a
  full login. Request SQL owns nothing, so it cannot drop or disable the trigger.
- `taskmanager_reset_password` (0012's, same signature) also deletes the account's personal
  access tokens: a reset recovers an account, and a token stolen before it must not outlive
  it. (Logging out and changing the password with the current one still leave them.)
- What a token does to memberships: it deletes them (its own included) only in the
  workspaces it may see, with members:write; it inserts its user's own only as the first
  owner of a workspace it created (never joining one: that is a login's), others' only
  with members:write (where 0010's policies let it).
- `idempotency_keys`: a token's keys (their scope ends with " token <its id>", as the
  service stores them) are its own token's: its caller reads and writes no others, and no
  other caller (but maintenance, which purges) reads or writes a token's.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07 17:45:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from taskmanager.migrations.schema_statements import (
    PIN,
    TAMPERED,
    grant_to_caller,
    hmac,
    in_current_schema,
    refuse_a_tampered_session,
)

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# taskmanager.security.access_tokens.TokenScope as this revision stores it.
SCOPES = (
    "tasks:read",
    "tasks:write",
    "members:write",
    "workspaces:write",
    "account:read",
    "account:write",
)
# How stale last_used_at may be before a use stamps it again.
USED_EVERY = "1 minute"

CALLER_TOKEN = "taskmanager_caller_token()"
TOKEN_USED = "taskmanager_token_used()"
TOKEN_ALLOWS = "taskmanager_token_allows(text, boolean)"
KEEPS_THE_PASSWORD = "taskmanager_token_keeps_the_password()"
KEEPS_THE_PASSWORD_TRIGGER = "taskmanager_token_keeps_the_password"

ME = "(SELECT taskmanager_user_id())"
PURPOSE = "(SELECT taskmanager_purpose())"


def _token_allows(scope: str, anywhere: bool = False) -> str:
    """The condition, computed once per statement (an InitPlan)."""
    return f"(SELECT taskmanager_token_allows('{scope}', {str(anywhere).lower()}))"


# What a token's caller may do to memberships: delete them only in the workspaces it may
# see (its own if it is bound to one) with members:write; insert only the first owner's of
# a workspace it created (workspaces:write, unbound), or, with members:write, someone
# else's (0010's managers; 0014 leaves none of those). Never its user's own membership of
# a workspace it joins: joining is a login's.
NOT_A_TOKEN = f"{PURPOSE} IS DISTINCT FROM 'token'"
TOKEN_DELETES_MEMBERSHIP = (
    f"{_token_allows('members:write')} AND ({NOT_A_TOKEN} "
    "OR workspace_id = ANY ((SELECT taskmanager_workspace_ids())::integer[]))"
)
TOKEN_INSERTS_MEMBERSHIP = (
    f"{NOT_A_TOKEN} OR (user_id <> {ME} AND {_token_allows('members:write')}) "
    f"OR (user_id = {ME} AND role = 'owner' AND taskmanager_may_own_first(workspace_id) "
    f"AND {_token_allows('workspaces:write', True)})"
)
# A token's idempotency keys are its own (taskmanager.routes.idempotency): their scope ends
# with " token <the token's id>", which no route's path holds (a path has no space). A
# token's caller reads and writes only those of its own token; any other caller none of
# a token's, but maintenance (which purges the expired ones).
TOKEN_KEYS = "' token '"
MY_TOKEN_KEYS = f"(SELECT {TOKEN_KEYS} || (taskmanager_caller())[2])"
KEYS_OF_THE_CALLER = (
    f"CASE WHEN {PURPOSE} = 'token' "
    f"THEN right(scope, char_length({MY_TOKEN_KEYS})) = {MY_TOKEN_KEYS} "
    f"ELSE {PURPOSE} = 'maintenance' OR strpos(scope, {TOKEN_KEYS}) = 0 END"
)

POLICIES: dict[str, dict[str, str]] = {
    "access_tokens": {
        # Only a login session lists, makes and revokes its user's access tokens.
        "access_tokens_mine": f"FOR SELECT USING (user_id = {ME} AND {PURPOSE} = 'request')",
        "access_tokens_make": f"FOR INSERT WITH CHECK (user_id = {ME} AND {PURPOSE} = 'request')",
        "access_tokens_revoke": f"FOR DELETE USING (user_id = {ME} AND {PURPOSE} = 'request')",
    },
    "auth_sessions": {
        # A token neither sees nor ends login sessions.
        "auth_sessions_not_a_token": f"AS RESTRICTIVE USING ({PURPOSE} IS DISTINCT FROM 'token')",
    },
    "users": {
        "users_change_needs_account_write": "AS RESTRICTIVE FOR UPDATE USING "
        f"({_token_allows('account:write')})",
    },
    "idempotency_keys": {
        "idempotency_keys_of_the_caller": f"AS RESTRICTIVE USING ({KEYS_OF_THE_CALLER}) "
        f"WITH CHECK ({KEYS_OF_THE_CALLER})",
    },
    "memberships": {
        # Leaving (deleting one's own) is no workspace action: members:write for a token,
        # and only in the workspaces it may see.
        "memberships_delete_needs_members_write": "AS RESTRICTIVE FOR DELETE USING "
        f"({TOKEN_DELETES_MEMBERSHIP})",
        # The first owner of a workspace just created (workspaces:write), or someone added.
        "memberships_create_needs_a_scope": "AS RESTRICTIVE FOR INSERT WITH CHECK "
        f"({TOKEN_INSERTS_MEMBERSHIP})",
    },
    "workspaces": {
        "workspaces_create_needs_workspaces_write": "AS RESTRICTIVE FOR INSERT WITH CHECK "
        f"({_token_allows('workspaces:write', True)})",
    },
}


# 0008's seal of a caller.
SEAL = (
    "format('seal|%s|%s|%s', caller, pg_backend_pid(), "
    "(extract(epoch FROM transaction_timestamp()) * 1000000)::bigint)"
)

# The purpose 'token', in the door's branch for proofs made for the moment.
TOKEN_BRANCH = """ELSIF purpose = 'token' THEN
                    -- A personal access token: the proof names its hash (the subject), and
                    -- the token names the user; its id is the caller's session.
                    IF entered_user IS NOT NULL OR entered_session IS NOT NULL
                       OR subject IS NULL THEN
                        RAISE EXCEPTION 'taskmanager_enter: a token names its hash as the '
                            'subject, and no user or session' USING ERRCODE = '22023';
                    END IF;
                    SELECT t.user_id, t.id INTO entered_user, entered_session
                    FROM {schema}.access_tokens t
                    JOIN {schema}.users u ON u.id = t.user_id
                    WHERE t.token_hash = subject AND u.is_active
                      AND (t.expires_at IS NULL OR t.expires_at > now());
                    IF entered_user IS NULL THEN
                        RETURN;
                    END IF;
                """
# What a token's caller is answered: the workspaces it may read, and those of them it may
# change (the workspaces' "owned" list: workspaces:write).
TOKEN_ANSWER = """IF purpose = 'token' THEN
                RETURN QUERY
                    SELECT entered_user,
                           (SELECT u.personal_workspace_id FROM {schema}.users u
                            WHERE u.id = entered_user),
                           {schema}.taskmanager_workspace_ids(),
                           {schema}.taskmanager_workspace_ids_allowing('workspaces:write'),
                           {schema}.taskmanager_caller_role();
                RETURN;
            END IF;
            """


def _enter(with_tokens: bool) -> None:
    """taskmanager_enter as 0008 made it, with (or, for the downgrade, without) the
    purpose 'token'."""
    token_branch = TOKEN_BRANCH if with_tokens else ""
    token_answer = TOKEN_ANSWER if with_tokens else ""
    in_current_schema(
        f"""
        CREATE OR REPLACE FUNCTION {{schema}}.taskmanager_enter(
            entered_user integer, entered_session uuid, purpose text, valid_until bigint,
            proof text, subject text DEFAULT NULL)
        RETURNS TABLE (user_id integer, personal_workspace_id integer,
                       workspace_ids integer[], owned_workspace_ids integer[], caller_role name)
        LANGUAGE plpgsql VOLATILE SECURITY DEFINER {PIN}
        AS $$
        #variable_conflict use_column
        DECLARE
            now_epoch numeric := extract(epoch FROM now());
            caller text;
            key record;
        BEGIN
            -- A pooled connection carries named prepared statements from one transaction to
            -- the next: a statement prepared with SQL means this session is not the
            -- service's own any more, and no caller enters it (0008).
            IF EXISTS (SELECT FROM pg_prepared_statements WHERE from_sql) THEN
                RAISE EXCEPTION 'taskmanager_enter: a statement was prepared with SQL on '
                    'this connection; it serves no caller any more' USING ERRCODE = '{TAMPERED}';
            END IF;
            SELECT k.inner_pad, k.outer_pad INTO key FROM {{schema}}.caller_key k;
            IF proof IS NULL OR proof IS DISTINCT FROM {
            hmac(
                "format('enter|%s|%s|%s|%s|%s', entered_user, entered_session, purpose, "
                "valid_until, subject)"
            )
        } THEN
                RAISE EXCEPTION 'taskmanager_enter: the proof is not valid'
                    USING ERRCODE = '42501';
            END IF;
            IF purpose = 'request' THEN
                -- A login's proof lives as long as its access token: past it, no caller.
                IF valid_until < now_epoch OR entered_user IS NULL OR entered_session IS NULL
                   OR NOT EXISTS (
                        SELECT FROM {{schema}}.users u
                        JOIN {{schema}}.auth_sessions s ON s.user_id = u.id
                        WHERE u.id = entered_user AND u.is_active AND s.id = entered_session
                          AND s.revoked_at IS NULL AND s.expires_at > now()) THEN
                    RETURN;
                END IF;
            ELSE
                -- The service's own transactions: proofs made for the moment.
                IF valid_until < now_epoch OR valid_until > now_epoch + 900 THEN
                    RAISE EXCEPTION 'taskmanager_enter: the proof has expired (or the clocks '
                        'of the service and the database differ by minutes)'
                        USING ERRCODE = '42501';
                END IF;
                IF purpose = 'register' THEN
                    IF entered_user IS NOT NULL OR entered_session IS NOT NULL THEN
                        RAISE EXCEPTION 'taskmanager_enter: a registration names no user'
                            USING ERRCODE = '22023';
                    END IF;
                    entered_user := nextval('{{schema}}.users_id_seq');
                {token_branch}ELSIF purpose = 'refresh' AND entered_user IS NOT NULL THEN
                    -- As the owner of a refresh token's login session, which must be alive.
                    IF entered_session IS NULL OR NOT EXISTS (
                        SELECT FROM {{schema}}.users u
                        JOIN {{schema}}.auth_sessions s ON s.user_id = u.id
                        WHERE u.id = entered_user AND u.is_active AND s.id = entered_session
                          AND s.revoked_at IS NULL AND s.expires_at > now()) THEN
                        RETURN;
                    END IF;
                ELSIF purpose IN ('login', 'refresh', 'operator') THEN
                    IF entered_session IS NOT NULL OR (entered_user IS NOT NULL AND NOT EXISTS (
                            SELECT FROM {{schema}}.users u WHERE u.id = entered_user
                            AND (u.is_active OR purpose = 'operator'))) THEN
                        RETURN;
                    END IF;
                ELSIF purpose = 'maintenance' THEN
                    IF entered_user IS NOT NULL OR entered_session IS NOT NULL THEN
                        RAISE EXCEPTION 'taskmanager_enter: maintenance names no user'
                            USING ERRCODE = '22023';
                    END IF;
                ELSE
                    RAISE EXCEPTION 'taskmanager_enter: unknown purpose %', purpose
                        USING ERRCODE = '22023';
                END IF;
            END IF;
            -- The subject (what a login or a registration counts attempts at, a token's
            -- hash) in hex: it is the client's text, and may hold '|'.
            caller := format('%s|%s|%s|%s', entered_user, entered_session, purpose,
                             encode(convert_to(subject, 'UTF8'), 'hex'));
            PERFORM set_config('taskmanager.caller', caller || '|' || {hmac(SEAL)}, true);
            {token_answer}RETURN QUERY
                SELECT entered_user,
                       (SELECT u.personal_workspace_id FROM {{schema}}.users u
                        WHERE u.id = entered_user),
                       ARRAY(SELECT m.workspace_id FROM {{schema}}.memberships m
                             WHERE m.user_id = entered_user ORDER BY m.workspace_id),
                       ARRAY(SELECT m.workspace_id FROM {{schema}}.memberships m
                             WHERE m.user_id = entered_user AND m.role = 'owner'
                             ORDER BY m.workspace_id),
                       {{schema}}.taskmanager_caller_role();
        END $$
        """
    )


def _table() -> None:
    op.create_table(
        "access_tokens",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("workspace_id", sa.Integer(), nullable=True),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("scopes", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "char_length(btrim(name)) > 0", name=op.f("ck_access_tokens_name_not_blank")
        ),
        sa.CheckConstraint(
            "cardinality(scopes) > 0 AND scopes <@ ARRAY[{}]::text[]".format(
                ", ".join(f"'{scope}'" for scope in SCOPES)
            ),
            name=op.f("ck_access_tokens_scopes_known"),
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_access_tokens_user_id_users"),
            ondelete="CASCADE",
        ),
        # Bound to a workspace: to the user's membership there (leaving deletes the token).
        sa.ForeignKeyConstraint(
            ["workspace_id", "user_id"],
            ["memberships.workspace_id", "memberships.user_id"],
            name=op.f("fk_access_tokens_workspace_id_memberships"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_access_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_access_tokens_token_hash")),
    )
    op.create_index("ix_access_tokens_user_id", "access_tokens", ["user_id"])
    op.execute("ALTER TABLE access_tokens ENABLE ROW LEVEL SECURITY")
    op.execute("REVOKE ALL ON access_tokens FROM PUBLIC")
    # The caller reads everything but the hash, and writes none of the columns the door or
    # taskmanager_token_used keep (as the owner).
    grant_to_caller(
        "SELECT (id, user_id, workspace_id, name, prefix, scopes, created_at, expires_at, "
        "last_used_at), INSERT (id, user_id, workspace_id, name, token_hash, prefix, scopes, "
        "expires_at), DELETE ON {schema}.access_tokens"
    )


def _functions() -> None:
    # The caller's (workspace, action) pairs (0010): a token's are its role's actions that
    # are also its scopes, in its workspace only if it is bound to one. One seal check.
    # No SET search_path of its own, so that the planner inlines it into the functions the
    # policies call (measured: 35 -> 18 us per call of taskmanager_workspace_ids(), which
    # every statement under a policy makes once or more). That is safe: nobody but those
    # SECURITY DEFINER functions may execute it (0010 revoked it from PUBLIC and granted it
    # to no one), they pin the search_path it is planned under, and it names every table
    # and function with its schema.
    in_current_schema(
        """
        CREATE OR REPLACE FUNCTION {schema}.taskmanager_caller_permissions()
        RETURNS TABLE (workspace_id integer, action text)
        LANGUAGE sql STABLE
        AS $$ SELECT m.workspace_id, p.action::text
              FROM (SELECT {schema}.taskmanager_caller() AS parts) caller
              JOIN {schema}.memberships m
                ON m.user_id = NULLIF(caller.parts[1], '')::integer
              JOIN {schema}.role_permissions p ON p.role = m.role
              WHERE caller.parts[3] IS DISTINCT FROM 'token'
                 OR EXISTS (SELECT FROM {schema}.access_tokens t
                            WHERE t.id = NULLIF(caller.parts[2], '')::uuid
                              AND t.user_id = m.user_id
                              AND p.action::text = ANY (t.scopes)
                              AND (t.workspace_id IS NULL OR t.workspace_id = m.workspace_id))
        $$
        """
    )
    # What the read policies and the search read: where the caller may do tasks:read (every
    # role may: a login's memberships, as before).
    in_current_schema(
        f"""
        CREATE OR REPLACE FUNCTION {{schema}}.taskmanager_workspace_ids() RETURNS integer[]
        LANGUAGE sql STABLE SECURITY DEFINER {PIN}
        AS $$ SELECT coalesce(array_agg(c.workspace_id ORDER BY c.workspace_id), '{{}}')
              FROM {{schema}}.taskmanager_caller_permissions() c
              WHERE c.action = 'tasks:read' $$
        """
    )
    in_current_schema(
        f"""
        CREATE OR REPLACE FUNCTION {{schema}}.taskmanager_workspace_roles() RETURNS jsonb
        LANGUAGE sql STABLE SECURITY DEFINER {PIN}
        AS $$ SELECT coalesce(jsonb_object_agg(m.workspace_id, m.role), '{{}}')
              FROM {{schema}}.memberships m
              WHERE m.user_id = {{schema}}.taskmanager_user_id()
                AND m.workspace_id
                    = ANY ((SELECT {{schema}}.taskmanager_workspace_ids())::integer[]) $$
        """
    )
    # The entered token, for the service's first statement: NULL unless the caller is one.
    in_current_schema(
        f"""
        CREATE FUNCTION {{schema}}.taskmanager_caller_token() RETURNS jsonb
        LANGUAGE sql STABLE SECURITY DEFINER {PIN}
        AS $$ SELECT jsonb_build_object(
                  'id', t.id, 'scopes', to_jsonb(t.scopes), 'workspace_id', t.workspace_id,
                  'stale', t.last_used_at IS NULL
                           OR t.last_used_at < now() - interval '{USED_EVERY}')
              FROM (SELECT {{schema}}.taskmanager_caller() AS parts) caller
              JOIN {{schema}}.access_tokens t ON t.id = NULLIF(caller.parts[2], '')::uuid
              WHERE caller.parts[3] = 'token' $$
        """
    )
    # A use of the entered token: last_used_at stamped, unless it was within USED_EVERY
    # (then nothing is written). Whether it stamped.
    in_current_schema(
        f"""
        CREATE FUNCTION {{schema}}.taskmanager_token_used() RETURNS boolean
        LANGUAGE sql VOLATILE SECURITY DEFINER {PIN}
        AS $$ WITH stamped AS (
                  UPDATE {{schema}}.access_tokens t SET last_used_at = now()
                  FROM (SELECT {{schema}}.taskmanager_caller() AS parts) caller
                  WHERE caller.parts[3] = 'token'
                    AND t.id = NULLIF(caller.parts[2], '')::uuid
                    AND (t.last_used_at IS NULL
                         OR t.last_used_at < now() - interval '{USED_EVERY}')
                  RETURNING t.id)
              SELECT EXISTS (SELECT FROM stamped) $$
        """
    )
    # false only for a token without `scope` (or, `anywhere`, bound to a workspace).
    in_current_schema(
        f"""
        CREATE FUNCTION {{schema}}.taskmanager_token_allows(scope text, anywhere boolean)
        RETURNS boolean
        LANGUAGE sql STABLE SECURITY DEFINER {PIN}
        AS $$ SELECT CASE WHEN caller.parts[3] IS DISTINCT FROM 'token' THEN true
                     ELSE EXISTS (SELECT FROM {{schema}}.access_tokens t
                                  WHERE t.id = NULLIF(caller.parts[2], '')::uuid
                                    AND scope = ANY (t.scopes)
                                    AND (NOT anywhere OR t.workspace_id IS NULL)) END
              FROM (SELECT {{schema}}.taskmanager_caller() AS parts) caller $$
        """
    )


def _token_keeps_the_password() -> None:
    # What a login changes of its account and a token must not, account:write or not: the
    # password (and when it changed), and the personal workspace. Of the token's own
    # account only: another member's row changes under a token only as the owner's cascade
    # (a shared workspace deleted that was someone's personal one: SET NULL).
    in_current_schema(
        f"""
        CREATE FUNCTION {{schema}}.taskmanager_token_keeps_the_password() RETURNS trigger
        LANGUAGE plpgsql SECURITY DEFINER {PIN}
        AS $$
        BEGIN
            IF {{schema}}.taskmanager_purpose() = 'token'
               AND OLD.id = {{schema}}.taskmanager_user_id() AND (
                    NEW.password_hash IS DISTINCT FROM OLD.password_hash
                    OR NEW.password_changed_at IS DISTINCT FROM OLD.password_changed_at
                    OR NEW.personal_workspace_id IS DISTINCT FROM OLD.personal_workspace_id)
            THEN
                RAISE EXCEPTION 'a personal access token does not change its account''s '
                    'password or personal workspace' USING ERRCODE = '42501';
            END IF;
            RETURN NEW;
        END $$
        """
    )
    op.execute(f"REVOKE ALL ON FUNCTION {KEEPS_THE_PASSWORD} FROM PUBLIC")
    op.execute(
        f"CREATE TRIGGER {KEEPS_THE_PASSWORD_TRIGGER} BEFORE UPDATE ON users "
        f"FOR EACH ROW EXECUTE FUNCTION {KEEPS_THE_PASSWORD}"
    )


def _reset_password(revoke_access_tokens: bool) -> None:
    """taskmanager_reset_password as 0012 made it, and (unless for the downgrade) deleting
    the account's personal access tokens too."""
    revoke = (
        """
            DELETE FROM {schema}.access_tokens t WHERE t.user_id = spent.user_id;"""
        if revoke_access_tokens
        else ""
    )
    in_current_schema(
        f"""
        CREATE OR REPLACE FUNCTION {{schema}}.taskmanager_reset_password(
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
            WHERE s.user_id = spent.user_id AND s.revoked_at IS NULL;{revoke}
            RETURN spent.user_id;
        END $$
        """
    )


def _policies(policies: dict[str, dict[str, str]]) -> None:
    for table, table_policies in policies.items():
        for name, definition in table_policies.items():
            op.execute(f"DROP POLICY IF EXISTS {name} ON {table}")
            op.execute(f"CREATE POLICY {name} ON {table} {definition}")


def upgrade() -> None:
    _table()
    _functions()
    _enter(with_tokens=True)
    _policies(POLICIES)
    _token_keeps_the_password()
    _reset_password(revoke_access_tokens=True)
    for function in (CALLER_TOKEN, TOKEN_USED, TOKEN_ALLOWS):
        op.execute(f"REVOKE ALL ON FUNCTION {function} FROM PUBLIC")
    # The policies call this one; the service's background stamp calls the next.
    for function in (TOKEN_ALLOWS, TOKEN_USED):
        grant_to_caller(f"EXECUTE ON FUNCTION {{schema}}.{function}")
    # Read in the service's first statement, before the switch to the caller role (as
    # taskmanager_workspace_roles, 0010): it answers the sealed caller's own token only.
    op.execute(f"GRANT EXECUTE ON FUNCTION {CALLER_TOKEN} TO PUBLIC")


def downgrade() -> None:
    op.execute(f"DROP TRIGGER {KEEPS_THE_PASSWORD_TRIGGER} ON users")
    op.execute(f"DROP FUNCTION {KEEPS_THE_PASSWORD}")
    _reset_password(revoke_access_tokens=False)
    for table, table_policies in POLICIES.items():
        if table == "access_tokens":
            continue  # they go with the table
        for name in table_policies:
            op.execute(f"DROP POLICY {name} ON {table}")
    _enter(with_tokens=False)
    for function in (TOKEN_ALLOWS, TOKEN_USED, CALLER_TOKEN):
        op.execute(f"DROP FUNCTION {function}")
    # 0010's and 0003's bodies.
    in_current_schema(
        f"""
        CREATE OR REPLACE FUNCTION {{schema}}.taskmanager_workspace_roles() RETURNS jsonb
        LANGUAGE sql STABLE SECURITY DEFINER {PIN}
        AS $$ SELECT coalesce(jsonb_object_agg(m.workspace_id, m.role), '{{}}')
              FROM {{schema}}.memberships m
              WHERE m.user_id = {{schema}}.taskmanager_user_id() $$
        """
    )
    in_current_schema(
        f"""
        CREATE OR REPLACE FUNCTION {{schema}}.taskmanager_workspace_ids() RETURNS integer[]
        LANGUAGE sql STABLE SECURITY DEFINER {PIN}
        AS $$ SELECT coalesce(array_agg(workspace_id), '{{}}') FROM {{schema}}.memberships
              WHERE user_id = {{schema}}.taskmanager_user_id() AND true $$
        """
    )
    in_current_schema(
        f"""
        CREATE OR REPLACE FUNCTION {{schema}}.taskmanager_caller_permissions()
        RETURNS TABLE (workspace_id integer, action text)
        LANGUAGE sql STABLE {PIN}
        AS $$ SELECT m.workspace_id, p.action::text
              FROM {{schema}}.memberships m
              JOIN {{schema}}.role_permissions p ON p.role = m.role
              WHERE m.user_id = {{schema}}.taskmanager_user_id()
              -- A personal access token's scopes will narrow the role's actions here (its
              -- purpose 'token', its scopes in the sealed caller): nowhere else.
        $$
        """
    )
    op.drop_table("access_tokens")
