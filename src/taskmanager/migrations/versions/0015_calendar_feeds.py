"""calendar feeds: a secret URL per feed that enters as its owner, reading tasks only

Before: a caller was a login session (purpose 'request'), a personal access token
('token', 0013) or one of the service's own purposes.

After:
- `calendar_feeds`: a user's secret iCalendar feed URLs (GET /calendar/{secret}.ics).
  Only the SHA-256 of a feed's secret is kept (`token_hash`, as 0013's access tokens:
  the secret holds 190 random bits), with a short prefix to recognise it by. A feed bound
  to a workspace references the user's membership there: a member removed (or leaving)
  loses the feed at once (its row is deleted with the membership). A feed without one
  shows every workspace its user belongs to at the moment it is read.
- `taskmanager_enter` (same signature and answer; 0013's body otherwise unchanged) takes a
  purpose 'calendar': the proof names no user and no session, and the feed's hash as the
  subject; the door finds the feed, refuses it (no row) when it is unknown or its account
  is disabled, and enters as its user with the feed's id as the session. It is answered
  as a token is: the workspaces it may read.
- `taskmanager_caller_permissions()`: a calendar caller may do tasks:read, and nothing
  else, in each workspace of its user (in its feed's workspace only, if it is bound to
  one). So every write policy that asks it (tasks, categories, labels, memberships,
  invitations...) refuses a calendar caller, and the read policies show it the feed's
  workspaces only, as its user's memberships stand when the feed is read.
- What no workspace action decides is closed by restrictive policies on every table
  under row-level security at this revision (`<table>_calendar_reads_only` on those a
  feed reads: tasks, categories, labels, task_labels, workspaces, calendar_feeds, which
  refuse its INSERT, UPDATE and DELETE; `<table>_not_for_a_calendar`, refusing all of it,
  on the others: users, login sessions, access tokens, idempotency keys...). A leaked
  feed URL then reads that feed's tasks and nothing else, and changes nothing, whatever
  SQL its transaction were made to run.
- `calendar_feeds`' own policies: only a login session (purpose 'request') lists, makes,
  regenerates (a new hash: the old URL stops at once) and deletes its user's feeds; a
  calendar caller sees its own feed's row only.
- `taskmanager_reset_password` (0013's, same signature) also deletes the account's
  calendar feeds: a reset recovers an account, and a feed URL leaked before it must not
  outlive it.

The downgrade drops the table (the feeds are lost) and restores 0013's functions.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-08 10:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from taskmanager.migrations.schema_statements import (
    PIN,
    TAMPERED,
    grant_to_caller,
    hmac,
    in_current_schema,
    refuse_a_tampered_session,
)

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ME = "(SELECT taskmanager_user_id())"
PURPOSE = "(SELECT taskmanager_purpose())"
A_LOGIN = f"user_id = {ME} AND {PURPOSE} = 'request'"
# The feed a calendar caller entered with (its id is the caller's session).
MY_FEED = f"{PURPOSE} = 'calendar' AND id = NULLIF((SELECT (taskmanager_caller())[2]), '')::uuid"
NOT_A_CALENDAR = f"{PURPOSE} IS DISTINCT FROM 'calendar'"

POLICIES: dict[str, str] = {
    "calendar_feeds_mine": f"FOR SELECT USING ({A_LOGIN})",
    "calendar_feeds_itself": f"FOR SELECT USING ({MY_FEED})",
    "calendar_feeds_make": f"FOR INSERT WITH CHECK ({A_LOGIN})",
    "calendar_feeds_regenerate": f"FOR UPDATE USING ({A_LOGIN}) WITH CHECK ({A_LOGIN})",
    "calendar_feeds_revoke": f"FOR DELETE USING ({A_LOGIN})",
}
# The tables a feed reads (under their own read policies); every other table under
# row-level security is closed to a calendar caller altogether.
FEED_READS = ("tasks", "categories", "labels", "task_labels", "workspaces", "calendar_feeds")
READS_ONLY = "_calendar_reads_only"
NOT_FOR_A_CALENDAR = "_not_for_a_calendar"
# Restrictive policies per command (a policy names one command, or all).
WRITES = {
    "INSERT": f"WITH CHECK ({NOT_A_CALENDAR})",
    "UPDATE": f"USING ({NOT_A_CALENDAR})",
    "DELETE": f"USING ({NOT_A_CALENDAR})",
}

# 0008's seal of a caller.
SEAL = (
    "format('seal|%s|%s|%s', caller, pg_backend_pid(), "
    "(extract(epoch FROM transaction_timestamp()) * 1000000)::bigint)"
)
# 0013's purpose 'token'.
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
# The purpose 'calendar': as a token, found among the feeds.
CALENDAR_BRANCH = """ELSIF purpose = 'calendar' THEN
                    -- A calendar feed: the proof names its hash (the subject), and the
                    -- feed names the user; its id is the caller's session.
                    IF entered_user IS NOT NULL OR entered_session IS NOT NULL
                       OR subject IS NULL THEN
                        RAISE EXCEPTION 'taskmanager_enter: a calendar feed names its hash '
                            'as the subject, and no user or session' USING ERRCODE = '22023';
                    END IF;
                    SELECT f.user_id, f.id INTO entered_user, entered_session
                    FROM {schema}.calendar_feeds f
                    JOIN {schema}.users u ON u.id = f.user_id
                    WHERE f.token_hash = subject AND u.is_active;
                    IF entered_user IS NULL THEN
                        RETURN;
                    END IF;
                """
# What a token's (and a feed's) caller is answered: the workspaces it may read, and those
# of them it may change (none, for a feed).
ANSWER = """IF purpose {answered} THEN
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


