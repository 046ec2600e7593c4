"""full-text search over tasks' titles and descriptions

A stored generated tsvector of title and description, and a GIN index on it: `q` becomes a
search for word prefixes that the index serves, instead of an ILIKE '%…%' scan of every
row. Adding a stored generated column rewrites the table (an ACCESS EXCLUSIVE lock for as
long as that takes); PostgreSQL computes the column itself, so no UPDATE runs and FORCE ROW
LEVEL SECURITY needs no lifting (unlike 0004's).

Under row-level security PostgreSQL lets an index serve only a condition whose operator is
LEAKPROOF (else the condition could run on rows the policy hides, before the policy), and
`tsvector @@ tsquery` is not (only a superuser could mark it so): for the request role the
GIN index would never be used, every search would read every row the policy allows. So the
match runs in `taskmanager_matching_tasks(query)`, a SECURITY DEFINER function owned by the
tables' owner: the owner is not subject to the policy (tasks no longer FORCE row-level
security on it; every request still runs as the request role, under the policy), so inside
the function the GIN index finds the matches, and the function keeps only those in the
caller's workspaces (taskmanager_workspace_ids(), as the policy does). The request's own
statement then reads those tasks by id, under the policy: enforced twice, as everywhere.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 14:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The same expression as models.SEARCH_DOCUMENT; 'simple' (see there for why).
SEARCH_DOCUMENT = (
    "to_tsvector('simple'::regconfig, ((title)::text || ' ' || coalesce(description, '')))"
)


REQUEST_ROLE = "taskmanager_request"
MATCHING_TASKS = "taskmanager_matching_tasks(tsquery)"
MATCHES_AT_LEAST = "taskmanager_matches_at_least(tsquery, integer)"


def _in_current_schema(statement: str) -> None:
    """Run `statement` with `{schema}` standing for the schema the migration runs in (as
    0003's helper of the same name does: `alembic upgrade head --sql` needs no server)."""
    template = statement.replace("%", "%%").replace("{schema}", "%1$I")
    op.execute(
        f"DO $do$ BEGIN EXECUTE format($statement${template}$statement$, current_schema()); "
        "END $do$"
    )


def upgrade() -> None:
    op.add_column(
        "tasks",
        sa.Column(
            "search_vector",
            postgresql.TSVECTOR(),
            sa.Computed(SEARCH_DOCUMENT, persisted=True),
            nullable=True,
        ),
    )
    op.create_index("ix_tasks_search_vector", "tasks", ["search_vector"], postgresql_using="gin")
    # The owner reads tasks without the policy (only inside the function below: requests
    # run as the request role, which the policy always applies to).
    op.execute("ALTER TABLE tasks NO FORCE ROW LEVEL SECURITY")
    # MATERIALIZED: the matches are found first, by the GIN index, and only then kept to the
    # caller's workspaces (else the planner may read a workspace's every task through
    # ix_tasks_workspace_id_created_at_id and test each one). ROWS 100: what the planner
    # expects a search to match, so that it reads the matches by id rather than walking an
    # order's index hoping to meet them soon (for a rare word, a walk through every task).
    _in_current_schema(
        """
        CREATE FUNCTION taskmanager_matching_tasks(query tsquery) RETURNS SETOF integer
        LANGUAGE sql STABLE SECURITY DEFINER ROWS 100 SET search_path = pg_catalog, pg_temp
        AS $$ WITH matches AS MATERIALIZED (
                  SELECT id, workspace_id FROM {schema}.tasks WHERE search_vector @@ query
              )
              SELECT id FROM matches
              WHERE workspace_id = ANY ((SELECT {schema}.taskmanager_workspace_ids())::integer[]) $$
        """
    )
    # Whether the caller has at least `enough` tasks matching `query`, counted through the
    # GIN index (enable_seqscan off: never a scan of the table) and only that far. The
    # repository asks it before a search, with `enough` its rule for when walking an
    # order's index finds the page sooner than reading every match by id
    # (task_queries/walk_or_index.py): the planner cannot choose for a query it only
    # learns at run time, and its estimate for word prefixes is a guess.
    _in_current_schema(
        """
        CREATE FUNCTION taskmanager_matches_at_least(query tsquery, enough integer)
        RETURNS boolean
        LANGUAGE sql STABLE SECURITY DEFINER
        SET search_path = pg_catalog, pg_temp SET enable_seqscan = off
        AS $$ SELECT count(*) >= enough FROM (
                  SELECT FROM {schema}.tasks WHERE search_vector @@ query
                  AND workspace_id = ANY ((SELECT {schema}.taskmanager_workspace_ids())::integer[])
                  LIMIT enough
              ) found $$
        """
    )
    for function in (MATCHING_TASKS, MATCHES_AT_LEAST):
        op.execute(f"REVOKE ALL ON FUNCTION {function} FROM PUBLIC")
        _for_request_role(f"GRANT EXECUTE ON FUNCTION {function} TO {REQUEST_ROLE}")


def _for_request_role(statement: str) -> None:
    """Run `statement` if the shared request role of 0003 exists (see 0003 and 0008)."""
    op.execute(
        f"DO $do$ BEGIN IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{REQUEST_ROLE}') "
        f"THEN EXECUTE $sql${statement}$sql$; END IF; END $do$"
    )


def downgrade() -> None:
    op.execute(f"DROP FUNCTION {MATCHES_AT_LEAST}")
    op.execute(f"DROP FUNCTION {MATCHING_TASKS}")
    op.execute("ALTER TABLE tasks FORCE ROW LEVEL SECURITY")
    op.drop_index("ix_tasks_search_vector", table_name="tasks")
    op.drop_column("tasks", "search_vector")
