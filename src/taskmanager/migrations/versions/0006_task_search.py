"""full-text search over tasks' titles and descriptions

A stored generated tsvector of title and description, and a GIN index on it: `q` becomes a
search for word prefixes that the index serves, instead of an ILIKE '%…%' scan of every
row. Adding a stored generated column rewrites the table (an ACCESS EXCLUSIVE lock for as
long as that takes); PostgreSQL computes the column itself, so no UPDATE runs and FORCE ROW
LEVEL SECURITY needs no lifting (unlike 0004's).

Under row-level security PostgreSQL lets an index serve only a condition whose function is
LEAKPROOF (else the condition could run on rows the policy hides, before the policy), and
`tsvector @@ tsquery` (ts_match_vq) is not marked so: the GIN index would never be used by
a request. ts_match_vq raises no error that depends on the row's tsvector, and returns only
whether it matched: marked LEAKPROOF here, which only a superuser may do. Migrated by
another role, the search still works, by reading every row the policy allows (a WARNING
says so; a superuser can run the ALTER FUNCTION below later).

Revision ID: 0006
Revises: 0004
Create Date: 2026-11-30 14:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0004"  # lead: becomes "0005" at merge
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The same expression as models.SEARCH_DOCUMENT; 'simple' (see there for why).
SEARCH_DOCUMENT = (
    "to_tsvector('simple'::regconfig, ((title)::text || ' ' || coalesce(description, '')))"
)


MATCH_FUNCTION = "ts_match_vq(tsvector, tsquery)"


def _if_superuser(statement: str, otherwise: str) -> None:
    op.execute(
        f"""
        DO $$
        BEGIN
            IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
                {statement};
            ELSE
                RAISE WARNING '%', '{otherwise.replace("'", "''")}';
            END IF;
        END
        $$"""
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
    _if_superuser(
        f"ALTER FUNCTION {MATCH_FUNCTION} LEAKPROOF",
        f"not a superuser: ALTER FUNCTION {MATCH_FUNCTION} LEAKPROOF must be run by one, "
        "or searches read every row instead of using ix_tasks_search_vector",
    )


def downgrade() -> None:
    _if_superuser(
        f"ALTER FUNCTION {MATCH_FUNCTION} NOT LEAKPROOF",
        f"not a superuser: {MATCH_FUNCTION} stays as it was",
    )
    op.drop_index("ix_tasks_search_vector", table_name="tasks")
    op.drop_column("tasks", "search_vector")