def _enter(with_calendars: bool) -> None:
    """taskmanager_enter as 0013 made it, with (or, for the downgrade, without) the
    purpose 'calendar'."""
    token_branch = TOKEN_BRANCH + (CALENDAR_BRANCH if with_calendars else "")
    answered = "IN ('token', 'calendar')" if with_calendars else "= 'token'"
    token_answer = ANSWER.replace("{answered}", answered)
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


def _reset_password(revoke_calendar_feeds: bool) -> None:
    """taskmanager_reset_password as 0013 made it, and (unless for the downgrade) deleting
    the account's calendar feeds too."""
    revoke = """
            DELETE FROM {schema}.access_tokens t WHERE t.user_id = spent.user_id;"""
    if revoke_calendar_feeds:
        revoke += """
            DELETE FROM {schema}.calendar_feeds f WHERE f.user_id = spent.user_id;"""
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


def _table() -> None:
    op.create_table(
        "calendar_feeds",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("workspace_id", sa.Integer(), nullable=True),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column(
            "regenerated_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_calendar_feeds_user_id_users"),
            ondelete="CASCADE",
        ),
        # Bound to a workspace: to the user's membership there (removal deletes the feed).
        sa.ForeignKeyConstraint(
            ["workspace_id", "user_id"],
            ["memberships.workspace_id", "memberships.user_id"],
            name=op.f("fk_calendar_feeds_workspace_id_memberships"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_calendar_feeds")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_calendar_feeds_token_hash")),
    )
    op.create_index("ix_calendar_feeds_user_id", "calendar_feeds", ["user_id"])
    op.execute("ALTER TABLE calendar_feeds ENABLE ROW LEVEL SECURITY")
    op.execute("REVOKE ALL ON calendar_feeds FROM PUBLIC")
    # The caller reads everything but the hash; a login writes a new hash to regenerate.
    grant_to_caller(
        "SELECT (id, user_id, workspace_id, prefix, created_at, regenerated_at), "
        "INSERT (id, user_id, workspace_id, token_hash, prefix), "
        "UPDATE (token_hash, prefix, regenerated_at), DELETE ON {schema}.calendar_feeds"
    )
    for name, definition in POLICIES.items():
        op.execute(f"CREATE POLICY {name} ON calendar_feeds {definition}")


