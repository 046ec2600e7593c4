"""four workspace roles, and what each may do, enforced by the policies

Before: a membership was `owner` or `member`; members changed anything in the workspace
but the workspace and its members, which only owners did (taskmanager_owned_workspace_ids).

After:
- A membership is `owner`, `admin`, `member` or `viewer`. What each may do is a matrix of
  roles and actions (tasks:read, tasks:write, members:write, workspaces:write), written
  once in taskmanager.security.roles and stored here in `role_permissions`, which the
  policies read; a test checks the table equals the Python matrix, so the matrix changes
  only with a migration (this one keeps its own copy, MATRIX: what a migration stored must
  not change when the code does).
- taskmanager_caller_permissions(): the caller's (workspace, action) pairs, from their
  memberships and the matrix. The one place the database decides what a caller may do in
  a workspace: a personal access token (entered with purpose 'token' and its scopes) will
  narrow it here, its role's actions and the token's scopes together, by replacing this
  function's body alone.
- taskmanager_workspace_ids_allowing(action): the workspaces where the caller may do
  `action`, an array computed once per statement (an InitPlan), as
  taskmanager_workspace_ids() is for reading.
- taskmanager_manageable_memberships(): the memberships ('<workspace>:<role>') the caller
  may give, change or remove: in a workspace where they may do members:write, of a role
  that can do nothing they cannot (an admin never makes, unmakes or removes an owner).
- taskmanager_workspace_roles(): the caller's role in each of their workspaces, as JSON,
  read in the service's first statement of a transaction beside taskmanager_enter, whose
  answer (and signature) stays as it was; like the door, anyone who may connect may call
  it (it answers only the sealed caller's own memberships).
- The policies: tasks, categories, labels and task_labels are read by any member, and
  inserted, changed or deleted only where the role allows tasks:write (the locked read a
  change starts with too: FOR UPDATE meets the UPDATE policy). Workspaces are changed and
  deleted only with workspaces:write; any member may lock one (where member additions
  queue), but an UPDATE by anyone else fails its WITH CHECK. Memberships are added,
  changed and removed as taskmanager_manageable_memberships() allows; anyone may delete
  their own (leaving); the first owner and the operator's claim stay as in 0008. The caller
  role may change a membership's role only (no other column).
- taskmanager_account_at_cap serves whoever may add members (members:write), not only
  owners.

The downgrade makes every admin and viewer a member (the two-role schema has nothing else).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-08 10:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from taskmanager.migrations.schema_statements import (
    PIN,
    grant_to_caller,
    in_current_schema,
    revoke_from_caller,
)

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# taskmanager.security.roles.PERMISSIONS as this revision stores it (weakest role first).
MATRIX: dict[str, tuple[str, ...]] = {
    "viewer": ("tasks:read",),
    "member": ("tasks:read", "tasks:write"),
    "admin": ("tasks:read", "tasks:write", "members:write"),
    "owner": ("tasks:read", "tasks:write", "members:write", "workspaces:write"),
}
ROLES = tuple(MATRIX)
OLD_ROLES = ("owner", "member")
# As 0003 named it (its explicit name went through the naming convention once more).
ROLE_KNOWN = "ck_memberships_ck_memberships_role_known"

CALLER_PERMISSIONS = "taskmanager_caller_permissions()"
WORKSPACE_IDS_ALLOWING = "taskmanager_workspace_ids_allowing(text)"
MANAGEABLE_MEMBERSHIPS = "taskmanager_manageable_memberships()"
WORKSPACE_ROLES = "taskmanager_workspace_roles()"

ME = "(SELECT taskmanager_user_id())"
PURPOSE = "(SELECT taskmanager_purpose())"
MINE = "= ANY ((SELECT taskmanager_workspace_ids())::integer[])"
OWNED = "= ANY ((SELECT taskmanager_owned_workspace_ids())::integer[])"


def allowing(action: str) -> str:
    """`= ANY (...)` of the workspaces where the caller may do `action`: computed once per
    statement (an InitPlan), never per row."""
    return f"= ANY ((SELECT taskmanager_workspace_ids_allowing('{action}'))::integer[])"


WRITABLE = allowing("tasks:write")
WORKSPACE_WRITABLE = allowing("workspaces:write")
# The membership a row is, against the ones the caller may manage (once per statement).
MANAGED = (
    "(workspace_id || ':' || role) = ANY ((SELECT taskmanager_manageable_memberships())::text[])"
)
# 0008's paths to a first owner and to the operator's claim, unchanged.
FIRST_OWNER = f"(user_id = {ME} AND role = 'owner' AND taskmanager_may_own_first(workspace_id))"
OPERATOR_CLAIM = (
    f"(user_id = {ME} AND role = 'owner' AND {PURPOSE} = 'operator' "
    "AND workspace_id IN (SELECT workspace_id FROM unclaimed_workspaces))"
)

# Tables of rows a workspace holds, each with 0003's or 0005's one policy for everything.
WORKSPACE_ROWS = ("tasks", "categories", "labels", "task_labels")


def _row_policies(table: str) -> dict[str, str | None]:
    return {
        f"{table}_in_my_workspaces": None,
        f"{table}_read": f"FOR SELECT USING (workspace_id {MINE})",
        f"{table}_add": f"FOR INSERT WITH CHECK (workspace_id {WRITABLE})",
        f"{table}_change": f"FOR UPDATE USING (workspace_id {WRITABLE}) "
        f"WITH CHECK (workspace_id {WRITABLE})",
        f"{table}_remove": f"FOR DELETE USING (workspace_id {WRITABLE})",
    }


POLICIES: dict[str, dict[str, str | None]] = {
    **{table: _row_policies(table) for table in WORKSPACE_ROWS},
    "workspaces": {
        # Any member may lock the row (member additions queue on it: the repository's
        # _LOCK_WORKSPACE); only workspaces:write passes WITH CHECK, so an UPDATE by anyone
        # else is refused, not just hidden.
        "workspaces_change": f"FOR UPDATE USING (id {MINE}) WITH CHECK (id {WORKSPACE_WRITABLE})",
        "workspaces_delete": f"FOR DELETE USING (id {WORKSPACE_WRITABLE})",
    },
    "memberships": {
        "memberships_create": f"FOR INSERT WITH CHECK ({MANAGED} OR {FIRST_OWNER} "
        f"OR {OPERATOR_CLAIM})",
        "memberships_change": f"FOR UPDATE USING ({MANAGED}) WITH CHECK ({MANAGED})",
        "memberships_delete": f"FOR DELETE USING (user_id = {ME} OR {MANAGED})",
    },
}
# What 0003, 0005 and 0008 had (for the downgrade).
OLD_POLICIES: dict[str, dict[str, str | None]] = {
    **{
        table: {
            **dict.fromkeys(_row_policies(table)),
            f"{table}_in_my_workspaces": f"USING (workspace_id {MINE}) "
            f"WITH CHECK (workspace_id {MINE})",
        }
        for table in WORKSPACE_ROWS
    },
    "workspaces": {
        "workspaces_change": f"FOR UPDATE USING (id {OWNED}) WITH CHECK (id {OWNED})",
        "workspaces_delete": f"FOR DELETE USING (id {OWNED})",
    },
    "memberships": {
        "memberships_create": f"FOR INSERT WITH CHECK (workspace_id {OWNED} "
        f"OR {FIRST_OWNER} OR {OPERATOR_CLAIM})",
        "memberships_change": f"FOR UPDATE USING (workspace_id {OWNED}) "
        f"WITH CHECK (workspace_id {OWNED})",
        "memberships_delete": f"FOR DELETE USING (workspace_id {OWNED} OR user_id = {ME})",
    },
}


def _role_known(roles: Sequence[str]) -> None:
    op.execute(f"ALTER TABLE memberships DROP CONSTRAINT {ROLE_KNOWN}")
    listed = ", ".join(f"'{role}'" for role in roles)
    op.execute(f"ALTER TABLE memberships ADD CONSTRAINT {ROLE_KNOWN} CHECK (role IN ({listed}))")


def _matrix() -> None:
    op.create_table(
        "role_permissions",
        sa.Column("role", sa.String(length=10), nullable=False),
        sa.Column("action", sa.String(length=40), nullable=False),
        sa.CheckConstraint(
            "role IN ({})".format(", ".join(f"'{role}'" for role in ROLES)),
            name=op.f("ck_role_permissions_role_known"),
        ),
        sa.PrimaryKeyConstraint("role", "action", name=op.f("pk_role_permissions")),
    )
    # Only the tables' owner reads it (the functions below, as SECURITY DEFINER).
    op.execute("REVOKE ALL ON role_permissions FROM PUBLIC")
    rows = ", ".join(
        f"('{role}', '{action}')" for role, actions in MATRIX.items() for action in actions
    )
    op.execute(f"INSERT INTO role_permissions (role, action) VALUES {rows}")


def _functions() -> None:
    # The caller's (workspace, action) pairs: every function below reads what a caller may
    # do from here, and nowhere else.
    in_current_schema(
        f"""
        CREATE FUNCTION {{schema}}.taskmanager_caller_permissions()
        RETURNS TABLE (workspace_id integer, action text)
        LANGUAGE sql STABLE {PIN}
        AS $$ SELECT m.workspace_id, p.action::text
              FROM {{schema}}.memberships m
              JOIN {{schema}}.role_permissions p ON p.role = m.role
              WHERE m.user_id = {{schema}}.taskmanager_user_id()
              -- A personal access token's scopes will narrow the role's actions here (its
              -- purpose 'token', its scopes in the sealed caller): nowhere else.
        $$
        """
    )
    in_current_schema(
        f"""
        CREATE FUNCTION {{schema}}.taskmanager_workspace_ids_allowing(action text)
        RETURNS integer[]
        LANGUAGE sql STABLE SECURITY DEFINER {PIN}
        AS $$ SELECT coalesce(array_agg(c.workspace_id ORDER BY c.workspace_id), '{{}}')
              FROM {{schema}}.taskmanager_caller_permissions() c
              WHERE c.action = taskmanager_workspace_ids_allowing.action $$
        """
    )
    in_current_schema(
        f"""
        CREATE FUNCTION {{schema}}.taskmanager_manageable_memberships() RETURNS text[]
        LANGUAGE sql STABLE SECURITY DEFINER {PIN}
        AS $$ WITH mine AS (
                  SELECT c.workspace_id, array_agg(c.action) AS actions
                  FROM {{schema}}.taskmanager_caller_permissions() c
                  GROUP BY c.workspace_id
              ), roles AS (
                  SELECT p.role::text AS role, array_agg(p.action::text) AS actions
                  FROM {{schema}}.role_permissions p
                  GROUP BY p.role
              )
              SELECT coalesce(array_agg(mine.workspace_id || ':' || roles.role), '{{}}')
              FROM mine CROSS JOIN roles
              WHERE 'members:write' = ANY (mine.actions) AND roles.actions <@ mine.actions $$
        """
    )
    in_current_schema(
        f"""
        CREATE FUNCTION {{schema}}.taskmanager_workspace_roles() RETURNS jsonb
        LANGUAGE sql STABLE SECURITY DEFINER {PIN}
        AS $$ SELECT coalesce(jsonb_object_agg(m.workspace_id, m.role), '{{}}')
              FROM {{schema}}.memberships m
              WHERE m.user_id = {{schema}}.taskmanager_user_id() $$
        """
    )


def _account_at_cap(who_may_add: str, only_for: str) -> None:
    """taskmanager_account_at_cap (0008), for a caller whose workspaces `who_may_add` (an
    array expression) lists the workspace."""
    in_current_schema(
        f"""
        CREATE OR REPLACE FUNCTION {{schema}}.taskmanager_account_at_cap(
            account integer, workspace integer, cap integer)
        RETURNS boolean
        LANGUAGE plpgsql VOLATILE SECURITY DEFINER {PIN}
        AS $$
        BEGIN
            IF NOT workspace = ANY ({who_may_add})
               OR EXISTS (SELECT FROM {{schema}}.memberships m
                          WHERE m.workspace_id = workspace AND m.user_id = account) THEN
                RAISE EXCEPTION 'taskmanager_account_at_cap: only for {only_for} adding '
                    'someone new to their workspace' USING ERRCODE = '42501';
            END IF;
            PERFORM FROM {{schema}}.users u WHERE u.id = account FOR NO KEY UPDATE;
            RETURN (SELECT count(*) >= cap FROM {{schema}}.memberships m
                    WHERE m.user_id = account);
        END $$
        """
    )


def _policies(policies: dict[str, dict[str, str | None]]) -> None:
    for table, table_policies in policies.items():
        for name, definition in table_policies.items():
            op.execute(f"DROP POLICY IF EXISTS {name} ON {table}")
            if definition is not None:
                op.execute(f"CREATE POLICY {name} ON {table} {definition}")


def upgrade() -> None:
    _role_known(ROLES)
    _matrix()
    _functions()
    _account_at_cap(
        "{schema}.taskmanager_workspace_ids_allowing('members:write')", "an admin or an owner"
    )
    _policies(POLICIES)
    for function in (CALLER_PERMISSIONS, WORKSPACE_IDS_ALLOWING, MANAGEABLE_MEMBERSHIPS):
        op.execute(f"REVOKE ALL ON FUNCTION {function} FROM PUBLIC")
    # The policies call these; the caller never calls taskmanager_caller_permissions()
    # itself (the functions above do, as the owner).
    for function in (WORKSPACE_IDS_ALLOWING, MANAGEABLE_MEMBERSHIPS):
        grant_to_caller(f"EXECUTE ON FUNCTION {{schema}}.{function}")
    # The service's first statement calls this beside taskmanager_enter, before it switches
    # to the caller role: for PUBLIC, as the door itself (only the service's login may
    # connect, 0008). It answers the sealed caller's own roles, nobody else's.
    op.execute(f"REVOKE ALL ON FUNCTION {WORKSPACE_ROLES} FROM PUBLIC")
    op.execute(f"GRANT EXECUTE ON FUNCTION {WORKSPACE_ROLES} TO PUBLIC")
    # A membership changes its role, nothing else: not whose it is, nor where.
    revoke_from_caller("UPDATE ON {schema}.memberships")
    grant_to_caller("UPDATE (role) ON {schema}.memberships")


def downgrade() -> None:
    revoke_from_caller("UPDATE (role) ON {schema}.memberships")
    grant_to_caller("UPDATE ON {schema}.memberships")
    _policies(OLD_POLICIES)
    _account_at_cap("{schema}.taskmanager_owned_workspace_ids()", "an owner")
    for function in (WORKSPACE_ROLES, MANAGEABLE_MEMBERSHIPS, WORKSPACE_IDS_ALLOWING):
        op.execute(f"DROP FUNCTION {function}")
    op.execute(f"DROP FUNCTION {CALLER_PERMISSIONS}")
    op.drop_table("role_permissions")
    op.execute("UPDATE memberships SET role = 'member' WHERE role IN ('admin', 'viewer')")
    _role_known(OLD_ROLES)
