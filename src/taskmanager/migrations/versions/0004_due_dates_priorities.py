"""due dates, priorities and completion times of tasks

Existing tasks get no due date, the lowest priority, and, when completed, their last change
as the time they were completed (the best the data knows).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 13:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PRIORITIES = ("low", "normal", "high", "urgent")
PRIORITY = postgresql.ENUM(*PRIORITIES, name="task_priority", create_type=False)


def upgrade() -> None:
    op.execute(f"CREATE TYPE task_priority AS ENUM ({', '.join(repr(p) for p in PRIORITIES)})")
    op.add_column("tasks", sa.Column("due_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column(
        "tasks",
        sa.Column("priority", PRIORITY, server_default=PRIORITIES[0], nullable=False),
    )
    op.add_column("tasks", sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True))
    # FORCE ROW LEVEL SECURITY applies to the tables' owner too, who runs this migration:
    # lifted for this one statement, or a non-superuser owner would update no row at all.
    op.execute("ALTER TABLE tasks NO FORCE ROW LEVEL SECURITY")
    op.execute("UPDATE tasks SET completed_at = updated_at WHERE completed")
    op.execute("ALTER TABLE tasks FORCE ROW LEVEL SECURITY")
    op.create_index("ix_tasks_due_at_id", "tasks", ["due_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_tasks_due_at_id", table_name="tasks")
    op.drop_column("tasks", "completed_at")
    op.drop_column("tasks", "priority")
    op.drop_column("tasks", "due_at")
    op.execute("DROP TYPE task_priority")
