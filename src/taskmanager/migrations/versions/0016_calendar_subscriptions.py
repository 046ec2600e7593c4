"""calendar subscriptions: a workspace's external .ics feeds, and how fetching them went

- `calendar_subscriptions`: a workspace's subscription to an external calendar feed (its
  URL and a name), who made it, and the state of fetching it: the validators of the last
  answer (`etag`, `last_modified`, sent back as If-None-Match / If-Modified-Since), when it
  was last fetched and last fetched well, the last error, the failures in a row and until
  when it is skipped (the circuit breaker), and the last good copy of its events (`events`,
  JSON, at most MAX_EVENTS occurrences: an agenda serves them stale when the feed fails,
  after a restart too, with or without Redis). One subscription per URL in a workspace.
- Who does what (policies; the caller role may INSERT only workspace_id, url, name and
  created_by, and UPDATE only the fetch state):
  - any member of the workspace reads its subscriptions (the agenda shows every member the
    workspace's calendars);
  - a role with tasks:write (member, admin, owner; not a viewer) adds and removes them, as
    the workspace's categories and labels: a subscription is shared content of the
    workspace like they are, and the fetching is made safe for every role alike (the
    service's SSRF checks), so a stricter role would guard nothing more. `created_by` is
    the caller's own id;
  - only a transaction entered for 'maintenance' (the service's fetcher, with its proof)
    writes the fetch state, and reads every subscription to do so: no request, whatever
    its role, can plant events or clear a failing feed's state with SQL.

A calendar feed's caller (0015) is refused the table altogether, as every table but those a
feed reads. The downgrade drops the table.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07 22:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from taskmanager.migrations.schema_statements import closed_to_calendar_feeds, grant_to_caller

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The most occurrences of one feed kept (the service keeps fewer, by its setting).
MAX_EVENTS = 100_000

ME = "(SELECT taskmanager_user_id())"
PURPOSE = "(SELECT taskmanager_purpose())"
MINE = "= ANY ((SELECT taskmanager_workspace_ids())::integer[])"
WRITABLE = "= ANY ((SELECT taskmanager_workspace_ids_allowing('tasks:write'))::integer[])"

POLICIES: dict[str, str] = {
    "calendar_subscriptions_read": f"FOR SELECT USING (workspace_id {MINE} "
    f"OR {PURPOSE} = 'maintenance')",
    "calendar_subscriptions_add": f"FOR INSERT WITH CHECK (workspace_id {WRITABLE} "
    f"AND created_by = {ME})",
    "calendar_subscriptions_remove": f"FOR DELETE USING (workspace_id {WRITABLE})",
    "calendar_subscriptions_fetched": f"FOR UPDATE USING ({PURPOSE} = 'maintenance') "
    f"WITH CHECK ({PURPOSE} = 'maintenance')",
}
FETCH_STATE = (
    "etag",
    "last_modified",
    "last_fetched_at",
    "last_success_at",
    "last_error",
    "consecutive_failures",
    "skip_until",
    "events",
)
GRANT = (
    "SELECT, INSERT (workspace_id, url, name, created_by), DELETE, "
    f"UPDATE ({', '.join(FETCH_STATE)}) ON {{schema}}.calendar_subscriptions"
)


def upgrade() -> None:
    op.create_table(
        "calendar_subscriptions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("workspace_id", sa.Integer(), nullable=False),
        sa.Column("url", sa.String(length=2048), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("created_by", sa.Integer(), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("etag", sa.String(length=200), nullable=True),
        sa.Column("last_modified", sa.String(length=100), nullable=True),
        sa.Column("last_fetched_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_success_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.String(length=500), nullable=True),
        sa.Column(
            "consecutive_failures", sa.Integer(), server_default=sa.text("0"), nullable=False
        ),
        sa.Column("skip_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("events", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.CheckConstraint(
            "char_length(btrim(name)) > 0", name=op.f("ck_calendar_subscriptions_name_not_blank")
        ),
        sa.CheckConstraint(
            "events IS NULL OR (jsonb_typeof(events) = 'array' "
            f"AND jsonb_array_length(events) <= {MAX_EVENTS})",
            name=op.f("ck_calendar_subscriptions_events_bounded"),
        ),
        sa.CheckConstraint(
            "consecutive_failures >= 0",
            name=op.f("ck_calendar_subscriptions_failures_counted"),
        ),
        sa.ForeignKeyConstraint(
            ["workspace_id"],
            ["workspaces.id"],
            name=op.f("fk_calendar_subscriptions_workspace_id_workspaces"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["created_by"],
            ["users.id"],
            name=op.f("fk_calendar_subscriptions_created_by_users"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_calendar_subscriptions")),
        # A workspace's rows refer to a subscription with its workspace (composite keys).
        sa.UniqueConstraint(
            "id", "workspace_id", name=op.f("uq_calendar_subscriptions_id_workspace_id")
        ),
        # One subscription per URL in a workspace (and a workspace's list, by this index).
        sa.UniqueConstraint(
            "workspace_id", "url", name=op.f("uq_calendar_subscriptions_workspace_id_url")
        ),
    )
    # Without FORCE, as the other tables: the owner (migrations) is not under the policies.
    op.execute("ALTER TABLE calendar_subscriptions ENABLE ROW LEVEL SECURITY")
    # A calendar feed's caller (0015) reads tasks only.
    closed_to_calendar_feeds("calendar_subscriptions")
    for name, definition in POLICIES.items():
        op.execute(f"CREATE POLICY {name} ON calendar_subscriptions {definition}")
    grant_to_caller(GRANT)
    grant_to_caller("USAGE ON SEQUENCE {schema}.calendar_subscriptions_id_seq")


def downgrade() -> None:
    # Its policies and grants go with it.
    op.drop_table("calendar_subscriptions")
