"""webhooks out: endpoints, deliveries (their outbox) and the delivery log

- `webhook_endpoints`: a workspace's endpoints (url, events subscribed, enabled, why
  disabled, since when failing). The signing secret is never stored: the service derives it
  from a key of its own (from the signing key, not in the database), the endpoint's id and
  `secret_nonce` (taskmanager.security.webhook_secrets); after a rotation
  `previous_nonce` signs as well until `previous_valid_until`. Only a workspace's managers
  (members:write: admins and owners, a token with that scope) see, add, change and delete
  its endpoints (policies); the caller role may not read either nonce at all (column
  grants), and sets one only when it creates an endpoint: as itself (`created_by` is the
  caller, a policy), with a nonce of 16 bytes at least and only known events (checks).
  Rotating goes through `taskmanager_rotate_webhook_secret`, which makes the new nonce
  itself (none chosen by a caller), keeps the current one as the previous one, and bounds
  the overlap to 48 hours. `failing_since`/`last_failed_at`: the current failure streak
  (a failure more than a day after the last one starts a new one).
- `webhook_deliveries`: one row per (event, endpoint), the webhooks' outbox. Written only by
  PostgreSQL: `taskmanager_webhook_fan_out`, a SECURITY DEFINER trigger AFTER INSERT on
  `activity` (0011 logs every change there, in the change's own transaction), inserts one
  row per enabled endpoint of the workspace subscribed to the change's kind (and to
  `task.completed` when a task's `completed` became true). So no code path can forget an
  event, a rolled-back change delivers nothing, and a workspace without endpoints pays one
  index probe per change. A row recorded wakes the workers (NOTIFY taskmanager_webhooks,
  sent at commit). `taskmanager_replay_webhook_delivery` (the same payload and
  `message_id`, i.e. the same `webhook-id`; not to a disabled endpoint) and
  `taskmanager_send_webhook_test` (a `webhook.test` event, tried once) add rows for a
  manager, at most 100 of them waiting per endpoint. Managers read their workspace's rows;
  only a transaction entered for 'maintenance' (the delivery worker) claims
  (`taskmanager_claim_webhook_deliveries`, FOR UPDATE SKIP LOCKED with a lease, returning
  what signing needs, nonces included; failing instead one claimed as often as it may be
  tried), updates and purges them.
- `webhook_attempts`: the delivery log (when, status code, latency, a bounded excerpt of
  the answer, the error), written by maintenance only, read by the managers.
- `taskmanager_disable_webhook_endpoint(endpoint, reason)`: for maintenance: disables an
  enabled endpoint and records a mail (outbox 'mail.webhook_disabled') to each owner and
  admin of its workspace, in the worker's transaction.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-07 22:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from taskmanager.migrations.schema_statements import (
    PIN,
    closed_to_calendar_feeds,
    grant_to_caller,
    in_current_schema,
    refuse_a_tampered_session,
)

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FAN_OUT = "taskmanager_webhook_fan_out()"
ROTATE = "taskmanager_rotate_webhook_secret(uuid, integer)"
REPLAY = "taskmanager_replay_webhook_delivery(uuid)"
SEND_TEST = "taskmanager_send_webhook_test(uuid)"
CLAIM = "taskmanager_claim_webhook_deliveries(integer, double precision, integer)"
DISABLE = "taskmanager_disable_webhook_endpoint(uuid, text)"
CALLED = (ROTATE, REPLAY, SEND_TEST, CLAIM, DISABLE)
TRIGGER = "taskmanager_webhooks"
# The channel a recorded delivery is announced on (at commit): workers LISTEN to it.
CHANNEL = "taskmanager_webhooks"
# Longest a rotation's overlap may be made, whatever the service asks (48 hours: the
# bound of TASKMANAGER_WEBHOOK_ROTATION_OVERLAP_HOURS).
MAX_OVERLAP_SECONDS = 48 * 3600
# Test events and replays an endpoint may have waiting to be sent (a manager's clicks, or
# request SQL calling the functions, cannot queue more).
MAX_PENDING_MANUAL = 100
# The error codes the replay and test functions refuse with: past the cap, and a replay
# to a disabled endpoint (WebhookRepository turns them into exceptions of its own).
OVER_CAP = "54000"  # program_limit_exceeded
DISABLED = "55000"  # object_not_in_prerequisite_state
# Nonces are 16 random bytes at least (taskmanager.security.webhook_secrets: 16).
MIN_NONCE_BYTES = 16
# The event types an endpoint may subscribe to, as taskmanager.integrations.webhook_events
# listed them when this migration was written (a migration does not change with the code
# after it; tests/auth/test_request_sql.py checks the database accepts the catalogue's).
EVENT_TYPES = (
    "task.created",
    "task.updated",
    "task.completed",
    "task.deleted",
    "task.label_added",
    "task.label_removed",
    "category.created",
    "category.renamed",
    "category.updated",
    "category.deleted",
    "label.created",
    "label.updated",
    "label.deleted",
    "member.added",
    "member.role_changed",
    "member.removed",
    "workspace.renamed",
    "workspace.updated",
    "invitation.created",
    "invitation.accepted",
    "invitation.declined",
    "invitation.revoked",
    "invitation.resent",
)
TEST_EVENT = "webhook.test"
# A fresh nonce made by PostgreSQL itself (core since 13, no pgcrypto): 32 bytes of two
# random UUIDs (244 random bits).
NEW_NONCE = "decode(replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), 'hex')"

PURPOSE = "(SELECT taskmanager_purpose())"
ME = "(SELECT taskmanager_user_id())"
MAINTENANCE = f"{PURPOSE} = 'maintenance'"
MANAGER = (
    "workspace_id = ANY ((SELECT taskmanager_workspace_ids_allowing('members:write'))::integer[])"
)

# Every column but the nonces: what requests may read of an endpoint.
ENDPOINT_COLUMNS = (
    "id, workspace_id, url, description, events, enabled, disabled_reason, disabled_at, "
    "failing_since, last_failed_at, previous_valid_until, created_by, version, created_at, "
    "updated_at"
)
GRANTS = (
    f"SELECT ({ENDPOINT_COLUMNS}), "
    "INSERT (id, workspace_id, url, description, events, secret_nonce, created_by), "
    "UPDATE (url, description, events, enabled, disabled_reason, disabled_at, failing_since, "
    "last_failed_at, version, updated_at), DELETE ON {schema}.webhook_endpoints",
    "SELECT, UPDATE (status, attempts, next_attempt_at, finished_at, last_status_code, "
    "last_error), DELETE ON {schema}.webhook_deliveries",
    "SELECT, INSERT (workspace_id, delivery_id, status_code, latency_ms, response_excerpt, "
    "error) ON {schema}.webhook_attempts",
)

POLICIES: dict[str, tuple[str, str]] = {
    # A manager reads, changes and deletes the workspace's endpoints, whoever made them;
    # adds one only as themselves (created_by: the caller, not a name request SQL picks).
    "webhook_endpoints_managed_read": ("webhook_endpoints", f"FOR SELECT USING ({MANAGER})"),
    "webhook_endpoints_managed_add": (
        "webhook_endpoints",
        f"FOR INSERT WITH CHECK ({MANAGER} AND created_by = {ME})",
    ),
    "webhook_endpoints_managed_change": (
        "webhook_endpoints",
        f"FOR UPDATE USING ({MANAGER}) WITH CHECK ({MANAGER})",
    ),
    "webhook_endpoints_managed_remove": ("webhook_endpoints", f"FOR DELETE USING ({MANAGER})"),
    # The worker reads endpoints (where to send) and disables failing ones.
    "webhook_endpoints_worker_read": ("webhook_endpoints", f"FOR SELECT USING ({MAINTENANCE})"),
    "webhook_endpoints_worker_update": (
        "webhook_endpoints",
        f"FOR UPDATE USING ({MAINTENANCE}) WITH CHECK ({MAINTENANCE})",
    ),
    "webhook_deliveries_managed": ("webhook_deliveries", f"FOR SELECT USING ({MANAGER})"),
    "webhook_deliveries_worker": (
        "webhook_deliveries",
        f"USING ({MAINTENANCE}) WITH CHECK ({MAINTENANCE})",
    ),
    "webhook_attempts_managed": ("webhook_attempts", f"FOR SELECT USING ({MANAGER})"),
    "webhook_attempts_worker": (
        "webhook_attempts",
        f"USING ({MAINTENANCE}) WITH CHECK ({MAINTENANCE})",
    ),
}

# A delivery's payload (Standard Webhooks: type, timestamp, data), version 1; `event` and
# `at` are SQL expressions of the event type and its moment.
TIMESTAMP = """to_char({at} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""
MESSAGE_ID = "'msg_' || replace(gen_random_uuid()::text, '-', '')"


# A delivery a manager asked for (a test event, a replay) still waiting to be sent.
_MANUAL_PENDING = f"status = 'pending' AND (event_type = '{TEST_EVENT}' OR replay_of IS NOT NULL)"


def _payload(event: str, at: str, data: str) -> str:
    return (
        f"jsonb_build_object('type', {event}, 'timestamp', {TIMESTAMP.format(at=at)}, "
        f"'version', 1, 'data', {data})"
    )


def _tables() -> None:
    op.create_table(
        "webhook_endpoints",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("workspace_id", sa.Integer(), nullable=False),
        sa.Column("url", sa.String(2048), nullable=False),
        sa.Column("description", sa.String(500), server_default=sa.text("''"), nullable=False),
        sa.Column("events", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("enabled", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column("disabled_reason", sa.String(200), nullable=True),
        sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("failing_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_failed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("secret_nonce", sa.LargeBinary(), nullable=False),
        sa.Column("previous_nonce", sa.LargeBinary(), nullable=True),
        sa.Column("previous_valid_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_by", sa.Integer(), nullable=True),
        sa.Column("version", sa.Integer(), server_default=sa.text("1"), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.ForeignKeyConstraint(
            ["workspace_id"],
            ["workspaces.id"],
            name="fk_webhook_endpoints_workspace_id_workspaces",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["created_by"],
            ["users.id"],
            name="fk_webhook_endpoints_created_by_users",
            ondelete="SET NULL",
        ),
        sa.CheckConstraint(
            f"octet_length(secret_nonce) >= {MIN_NONCE_BYTES}",
            name="ck_webhook_endpoints_secret_nonce_long_enough",
        ),
        sa.CheckConstraint(
            f"octet_length(previous_nonce) >= {MIN_NONCE_BYTES}",
            name="ck_webhook_endpoints_previous_nonce_long_enough",
        ),
        sa.CheckConstraint(
            "events <@ ARRAY[{}]::text[]".format(", ".join(f"'{e}'" for e in EVENT_TYPES)),
            name="ck_webhook_endpoints_events_known",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_webhook_endpoints"),
        sa.UniqueConstraint("id", "workspace_id", name="uq_webhook_endpoints_id_workspace_id"),
    )
    op.create_index(
        "ix_webhook_endpoints_workspace_id_enabled",
        "webhook_endpoints",
        ["workspace_id"],
        postgresql_where=sa.text("enabled"),
    )
    op.create_index(
        "ix_webhook_endpoints_workspace_id_created_at",
        "webhook_endpoints",
        ["workspace_id", "created_at"],
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.Uuid(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("workspace_id", sa.Integer(), nullable=False),
        sa.Column("endpoint_id", sa.Uuid(), nullable=False),
        sa.Column("message_id", sa.String(40), nullable=False),
        sa.Column("event_type", sa.String(60), nullable=False),
        sa.Column("payload", postgresql.JSONB(), nullable=False),
        sa.Column("status", sa.String(10), server_default=sa.text("'pending'"), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column(
            "next_attempt_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.Column("replay_of", sa.Uuid(), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_status_code", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "status IN ('pending', 'delivered', 'failed')",
            name="ck_webhook_deliveries_status_known",
        ),
        sa.ForeignKeyConstraint(
            ["endpoint_id", "workspace_id"],
            ["webhook_endpoints.id", "webhook_endpoints.workspace_id"],
            name="fk_webhook_deliveries_endpoint_id_webhook_endpoints",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_webhook_deliveries"),
        sa.UniqueConstraint("id", "workspace_id", name="uq_webhook_deliveries_id_workspace_id"),
    )
    op.create_index(
        "ix_webhook_deliveries_next_attempt_at",
        "webhook_deliveries",
        ["next_attempt_at"],
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.create_index(
        "ix_webhook_deliveries_endpoint_id_created_at",
        "webhook_deliveries",
        ["endpoint_id", "created_at"],
    )
    # The cap on an endpoint's waiting test events and replays: counted from this.
    op.create_index(
        "ix_webhook_deliveries_endpoint_id_manual",
        "webhook_deliveries",
        ["endpoint_id"],
        postgresql_where=sa.text(_MANUAL_PENDING),
    )
    op.create_table(
        "webhook_attempts",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("workspace_id", sa.Integer(), nullable=False),
        sa.Column("delivery_id", sa.Uuid(), nullable=False),
        sa.Column(
            "attempted_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("latency_ms", sa.Integer(), nullable=False),
        sa.Column("response_excerpt", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["delivery_id", "workspace_id"],
            ["webhook_deliveries.id", "webhook_deliveries.workspace_id"],
            name="fk_webhook_attempts_delivery_id_webhook_deliveries",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_webhook_attempts"),
    )
    op.create_index("ix_webhook_attempts_delivery_id_id", "webhook_attempts", ["delivery_id", "id"])
    for table in ("webhook_endpoints", "webhook_deliveries", "webhook_attempts"):
        # Without FORCE: the functions write as the owner, past the policies.
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        closed_to_calendar_feeds(table)  # a calendar feed's caller (0015) reads tasks only
    for name, (table, definition) in POLICIES.items():
        op.execute(f"CREATE POLICY {name} ON {table} {definition}")
    for grant in GRANTS:
        grant_to_caller(grant)


def _manager_check(function: str, workspace: str) -> str:
    """Refuse (42501) unless the caller may manage `workspace`'s members (and webhooks)."""
    return f"""IF NOT {workspace} = ANY (
                    {{schema}}.taskmanager_workspace_ids_allowing('members:write')) THEN
                RAISE EXCEPTION '{function}: only for an admin or an owner of the workspace'
                    USING ERRCODE = '42501';
            END IF;"""


# How many attempts a delivery `d` gets: a test event one, any other `max_attempts`.
TRIES = f"CASE WHEN d.event_type = '{TEST_EVENT}' THEN 1 ELSE coalesce(max_attempts, 1) END"


def _cap_check(function: str, endpoint: str) -> str:
    """Refuse (OVER_CAP) when `endpoint` has MAX_PENDING_MANUAL test events and replays
    waiting to be sent."""
    return f"""IF (SELECT count(*) FROM {{schema}}.webhook_deliveries d
                WHERE d.endpoint_id = {endpoint} AND {_MANUAL_PENDING})
                >= {MAX_PENDING_MANUAL} THEN
                RAISE EXCEPTION '{function}: this endpoint has {MAX_PENDING_MANUAL} test events '
                    'and replays waiting to be sent, as many as it may'
                    USING ERRCODE = '{OVER_CAP}';
            END IF;"""


def _functions() -> None:
    data = (
        "jsonb_build_object('workspace_id', NEW.workspace_id, 'object_type', NEW.object_type, "
        "'object_id', NEW.object_id, 'actor_id', NEW.actor_id, 'activity_id', NEW.id, "
        "'request_id', NEW.request_id, 'before', NEW.before, 'after', NEW.after)"
    )
    # The fan-out: one delivery per enabled endpoint of the change's workspace subscribed
    # to its kind (or to task.completed, for a task that became completed). Served by the
    # partial index of enabled endpoints: one probe when the workspace has none.
    in_current_schema(
        f"""
        CREATE FUNCTION {{schema}}.taskmanager_webhook_fan_out() RETURNS trigger
        LANGUAGE plpgsql SECURITY DEFINER {PIN}
        AS $$
        DECLARE
            kinds text[] := ARRAY[NEW.kind];
        BEGIN
            IF NEW.kind = 'task.updated' AND NEW.after ? 'completed'
               AND (NEW.after ->> 'completed') = 'true' THEN
                kinds := kinds || 'task.completed'::text;
            END IF;
            INSERT INTO {{schema}}.webhook_deliveries
                (workspace_id, endpoint_id, message_id, event_type, payload)
            SELECT e.workspace_id, e.id, {MESSAGE_ID}, k.kind,
                   {_payload("k.kind", "NEW.created_at", data)}
            FROM {{schema}}.webhook_endpoints e
            CROSS JOIN unnest(kinds) AS k(kind)
            WHERE e.workspace_id = NEW.workspace_id AND e.enabled AND k.kind = ANY (e.events);
            IF FOUND THEN
                PERFORM pg_notify('{CHANNEL}', '');
            END IF;
            RETURN NULL;
        END $$
        """
    )
    op.execute(f"REVOKE ALL ON FUNCTION {FAN_OUT} FROM PUBLIC")
    # Rotate: a nonce PostgreSQL makes (no caller chooses it) signs from now on, the
    # current one too for `overlap_seconds` (at most MAX_OVERLAP_SECONDS, whatever is
    # asked). The new nonce (the service derives the secret it shows once from it), or
    # NULL: the endpoint was not the caller's to rotate.
    in_current_schema(
        f"""
        CREATE FUNCTION {{schema}}.taskmanager_rotate_webhook_secret(
            endpoint uuid, overlap_seconds integer)
        RETURNS bytea
        LANGUAGE plpgsql VOLATILE SECURITY DEFINER {PIN}
        AS $$
        DECLARE
            made bytea := {NEW_NONCE};
        BEGIN
            {refuse_a_tampered_session("taskmanager_rotate_webhook_secret")}
            UPDATE {{schema}}.webhook_endpoints e
            SET previous_nonce = e.secret_nonce, secret_nonce = made,
                previous_valid_until = now() + make_interval(
                    secs => least(greatest(overlap_seconds, 0), {MAX_OVERLAP_SECONDS})),
                version = e.version + 1, updated_at = now()
            WHERE e.id = endpoint AND e.workspace_id = ANY (
                {{schema}}.taskmanager_workspace_ids_allowing('members:write'));
            IF NOT FOUND THEN
                RETURN NULL;
            END IF;
            RETURN made;
        END $$
        """
    )
    # Replay: the delivery's event once more, as a new delivery (its own attempts) with the
    # same payload and message id (webhook-id: a receiver that saw it already knows it).
    in_current_schema(
        f"""
        CREATE FUNCTION {{schema}}.taskmanager_replay_webhook_delivery(delivery uuid)
        RETURNS uuid
        LANGUAGE plpgsql VOLATILE SECURITY DEFINER {PIN}
        AS $$
        DECLARE
            made uuid;
            endpoint record;
        BEGIN
            {refuse_a_tampered_session("taskmanager_replay_webhook_delivery")}
            -- The endpoint's row locked: two replays at once queue here, so the cap holds.
            SELECT e.id, e.enabled INTO endpoint
            FROM {{schema}}.webhook_deliveries d
            JOIN {{schema}}.webhook_endpoints e ON e.id = d.endpoint_id
            WHERE d.id = delivery AND d.workspace_id = ANY (
                {{schema}}.taskmanager_workspace_ids_allowing('members:write'))
            FOR NO KEY UPDATE OF e;
            IF NOT FOUND THEN
                RETURN NULL;
            END IF;
            IF NOT endpoint.enabled THEN
                RAISE EXCEPTION 'taskmanager_replay_webhook_delivery: the endpoint is disabled'
                    USING ERRCODE = '{DISABLED}';
            END IF;
            {_cap_check("taskmanager_replay_webhook_delivery", "endpoint.id")}
            INSERT INTO {{schema}}.webhook_deliveries
                (workspace_id, endpoint_id, message_id, event_type, payload, replay_of)
            SELECT d.workspace_id, d.endpoint_id, d.message_id, d.event_type, d.payload, d.id
            FROM {{schema}}.webhook_deliveries d
            WHERE d.id = delivery
            RETURNING id INTO made;
            IF made IS NOT NULL THEN
                PERFORM pg_notify('{CHANNEL}', '');
            END IF;
            RETURN made;
        END $$
        """
    )
    test_data = (
        "jsonb_build_object('workspace_id', e.workspace_id, 'endpoint_id', e.id, "
        "'actor_id', {schema}.taskmanager_user_id(), "
        "'message', 'This is a test event: your endpoint receives and verifies webhooks.')"
    )
    # A test event for an endpoint (enabled or not: testing one is how to see it works
    # again; it is tried once, never retried, and capped with the replays).
    in_current_schema(
        f"""
        CREATE FUNCTION {{schema}}.taskmanager_send_webhook_test(endpoint uuid)
        RETURNS uuid
        LANGUAGE plpgsql VOLATILE SECURITY DEFINER {PIN}
        AS $$
        DECLARE
            made uuid;
        BEGIN
            {refuse_a_tampered_session("taskmanager_send_webhook_test")}
            -- The endpoint's row locked: two tests at once queue here, so the cap holds.
            PERFORM FROM {{schema}}.webhook_endpoints e
            WHERE e.id = endpoint AND e.workspace_id = ANY (
                {{schema}}.taskmanager_workspace_ids_allowing('members:write'))
            FOR NO KEY UPDATE;
            IF NOT FOUND THEN
                RETURN NULL;
            END IF;
            {_cap_check("taskmanager_send_webhook_test", "endpoint")}
            INSERT INTO {{schema}}.webhook_deliveries
                (workspace_id, endpoint_id, message_id, event_type, payload)
            SELECT e.workspace_id, e.id, {MESSAGE_ID}, 'webhook.test',
                   {_payload("'webhook.test'", "now()", test_data)}
            FROM {{schema}}.webhook_endpoints e
            WHERE e.id = endpoint AND e.workspace_id = ANY (
                {{schema}}.taskmanager_workspace_ids_allowing('members:write'))
            RETURNING id INTO made;
            IF made IS NOT NULL THEN
                PERFORM pg_notify('{CHANNEL}', '');
            END IF;
            RETURN made;
        END $$
        """
    )
    # The worker's claim: up to `batch` due pending deliveries no other worker holds,
    # leased for `lease_seconds` (due again only then: a worker that dies mid-send leaves
    # them to the next) and counted, with what sending needs (the endpoint's url, enabled,
    # its nonces). Maintenance only: the nonces are nobody else's to read.
    # A due delivery claimed `max_attempts` times already (a test event: once) is not sent
    # again but failed here: its outcomes were never recorded (a worker that died, a
    # record PostgreSQL refused), and it must not come back every lease forever.
    in_current_schema(
        f"""
        CREATE FUNCTION {{schema}}.taskmanager_claim_webhook_deliveries(
            batch integer, lease_seconds double precision, max_attempts integer)
        RETURNS TABLE (id uuid, workspace_id integer, endpoint_id uuid, message_id text,
                       event_type text, payload jsonb, attempts integer,
                       created_at timestamp with time zone, url text, enabled boolean,
                       secret_nonce bytea, previous_nonce bytea)
        LANGUAGE plpgsql VOLATILE SECURITY DEFINER {PIN}
        AS $$
        BEGIN
            IF {{schema}}.taskmanager_purpose() IS DISTINCT FROM 'maintenance' THEN
                RAISE EXCEPTION 'taskmanager_claim_webhook_deliveries: only for maintenance'
                    USING ERRCODE = '42501';
            END IF;
            RETURN QUERY
            WITH due AS (
                SELECT d.id FROM {{schema}}.webhook_deliveries d
                WHERE d.status = 'pending' AND d.next_attempt_at <= now()
                ORDER BY d.next_attempt_at, d.id
                LIMIT batch
                FOR UPDATE SKIP LOCKED
            ), exhausted AS (
                UPDATE {{schema}}.webhook_deliveries d
                SET status = 'failed', finished_at = now(),
                    last_error = 'no outcome recorded after ' || d.attempts || ' attempts'
                FROM due WHERE d.id = due.id AND d.attempts >= {TRIES}
            ), claimed AS (
                UPDATE {{schema}}.webhook_deliveries d
                SET attempts = d.attempts + 1,
                    next_attempt_at = now() + make_interval(secs => lease_seconds)
                FROM due WHERE d.id = due.id AND d.attempts < {TRIES}
                RETURNING d.id, d.workspace_id, d.endpoint_id, d.message_id, d.event_type,
                          d.payload, d.attempts, d.created_at
            )
            SELECT c.id, c.workspace_id, c.endpoint_id, c.message_id::text,
                   c.event_type::text, c.payload, c.attempts, c.created_at, e.url::text,
                   e.enabled, e.secret_nonce,
                   CASE WHEN e.previous_valid_until > now() THEN e.previous_nonce END
            FROM claimed c JOIN {{schema}}.webhook_endpoints e ON e.id = c.endpoint_id;
        END $$
        """
    )
    # Disable an endpoint (maintenance: the worker, on a 410 or after days of failures)
    # and mail its workspace's owners and admins. Whether it was enabled until now.
    in_current_schema(
        f"""
        CREATE FUNCTION {{schema}}.taskmanager_disable_webhook_endpoint(
            endpoint uuid, reason text)
        RETURNS boolean
        LANGUAGE plpgsql VOLATILE SECURITY DEFINER {PIN}
        AS $$
        DECLARE
            disabled record;
        BEGIN
            IF {{schema}}.taskmanager_purpose() IS DISTINCT FROM 'maintenance' THEN
                RAISE EXCEPTION 'taskmanager_disable_webhook_endpoint: only for maintenance'
                    USING ERRCODE = '42501';
            END IF;
            UPDATE {{schema}}.webhook_endpoints e
            SET enabled = false, disabled_reason = left(reason, 200), disabled_at = now(),
                version = e.version + 1, updated_at = now()
            WHERE e.id = endpoint AND e.enabled
            RETURNING e.id, e.workspace_id, e.url INTO disabled;
            IF NOT FOUND THEN
                RETURN false;
            END IF;
            INSERT INTO {{schema}}.outbox (kind, payload)
            SELECT 'mail.webhook_disabled', jsonb_build_object(
                       'to', u.email, 'name', u.display_name, 'workspace', w.name,
                       'workspace_id', w.id, 'endpoint_id', disabled.id, 'url', disabled.url,
                       'reason', left(reason, 200))
            FROM {{schema}}.memberships m
            JOIN {{schema}}.users u ON u.id = m.user_id AND u.is_active
            JOIN {{schema}}.workspaces w ON w.id = m.workspace_id
            WHERE m.workspace_id = disabled.workspace_id AND m.role IN ('owner', 'admin');
            RETURN true;
        END $$
        """
    )


def upgrade() -> None:
    _tables()
    _functions()
    for function in CALLED:
        op.execute(f"REVOKE ALL ON FUNCTION {function} FROM PUBLIC")
        grant_to_caller(f"EXECUTE ON FUNCTION {{schema}}.{function}")
    op.execute(
        f"CREATE TRIGGER {TRIGGER} AFTER INSERT ON activity FOR EACH ROW EXECUTE FUNCTION {FAN_OUT}"
    )


def downgrade() -> None:
    op.execute(f"DROP TRIGGER {TRIGGER} ON activity")
    op.execute("DELETE FROM outbox WHERE kind = 'mail.webhook_disabled'")
    op.drop_table("webhook_attempts")
    op.drop_table("webhook_deliveries")
    op.drop_table("webhook_endpoints")
    for function in (*CALLED, FAN_OUT):
        op.execute(f"DROP FUNCTION {function}")
