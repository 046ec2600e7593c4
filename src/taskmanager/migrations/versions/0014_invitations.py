"""invitations by mail: nobody becomes a member of a workspace without accepting

Before: an admin or an owner added any account by its address (POST
/workspaces/{id}/members), through `taskmanager_user_id_by_email` (which told anyone logged
in whether an address has an account) and `taskmanager_account_at_cap`; the memberships'
INSERT policy let a manager insert anyone's membership.

After:
- `invitations`: a workspace's invitation of an address, with a role, mailed with a link
  whose token is derived from the row's id (taskmanager.security.mail_tokens, as 0012's
  account tokens are) and kept only as its SHA-256. It is open until accepted, declined or
  revoked (at most one of the three: a CHECK), and usable until `expires_at`. `send_count`
  and `last_sent_at` count its mails (the resend limits).
- A row is written only by `taskmanager_record_invitation` (the invitation and its mail's
  outbox row, with the service's proof, like 0012's taskmanager_record_mail) and re-mailed
  only by `taskmanager_resend_invitation`: the caller role has no INSERT on either table,
  so SQL in a request can neither plant a token hash nor mail anyone. Both check that the
  caller may give the invitation's role in its workspace (0010's
  taskmanager_manageable_memberships: an admin never invites an owner).
- Who sees and changes which row (policies; the caller role may SELECT every column and
  UPDATE accepted_at, declined_at and revoked_at only): the workspace's managers
  (members:write) see its invitations and may revoke those of a role they manage; the
  invitee (the caller's own VERIFIED address, any case: `taskmanager_caller_verified_email`,
  since users' rows are column-granted and email_verified_at is the account's word) sees
  theirs and may accept or decline an open, unexpired one (its moment the transaction's
  now()). A closed row is nobody's to change (the USING clauses see open rows only), so
  every answer is final. A personal access token's caller is a manager only: a restrictive
  policy limits it to the invitations of the workspaces where it may do members:write,
  which it never answers, and it has no verified address (nothing of the invitee's side).
- The memberships' INSERT policy: the first owner and the operator's claim as before, and
  an invitee's own membership, only with exactly the role of an invitation of their verified
  address that they accepted in this very transaction (`taskmanager_invited_as`: accepted_at
  is the transaction's now(); the service marks the invitation accepted, then joins). So a
  join always closes its invitation, and an invitation lets its invitee in once: removed
  later, they need a new one. Managers no longer insert anyone's membership: request SQL
  cannot join a workspace, nor be joined to one, without an invitation accepted by its
  invitee.
- `taskmanager_invitee_member_count`: the count of the workspace's members (which they
  cannot see yet) for an invitee who accepted in this transaction, its row locked
  (accepting queues behind other additions), for the cap on members;
  `taskmanager_my_invitations`: the caller's open invitations with the workspace's name and
  the inviter's display name (neither visible to them yet; none for a token's caller).
- `taskmanager_user_id_by_email` and `taskmanager_account_at_cap` are dropped: nothing adds
  an account by its address any more, and no caller learns whether an address has one.
- Every change of an invitation is logged (0011's trigger; its address and token hash
  omitted: the log is every member's to read, the invitations are the managers'):
  invitation.created, .accepted, .declined, .revoked, .resent. Its deletion is not: an
  invitation leaves only with its workspace (which 0011 logs as workspace.deleted) or by
  the purge below, which is housekeeping, not a change of anyone's (the log keeps the
  invitation's history).
- `taskmanager_purge_invitations(kept_days)`: `taskmanager db purge-mail-tokens` deletes
  the invitations closed (accepted, declined, revoked) or expired more than `kept_days`
  ago (at least one), for a transaction entered for 'maintenance' only.

The downgrade drops the table (the invitations are lost; the memberships they made stay)
and restores 0010's policy and 0008's and 0010's functions.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07 18:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from taskmanager.migrations.schema_statements import (
    PIN,
    grant_to_caller,
    hmac,
    in_current_schema,
    refuse_a_tampered_session,
)

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ROLES = ("viewer", "member", "admin", "owner")
# Longest an invitation may be made to last, whatever the service asks (30 days).
MAX_LIFETIME_SECONDS = 30 * 24 * 3600

VERIFIED_EMAIL = "taskmanager_caller_verified_email()"
INVITED_AS = "taskmanager_invited_as(integer, text)"
INVITEE_MEMBER_COUNT = "taskmanager_invitee_member_count(integer)"
MY_INVITATIONS = "taskmanager_my_invitations()"
RECORD_INVITATION = (
    "taskmanager_record_invitation(uuid, integer, text, text, text, integer, bigint, text)"
)
RESEND_INVITATION = "taskmanager_resend_invitation(uuid, bigint, text)"
PURGE_INVITATIONS = "taskmanager_purge_invitations(integer)"
FUNCTIONS = (
    VERIFIED_EMAIL,
    INVITED_AS,
    INVITEE_MEMBER_COUNT,
    MY_INVITATIONS,
    RECORD_INVITATION,
    RESEND_INVITATION,
    PURGE_INVITATIONS,
)
USER_ID_BY_EMAIL = "taskmanager_user_id_by_email(text)"
ACCOUNT_AT_CAP = "taskmanager_account_at_cap(integer, integer, integer)"

INVITATIONS_GRANT = "SELECT, UPDATE (accepted_at, declined_at, revoked_at) ON {schema}.invitations"

ME = "(SELECT taskmanager_user_id())"
PURPOSE = "(SELECT taskmanager_purpose())"
MY_VERIFIED_EMAIL = "(SELECT taskmanager_caller_verified_email())"
OPEN = "accepted_at IS NULL AND declined_at IS NULL AND revoked_at IS NULL"
# The membership an invitation would give, against those the caller may manage (0010).
MANAGED = (
    "(workspace_id || ':' || role) = ANY ((SELECT taskmanager_manageable_memberships())::text[])"
)
MANAGER = (
    "workspace_id = ANY ((SELECT taskmanager_workspace_ids_allowing('members:write'))::integer[])"
)
FIRST_OWNER = f"(user_id = {ME} AND role = 'owner' AND taskmanager_may_own_first(workspace_id))"
OPERATOR_CLAIM = (
    f"(user_id = {ME} AND role = 'owner' AND {PURPOSE} = 'operator' "
    "AND workspace_id IN (SELECT workspace_id FROM unclaimed_workspaces))"
)
INVITED = f"(user_id = {ME} AND taskmanager_invited_as(workspace_id, role))"

POLICIES: dict[str, str] = {
    "invitations_of_managed_workspaces": f"FOR SELECT USING ({MANAGER})",
    "invitations_of_mine": f"FOR SELECT USING (lower(email) = {MY_VERIFIED_EMAIL})",
    # A manager revokes an open invitation of a role they may give, and nothing else (an
    # answer is the invitee's).
    "invitations_revoke": f"FOR UPDATE USING ({MANAGED} AND {OPEN}) "
    f"WITH CHECK ({MANAGED} AND accepted_at IS NULL AND declined_at IS NULL)",
    # The invitee answers an open, unexpired invitation of their verified address, now
    # (the moment is the transaction's: taskmanager_invited_as reads it).
    "invitations_answer": f"FOR UPDATE USING (lower(email) = {MY_VERIFIED_EMAIL} AND {OPEN} "
    f"AND expires_at > now()) WITH CHECK (lower(email) = {MY_VERIFIED_EMAIL} "
    "AND revoked_at IS NULL AND (accepted_at IS NULL OR accepted_at = now()) "
    "AND (declined_at IS NULL OR declined_at = now()))",
    # A personal access token's caller is only ever on the managers' side: it sees and
    # revokes the invitations of the workspaces where it may do members:write (its scopes,
    # its workspace if bound), and never answers one (taskmanager_caller_verified_email
    # is NULL for it as well).
    "invitations_of_a_token": f"AS RESTRICTIVE USING ({PURPOSE} IS DISTINCT FROM 'token' "
    f"OR {MANAGER}) WITH CHECK ({PURPOSE} IS DISTINCT FROM 'token' OR ({MANAGER} "
    "AND accepted_at IS NULL AND declined_at IS NULL))",
}
MEMBERSHIPS_CREATE = f"FOR INSERT WITH CHECK ({FIRST_OWNER} OR {OPERATOR_CLAIM} OR {INVITED})"
# 0010's.
OLD_MEMBERSHIPS_CREATE = f"FOR INSERT WITH CHECK ({MANAGED} OR {FIRST_OWNER} OR {OPERATOR_CLAIM})"

# 0011's trigger: one statement logs every change (see 0011's LOGGED for the options).
LOG_INVITATIONS = (
    "invitation",
    "id",
    "workspace_id",
    "omit=token_hash",
    "omit=email",
    "omit=last_sent_at",
    "insert=created",
    "update.accepted_at=accepted",
    "update.declined_at=declined",
    "update.revoked_at=revoked",
    "update.send_count=resent",
)
TRIGGER = "taskmanager_activity"


def _table() -> None:
    op.create_table(
        "invitations",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("workspace_id", sa.Integer(), nullable=False),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("role", sa.String(10), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("invited_by", sa.Integer(), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("accepted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("declined_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("send_count", sa.Integer(), server_default=sa.text("1"), nullable=False),
        sa.Column(
            "last_sent_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.CheckConstraint(
            "role IN ({})".format(", ".join(f"'{role}'" for role in ROLES)),
            name=op.f("ck_invitations_role_known"),
        ),
        sa.CheckConstraint(
            "num_nonnulls(accepted_at, declined_at, revoked_at) <= 1",
            name=op.f("ck_invitations_one_answer"),
        ),
        sa.ForeignKeyConstraint(
            ["workspace_id"],
            ["workspaces.id"],
            name=op.f("fk_invitations_workspace_id_workspaces"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["invited_by"],
            ["users.id"],
            name=op.f("fk_invitations_invited_by_users"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_invitations")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_invitations_token_hash")),
    )
    # A workspace's invitations newest first; an invitee's by address (any case).
    op.create_index(
        "ix_invitations_workspace_id_created_at", "invitations", ["workspace_id", "created_at"]
    )
    op.create_index("ix_invitations_email_lower", "invitations", [sa.text("lower(email)")])


def _mail_payload(row: str, minutes: str) -> str:
    """The outbox payload of an invitation's mail (no secret: the token is derived again
    from `token_id` when the mail is sent)."""
    return f"""jsonb_build_object(
                'to', {row}.email, 'name', {row}.email, 'token_id', {row}.id,
                'workspace', (SELECT w.name FROM {{schema}}.workspaces w
                              WHERE w.id = {row}.workspace_id),
                'inviter', (SELECT u.display_name FROM {{schema}}.users u
                            WHERE u.id = {{schema}}.taskmanager_user_id()),
                'role', {row}.role, 'valid_minutes', {minutes})"""


def _functions() -> None:
    # The caller's own address in lower case, if they proved it (0012's email_verified_at)
    # and the account is active; NULL otherwise, and always for a personal access token's
    # caller: the invitee's side (seeing, answering, joining) is a login's only, and every
    # path to it goes through this address. taskmanager_user_id() checks the seal.
    in_current_schema(
        f"""
        CREATE FUNCTION {{schema}}.taskmanager_caller_verified_email() RETURNS text
        LANGUAGE sql STABLE SECURITY DEFINER {PIN}
        AS $$ SELECT lower(u.email) FROM {{schema}}.users u
              WHERE u.id = {{schema}}.taskmanager_user_id()
                AND u.email_verified_at IS NOT NULL AND u.is_active
                AND {{schema}}.taskmanager_purpose() IS DISTINCT FROM 'token' $$
        """
    )
    # Whether the caller accepted, in this very transaction (accepted_at is its now()), an
    # invitation to `workspace` as exactly `invited_role` (the memberships' INSERT policy):
    # a join always closes its invitation, and one invitation lets its invitee in once
    # (removed later, they need a new one).
    in_current_schema(
        f"""
        CREATE FUNCTION {{schema}}.taskmanager_invited_as(workspace integer, invited_role text)
        RETURNS boolean
        LANGUAGE sql STABLE SECURITY DEFINER {PIN}
        AS $$ SELECT EXISTS (
                  SELECT FROM {{schema}}.invitations i
                  WHERE i.workspace_id = workspace AND i.role = invited_role
                    AND lower(i.email) = {{schema}}.taskmanager_caller_verified_email()
                    AND i.accepted_at = now() AND i.expires_at > now()) $$
        """
    )
    # Accepting: how many members `workspace` has, its row locked until the transaction
    # ends (additions to one workspace queue there, as 0010's repository code locks it).
    # Only for a caller who accepted an invitation there in this transaction (the service
    # marks it accepted first, then joins); nothing else about it.
    in_current_schema(
        f"""
        CREATE FUNCTION {{schema}}.taskmanager_invitee_member_count(workspace integer)
        RETURNS integer
        LANGUAGE plpgsql VOLATILE SECURITY DEFINER {PIN}
        AS $$
        BEGIN
            IF NOT EXISTS (
                    SELECT FROM {{schema}}.invitations i
                    WHERE i.workspace_id = workspace
                      AND lower(i.email) = {{schema}}.taskmanager_caller_verified_email()
                      AND i.accepted_at = now() AND i.expires_at > now()) THEN
                RAISE EXCEPTION 'taskmanager_invitee_member_count: only for an invitee who '
                    'accepted an invitation to the workspace in this transaction'
                    USING ERRCODE = '42501';
            END IF;
            PERFORM FROM {{schema}}.workspaces w WHERE w.id = workspace FOR NO KEY UPDATE;
            RETURN (SELECT count(*) FROM {{schema}}.memberships m
                    WHERE m.workspace_id = workspace);
        END $$
        """
    )
    # The caller's open, unexpired invitations, with what they cannot see yet: the
    # workspace's name and the inviter's display name. None for a token's caller (no
    # verified address).
    in_current_schema(
        f"""
        CREATE FUNCTION {{schema}}.taskmanager_my_invitations()
        RETURNS TABLE (id uuid, workspace_id integer, workspace_name text, role text,
                       invited_by_name text, created_at timestamp with time zone,
                       expires_at timestamp with time zone)
        LANGUAGE sql STABLE SECURITY DEFINER {PIN}
        AS $$ SELECT i.id, i.workspace_id, w.name::text, i.role::text,
                     u.display_name::text, i.created_at, i.expires_at
              FROM {{schema}}.invitations i
              JOIN {{schema}}.workspaces w ON w.id = i.workspace_id
              LEFT JOIN {{schema}}.users u ON u.id = i.invited_by
              WHERE lower(i.email) = {{schema}}.taskmanager_caller_verified_email()
                AND i.accepted_at IS NULL AND i.declined_at IS NULL
                AND i.revoked_at IS NULL AND i.expires_at > now()
              ORDER BY i.created_at DESC, i.id $$
        """
    )
    # Invite: the invitation (its token's hash only) and its mail's outbox row, in the
    # caller's transaction, with the service's proof over every argument (15 minutes at
    # most), for a caller who may give `invited_role` in `workspace`.
    in_current_schema(
        f"""
        CREATE FUNCTION {{schema}}.taskmanager_record_invitation(
            invitation_id uuid, workspace integer, address text, invited_role text,
            token_hash text, lifetime_seconds integer, valid_until bigint, proof text)
        RETURNS void
        LANGUAGE plpgsql VOLATILE SECURITY DEFINER {PIN}
        AS $$
        DECLARE
            key record;
            made record;
            lifetime integer := least(greatest(lifetime_seconds, 60), {MAX_LIFETIME_SECONDS});
        BEGIN
            {refuse_a_tampered_session("taskmanager_record_invitation")}
            SELECT k.inner_pad, k.outer_pad INTO key FROM {{schema}}.caller_key k;
            IF proof IS NULL OR proof IS DISTINCT FROM {
            hmac(
                "format('invitation|%s|%s|%s|%s|%s|%s|%s', invitation_id, workspace, address, "
                "invited_role, taskmanager_record_invitation.token_hash, lifetime_seconds, "
                "valid_until)"
            )
        }
               OR valid_until < extract(epoch FROM now())
               OR valid_until > extract(epoch FROM now()) + 900 THEN
                RAISE EXCEPTION 'taskmanager_record_invitation: the proof is not valid'
                    USING ERRCODE = '42501';
            END IF;
            IF NOT (workspace || ':' || invited_role)
                   = ANY ({{schema}}.taskmanager_manageable_memberships()) THEN
                RAISE EXCEPTION 'taskmanager_record_invitation: only for a caller who may '
                    'give this role in this workspace' USING ERRCODE = '42501';
            END IF;
            INSERT INTO {{schema}}.invitations
                (id, workspace_id, email, role, token_hash, invited_by, expires_at)
            VALUES (invitation_id, workspace, address, invited_role,
                    taskmanager_record_invitation.token_hash,
                    {{schema}}.taskmanager_user_id(), now() + make_interval(secs => lifetime))
            RETURNING * INTO made;
            INSERT INTO {{schema}}.outbox (kind, payload)
            VALUES ('mail.invitation', {_mail_payload("made", "lifetime / 60")});
        END $$
        """
    )
    # Resend: mail an open, unexpired invitation of a role the caller may give once more
    # (the same link), counted. Whether it did. The limits are the service's (checked on
    # the row, locked, before): the proof says the service asked.
    in_current_schema(
        f"""
        CREATE FUNCTION {{schema}}.taskmanager_resend_invitation(
            invitation_id uuid, valid_until bigint, proof text)
        RETURNS boolean
        LANGUAGE plpgsql VOLATILE SECURITY DEFINER {PIN}
        AS $$
        DECLARE
            key record;
            sent record;
        BEGIN
            {refuse_a_tampered_session("taskmanager_resend_invitation")}
            SELECT k.inner_pad, k.outer_pad INTO key FROM {{schema}}.caller_key k;
            IF proof IS NULL OR proof IS DISTINCT FROM {
            hmac("format('invitation-resend|%s|%s', invitation_id, valid_until)")
        }
               OR valid_until < extract(epoch FROM now())
               OR valid_until > extract(epoch FROM now()) + 900 THEN
                RAISE EXCEPTION 'taskmanager_resend_invitation: the proof is not valid'
                    USING ERRCODE = '42501';
            END IF;
            UPDATE {{schema}}.invitations i
            SET send_count = i.send_count + 1, last_sent_at = now()
            WHERE i.id = invitation_id
              AND i.accepted_at IS NULL AND i.declined_at IS NULL AND i.revoked_at IS NULL
              AND i.expires_at > now()
              AND (i.workspace_id || ':' || i.role)
                  = ANY ({{schema}}.taskmanager_manageable_memberships())
            RETURNING * INTO sent;
            IF NOT FOUND THEN
                RETURN false;
            END IF;
            INSERT INTO {{schema}}.outbox (kind, payload)
            VALUES ('mail.invitation', {
            _mail_payload("sent", "(extract(epoch FROM sent.expires_at - now()) / 60)::integer")
        });
            RETURN true;
        END $$
        """
    )

    # The only delete of invitations (but their workspace's): those closed or expired more
    # than `kept_days` ago, for maintenance. least() passes over NULL: whichever came
    # first, the answer (or revocation) or the expiry, ended the invitation.
    in_current_schema(
        f"""
        CREATE FUNCTION {{schema}}.taskmanager_purge_invitations(kept_days integer)
        RETURNS bigint
        LANGUAGE plpgsql VOLATILE SECURITY DEFINER {PIN}
        AS $$
        DECLARE
            purged bigint;
        BEGIN
            IF {{schema}}.taskmanager_purpose() IS DISTINCT FROM 'maintenance' THEN
                RAISE EXCEPTION 'taskmanager_purge_invitations: only for maintenance'
                    USING ERRCODE = '42501';
            END IF;
            IF kept_days IS NULL OR kept_days < 1 THEN
                RAISE EXCEPTION 'taskmanager_purge_invitations: keep at least one day'
                    USING ERRCODE = '22023';
            END IF;
            DELETE FROM {{schema}}.invitations i
            WHERE least(i.accepted_at, i.declined_at, i.revoked_at, i.expires_at)
                  < now() - make_interval(days => kept_days);
            GET DIAGNOSTICS purged = ROW_COUNT;
            RETURN purged;
        END $$
        """
    )


def _drop_adding_by_address() -> None:
    op.execute(f"DROP FUNCTION {USER_ID_BY_EMAIL}")
    op.execute(f"DROP FUNCTION {ACCOUNT_AT_CAP}")


def _restore_adding_by_address() -> None:
    """0008's taskmanager_user_id_by_email and 0010's taskmanager_account_at_cap."""
    in_current_schema(
        f"""
        CREATE FUNCTION {{schema}}.taskmanager_user_id_by_email(address text)
        RETURNS integer
        LANGUAGE sql STABLE SECURITY DEFINER {PIN}
        AS $$ SELECT u.id FROM {{schema}}.users u
              WHERE lower(u.email) = lower(address)
                AND {{schema}}.taskmanager_user_id() IS NOT NULL $$
        """
    )
    in_current_schema(
        f"""
        CREATE FUNCTION {{schema}}.taskmanager_account_at_cap(
            account integer, workspace integer, cap integer)
        RETURNS boolean
        LANGUAGE plpgsql VOLATILE SECURITY DEFINER {PIN}
        AS $$
        BEGIN
            IF NOT workspace = ANY (
                    {{schema}}.taskmanager_workspace_ids_allowing('members:write'))
               OR EXISTS (SELECT FROM {{schema}}.memberships m
                          WHERE m.workspace_id = workspace AND m.user_id = account) THEN
                RAISE EXCEPTION 'taskmanager_account_at_cap: only for an admin or an owner '
                    'adding someone new to their workspace' USING ERRCODE = '42501';
            END IF;
            PERFORM FROM {{schema}}.users u WHERE u.id = account FOR NO KEY UPDATE;
            RETURN (SELECT count(*) >= cap FROM {{schema}}.memberships m
                    WHERE m.user_id = account);
        END $$
        """
    )
    for function in (USER_ID_BY_EMAIL, ACCOUNT_AT_CAP):
        op.execute(f"REVOKE ALL ON FUNCTION {function} FROM PUBLIC")
        grant_to_caller(f"EXECUTE ON FUNCTION {{schema}}.{function}")


def _memberships_create(definition: str) -> None:
    op.execute("DROP POLICY memberships_create ON memberships")
    op.execute(f"CREATE POLICY memberships_create ON memberships {definition}")


def upgrade() -> None:
    _table()
    _functions()
    # Without FORCE: the functions write as the owner, past the policies.
    op.execute("ALTER TABLE invitations ENABLE ROW LEVEL SECURITY")
    for name, definition in POLICIES.items():
        op.execute(f"CREATE POLICY {name} ON invitations {definition}")
    for function in FUNCTIONS:
        op.execute(f"REVOKE ALL ON FUNCTION {function} FROM PUBLIC")
        grant_to_caller(f"EXECUTE ON FUNCTION {{schema}}.{function}")
    grant_to_caller(INVITATIONS_GRANT)
    _memberships_create(MEMBERSHIPS_CREATE)
    _drop_adding_by_address()
    # Changes only, not deletions (the docstring: the purge is no change of anyone's, and
    # a deleted workspace's invitations are not logged row by row anyway).
    arguments = ", ".join(f"'{argument}'" for argument in LOG_INVITATIONS)
    op.execute(
        f"CREATE TRIGGER {TRIGGER} AFTER INSERT OR UPDATE ON invitations "
        f"FOR EACH ROW EXECUTE FUNCTION taskmanager_log_activity({arguments})"
    )


def downgrade() -> None:
    _restore_adding_by_address()
    _memberships_create(OLD_MEMBERSHIPS_CREATE)
    op.execute("DELETE FROM outbox WHERE kind = 'mail.invitation'")
    # The table's policies call the functions: the table (its trigger, policies and
    # grants with it) goes first.
    op.drop_table("invitations")
    for function in reversed(FUNCTIONS):
        op.execute(f"DROP FUNCTION {function}")