def _caller_permissions(with_calendars: bool) -> None:
    """taskmanager_caller_permissions() as 0013 made it, and (unless for the downgrade) a
    calendar caller's: tasks:read in its user's workspaces, its feed's one if bound."""
    calendar = (
        """
                 OR (caller.parts[3] = 'calendar' AND p.action::text = 'tasks:read'
                     AND EXISTS (SELECT FROM {schema}.calendar_feeds f
                                 WHERE f.id = NULLIF(caller.parts[2], '')::uuid
                                   AND f.user_id = m.user_id
                                   AND (f.workspace_id IS NULL
                                        OR f.workspace_id = m.workspace_id)))"""
        if with_calendars
        else ""
    )
    not_a_token = (
        "caller.parts[3] IS DISTINCT FROM 'token' AND caller.parts[3] IS DISTINCT FROM 'calendar'"
        if with_calendars
        else "caller.parts[3] IS DISTINCT FROM 'token'"
    )
    # No SET search_path of its own, as 0013 says: only the pinned SECURITY DEFINER
    # functions run it, and it names every table with its schema.
    in_current_schema(
        f"""
        CREATE OR REPLACE FUNCTION {{schema}}.taskmanager_caller_permissions()
        RETURNS TABLE (workspace_id integer, action text)
        LANGUAGE sql STABLE
        AS $$ SELECT m.workspace_id, p.action::text
              FROM (SELECT {{schema}}.taskmanager_caller() AS parts) caller
              JOIN {{schema}}.memberships m
                ON m.user_id = NULLIF(caller.parts[1], '')::integer
              JOIN {{schema}}.role_permissions p ON p.role = m.role
              WHERE {not_a_token}
                 OR (caller.parts[3] = 'token'
                     AND EXISTS (SELECT FROM {{schema}}.access_tokens t
                                 WHERE t.id = NULLIF(caller.parts[2], '')::uuid
                                   AND t.user_id = m.user_id
                                   AND p.action::text = ANY (t.scopes)
                                   AND (t.workspace_id IS NULL
                                        OR t.workspace_id = m.workspace_id))){calendar}
        $$
        """
    )


# Every table under row-level security in this schema gets its restrictive policy, read
# from the catalogue when the migration runs (so `--sql` prints it without a server).
_EACH_TABLE = """
DO $do$
DECLARE
    t record;
BEGIN
    FOR t IN SELECT c.relname FROM pg_class c
             WHERE c.relnamespace = current_schema()::regnamespace
               AND c.relkind IN ('r', 'p') AND c.relrowsecurity
             ORDER BY c.relname LOOP
        {body}
    END LOOP;
END $do$
"""


def _closed_to_calendars() -> None:
    reads = ", ".join(f"'{table}'" for table in FEED_READS)
    statements = [
        f"EXECUTE format('CREATE POLICY %I ON %I AS RESTRICTIVE FOR {command} TO PUBLIC "
        f"{check.replace(chr(39), chr(39) * 2)}', t.relname || '{READS_ONLY}_' || "
        f"lower('{command}'), t.relname);"
        for command, check in WRITES.items()
    ]
    refuse_all = (
        "EXECUTE format('CREATE POLICY %I ON %I AS RESTRICTIVE TO PUBLIC "
        f"USING ({NOT_A_CALENDAR.replace(chr(39), chr(39) * 2)})', "
        f"t.relname || '{NOT_FOR_A_CALENDAR}', t.relname);"
    )
    body = (
        f"IF t.relname IN ({reads}) THEN\n            "
        + "\n            ".join(statements)
        + f"\n        ELSE\n            {refuse_all}\n        END IF;"
    )
    op.execute(_EACH_TABLE.replace("{body}", body))


def _open_to_calendars() -> None:
    op.execute(
        f"""
DO $do$
DECLARE
    p record;
BEGIN
    FOR p IN SELECT policyname, tablename FROM pg_policies
             WHERE schemaname = current_schema()
               AND policyname ~ '({READS_ONLY}_(insert|update|delete)|{NOT_FOR_A_CALENDAR})$'
    LOOP
        EXECUTE format('DROP POLICY %I ON %I', p.policyname, p.tablename);
    END LOOP;
END $do$
"""
    )


def upgrade() -> None:
    _table()
    _caller_permissions(with_calendars=True)
    _enter(with_calendars=True)
    _reset_password(revoke_calendar_feeds=True)
    _closed_to_calendars()


def downgrade() -> None:
    _open_to_calendars()
    _reset_password(revoke_calendar_feeds=False)
    _enter(with_calendars=False)
    _caller_permissions(with_calendars=False)
    op.drop_table("calendar_feeds")
