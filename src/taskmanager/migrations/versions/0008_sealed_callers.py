"""a caller role per deployment, and a caller that SQL in a request cannot forge

Before: every database of a cluster shared one request role, `taskmanager_request`, which
each migration granted to its own login; requests ran on the owner's own connection with
`SET LOCAL ROLE`; and the caller was an ordinary setting (`taskmanager.user_id`). So SQL
running in a request could `RESET ROLE` back to the owner (who bypasses the policies of
tasks, users, memberships and auth_sessions), set the caller to anyone, and the login of
another deployment in the cluster could switch to the shared role.

After:
- The caller role is this deployment's own: `<database>_caller` (see `caller_role_name`),
  NOLOGIN, owning nothing. The service connects as a login that owns nothing either (the
  authenticator, a member of the caller role) and every transaction starts by entering
  through `taskmanager_enter`, which switches to the caller role; `RESET ROLE` leads back
  to the authenticator, which can do nothing but enter again. The legacy shared role loses
  every grant of this database.
- The caller is sealed: `taskmanager_enter(user, session, purpose, valid_until, proof)`
  checks `proof`, an HMAC-SHA256 the service makes with a key derived from its signing
  key, and stores the caller with a seal (an HMAC over the caller, the backend and the
  transaction's start). `taskmanager_caller()`, which every policy goes through, checks the
  seal and raises 42501 if the setting was changed by anything else. The key lives in
  `caller_key`, readable by the owner only; `taskmanager db upgrade` installs it
  (taskmanager.postgres.deployment.install_caller_key), since migrations do not know the
  service's signing key.
- A password hash is returned only by `taskmanager_password_hash(email, valid_until,
  proof)`, with a proof of its own: the caller role cannot read one under any caller.
- Purposes narrow what an identity may do beyond a user's own rows: 'register' inserts
  the user it allocated, 'operator' (a command of the operator) takes over unclaimed
  workspaces, 'login'/'register'/'maintenance' keep the password-attempt counts,
  'refresh' finds the session of a refresh token, 'maintenance' deletes ended sessions.
- Every function a policy calls pins its search_path, so no search_path of the request's
  own can redirect one; the database's TEMPORARY and CONNECT privileges are taken from
  PUBLIC (by `taskmanager db upgrade`, which owns the database), so request SQL cannot shadow
  a table with a temporary one for the next user of its pooled connection, and no login of
  another deployment can connect here at all.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 13:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LEGACY_ROLE = "taskmanager_request"
ENTER = "taskmanager_enter(integer, uuid, text, bigint, text, text)"
# The SQLSTATE taskmanager_enter refuses a tampered connection with (taskmanager.database
# drops such a connection from the pool).
TAMPERED = "42T01"
PIN = "SET search_path = pg_catalog, pg_temp"

# Granted to the caller role (column lists where a table holds what it must not read).
GRANTS = (
    # tasks, categories and labels: INSERT of every column but the id (below), so no caller
    # takes the ids the sequence will hand to others next.
    "SELECT, UPDATE, DELETE ON {schema}.tasks, {schema}.categories, {schema}.labels",
    "SELECT, INSERT, UPDATE, DELETE ON {schema}.workspaces, {schema}.memberships, "
    "{schema}.idempotency_keys, {schema}.task_labels, {schema}.auth_sessions, "
    "{schema}.login_failures",
    "SELECT, INSERT, UPDATE ON {schema}.refresh_tokens",
    "SELECT, DELETE ON {schema}.unclaimed_workspaces",
    "SELECT (id, email, display_name, is_active, personal_workspace_id, created_at, "
    "password_changed_at), INSERT (id, email, display_name, password_hash), "
    "UPDATE (display_name, password_hash, password_changed_at, personal_workspace_id) "
    "ON {schema}.users",
    "USAGE ON SEQUENCE {schema}.tasks_id_seq, {schema}.categories_id_seq, "
    "{schema}.workspaces_id_seq, {schema}.labels_id_seq",
    "USAGE ON SCHEMA {schema}",
)
# Functions the caller role runs (policies call most of them); EXECUTE is taken from PUBLIC.
CALLER_FUNCTIONS = (
    "taskmanager_caller()",
    "taskmanager_user_id()",
    "taskmanager_purpose()",
    "taskmanager_attempt_keys()",
    "taskmanager_workspace_ids()",
    "taskmanager_owned_workspace_ids()",
    "taskmanager_may_own_first(integer)",
    "taskmanager_user_id_by_email(text)",
    "taskmanager_password_hash(text, bigint, text)",
    "taskmanager_refresh_token_session(text)",
    "taskmanager_account_at_cap(integer, integer, integer)",
    "taskmanager_matching_tasks(tsquery)",
    "taskmanager_matches_at_least(tsquery, integer)",
)

ME = "(SELECT taskmanager_user_id())"
PURPOSE = "(SELECT taskmanager_purpose())"
MINE = "= ANY ((SELECT taskmanager_workspace_ids())::integer[])"
OWNED = "= ANY ((SELECT taskmanager_owned_workspace_ids())::integer[])"
# Policies this migration replaces, and what replaces them.
POLICIES: dict[str, dict[str, str | None]] = {
    "users": {
        "users_read": f"FOR SELECT USING (id = {ME} OR id IN (SELECT user_id FROM memberships))",
        "users_change": f"FOR UPDATE USING (id = {ME}) WITH CHECK (id = {ME})",
        # A registration inserts the account whose id taskmanager_enter allocated for it.
        "users_register": f"FOR INSERT WITH CHECK (id = {ME} AND {PURPOSE} = 'register')",
    },
    "auth_sessions": {
        "auth_sessions_mine": f"FOR SELECT USING (user_id = {ME})",
        "auth_sessions_revoke": f"FOR UPDATE USING (user_id = {ME}) WITH CHECK (user_id = {ME})",
        # A login session is opened by a login only (never by a request or a refresh).
        "auth_sessions_open": f"FOR INSERT WITH CHECK (user_id = {ME} AND {PURPOSE} = 'login')",
        # Maintenance deletes ended sessions: it sees those, and only those.
        "auth_sessions_ended": f"FOR SELECT USING ({PURPOSE} = 'maintenance' "
        "AND (revoked_at IS NOT NULL OR expires_at < now()))",
        "auth_sessions_purge": f"FOR DELETE USING ({PURPOSE} = 'maintenance')",
    },
    "idempotency_keys": {
        "idempotency_keys_mine": f"USING (user_id = {ME}) WITH CHECK (user_id = {ME})",
        # A DELETE's WHERE reads the rows, so the purge must see the expired ones.
        "idempotency_keys_expired_visible": f"FOR SELECT USING ({PURPOSE} = 'maintenance' "
        "AND expires_at <= now())",
    },
    "memberships": {
        "memberships_read": f"FOR SELECT USING (workspace_id {MINE})",
        # Owners add people; the creator of a workspace without members becomes its first
        # owner; an operator's command takes over the workspaces nobody owns.
        "memberships_create": f"FOR INSERT WITH CHECK (workspace_id {OWNED} "
        f"OR (user_id = {ME} AND role = 'owner' AND taskmanager_may_own_first(workspace_id)) "
        f"OR (user_id = {ME} AND role = 'owner' AND {PURPOSE} = 'operator' "
        "AND workspace_id IN (SELECT workspace_id FROM unclaimed_workspaces)))",
        "memberships_delete": f"FOR DELETE USING (workspace_id {OWNED} OR user_id = {ME})",
    },
    "workspaces": {
        # The id the creator's own session just drew from the sequence (the repository
        # inserts it explicitly): no caller takes the ids others will be handed next.
        "workspaces_create": f"FOR INSERT WITH CHECK (created_by = {ME} "
        "AND id = currval('workspaces_id_seq'::regclass))",
    },
    "refresh_tokens": {
        "refresh_tokens_mine": "FOR SELECT USING (session_id IN (SELECT id FROM auth_sessions))",
        "refresh_tokens_spend": "FOR UPDATE USING (session_id IN (SELECT id FROM auth_sessions)) "
        "WITH CHECK (session_id IN (SELECT id FROM auth_sessions))",
        # A refresh token is issued by a login or a refresh only.
        "refresh_tokens_issue": "FOR INSERT WITH CHECK (session_id IN "
        f"(SELECT id FROM auth_sessions) AND {PURPOSE} IN ('login', 'refresh'))",
    },
    "unclaimed_workspaces": {
        "unclaimed_workspaces_any": None,
        "unclaimed_workspaces_operator": f"USING ({PURPOSE} = 'operator')",
    },
    "login_failures": {
        # A login or a registration counts attempts at what it was entered for (the client's
        # network and the username), and sees no other count; maintenance purges them all.
        "login_failures_counted": f"USING ({PURPOSE} = 'maintenance' OR "
        "key = ANY ((SELECT taskmanager_attempt_keys())::text[]))",
    },
}
# What 0003 had (for the downgrade).
OLD_ME = "= taskmanager_user_id()"
OLD_POLICIES: dict[str, dict[str, str]] = {
    "users": {
        "users_read": f"FOR SELECT USING (id {OLD_ME} OR id IN (SELECT user_id FROM memberships))",
        "users_change": f"FOR UPDATE USING (id {OLD_ME}) WITH CHECK (id {OLD_ME})",
    },
    "auth_sessions": {
        "auth_sessions_mine": f"USING (user_id {OLD_ME}) WITH CHECK (user_id {OLD_ME})",
    },
    "refresh_tokens": {
        "refresh_tokens_mine": "USING (session_id IN (SELECT id FROM auth_sessions))",
    },
    "idempotency_keys": {
        "idempotency_keys_mine": f"USING (user_id {OLD_ME}) WITH CHECK (user_id {OLD_ME})",
    },
    "memberships": {
        "memberships_read": f"FOR SELECT USING (workspace_id {MINE})",
        "memberships_create": f"FOR INSERT WITH CHECK (workspace_id {OWNED} "
        f"OR (user_id {OLD_ME} AND role = 'owner' "
        "AND NOT taskmanager_workspace_has_members(workspace_id)))",
        "memberships_delete": f"FOR DELETE USING (workspace_id {OWNED} OR user_id {OLD_ME})",
    },
    "workspaces": {"workspaces_create": f"FOR INSERT WITH CHECK (created_by {OLD_ME})"},
    "unclaimed_workspaces": {"unclaimed_workspaces_any": "USING (true)"},
}


# The seal of a caller (a text of that name, in a function that checks or makes one): an
# HMAC over the caller, this backend and this transaction's start (in microseconds), so a
# sealed setting copied anywhere else does not verify.
SEAL = (
    "format('seal|%s|%s|%s', caller, pg_backend_pid(), "
    "(extract(epoch FROM transaction_timestamp()) * 1000000)::bigint)"
)


# The keys of login_failures a login or registration may count under: those of the subject
# it was entered with, "<network>\n<username>" (login_limit_repository's keys, the account
# as PostgreSQL lowers it); none without a subject or outside those purposes.
ATTEMPT_KEYS = """(SELECT CASE WHEN parts[3] IN ('login', 'register') AND parts[4] <> '' THEN
        ARRAY['address:' || s.network,
              'account-address:' || s.network || ' ' || s.account,
              'account:' || s.account,
              'account-day:' || s.account,
              'known-address:' || s.network || ' ' || s.account,
              'registration-address:' || s.network,
              'registrations:all']
        ELSE '{}'::text[] END
    FROM (SELECT split_part(t.subject, E'\n', 1) AS network,
                 left(lower(substr(t.subject, strpos(t.subject, E'\n') + 1)), 320) AS account
          -- convert_from's text has no collation, under which lower() would leave 'İ' as
          -- it is: the database's own, as the repository's keys are lowered with.
          FROM (SELECT convert_from(decode(parts[4], 'hex'), 'UTF8') COLLATE "default"
                AS subject) t) s)"""


def _refuse_a_tampered_session(function: str) -> str:
    """PL/pgSQL for the start of `function` (the body's indentation): a session on which
    SQL prepared a statement serves no caller."""
    return f"""-- A pooled connection carries named prepared statements from one transaction to
            -- the next. SQL in a request may PREPARE (or replace with PREPARE) one that a
            -- later user's request then runs: it would run in that user's transaction, as
            -- that user, and see their proof. The service prepares only through the
            -- protocol: a statement prepared with SQL means this session is not the
            -- service's own any more, and no caller enters it (the service then drops the
            -- connection: taskmanager.database).
            IF EXISTS (SELECT FROM pg_prepared_statements WHERE from_sql) THEN
                RAISE EXCEPTION '{function}: a statement was prepared with SQL on '
                    'this connection; it serves no caller any more' USING ERRCODE = '{TAMPERED}';
            END IF;"""


def hmac(message: str) -> str:
    """HMAC-SHA256 of the SQL text expression `message`, hex, with the key read into the
    PL/pgSQL record `key` (the installed caller_key's pads)."""
    return (
        f"encode(sha256(key.outer_pad || sha256(key.inner_pad || convert_to({message}, "
        "'UTF8'))), 'hex')"
    )


def _in_current_schema(statement: str) -> None:
    """Run `statement` with `{schema}` standing for the schema the migration runs in, as
    0003's helper of the same name does (`alembic upgrade head --sql` needs no server)."""
    template = statement.replace("%", "%%").replace("{schema}", "%1$I")
    assert "$statement$" not in template, statement
    op.execute(
        f"DO $do$ BEGIN EXECUTE format($statement${template}$statement$, current_schema()); "
        "END $do$"
    )


def _caller_role_function() -> None:
    """taskmanager_caller_role(): this deployment's caller role, named once, here, from the
    database (and the schema, if not public): renaming the database later keeps it.
    taskmanager.postgres.deployment.caller_role_name says the same in Python."""
    op.execute(
        """
        DO $do$ DECLARE
            base text := current_database()
                || CASE WHEN current_schema() = 'public' THEN '' ELSE '_' || current_schema() END;
        BEGIN
            IF octet_length(base) > 48 THEN
                base := 'taskmanager_' || left(md5(base), 16);
            END IF;
            EXECUTE format(
                'CREATE FUNCTION %I.taskmanager_caller_role() RETURNS name '
                'LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS %L',
                current_schema(), format('SELECT %L::name', base || '_caller'));
        END $do$
        """
    )


def _caller_role() -> None:
    """The caller role exists (made here if the owner may create roles), and has no power
    that would void the policies."""
    op.execute(
        """
        DO $do$ DECLARE
            caller name := taskmanager_caller_role();
            me record;
        BEGIN
            SELECT rolsuper, rolcreaterole INTO me FROM pg_roles WHERE rolname = current_user;
            IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = caller) THEN
                IF NOT (me.rolsuper OR me.rolcreaterole) THEN
                    RAISE EXCEPTION 'role "%" does not exist and "%" may not create roles: as a '
                        'superuser run CREATE ROLE "%" NOLOGIN; GRANT "%" TO <the service''s '
                        'login>; then migrate again', caller, current_user, caller, caller
                        USING ERRCODE = '42501';
                END IF;
                EXECUTE format('CREATE ROLE %I NOLOGIN NOINHERIT NOBYPASSRLS', caller);
            ELSIF EXISTS (SELECT FROM pg_roles WHERE rolname = caller
                          AND (rolsuper OR rolbypassrls OR rolcanlogin OR rolcreaterole)) THEN
                RAISE EXCEPTION 'role "%" exists with SUPERUSER, BYPASSRLS, LOGIN or CREATEROLE: '
                    'as a superuser run ALTER ROLE "%" NOSUPERUSER NOBYPASSRLS NOLOGIN '
                    'NOCREATEROLE; then migrate again', caller, caller
                    USING ERRCODE = '42501';
            END IF;
            IF pg_has_role(caller, current_user, 'MEMBER') THEN
                RAISE EXCEPTION 'role "%" is a member of "%", the owner of the tables: revoke '
                    'it (REVOKE "%" FROM "%") and migrate again',
                    caller, current_user, current_user, caller USING ERRCODE = '42501';
            END IF;
        END $do$
        """
    )


def _leave_legacy_role() -> None:
    """The role shared by the cluster keeps nothing of this database: no grant, and the
    owner's own membership (given by 0003) goes if the owner may revoke it."""
    op.execute(
        f"""
        DO $do$ BEGIN
            IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{LEGACY_ROLE}') THEN
                EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA %I FROM {LEGACY_ROLE}',
                               current_schema());
                EXECUTE format('REVOKE ALL ON ALL SEQUENCES IN SCHEMA %I FROM {LEGACY_ROLE}',
                               current_schema());
                EXECUTE format('REVOKE ALL ON ALL FUNCTIONS IN SCHEMA %I FROM {LEGACY_ROLE}',
                               current_schema());
                EXECUTE format('REVOKE ALL ON SCHEMA %I FROM {LEGACY_ROLE}', current_schema());
                IF pg_has_role(current_user, '{LEGACY_ROLE}', 'MEMBER')
                   AND NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
                    BEGIN
                        EXECUTE format('REVOKE {LEGACY_ROLE} FROM %I', current_user);
                    EXCEPTION WHEN insufficient_privilege OR invalid_grant_operation THEN
                        RAISE NOTICE 'the legacy role {LEGACY_ROLE} keeps "%" as a member '
                            '(a superuser may REVOKE it, or DROP ROLE it once no database '
                            'of the cluster uses it)', current_user;
                    END;
                END IF;
            END IF;
        END $do$
        """
    )


def _key_and_seal() -> None:
    op.execute(
        """
        CREATE TABLE caller_key (
            singleton boolean DEFAULT true NOT NULL,
            inner_pad bytea NOT NULL,
            outer_pad bytea NOT NULL,
            installed_at timestamp with time zone DEFAULT now() NOT NULL,
            CONSTRAINT pk_caller_key PRIMARY KEY (singleton),
            CONSTRAINT ck_caller_key_singleton CHECK (singleton),
            CONSTRAINT ck_caller_key_pads CHECK
                (octet_length(inner_pad) = 64 AND octet_length(outer_pad) = 64)
        )
        """
    )
    op.execute("REVOKE ALL ON caller_key FROM PUBLIC")
    # HMAC-SHA256 (RFC 2104) with the installed key, whose pads are kept precomputed:
    # PostgreSQL has sha256() but no XOR of byte strings. No key installed: NULL, and
    # every check against it fails. Written out in each function that checks (HMAC below):
    # every policy runs one, and a call of a helper function costs as much as the hash.
    _in_current_schema(
        f"""
        CREATE FUNCTION {{schema}}.taskmanager_enter(
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
            {_refuse_a_tampered_session("taskmanager_enter")}
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
                ELSIF purpose = 'refresh' AND entered_user IS NOT NULL THEN
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
            -- The subject (what a login or a registration counts attempts at) in hex: it is
            -- the client's text, and may hold '|'.
            caller := format('%s|%s|%s|%s', entered_user, entered_session, purpose,
                             encode(convert_to(subject, 'UTF8'), 'hex'));
            PERFORM set_config('taskmanager.caller', caller || '|' || {hmac(SEAL)}, true);
            RETURN QUERY
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
    # The caller every policy sees: (user id, session id, purpose) as text, '' for none;
    # NULL when no caller was entered; 42501 when the setting is not what
    # taskmanager_enter sealed in this transaction. taskmanager_user_id() and
    # taskmanager_purpose() check the seal themselves (one call each: the policies' cost).
    for name, returns, result in (
        ("taskmanager_caller", "text[]", "parts[1:3]"),
        ("taskmanager_user_id", "integer", "NULLIF(parts[1], '')::integer"),
        ("taskmanager_purpose", "text", "parts[3]"),
        ("taskmanager_attempt_keys", "text[]", ATTEMPT_KEYS),
    ):
        replace = "OR REPLACE " if name == "taskmanager_user_id" else ""
        _in_current_schema(
            f"""
            CREATE {replace}FUNCTION {{schema}}.{name}() RETURNS {returns}
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
                IF cardinality(parts) = 5
                   AND parts[5] = {hmac(SEAL.replace("caller", "array_to_string(parts[1:4], '|')"))}
                THEN
                    RETURN {result};
                END IF;
                RAISE EXCEPTION 'the caller of this transaction was not entered through '
                    'taskmanager_enter' USING ERRCODE = '42501';
            END $$
            """
        )


def _functions() -> None:
    """The SECURITY DEFINER functions besides the door itself."""
    # Whether the caller may become the first owner of `workspace`: they created it, and
    # it has no member yet (registration, POST /workspaces). Nothing about anyone else's.
    _in_current_schema(
        f"""
        CREATE FUNCTION {{schema}}.taskmanager_may_own_first(workspace integer) RETURNS boolean
        LANGUAGE sql STABLE SECURITY DEFINER {PIN}
        AS $$ SELECT EXISTS (SELECT FROM {{schema}}.workspaces w
                             WHERE w.id = workspace
                               AND w.created_by = {{schema}}.taskmanager_user_id())
                 AND NOT EXISTS (SELECT FROM {{schema}}.memberships m
                                 WHERE m.workspace_id = workspace) $$
        """
    )
    # Adding a member by email: only for a caller who is someone.
    _in_current_schema(
        f"""
        CREATE OR REPLACE FUNCTION {{schema}}.taskmanager_user_id_by_email(address text)
        RETURNS integer
        LANGUAGE sql STABLE SECURITY DEFINER {PIN}
        AS $$ SELECT u.id FROM {{schema}}.users u
              WHERE lower(u.email) = lower(address)
                AND {{schema}}.taskmanager_user_id() IS NOT NULL $$
        """
    )
    # The one way to a password hash: with a proof made by the service for this email,
    # for the moment (a login, or a password change naming the current password).
    _in_current_schema(
        f"""
        CREATE FUNCTION {{schema}}.taskmanager_password_hash(
            email text, valid_until bigint, proof text)
        RETURNS TABLE (user_id integer, password_hash text, is_active boolean)
        LANGUAGE plpgsql STABLE SECURITY DEFINER {PIN}
        AS $$
        #variable_conflict use_column
        DECLARE
            key record;
        BEGIN
            {_refuse_a_tampered_session("taskmanager_password_hash")}
            SELECT k.inner_pad, k.outer_pad INTO key FROM {{schema}}.caller_key k;
            IF proof IS NULL OR proof IS DISTINCT FROM {
            hmac("format('password-hash|%s|%s', email, valid_until)")
        }
               OR valid_until < extract(epoch FROM now())
               OR valid_until > extract(epoch FROM now()) + 900 THEN
                RAISE EXCEPTION 'taskmanager_password_hash: the proof is not valid'
                    USING ERRCODE = '42501';
            END IF;
            RETURN QUERY SELECT u.id, u.password_hash, u.is_active FROM {{schema}}.users u
                         WHERE lower(u.email) = lower(taskmanager_password_hash.email);
        END $$
        """
    )
    # A refresh: which login session a refresh token belongs to (its hash is the secret),
    # for a transaction entered to refresh.
    _in_current_schema(
        f"""
        CREATE FUNCTION {{schema}}.taskmanager_refresh_token_session(token text)
        RETURNS TABLE (user_id integer, session_id uuid)
        LANGUAGE sql STABLE SECURITY DEFINER {PIN}
        AS $$ SELECT s.user_id, s.id FROM {{schema}}.refresh_tokens t
              JOIN {{schema}}.auth_sessions s ON s.id = t.session_id
              WHERE t.token_hash = token
                AND {{schema}}.taskmanager_purpose() = 'refresh' $$
        """
    )


def _account_at_cap() -> None:
    # Adding a member to `workspace`: whether that account already belongs to `cap`
    # workspaces, its row locked until the transaction ends (additions of one account at
    # once queue there). Only for an owner of `workspace` adding someone not in it yet (the
    # only one who may add members); nothing else about an account the caller may not see.
    _in_current_schema(
        f"""
        CREATE FUNCTION {{schema}}.taskmanager_account_at_cap(
            account integer, workspace integer, cap integer)
        RETURNS boolean
        LANGUAGE plpgsql VOLATILE SECURITY DEFINER {PIN}
        AS $$
        BEGIN
            IF NOT workspace = ANY ({{schema}}.taskmanager_owned_workspace_ids())
               OR EXISTS (SELECT FROM {{schema}}.memberships m
                          WHERE m.workspace_id = workspace AND m.user_id = account) THEN
                RAISE EXCEPTION 'taskmanager_account_at_cap: only for an owner adding '
                    'someone new to their workspace' USING ERRCODE = '42501';
            END IF;
            PERFORM FROM {{schema}}.users u WHERE u.id = account FOR NO KEY UPDATE;
            RETURN (SELECT count(*) >= cap FROM {{schema}}.memberships m
                    WHERE m.user_id = account);
        END $$
        """
    )


def _policies(policies: dict[str, dict[str, str | None]] | dict[str, dict[str, str]]) -> None:
    for table, table_policies in policies.items():
        for name, definition in table_policies.items():
            op.execute(f"DROP POLICY IF EXISTS {name} ON {table}")
            if definition is not None:
                op.execute(f"CREATE POLICY {name} ON {table} {definition}")


def upgrade() -> None:
    _caller_role_function()
    _caller_role()
    _leave_legacy_role()
    _key_and_seal()
    _functions()
    _account_at_cap()
    op.execute("ALTER TABLE login_failures ENABLE ROW LEVEL SECURITY")
    # taskmanager_may_own_first reads a workspace its caller cannot see yet (no membership
    # before the first one), as the owner: FORCE would hide it from the owner too. It
    # guards nothing any more: the owner never serves a request (the service refuses to
    # start as a login that owns tables), as tasks (0006) already showed.
    op.execute("ALTER TABLE workspaces NO FORCE ROW LEVEL SECURITY")
    _policies(POLICIES)
    op.execute("DROP FUNCTION taskmanager_own_password_hash()")
    op.execute("DROP FUNCTION taskmanager_workspace_has_members(integer)")
    # EXECUTE on these is the caller role's alone (granted below): PUBLIC has it on every
    # new function, and had it on those of 0003 and 0006.
    for function in CALLER_FUNCTIONS:
        op.execute(f"REVOKE ALL ON FUNCTION {function} FROM PUBLIC")
    op.execute(f"REVOKE ALL ON FUNCTION {ENTER} FROM PUBLIC")
    for privileges in GRANTS:
        _grant_to_caller(privileges)
    _grant_inserts_without_id("tasks", "categories", "labels")
    for function in CALLER_FUNCTIONS:
        _grant_to_caller(f"EXECUTE ON FUNCTION {{schema}}.{function}")
    # The door: every connection that may connect here may knock (CONNECT is the service's
    # login's only, once `taskmanager db upgrade` has run); a proof opens it.
    op.execute(f"GRANT EXECUTE ON FUNCTION {ENTER} TO PUBLIC")
    # The service checks at start-up that the database is at the revision it needs.
    op.execute("GRANT SELECT ON alembic_version TO PUBLIC")


def _grant_inserts_without_id(*tables: str) -> None:
    """INSERT on each of `tables`' columns but the id and the generated ones, for the caller
    role. (A column a later migration adds needs its own grant, or inserts naming it fail.)"""
    for table in tables:
        op.execute(
            f"""
            DO $do$ BEGIN
                EXECUTE format('GRANT INSERT (%s) ON %I.%I TO %I',
                    (SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum)
                     FROM pg_attribute
                     WHERE attrelid = format('%I.%I', current_schema(), '{table}')::regclass
                       AND attnum > 0 AND NOT attisdropped AND attname <> 'id'
                       AND attgenerated = ''),
                    current_schema(), '{table}', taskmanager_caller_role());
            END $do$
            """
        )


def _grant_to_caller(privileges: str) -> None:
    template = privileges.replace("{schema}", "%1$I")
    op.execute(
        "DO $do$ BEGIN EXECUTE format("
        f"$grant$GRANT {template} TO %2$I$grant$, current_schema(), taskmanager_caller_role()); "
        "END $do$"
    )


def downgrade() -> None:
    _in_current_schema(
        """
        CREATE FUNCTION {schema}.taskmanager_workspace_has_members(workspace integer)
        RETURNS boolean
        LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
        AS $$ SELECT EXISTS (SELECT FROM {schema}.memberships WHERE workspace_id = workspace) $$
        """
    )
    _in_current_schema(
        """
        CREATE FUNCTION {schema}.taskmanager_own_password_hash() RETURNS text
        LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
        AS $$ SELECT password_hash FROM {schema}.users
              WHERE id = {schema}.taskmanager_user_id() $$
        """
    )
    _in_current_schema(
        """
        CREATE OR REPLACE FUNCTION {schema}.taskmanager_user_id_by_email(address text)
        RETURNS integer
        LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
        AS $$ SELECT id FROM {schema}.users WHERE lower(email) = lower(address) $$
        """
    )
    op.execute("ALTER TABLE workspaces FORCE ROW LEVEL SECURITY")
    op.execute("DROP POLICY login_failures_counted ON login_failures")
    op.execute("ALTER TABLE login_failures DISABLE ROW LEVEL SECURITY")
    for table, table_policies in POLICIES.items():
        for name in table_policies:
            op.execute(f"DROP POLICY IF EXISTS {name} ON {table}")
    _policies(OLD_POLICIES)
    # Before taskmanager_caller goes: 0003's body, an ordinary setting again.
    op.execute(
        """
        CREATE OR REPLACE FUNCTION taskmanager_user_id() RETURNS integer
        LANGUAGE sql STABLE PARALLEL SAFE
        AS $$ SELECT NULLIF(current_setting('taskmanager.user_id', true), '')::integer $$
        """
    )
    op.execute("ALTER FUNCTION taskmanager_user_id() RESET ALL")
    op.execute("GRANT EXECUTE ON FUNCTION taskmanager_user_id() TO PUBLIC")
    for function in (
        "taskmanager_account_at_cap(integer, integer, integer)",
        "taskmanager_refresh_token_session(text)",
        "taskmanager_password_hash(text, bigint, text)",
        "taskmanager_may_own_first(integer)",
        "taskmanager_attempt_keys()",
        "taskmanager_purpose()",
        "taskmanager_caller()",
        ENTER,
    ):
        op.execute(f"DROP FUNCTION {function}")
    op.execute("DROP TABLE caller_key")
    op.execute("REVOKE SELECT ON alembic_version FROM PUBLIC")
    # The caller role is the cluster's: it stays, without anything of this database.
    op.execute(
        """
        DO $do$ DECLARE caller name := taskmanager_caller_role(); BEGIN
            IF EXISTS (SELECT FROM pg_roles WHERE rolname = caller) THEN
                EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA %I FROM %I',
                               current_schema(), caller);
                EXECUTE format('REVOKE ALL ON ALL SEQUENCES IN SCHEMA %I FROM %I',
                               current_schema(), caller);
                EXECUTE format('REVOKE ALL ON ALL FUNCTIONS IN SCHEMA %I FROM %I',
                               current_schema(), caller);
                EXECUTE format('REVOKE ALL ON SCHEMA %I FROM %I', current_schema(), caller);
                EXECUTE format('REVOKE ALL ON DATABASE %I FROM %I', current_database(), caller);
            END IF;
        END $do$
        """
    )
    op.execute("DROP FUNCTION taskmanager_caller_role()")
    # 0003's and 0005's grants to the legacy role, where it exists (revision 0007's code
    # runs requests as it); a fresh cluster never had it, and this does not make it.
    _for_legacy_role(f"GRANT USAGE ON SCHEMA {{schema}} TO {LEGACY_ROLE}")
    _for_legacy_role(
        "GRANT SELECT, INSERT, UPDATE, DELETE ON {schema}.tasks, {schema}.categories, "
        "{schema}.workspaces, {schema}.memberships, {schema}.idempotency_keys, "
        f"{{schema}}.labels, {{schema}}.task_labels TO {LEGACY_ROLE}"
    )
    _for_legacy_role(
        "GRANT SELECT (id, email, display_name, is_active, personal_workspace_id, created_at, "
        "password_changed_at), UPDATE (display_name, password_hash, password_changed_at, "
        f"personal_workspace_id) ON {{schema}}.users TO {LEGACY_ROLE}"
    )
    _for_legacy_role(
        f"GRANT SELECT, UPDATE ON {{schema}}.auth_sessions, {{schema}}.refresh_tokens "
        f"TO {LEGACY_ROLE}"
    )
    _for_legacy_role(f"GRANT SELECT, DELETE ON {{schema}}.unclaimed_workspaces TO {LEGACY_ROLE}")
    _for_legacy_role(
        "GRANT USAGE ON SEQUENCE {schema}.tasks_id_seq, {schema}.categories_id_seq, "
        f"{{schema}}.workspaces_id_seq, {{schema}}.labels_id_seq TO {LEGACY_ROLE}"
    )
    for function in (
        "taskmanager_own_password_hash()",
        "taskmanager_workspace_ids()",
        "taskmanager_owned_workspace_ids()",
        "taskmanager_workspace_has_members(integer)",
        "taskmanager_user_id_by_email(text)",
        "taskmanager_matching_tasks(tsquery)",
        "taskmanager_matches_at_least(tsquery, integer)",
    ):
        op.execute(f"REVOKE ALL ON FUNCTION {function} FROM PUBLIC")
        _for_legacy_role(f"GRANT EXECUTE ON FUNCTION {{schema}}.{function} TO {LEGACY_ROLE}")
    # Revision 0007's code runs requests as the legacy role, on the owner's connection: the
    # owner's membership, which the upgrade took where the owner could, is given back where
    # the owner may (else a superuser must).
    op.execute(
        f"""
        DO $do$ BEGIN
            IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{LEGACY_ROLE}')
               AND NOT pg_has_role(current_user, '{LEGACY_ROLE}', 'MEMBER')
               AND NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
                BEGIN
                    EXECUTE format('GRANT {LEGACY_ROLE} TO %I', current_user);
                EXCEPTION WHEN insufficient_privilege OR invalid_grant_operation THEN
                    RAISE NOTICE '"%" is not a member of the legacy role {LEGACY_ROLE}, which '
                        'revision 0007 runs requests as (a superuser may GRANT it)', current_user;
                END;
            END IF;
        END $do$
        """
    )


def _for_legacy_role(statement: str) -> None:
    """Run `statement` (`{schema}`: the current schema) if the legacy shared role exists."""
    template = statement.replace("{schema}", "%1$I")
    op.execute(
        f"DO $do$ BEGIN IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{LEGACY_ROLE}') "
        f"THEN EXECUTE format($sql${template}$sql$, current_schema()); END IF; END $do$"
    )
