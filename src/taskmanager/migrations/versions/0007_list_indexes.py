"""keys and indexes for every order of the task list

Each order GET /tasks offers gets a btree index on its keys, id last, so that a page (first,
after a cursor, or filtered) is a range of an index read in order, never a sort of every row
the caller has: priority (priority_rank, created_at, id), title (title, id), due date
(due_key, id), which replaces the plain (due_at, id) index.

due_key and priority_rank are stored generated columns: under row-level security PostgreSQL
lets an index serve only conditions built of LEAKPROOF operators, and comparing enums or a
coalesce(...) expression is not; comparing timestamps and integers is. due_key is due_at, or
+infinity without one; priority_rank is the priority's place in low < normal < high < urgent.
`taskmanager db explain` shows which index each list query uses.

Adding the columns rewrites the table, and the indexes are built inside the migration's
transaction (not CONCURRENTLY): writes to tasks wait meanwhile, seconds at a million tasks.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 15:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PRIORITY_RANK_SQL = "CASE priority WHEN 'low' THEN 0 WHEN 'normal' THEN 1 WHEN 'high' THEN 2 WHEN 'urgent' THEN 3 END"  # noqa: E501  (as models.PRIORITY_RANK_SQL renders it)


def upgrade() -> None:
    op.add_column(
        "tasks",
        sa.Column(
            "due_key",
            sa.DateTime(timezone=True),
            sa.Computed("coalesce(due_at, 'infinity'::timestamptz)", persisted=True),
            nullable=False,
        ),
    )
    op.add_column(
        "tasks",
        sa.Column(
            "priority_rank",
            sa.SmallInteger(),
            sa.Computed(PRIORITY_RANK_SQL, persisted=True),
            nullable=False,
        ),
    )
    op.create_index(
        "ix_tasks_priority_rank_created_at_id", "tasks", ["priority_rank", "created_at", "id"]
    )
    op.create_index("ix_tasks_title_id", "tasks", ["title", "id"])
    op.create_index("ix_tasks_due_key_id", "tasks", ["due_key", "id"])
    op.drop_index("ix_tasks_due_at_id", table_name="tasks")


def downgrade() -> None:
    op.create_index("ix_tasks_due_at_id", "tasks", ["due_at", "id"])
    op.drop_index("ix_tasks_due_key_id", table_name="tasks")
    op.drop_index("ix_tasks_title_id", table_name="tasks")
    op.drop_index("ix_tasks_priority_rank_created_at_id", table_name="tasks")
    op.drop_column("tasks", "priority_rank")
    op.drop_column("tasks", "due_key")
