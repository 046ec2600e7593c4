"""How the migrations from 0010 on write their SQL: in the schema they migrate, granted to
this deployment's caller role, in functions with a pinned search_path.

One copy for the migrations that share them. What a migration once ran must not change
with this module: a change here is a new helper, never a new meaning of an old one (the
migrations before 0010 keep their own copies, as they were written)."""

from __future__ import annotations

from alembic import op

# Every SECURITY DEFINER function pins its search_path: no search_path of the request's
# own can redirect one.
PIN = "SET search_path = pg_catalog, pg_temp"
# The SQLSTATE a tampered connection is refused with (migration 0008; taskmanager.database
# drops such a connection from the pool).
TAMPERED = "42T01"


def in_current_schema(statement: str) -> None:
    """Run `statement` with `{schema}` standing for the schema the migration runs in, as
    PostgreSQL names it (current_schema()) when the statement runs: nothing is asked of the
    server here, so `alembic upgrade head --sql` prints the same SQL without one."""
    template = statement.replace("%", "%%").replace("{schema}", "%1$I")
    assert "$statement$" not in template, statement
    op.execute(
        f"DO $do$ BEGIN EXECUTE format($statement${template}$statement$, current_schema()); "
        "END $do$"
    )


def grant_to_caller(privileges: str) -> None:
    """GRANT `privileges` (`{schema}`: the current schema) to the deployment's caller role
    (migration 0008)."""
    template = privileges.replace("{schema}", "%1$I")
    op.execute(
        "DO $do$ BEGIN EXECUTE format("
        f"$grant$GRANT {template} TO %2$I$grant$, current_schema(), taskmanager_caller_role()); "
        "END $do$"
    )


def revoke_from_caller(privileges: str) -> None:
    """REVOKE `privileges` (`{schema}`: the current schema) from the caller role."""
    template = privileges.replace("{schema}", "%1$I")
    op.execute(
        "DO $do$ BEGIN EXECUTE format("
        f"$revoke$REVOKE {template} FROM %2$I$revoke$, current_schema(), "
        "taskmanager_caller_role()); END $do$"
    )


def hmac(message: str) -> str:
    """HMAC-SHA256 of the SQL text expression `message`, hex, with the key read into the
    PL/pgSQL record `key` (0008's helper of the same name)."""
    return (
        f"encode(sha256(key.outer_pad || sha256(key.inner_pad || convert_to({message}, "
        "'UTF8'))), 'hex')"
    )


def refuse_a_tampered_session(function: str) -> str:
    """As 0008's: a session on which SQL prepared a statement serves no caller (a token
    passed to these functions must not be caught by a statement someone else prepared).
    And only a caller entered through taskmanager_enter may call at all: a caller set by
    hand fails the seal's check (42501), and none is refused here."""
    return f"""IF EXISTS (SELECT FROM pg_prepared_statements WHERE from_sql) THEN
                RAISE EXCEPTION '{function}: a statement was prepared with SQL on '
                    'this connection; it serves no caller any more' USING ERRCODE = '{TAMPERED}';
            END IF;
            IF {{schema}}.taskmanager_purpose() IS NULL THEN
                RAISE EXCEPTION '{function}: only for a caller entered through '
                    'taskmanager_enter' USING ERRCODE = '42501';
            END IF;"""


def closed_to_calendar_feeds(table: str) -> None:
    """The restrictive policy 0015 gives every table under row-level security that a
    calendar feed's caller has no business with: `table` is closed to it altogether (a
    feed reads tasks, nothing else). Every later table under row-level security gets it."""
    op.execute(
        f"CREATE POLICY {table}_not_for_a_calendar ON {table} AS RESTRICTIVE TO PUBLIC "
        "USING ((SELECT taskmanager_purpose()) IS DISTINCT FROM 'calendar')"
    )
