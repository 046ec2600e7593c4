"""indexes for every order of the task list

Each order GET /tasks offers gets a btree index on its keys, id last, so that a page (first,
deep by cursor, or filtered) is a range of an index read in order, never a sort of every row
the caller has: priority (priority, created_at, id), title (title, id), and the due-date
order on the expression it sorts by, coalesce(due_at, 'infinity'), id, which replaces the
plain (due_at, id) index (the due-date filters and overdue now use the same expression).
`taskmanager db explain` shows which index each list query uses.

Built inside the migration's transaction (not CONCURRENTLY): writes to tasks wait while they
are built, a few seconds at a million tasks.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 15:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_tasks_priority_created_at_id", "tasks", ["priority", "created_at", "id"])
    op.create_index("ix_tasks_title_id", "tasks", ["title", "id"])
    op.create_index(
        "ix_tasks_due_order_id",
        "tasks",
        [sa.text("coalesce(due_at, 'infinity'::timestamptz)"), "id"],
    )
    op.drop_index("ix_tasks_due_at_id", table_name="tasks")


def downgrade() -> None:
    op.create_index("ix_tasks_due_at_id", "tasks", ["due_at", "id"])
    op.drop_index("ix_tasks_due_order_id", table_name="tasks")
    op.drop_index("ix_tasks_title_id", table_name="tasks")
    op.drop_index("ix_tasks_priority_created_at_id", table_name="tasks")
