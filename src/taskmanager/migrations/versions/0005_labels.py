"""labels of a workspace, many per task

A label belongs to one workspace; task_labels joins it to tasks of that same workspace
(both composite foreign keys carry the workspace, so no writer can cross workspaces). Both
tables live under row-level security like tasks and categories.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 14:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

REQUEST_ROLE = "taskmanager_request"
MINE = "= ANY ((SELECT taskmanager_workspace_ids())::integer[])"


def upgrade() -> None:
    op.create_table(
        "labels",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("workspace_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=50), nullable=False),
        sa.Column("colour", sa.String(length=7), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("version", sa.Integer(), server_default=sa.text("1"), nullable=False),
        sa.CheckConstraint("char_length(btrim(name)) > 0", name="ck_labels_name_not_blank"),
        sa.CheckConstraint("colour ~ '^#[0-9a-f]{6}$'", name="ck_labels_colour_hex"),
        sa.ForeignKeyConstraint(
            ["workspace_id"],
            ["workspaces.id"],
            name="fk_labels_workspace_id_workspaces",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_labels"),
        sa.UniqueConstraint("id", "workspace_id", name="uq_labels_id_workspace_id"),
    )
    op.create_index(
        "uq_labels_workspace_id_name_lower",
        "labels",
        ["workspace_id", sa.literal_column("lower(name)")],
        unique=True,
    )
    op.create_unique_constraint("uq_tasks_id_workspace_id", "tasks", ["id", "workspace_id"])
    op.create_table(
        "task_labels",
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("label_id", sa.Integer(), nullable=False),
        sa.Column("workspace_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["task_id", "workspace_id"],
            ["tasks.id", "tasks.workspace_id"],
            name="fk_task_labels_task_id_tasks",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["label_id", "workspace_id"],
            ["labels.id", "labels.workspace_id"],
            name="fk_task_labels_label_id_labels",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("task_id", "label_id", name="pk_task_labels"),
    )
    op.create_index("ix_task_labels_label_id_task_id", "task_labels", ["label_id", "task_id"])

    # The shared role of 0003, only where it exists (see 0003 and 0008).
    _for_request_role(
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON labels, task_labels TO {REQUEST_ROLE}"
    )
    _for_request_role(f"GRANT USAGE ON SEQUENCE labels_id_seq TO {REQUEST_ROLE}")
    for table in ("labels", "task_labels"):
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
        op.execute(
            f"CREATE POLICY {table}_in_my_workspaces ON {table} USING (workspace_id {MINE}) "
            f"WITH CHECK (workspace_id {MINE})"
        )


def _for_request_role(statement: str) -> None:
    """Run `statement` if the shared request role of 0003 exists (see 0003 and 0008)."""
    op.execute(
        f"DO $do$ BEGIN IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{REQUEST_ROLE}') "
        f"THEN EXECUTE $sql${statement}$sql$; END IF; END $do$"
    )


def downgrade() -> None:
    # Dropping the tables drops their policies and grants with them.
    op.drop_table("task_labels")
    op.drop_constraint("uq_tasks_id_workspace_id", "tasks", type_="unique")
    op.drop_index("uq_labels_workspace_id_name_lower", table_name="labels")
    op.drop_table("labels")
