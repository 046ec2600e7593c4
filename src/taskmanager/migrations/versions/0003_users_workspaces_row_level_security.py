"""users, workspaces and memberships; tasks and categories in workspaces; row-level security

Every existing task and category moves to one workspace, "Shared (from before accounts)",
which has no members yet: the first account made with `taskmanager users create` (an
operator's command, not the public registration) becomes its owner.
Idempotency keys from before accounts cannot be attributed to anyone and are dropped (they
only live for a day).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 11:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

REQUEST_ROLE = "taskmanager_request"
SHARED_WORKSPACE_NAME = "Shared (from before accounts)"
TENANT_TABLES = ("workspaces", "tasks", "categories", "idempotency_keys")


def _now() -> sa.Column[object]:
    return sa.Column(
        "created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
    )


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("display_name", sa.String(length=100), nullable=False),
        sa.Column("password_hash", sa.Text(), nullable=False),
        sa.Column("is_active", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("personal_workspace_id", sa.Integer(), nullable=True),
        _now(),
        sa.Column(
            "password_changed_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name="pk_users"),
    )
    op.create_index(
        "uq_users_email_lower", "users", [sa.literal_column("lower(email)")], unique=True
    )
    op.create_table(
        "workspaces",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("created_by", sa.Integer(), nullable=True),
        sa.Column("personal", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        _now(),
        sa.Column("version", sa.Integer(), server_default=sa.text("1"), nullable=False),
        sa.CheckConstraint("char_length(btrim(name)) > 0", name="ck_workspaces_name_not_blank"),
        sa.ForeignKeyConstraint(
            ["created_by"], ["users.id"], name="fk_workspaces_created_by_users", ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_workspaces"),
    )
    op.create_foreign_key(
        "fk_users_personal_workspace_id_workspaces",
        "users",
        "workspaces",
        ["personal_workspace_id"],
        ["id"],
        ondelete="SET NULL",
    )
    op.create_table(
        "memberships",
        sa.Column("workspace_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(length=10), nullable=False),
        _now(),
        sa.CheckConstraint("role IN ('owner', 'member')", name="ck_memberships_role_known"),
        sa.ForeignKeyConstraint(
            ["workspace_id"],
            ["workspaces.id"],
            name="fk_memberships_workspace_id_workspaces",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name="fk_memberships_user_id_users", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("workspace_id", "user_id", name="pk_memberships"),
    )
    op.create_index("ix_memberships_user_id", "memberships", ["user_id"])
    op.create_table(
        "unclaimed_workspaces",
        sa.Column("workspace_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["workspace_id"],
            ["workspaces.id"],
            name="fk_unclaimed_workspaces_workspace_id_workspaces",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("workspace_id", name="pk_unclaimed_workspaces"),
    )
    op.create_table(
        "auth_sessions",
        sa.Column("id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        _now(),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_reason", sa.String(length=40), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name="fk_auth_sessions_user_id_users", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_auth_sessions"),
    )
    op.create_index("ix_auth_sessions_user_id", "auth_sessions", ["user_id"])
    op.create_table(
        "refresh_tokens",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("session_id", postgresql.UUID(as_uuid=True), nullable=False),
        _now(),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["auth_sessions.id"],
            name="fk_refresh_tokens_session_id_auth_sessions",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("token_hash", name="pk_refresh_tokens"),
    )
    op.create_index("ix_refresh_tokens_session_id", "refresh_tokens", ["session_id"])
    op.create_table(
        "login_failures",
        sa.Column("key", sa.String(length=400), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("window_started_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_login_failures"),
    )

    # ── existing rows move to a workspace the first account takes over ──
    op.add_column("categories", sa.Column("workspace_id", sa.Integer(), nullable=True))
    op.add_column("tasks", sa.Column("workspace_id", sa.Integer(), nullable=True))
    op.execute(
        f"""
        WITH shared AS (
            INSERT INTO workspaces (name)
            SELECT '{SHARED_WORKSPACE_NAME}'
            WHERE EXISTS (SELECT FROM tasks) OR EXISTS (SELECT FROM categories)
            RETURNING id
        ), claimable AS (
            INSERT INTO unclaimed_workspaces (workspace_id) SELECT id FROM shared
        ), moved_categories AS (
            UPDATE categories SET workspace_id = (SELECT id FROM shared)
        )
        UPDATE tasks SET workspace_id = (SELECT id FROM shared)
        """
    )
    for table in ("categories", "tasks"):
        op.alter_column(table, "workspace_id", nullable=False)
        op.create_foreign_key(
            f"fk_{table}_workspace_id_workspaces",
            table,
            "workspaces",
            ["workspace_id"],
            ["id"],
            ondelete="CASCADE",
        )
    op.drop_index("uq_categories_name_lower", table_name="categories")
    op.create_index(
        "uq_categories_workspace_id_name_lower",
        "categories",
        ["workspace_id", sa.literal_column("lower(name)")],
        unique=True,
    )
    op.create_unique_constraint(
        "uq_categories_id_workspace_id", "categories", ["id", "workspace_id"]
    )
    # A task's category must be in the task's workspace: PostgreSQL checks it, and deleting
    # the category clears only category_id (SET NULL with a column list: PostgreSQL 15+).
    op.drop_constraint("fk_tasks_category_id_categories", "tasks", type_="foreignkey")
    op.execute(
        "ALTER TABLE tasks ADD CONSTRAINT fk_tasks_category_id_categories "
        "FOREIGN KEY (category_id, workspace_id) REFERENCES categories (id, workspace_id) "
        "ON DELETE SET NULL (category_id)"
    )
    op.create_index(
        "ix_tasks_workspace_id_created_at_id", "tasks", ["workspace_id", "created_at", "id"]
    )

    op.execute("DELETE FROM idempotency_keys")
    op.add_column("idempotency_keys", sa.Column("user_id", sa.Integer(), nullable=False))
    op.create_foreign_key(
        "fk_idempotency_keys_user_id_users",
        "idempotency_keys",
        "users",
        ["user_id"],
        ["id"],
        ondelete="CASCADE",
    )
    op.drop_constraint("pk_idempotency_keys", "idempotency_keys", type_="primary")
    op.create_primary_key("pk_idempotency_keys", "idempotency_keys", ["user_id", "scope", "key"])

    _row_level_security()


def _row_level_security() -> None:
    """The request role, the functions the policies use, and the policies.

    Requests switch to REQUEST_ROLE (SET LOCAL ROLE, in their transaction): not the owner of
    any table and without BYPASSRLS, so every policy applies to them. Tenant tables also
    FORCE row-level security, so even their owner goes through the policies.

    `memberships` is the authority the policies consult, through SECURITY DEFINER functions
    owned by the tables' owner: its policies apply to the request role, but it does not
    FORCE them on its owner, or a policy would consult itself without end.
    """
    # The request role of this revision was one role for the whole cluster; since 0008
    # every deployment has a caller role of its own, so a database migrated today grants
    # the shared role nothing unless it exists already (from a deployment migrated before).
    _for_request_role("GRANT USAGE ON SCHEMA {schema} TO " + REQUEST_ROLE)
    _for_request_role(
        "GRANT SELECT, INSERT, UPDATE, DELETE ON tasks, categories, workspaces, memberships, "
        f"idempotency_keys TO {REQUEST_ROLE}"
    )
    # Column by column: the request role never reads a password hash (not even a
    # co-member's, whom the policy lets it see); a password change reads the caller's own
    # through taskmanager_own_password_hash().
    _for_request_role(
        "GRANT SELECT (id, email, display_name, is_active, personal_workspace_id, created_at, "
        f"password_changed_at), UPDATE (display_name, password_hash, password_changed_at, "
        "personal_workspace_id) "
        f"ON users TO {REQUEST_ROLE}"
    )
    _for_request_role(f"GRANT SELECT, UPDATE ON auth_sessions, refresh_tokens TO {REQUEST_ROLE}")
    _for_request_role(f"GRANT SELECT, DELETE ON unclaimed_workspaces TO {REQUEST_ROLE}")
    _for_request_role(
        "GRANT USAGE ON SEQUENCE tasks_id_seq, categories_id_seq, workspaces_id_seq "
        f"TO {REQUEST_ROLE}"
    )

    op.execute(
        """
        CREATE FUNCTION taskmanager_user_id() RETURNS integer
        LANGUAGE sql STABLE PARALLEL SAFE
        AS $$ SELECT NULLIF(current_setting('taskmanager.user_id', true), '')::integer $$
        """
    )
    for name, condition in (
        ("taskmanager_workspace_ids", "true"),
        ("taskmanager_owned_workspace_ids", "role = 'owner'"),
    ):
        _in_current_schema(
            f"""
            CREATE FUNCTION {name}() RETURNS integer[]
            LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
            AS $$ SELECT coalesce(array_agg(workspace_id), '{{}}') FROM {{schema}}.memberships
                  WHERE user_id = {{schema}}.taskmanager_user_id() AND {condition} $$
            """
        )
    _in_current_schema(
        """
        CREATE FUNCTION taskmanager_workspace_has_members(workspace integer) RETURNS boolean
        LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
        AS $$ SELECT EXISTS (SELECT FROM {schema}.memberships WHERE workspace_id = workspace) $$
        """
    )
    _in_current_schema(
        """
        CREATE FUNCTION taskmanager_user_id_by_email(address text) RETURNS integer
        LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
        AS $$ SELECT id FROM {schema}.users WHERE lower(email) = lower(address) $$
        """
    )
    _in_current_schema(
        """
        CREATE FUNCTION taskmanager_own_password_hash() RETURNS text
        LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
        AS $$ SELECT password_hash FROM {schema}.users
              WHERE id = {schema}.taskmanager_user_id() $$
        """
    )
    for function in (
        "taskmanager_own_password_hash()",
        "taskmanager_workspace_ids()",
        "taskmanager_owned_workspace_ids()",
        "taskmanager_workspace_has_members(integer)",
        "taskmanager_user_id_by_email(text)",
    ):
        op.execute(f"REVOKE ALL ON FUNCTION {function} FROM PUBLIC")
        _for_request_role(f"GRANT EXECUTE ON FUNCTION {function} TO {REQUEST_ROLE}")

    mine = "= ANY ((SELECT taskmanager_workspace_ids())::integer[])"
    owned = "= ANY ((SELECT taskmanager_owned_workspace_ids())::integer[])"
    me = "= taskmanager_user_id()"
    policies = {
        "workspaces": [
            f"workspaces_read ON workspaces FOR SELECT USING (id {mine})",
            f"workspaces_create ON workspaces FOR INSERT WITH CHECK (created_by {me})",
            f"workspaces_change ON workspaces FOR UPDATE USING (id {owned}) "
            f"WITH CHECK (id {owned})",
            f"workspaces_delete ON workspaces FOR DELETE USING (id {owned})",
        ],
        "tasks": [
            f"tasks_in_my_workspaces ON tasks USING (workspace_id {mine}) "
            f"WITH CHECK (workspace_id {mine})"
        ],
        "categories": [
            f"categories_in_my_workspaces ON categories USING (workspace_id {mine}) "
            f"WITH CHECK (workspace_id {mine})"
        ],
        "idempotency_keys": [
            f"idempotency_keys_mine ON idempotency_keys USING (user_id {me}) "
            f"WITH CHECK (user_id {me})",
            # Expired keys are anyone's to purge (`taskmanager db purge-keys`).
            "idempotency_keys_expired ON idempotency_keys FOR DELETE USING (expires_at <= now())",
        ],
        "memberships": [
            f"memberships_read ON memberships FOR SELECT USING (workspace_id {mine})",
            # Owners add people; a caller becomes the first owner of a workspace they created.
            f"memberships_create ON memberships FOR INSERT WITH CHECK (workspace_id {owned} "
            f"OR (user_id {me} AND role = 'owner' "
            "AND NOT taskmanager_workspace_has_members(workspace_id)))",
            f"memberships_change ON memberships FOR UPDATE USING (workspace_id {owned}) "
            f"WITH CHECK (workspace_id {owned})",
            f"memberships_delete ON memberships FOR DELETE USING (workspace_id {owned} "
            f"OR user_id {me})",
        ],
        "users": [
            # Yourself and the people you share a workspace with (their memberships are
            # the ones the memberships policy shows you).
            f"users_read ON users FOR SELECT USING (id {me} "
            "OR id IN (SELECT user_id FROM memberships))",
            f"users_change ON users FOR UPDATE USING (id {me}) WITH CHECK (id {me})",
        ],
        "auth_sessions": [
            f"auth_sessions_mine ON auth_sessions USING (user_id {me}) WITH CHECK (user_id {me})"
        ],
        "refresh_tokens": [
            "refresh_tokens_mine ON refresh_tokens "
            "USING (session_id IN (SELECT id FROM auth_sessions))"
        ],
        "unclaimed_workspaces": ["unclaimed_workspaces_any ON unclaimed_workspaces USING (true)"],
    }
    for table, table_policies in policies.items():
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        if table in TENANT_TABLES:
            op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
        for policy in table_policies:
            op.execute(f"CREATE POLICY {policy}")


def _in_current_schema(statement: str) -> None:
    """Run `statement` with `{schema}` standing for the schema the migration runs in, as
    PostgreSQL names it (current_schema()) when the statement runs: nothing is asked of the
    server here, so `alembic upgrade head --sql` prints the same SQL without one."""
    assert "%" not in statement, statement  # format() would read it as a placeholder
    assert "$statement$" not in statement, statement
    template = statement.replace("{schema}", "%1$I")
    op.execute(
        f"DO $do$ BEGIN EXECUTE format($statement${template}$statement$, current_schema()); "
        "END $do$"
    )


def _for_request_role(statement: str) -> None:
    """Run `statement` (`{schema}` standing for the current schema) if the shared request
    role exists: see _row_level_security."""
    assert "$sql$" not in statement, statement
    assert "%" not in statement, statement
    template = statement.replace("{schema}", "%1$I")
    op.execute(
        f"DO $do$ BEGIN IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{REQUEST_ROLE}') "
        f"THEN EXECUTE format($sql${template}$sql$, current_schema()); END IF; END $do$"
    )


def downgrade() -> None:
    tables = (
        "workspaces",
        "tasks",
        "categories",
        "idempotency_keys",
        "memberships",
        "users",
        "auth_sessions",
        "refresh_tokens",
        "unclaimed_workspaces",
    )
    for table in tables:
        op.execute(f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
    # Every policy on these tables, looked up when the statement runs (also in --sql output).
    names = ", ".join(f"'{table}'" for table in tables)
    op.execute(
        f"""
        DO $do$ DECLARE p record; BEGIN
            FOR p IN SELECT policyname, tablename FROM pg_policies
                          WHERE schemaname = current_schema() AND tablename IN ({names})
            LOOP
                EXECUTE format('DROP POLICY %I ON %I', p.policyname, p.tablename);
            END LOOP;
        END $do$
        """
    )
    for function in (
        "taskmanager_own_password_hash()",
        "taskmanager_user_id_by_email(text)",
        "taskmanager_workspace_has_members(integer)",
        "taskmanager_owned_workspace_ids()",
        "taskmanager_workspace_ids()",
        "taskmanager_user_id()",
    ):
        op.execute(f"DROP FUNCTION {function}")
    # The role is shared by every database of the cluster: only this database's grants go.
    _for_request_role(f"REVOKE ALL ON ALL TABLES IN SCHEMA {{schema}} FROM {REQUEST_ROLE}")
    _for_request_role(f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA {{schema}} FROM {REQUEST_ROLE}")
    _for_request_role(f"REVOKE USAGE ON SCHEMA {{schema}} FROM {REQUEST_ROLE}")

    # Back to one pool of tasks: every workspace's rows stay, their owners are forgotten.
    op.drop_constraint("pk_idempotency_keys", "idempotency_keys", type_="primary")
    op.execute("DELETE FROM idempotency_keys")
    op.drop_column("idempotency_keys", "user_id")
    op.create_primary_key("pk_idempotency_keys", "idempotency_keys", ["scope", "key"])
    op.drop_index("ix_tasks_workspace_id_created_at_id", table_name="tasks")
    op.drop_constraint("fk_tasks_category_id_categories", "tasks", type_="foreignkey")
    op.drop_constraint("uq_categories_id_workspace_id", "categories", type_="unique")
    op.drop_index("uq_categories_workspace_id_name_lower", table_name="categories")
    # Names unique per workspace may clash once workspaces are gone: keep the oldest, and
    # move the tasks of the others to it (the foreign key is restored below).
    op.execute(
        "UPDATE tasks t SET category_id = (SELECT min(k.id) FROM categories k "
        "WHERE lower(k.name) = lower(c.name)) FROM categories c WHERE c.id = t.category_id"
    )
    op.execute(
        "DELETE FROM categories c USING categories older "
        "WHERE lower(older.name) = lower(c.name) AND older.id < c.id"
    )
    op.create_index(
        "uq_categories_name_lower", "categories", [sa.literal_column("lower(name)")], unique=True
    )
    op.create_foreign_key(
        "fk_tasks_category_id_categories",
        "tasks",
        "categories",
        ["category_id"],
        ["id"],
        ondelete="SET NULL",
    )
    op.drop_constraint("fk_tasks_workspace_id_workspaces", "tasks", type_="foreignkey")
    op.drop_constraint("fk_categories_workspace_id_workspaces", "categories", type_="foreignkey")
    op.drop_column("tasks", "workspace_id")
    op.drop_column("categories", "workspace_id")
    op.drop_constraint("fk_users_personal_workspace_id_workspaces", "users", type_="foreignkey")
    for table in (
        "login_failures",
        "refresh_tokens",
        "auth_sessions",
        "unclaimed_workspaces",
        "memberships",
        "workspaces",
        "users",
    ):
        op.drop_table(table)
