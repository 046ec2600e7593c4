"""an append-only activity log of every change in a workspace

`activity` holds one row per change of a workspace's tasks, categories, labels, task labels,
members and the workspace itself: who (the caller's user id, `taskmanager_user_id()`, so
sealed by 0008), when, what (a kind such as `task.updated`, the object's type and id), the
fields before and after (an update: only those that changed, without bookkeeping such as
version, updated_at or the search columns; a create: the new values; a delete: the old
ones) and the request id the service passed into the transaction.

The rows are written by one generic trigger function, `taskmanager_log_activity`, AFTER
INSERT, UPDATE and DELETE FOR EACH ROW on each logged table (LOGGED below): no code path
can forget it, it is the same transaction by construction, and a rolled-back change
writes nothing. It is SECURITY DEFINER (the owner inserts): a workspace is inserted before
its first membership, and a member who leaves or a workspace deleted is no longer the
caller's by the time the row is written, so a policy on the caller's workspaces could not
admit those rows; and the caller role then needs no INSERT at all, so SQL in a request
cannot write an activity row of its own invention (nor UPDATE or DELETE one: it has
SELECT, under a policy showing the rows of its workspaces, and nothing else).

What the log keeps when a change takes others along: what a deleted workspace takes with it
(its tasks, categories, labels, members) and what a deleted task takes with it (its labels)
is not logged row by row: `workspace.deleted` and `task.deleted` are. (A cascade's changes
reach the trigger like any others, at the same trigger depth, after the statement: the
trigger tells them by the parent being gone.) Deleting a label or a category changes the
tasks that had it, and each task's history shows that (`task.label_removed`, `task.updated`
with category_id cleared). `activity` has no foreign key, so a deleted workspace's rows,
`workspace.deleted` last, stay until the retention purge (`taskmanager db purge-activity`,
the only delete: `taskmanager_purge_activity`, for a transaction entered for maintenance);
nobody belongs to that workspace any more, so only the operator reads them.

A transaction entered for the operator with the subject 'unlogged' (0008's sealed
subject: `taskmanager db seed`'s demo data) writes no activity: its rows were made up, not
changed by anyone, and a seed of 100,000 tasks would log 175,000 rows.

The request id is a transaction-local setting (`taskmanager.request_id`) the service's
entry statement writes; SQL in a request can change it (metadata only: it names no one
and grants nothing, unlike the caller).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 17:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from taskmanager.migrations.schema_statements import PIN, grant_to_caller, in_current_schema

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LOG_ACTIVITY = "taskmanager_log_activity()"
PURGE_ACTIVITY = "taskmanager_purge_activity(integer)"
TRIGGER = "taskmanager_activity"
MINE = "= ANY ((SELECT taskmanager_workspace_ids())::integer[])"
# The subject (0008: sealed with the caller) of an operator's transaction that logs
# nothing, as taskmanager_enter keeps it: hex of its UTF-8.
UNLOGGED_SUBJECT = "unlogged"

# The tables whose every change is logged, with taskmanager_log_activity's arguments: the
# object's type, the column holding its id, the column holding its workspace, then options:
#   insert=<verb>, delete=<verb>   the kind of a create or a delete (created, deleted)
#   update.<column>=<verb>         the kind of an update changing only <column> (updated)
#   omit=<column>                  a column never logged (a secret: a token's hash)
#   of=<table>                     the object is a row of <table> (by id), not of this
#                                  table: this row's delete is not logged once that row is
#                                  gone (it went with it: a task's labels)
# Logging another table is one line here, or, in a later migration, the one statement
# `log_changes_of` makes, e.g. CREATE TRIGGER taskmanager_activity AFTER INSERT OR UPDATE
# OR DELETE ON invitations FOR EACH ROW EXECUTE FUNCTION
# taskmanager_log_activity('invitation', 'id', 'workspace_id', 'omit=token_hash').
LOGGED: dict[str, tuple[str, ...]] = {
    "workspaces": ("workspace", "id", "id", "update.name=renamed"),
    "memberships": (
        "member",
        "user_id",
        "workspace_id",
        "insert=added",
        "delete=removed",
        "update.role=role_changed",
    ),
    "tasks": ("task", "id", "workspace_id"),
    "categories": ("category", "id", "workspace_id", "update.name=renamed"),
    "labels": ("label", "id", "workspace_id"),
    # A label put on or taken off a task is a change of the task (its history shows it).
    "task_labels": (
        "task",
        "task_id",
        "workspace_id",
        "of=tasks",
        "insert=label_added",
        "delete=label_removed",
    ),
}
# Never logged, of any table: bookkeeping (a version, when a row was made or changed, what
# PostgreSQL computes from other columns: the search columns, due_key, priority_rank).
BOOKKEEPING = (
    "version",
    "created_at",
    "updated_at",
    "search_vector",
    "workspace_words",
    "due_key",
    "priority_rank",
)


def log_changes_of(table: str, *arguments: str) -> None:
    """Log every change of `table` (taskmanager_log_activity's `arguments`: see LOGGED)."""
    quoted = ", ".join("'" + argument.replace("'", "''") + "'" for argument in arguments)
    op.execute(
        f"CREATE TRIGGER {TRIGGER} AFTER INSERT OR UPDATE OR DELETE ON {table} "
        f"FOR EACH ROW EXECUTE FUNCTION taskmanager_log_activity({quoted})"
    )


def _table() -> None:
    op.create_table(
        "activity",
        sa.Column("id", sa.BigInteger(), nullable=False),
        # No foreign keys: the log outlives the workspace, the object and the account.
        sa.Column("workspace_id", sa.Integer(), nullable=False),
        sa.Column("actor_id", sa.Integer(), nullable=True),
        sa.Column("kind", sa.String(length=60), nullable=False),
        sa.Column("object_type", sa.String(length=30), nullable=False),
        sa.Column("object_id", sa.String(length=100), nullable=False),
        sa.Column("before", postgresql.JSONB(), nullable=True),
        sa.Column("after", postgresql.JSONB(), nullable=True),
        sa.Column("request_id", sa.String(length=128), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name="pk_activity"),
    )
    # A workspace's activity newest first, and filtered by actor or kind; an object's
    # history (GET /tasks/{id}/activity, ?task_id=); the purge (BRIN: the table is
    # appended to in created_at order, and a BRIN index costs almost nothing to keep).
    op.create_index("ix_activity_workspace_id_id", "activity", ["workspace_id", "id"])
    op.create_index(
        "ix_activity_workspace_id_actor_id_id", "activity", ["workspace_id", "actor_id", "id"]
    )
    op.create_index("ix_activity_workspace_id_kind_id", "activity", ["workspace_id", "kind", "id"])
    op.create_index(
        "ix_activity_object_type_object_id_id", "activity", ["object_type", "object_id", "id"]
    )
    op.create_index("ix_activity_created_at", "activity", ["created_at"], postgresql_using="brin")


def _log_function() -> None:
    bookkeeping = ", ".join(f"'{column}'" for column in BOOKKEEPING)
    unlogged = UNLOGGED_SUBJECT.encode().hex()
    in_current_schema(
        f"""
        CREATE FUNCTION {{schema}}.taskmanager_log_activity() RETURNS trigger
        LANGUAGE plpgsql SECURITY DEFINER {PIN}
        AS $$
        DECLARE
            object_type text := TG_ARGV[0];
            id_column text := TG_ARGV[1];
            workspace_column text := TG_ARGV[2];
            verb text := CASE TG_OP WHEN 'INSERT' THEN 'created' WHEN 'UPDATE' THEN 'updated'
                                    ELSE 'deleted' END;
            left_out text[] := ARRAY[{bookkeeping}, id_column, workspace_column];
            old_row jsonb;
            new_row jsonb;
            row_values jsonb;
            before_values jsonb;
            after_values jsonb;
            option text;
            gone boolean;
            caller text[];
        BEGIN
            -- The operator's demo data (0008's caller: user|session|purpose|subject|seal,
            -- the seal checked by taskmanager_purpose()).
            caller := string_to_array(current_setting('taskmanager.caller', true), '|');
            IF caller[3] = 'operator' AND caller[4] = '{unlogged}'
               AND {{schema}}.taskmanager_purpose() = 'operator' THEN
                RETURN NULL;
            END IF;
            IF TG_OP <> 'INSERT' THEN
                old_row := to_jsonb(OLD);
            END IF;
            IF TG_OP <> 'DELETE' THEN
                new_row := to_jsonb(NEW);
            END IF;
            row_values := coalesce(new_row, old_row);
            -- What a deleted workspace took along (its tasks, members, ...) is not logged
            -- row by row: `workspace.deleted` is. (A cascade's changes come to this trigger
            -- like any others, after the statement, at the same trigger depth.)
            IF TG_OP <> 'INSERT' AND TG_TABLE_NAME <> 'workspaces' AND NOT EXISTS (
                    SELECT FROM {{schema}}.workspaces w
                    WHERE w.id = (row_values ->> workspace_column)::integer) THEN
                RETURN NULL;
            END IF;
            FOR i IN 3 .. TG_NARGS - 1 LOOP
                option := TG_ARGV[i];
                IF option LIKE 'omit=%' THEN
                    left_out := left_out || substr(option, 6);
                ELSIF option LIKE 'of=%' AND TG_OP = 'DELETE' THEN
                    -- Nor what a deleted object took along (a task's labels).
                    EXECUTE format('SELECT NOT EXISTS (SELECT FROM %I.%I WHERE id = $1::integer)',
                                   TG_TABLE_SCHEMA, substr(option, 4))
                        INTO gone USING row_values ->> id_column;
                    IF gone THEN
                        RETURN NULL;
                    END IF;
                END IF;
            END LOOP;
            IF TG_OP = 'UPDATE' THEN
                SELECT jsonb_object_agg(o.key, o.value), jsonb_object_agg(n.key, n.value)
                INTO before_values, after_values
                FROM jsonb_each(old_row) o JOIN jsonb_each(new_row) n ON n.key = o.key
                WHERE n.value IS DISTINCT FROM o.value AND NOT o.key = ANY (left_out);
                IF before_values IS NULL THEN
                    RETURN NULL;  -- only bookkeeping changed
                END IF;
            ELSIF TG_OP = 'INSERT' THEN
                after_values := new_row - left_out;
            ELSE
                before_values := old_row - left_out;
            END IF;
            FOR i IN 3 .. TG_NARGS - 1 LOOP
                option := TG_ARGV[i];
                IF option LIKE (lower(TG_OP) || '=%') THEN
                    verb := split_part(option, '=', 2);
                ELSIF TG_OP = 'UPDATE' AND option LIKE 'update.%=%' AND
                      (SELECT array_agg(k) FROM jsonb_object_keys(after_values) k)
                      = ARRAY[split_part(substr(option, 8), '=', 1)] THEN
                    verb := split_part(option, '=', 2);
                END IF;
            END LOOP;
            INSERT INTO {{schema}}.activity (workspace_id, actor_id, kind, object_type, object_id,
                                           before, after, request_id)
            VALUES ((row_values ->> workspace_column)::integer,
                    {{schema}}.taskmanager_user_id(),
                    object_type || '.' || verb,
                    object_type,
                    row_values ->> id_column,
                    before_values,
                    after_values,
                    left(nullif(current_setting('taskmanager.request_id', true), ''), 128));
            RETURN NULL;
        END $$
        """
    )
    # Triggers only: nobody calls it (PUBLIC's EXECUTE taken; a trigger needs none).
    op.execute(f"REVOKE ALL ON FUNCTION {LOG_ACTIVITY} FROM PUBLIC")


def _purge_function() -> None:
    """The one way rows leave the log: older than `kept_days`, for maintenance only."""
    in_current_schema(
        f"""
        CREATE FUNCTION {{schema}}.taskmanager_purge_activity(kept_days integer) RETURNS bigint
        LANGUAGE plpgsql VOLATILE SECURITY DEFINER {PIN}
        AS $$
        DECLARE
            purged bigint;
        BEGIN
            IF {{schema}}.taskmanager_purpose() IS DISTINCT FROM 'maintenance' THEN
                RAISE EXCEPTION 'taskmanager_purge_activity: only for maintenance'
                    USING ERRCODE = '42501';
            END IF;
            IF kept_days IS NULL OR kept_days < 1 THEN
                RAISE EXCEPTION 'taskmanager_purge_activity: keep at least one day'
                    USING ERRCODE = '22023';
            END IF;
            DELETE FROM {{schema}}.activity
            WHERE created_at < now() - make_interval(days => kept_days);
            GET DIAGNOSTICS purged = ROW_COUNT;
            RETURN purged;
        END $$
        """
    )
    op.execute(f"REVOKE ALL ON FUNCTION {PURGE_ACTIVITY} FROM PUBLIC")
    grant_to_caller(f"EXECUTE ON FUNCTION {{schema}}.{PURGE_ACTIVITY}")


def upgrade() -> None:
    _table()
    # Row-level security without FORCE: the owner writes the rows (the trigger function)
    # and purges them; every request runs as the caller role, under the policy.
    op.execute("ALTER TABLE activity ENABLE ROW LEVEL SECURITY")
    op.execute(
        "CREATE POLICY activity_of_my_workspaces ON activity FOR SELECT "
        f"USING (workspace_id {MINE})"
    )
    grant_to_caller("SELECT ON {schema}.activity")
    _log_function()
    _purge_function()
    for table, arguments in LOGGED.items():
        log_changes_of(table, *arguments)


def downgrade() -> None:
    for table in LOGGED:
        op.execute(f"DROP TRIGGER {TRIGGER} ON {table}")
    op.execute(f"DROP FUNCTION {PURGE_ACTIVITY}")
    op.execute(f"DROP FUNCTION {LOG_ACTIVITY}")
    op.drop_table("activity")
