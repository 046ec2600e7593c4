"""SQLAlchemy models: the physical books in the archive.

Every relationship is `lazy="raise"`: what a response reads must be loaded eagerly by the
repository, and a forgotten eager load fails loudly in tests instead of turning into
MissingGreenlet in production.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Computed,
    DateTime,
    Enum,
    ForeignKey,
    ForeignKeyConstraint,
    Identity,
    Index,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
    Uuid,
    false,
    func,
    text,
    true,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSON, JSONB, TSVECTOR, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from taskmanager.security.access_tokens import TOKEN_SCOPES
from taskmanager.security.roles import ROLES

# Stable constraint names: errors.py and the migrations refer to them.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

TITLE_MAX_LENGTH = 200
EMAIL_MAX_LENGTH = 320
DISPLAY_NAME_MAX_LENGTH = 100
WORKSPACE_NAME_MAX_LENGTH = 100
IDEMPOTENCY_KEY_MAX_LENGTH = 255
CATEGORY_NAME_MAX_LENGTH = 100
LABEL_NAME_MAX_LENGTH = 50
ACCESS_TOKEN_NAME_MAX_LENGTH = 100
# A label's colour as stored: "#rrggbb", lower case (the API accepts any case).
LABEL_COLOUR_PATTERN = "^#[0-9a-f]{6}$"

# Constraint names used by errors.py to say which field a database error is about.
FK_TASKS_CATEGORY = "fk_tasks_category_id_categories"
UQ_CATEGORIES_NAME = "uq_categories_workspace_id_name_lower"
UQ_USERS_EMAIL = "uq_users_email_lower"
PK_MEMBERSHIPS = "pk_memberships"
UQ_LABELS_NAME = "uq_labels_workspace_id_name_lower"
FK_TASK_LABELS_LABEL = "fk_task_labels_label_id_labels"
FK_TASK_LABELS_TASK = "fk_task_labels_task_id_tasks"
FK_ACCESS_TOKENS_MEMBERSHIP = "fk_access_tokens_workspace_id_memberships"
FK_CALENDAR_FEEDS_MEMBERSHIP = "fk_calendar_feeds_workspace_id_memberships"

# A membership's role (taskmanager.security.roles, where what each may do is written).
MEMBERSHIP_ROLES = tuple(str(role) for role in ROLES)
_ROLE_KNOWN = "role IN ({})".format(", ".join(f"'{role}'" for role in MEMBERSHIP_ROLES))
# A task's priority, lowest first: a PostgreSQL enum sorts in this order.
PRIORITIES = ("low", "normal", "high", "urgent")
# A priority as its place in PRIORITIES (tasks.priority_rank, generated from tasks.priority).
PRIORITY_RANK_SQL = (
    "CASE priority "
    + " ".join(f"WHEN '{name}' THEN {rank}" for rank, name in enumerate(PRIORITIES))
    + " END"
)
PRIORITY_TYPE = "task_priority"
# What full-text search reads of a task: its title and description as words. The 'simple'
# configuration lower-cases words and does nothing else: no stemming and no stop words, in
# any language, so a prefix the client types matches the words as written ("mil" finds
# "milk"; an English stemmer would store "studies" as "studi" and "the" not at all). A query
# parses its words with the same configuration (a regconfig constant), or they would not be
# the words stored.
SEARCH_CONFIG = "simple"
SEARCH_DOCUMENT = (
    f"to_tsvector('{SEARCH_CONFIG}'::regconfig, "
    "((title)::text || ' ' || coalesce(description, '')))"
)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class User(Base):
    """An account. `email` is unique ignoring case; only a hash of the password is kept."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(EMAIL_MAX_LENGTH))
    display_name: Mapped[str] = mapped_column(String(DISPLAY_NAME_MAX_LENGTH))
    # Not loaded with the user (and not readable by the request role at all): only login
    # and a password change read it, each asking for it explicitly.
    password_hash: Mapped[str] = mapped_column(Text, deferred=True, deferred_raiseload=True)
    # Neither is sent on INSERT: a registration may write only id, email, display name and
    # hash (the caller role's column grant), and the database's defaults do the rest.
    is_active: Mapped[bool] = mapped_column(server_default=true())
    # Set at registration, right after the workspace exists (a workspace names its creator).
    personal_workspace_id: Mapped[int | None] = mapped_column(
        ForeignKey("workspaces.id", ondelete="SET NULL", use_alter=True)
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    password_changed_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    # When the owner of the address proved it (a mailed token; migration 0012): until then
    # the account works in its own workspaces, and nothing that trusts the address (an
    # invitation) accepts it. Written only by the database's token functions, or at INSERT
    # by the operator's `users create`.
    email_verified_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), default=None
    )

    __mapper_args__ = {"eager_defaults": True}  # noqa: RUF012


Index(UQ_USERS_EMAIL, func.lower(User.email), unique=True)


class Workspace(Base):
    """Where tasks and categories live; people see it through a membership."""

    __tablename__ = "workspaces"
    __table_args__ = (CheckConstraint("char_length(btrim(name)) > 0", name="name_not_blank"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(WORKSPACE_NAME_MAX_LENGTH))
    # Who created it: the one caller the row-level policy lets insert it.
    created_by: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), default=None
    )
    personal: Mapped[bool] = mapped_column(default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    version: Mapped[int] = mapped_column(default=1, server_default=text("1"))


class Membership(Base):
    """A user's place in a workspace, with a role: owner, admin, member or viewer (what each
    may do: taskmanager.security.roles; PostgreSQL reads it from `role_permissions`)."""

    __tablename__ = "memberships"
    __table_args__ = (
        CheckConstraint(_ROLE_KNOWN, name="role_known"),
        Index("ix_memberships_user_id", "user_id"),
    )

    workspace_id: Mapped[int] = mapped_column(
        ForeignKey("workspaces.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    role: Mapped[str] = mapped_column(String(10))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class RolePermission(Base):
    """That `role` may do `action` in its workspace: taskmanager.security.roles.PERMISSIONS
    as the migrations stored it, which the row-level policies read (through
    taskmanager_caller_permissions()). Only the tables' owner reads it."""

    __tablename__ = "role_permissions"
    __table_args__ = (CheckConstraint(_ROLE_KNOWN, name="role_known"),)

    role: Mapped[str] = mapped_column(String(10), primary_key=True)
    action: Mapped[str] = mapped_column(String(40), primary_key=True)


class CallerKeyRecord(Base):
    """The key the database checks callers' proofs with (taskmanager.security.caller_key), as HMAC's
    padded keys. Only the tables' owner may read it: the service installs it through
    `taskmanager db upgrade` and never reads it back."""

    __tablename__ = "caller_key"
    __table_args__ = (
        CheckConstraint("singleton", name="singleton"),
        CheckConstraint(
            "octet_length(inner_pad) = 64 AND octet_length(outer_pad) = 64", name="pads"
        ),
    )

    singleton: Mapped[bool] = mapped_column(primary_key=True, server_default=true())
    inner_pad: Mapped[bytes] = mapped_column(LargeBinary)
    outer_pad: Mapped[bytes] = mapped_column(LargeBinary)
    installed_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )


class UnclaimedWorkspace(Base):
    """A workspace without members (the tasks from before accounts existed): the next
    account registered becomes its owner."""

    __tablename__ = "unclaimed_workspaces"

    workspace_id: Mapped[int] = mapped_column(
        ForeignKey("workspaces.id", ondelete="CASCADE"), primary_key=True
    )


class AuthSession(Base):
    """One login: the family of refresh tokens it rotates through, and what access tokens
    name as `sid`. Revoking it (logout, reuse of a spent refresh token, a password change
    elsewhere) ends them all at once."""

    __tablename__ = "auth_sessions"
    __table_args__ = (Index("ix_auth_sessions_user_id", "user_id"),)

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    revoked_reason: Mapped[str | None] = mapped_column(String(40), default=None)


class RefreshToken(Base):
    """A refresh token, kept only as its SHA-256: the token itself is 256 random bits, so
    a fast hash is enough (nothing to guess), and a database leak reveals no usable token."""

    __tablename__ = "refresh_tokens"
    __table_args__ = (Index("ix_refresh_tokens_session_id", "session_id"),)

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    session_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("auth_sessions.id", ondelete="CASCADE")
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)


class AccessToken(Base):
    """A personal access token for scripts, kept only as the SHA-256 of the token (which
    holds over 160 random bits: nothing to guess, so a fast hash is enough, and no key to
    rotate). What it may do is its user's role in each workspace AND its scopes, in its one
    workspace if it is bound to one (taskmanager.security.access_tokens; migration 0013)."""

    __tablename__ = "access_tokens"
    __table_args__ = (
        CheckConstraint("char_length(btrim(name)) > 0", name="name_not_blank"),
        CheckConstraint(
            "cardinality(scopes) > 0 AND scopes <@ ARRAY[{}]::text[]".format(
                ", ".join(f"'{scope}'" for scope in TOKEN_SCOPES)
            ),
            name="scopes_known",
        ),
        # Bound to a workspace: to the user's membership there (leaving deletes the token).
        ForeignKeyConstraint(
            ["workspace_id", "user_id"],
            ["memberships.workspace_id", "memberships.user_id"],
            name=FK_ACCESS_TOKENS_MEMBERSHIP,
            ondelete="CASCADE",
        ),
        UniqueConstraint("token_hash", name="uq_access_tokens_token_hash"),
        Index("ix_access_tokens_user_id", "user_id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    workspace_id: Mapped[int | None] = mapped_column(default=None)
    name: Mapped[str] = mapped_column(String(ACCESS_TOKEN_NAME_MAX_LENGTH))
    # Not readable by the caller role: only the door (taskmanager_enter) looks tokens up.
    token_hash: Mapped[str] = mapped_column(String(64), deferred=True, deferred_raiseload=True)
    prefix: Mapped[str] = mapped_column(String(16))
    scopes: Mapped[list[str]] = mapped_column(ARRAY(Text))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)


class CalendarFeed(Base):
    """A secret iCalendar feed URL of a user's tasks with due dates (GET
    /calendar/{secret}.ics), kept only as the SHA-256 of its secret, as an access token is.
    Bound to a workspace, it shows that one (and goes with the user's membership there);
    unbound, every workspace the user belongs to when it is read (migration 0015)."""

    __tablename__ = "calendar_feeds"
    __table_args__ = (
        # Bound to a workspace: to the user's membership there (removal deletes the feed).
        ForeignKeyConstraint(
            ["workspace_id", "user_id"],
            ["memberships.workspace_id", "memberships.user_id"],
            name=FK_CALENDAR_FEEDS_MEMBERSHIP,
            ondelete="CASCADE",
        ),
        UniqueConstraint("token_hash", name="uq_calendar_feeds_token_hash"),
        Index("ix_calendar_feeds_user_id", "user_id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    workspace_id: Mapped[int | None] = mapped_column(default=None)
    # Not readable by the caller role: only the door (taskmanager_enter) looks feeds up.
    token_hash: Mapped[str] = mapped_column(String(64), deferred=True, deferred_raiseload=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # When its secret was last made (created or regenerated): the URL's age.
    regenerated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )


class LoginFailure(Base):
    """Failed logins counted per account and per client address, in a fixed window: in
    PostgreSQL, so the limit holds across workers and machines."""

    __tablename__ = "login_failures"

    key: Mapped[str] = mapped_column(String(400), primary_key=True)  # "email:…" / "address:…"
    failures: Mapped[int]
    window_started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Outbox(Base):
    """A side effect of a committed change (a mail; webhooks later), recorded in the same
    transaction as the change and performed after commit by the outbox worker
    (taskmanager.outbox). `payload` holds no secret: a mailed token is derived again at
    send time from its row's id (taskmanager.security.mail_tokens)."""

    __tablename__ = "outbox"
    __table_args__ = (
        Index(
            "ix_outbox_next_attempt_at", "next_attempt_at", postgresql_where=text("sent_at IS NULL")
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    kind: Mapped[str] = mapped_column(String(100))  # "mail.verify_email", ...
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    # Claims so far (a claim counts before the attempt: a crash mid-send is one).
    attempts: Mapped[int] = mapped_column(server_default=text("0"))
    # Due from then on; a claim moves it one lease ahead, a failure one backoff ahead.
    next_attempt_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)


class AccountToken(Base):
    """A token mailed to prove a mailbox (verify an address, reset a password), kept only as
    its SHA-256. Single use (`used_at`), valid until `expires_at`; `email` is the address it
    was mailed to. Written and spent only by SECURITY DEFINER functions (migration 0012)."""

    __tablename__ = "account_tokens"
    __table_args__ = (
        CheckConstraint("purpose IN ('verify_email', 'password_reset')", name="purpose_known"),
        Index("ix_account_tokens_user_id", "user_id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    purpose: Mapped[str] = mapped_column(String(20))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    email: Mapped[str] = mapped_column(String(EMAIL_MAX_LENGTH))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Invitation(Base):
    """A workspace's invitation of an address, with the role accepting it gives. Mailed with
    a link whose token is derived from `id` (taskmanager.security.mail_tokens) and kept only
    as its SHA-256. Open until accepted, declined or revoked (at most one of them); usable
    until `expires_at`. Written only by SECURITY DEFINER functions (migration 0014); the
    caller role may set only the three answers, as the policies allow (managers revoke, the
    invitee with that verified address accepts or declines)."""

    __tablename__ = "invitations"
    __table_args__ = (
        CheckConstraint(_ROLE_KNOWN, name="role_known"),
        CheckConstraint(
            "num_nonnulls(accepted_at, declined_at, revoked_at) <= 1", name="one_answer"
        ),
        Index("ix_invitations_workspace_id_created_at", "workspace_id", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    workspace_id: Mapped[int] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"))
    email: Mapped[str] = mapped_column(String(EMAIL_MAX_LENGTH))
    role: Mapped[str] = mapped_column(String(10))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    invited_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    accepted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    declined_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # How many times it was mailed, and when last (the resend limits).
    send_count: Mapped[int] = mapped_column(server_default=text("1"))
    last_sent_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )


Index("ix_invitations_email_lower", func.lower(Invitation.email))


class Category(Base):
    __tablename__ = "categories"
    __table_args__ = (
        CheckConstraint("char_length(btrim(name)) > 0", name="name_not_blank"),
        # The target of tasks' composite foreign key (a task's category is in its workspace).
        UniqueConstraint("id", "workspace_id", name="uq_categories_id_workspace_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    workspace_id: Mapped[int] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(CATEGORY_NAME_MAX_LENGTH))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # Bumped by every change: the ETag clients send back in If-Match (optimistic locking).
    version: Mapped[int] = mapped_column(default=1, server_default=text("1"))

    # passive_deletes: PostgreSQL's ON DELETE SET NULL does the work, so deleting a
    # category never has to load its tasks (which lazy="raise" would forbid anyway).
    tasks: Mapped[list[Task]] = relationship(
        back_populates="category",
        lazy="raise",
        primaryjoin="and_(Category.id == foreign(Task.category_id), "
        "Category.workspace_id == Task.workspace_id)",
        viewonly=True,
    )

    __mapper_args__ = {"eager_defaults": True}  # noqa: RUF012  (SQLAlchemy reads it per class)


class Task(Base):
    __tablename__ = "tasks"
    __table_args__ = (
        CheckConstraint("char_length(btrim(title)) > 0", name="title_not_blank"),
        # The list endpoint's orders and filters: newest first, optionally by status or
        # category. Each index ends in (created_at, id) so the ORDER BY is an index scan.
        Index("ix_tasks_created_at_id", "created_at", "id"),
        Index("ix_tasks_completed_created_at_id", "completed", "created_at", "id"),
        Index("ix_tasks_category_id_created_at_id", "category_id", "created_at", "id"),
        Index("ix_tasks_workspace_id_created_at_id", "workspace_id", "created_at", "id"),
        # The other orders of GET /tasks (and their keyset pages): each index is the order's
        # keys, id last, so a page is a range of the index read in order (migration 0007).
        Index("ix_tasks_priority_rank_created_at_id", "priority_rank", "created_at", "id"),
        Index("ix_tasks_title_id", "title", "id"),
        Index("ix_tasks_due_key_id", "due_key", "id"),
        # The target of task_labels' composite foreign key (a label joins only tasks of its
        # own workspace).
        UniqueConstraint("id", "workspace_id", name="uq_tasks_id_workspace_id"),
        # A task's category is in the task's workspace, or the row is refused. Deleting the
        # category clears only category_id (PostgreSQL 15+: SET NULL with a column list).
        ForeignKeyConstraint(
            ["category_id", "workspace_id"],
            ["categories.id", "categories.workspace_id"],
            name=FK_TASKS_CATEGORY,
            ondelete="SET NULL (category_id)",
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    workspace_id: Mapped[int] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"))
    title: Mapped[str] = mapped_column(String(TITLE_MAX_LENGTH))
    description: Mapped[str | None] = mapped_column(Text, default=None)
    completed: Mapped[bool] = mapped_column(default=False, server_default=false())
    category_id: Mapped[int | None] = mapped_column(default=None)
    due_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    priority: Mapped[str] = mapped_column(
        Enum(*PRIORITIES, name=PRIORITY_TYPE),
        default=PRIORITIES[0],
        server_default=PRIORITIES[0],
    )
    # The keys the list sorts and filters by, kept by PostgreSQL (stored generated columns).
    # Under row-level security an index serves only conditions whose operators are
    # LEAKPROOF: comparing timestamps or integers is, comparing enums or a coalesce(...)
    # expression is not, and such a condition is checked row by row after the policy,
    # however deep the page. So the due-date order is due_key (due_at, or +infinity without
    # one: soonest first, none last, never NULL) and the priority order is priority_rank
    # (0 = low ... 3 = urgent).
    due_key: Mapped[datetime] = mapped_column(
        DateTime(timezone=True),
        Computed("coalesce(due_at, 'infinity'::timestamptz)", persisted=True),
        deferred=True,
    )
    priority_rank: Mapped[int] = mapped_column(
        SmallInteger,
        Computed(PRIORITY_RANK_SQL, persisted=True),
        deferred=True,
    )
    # Set when the task becomes completed, cleared when it is reopened (TaskRepository).
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )
    # Bumped by every change: the ETag clients send back in If-Match (optimistic locking).
    version: Mapped[int] = mapped_column(default=1, server_default=text("1"))

    category: Mapped[Category | None] = relationship(
        back_populates="tasks",
        lazy="raise",
        primaryjoin="and_(Category.id == foreign(Task.category_id), "
        "Category.workspace_id == Task.workspace_id)",
        viewonly=True,
    )
    # Read only: TaskRepository changes a task's labels through task_labels rows and puts
    # the labels a response shows in place itself (one statement, by lower(name), id).
    labels: Mapped[list[Label]] = relationship(secondary="task_labels", lazy="raise", viewonly=True)

    # eager_defaults: INSERT/UPDATE ... RETURNING brings back id, created_at and
    # updated_at, so they are readable after flush() without a lazy load.
    __mapper_args__ = {"eager_defaults": True}  # noqa: RUF012  (SQLAlchemy reads it per class)


# Kept by PostgreSQL from title and description (never written, never shown): only the
# search's WHERE and ORDER BY read it, as a column of the table. Added to the table after
# the mapping, so the ORM does not map it: eager_defaults would otherwise bring the whole
# tsvector back with every INSERT and UPDATE (RETURNING), deferred or not.
SEARCH_VECTOR = Column("search_vector", TSVECTOR, Computed(SEARCH_DOCUMENT, persisted=True))
cast(Table, Task.__table__).append_column(SEARCH_VECTOR)
# The same words, each as '<workspace id>/<word>' (migration 0009's IMMUTABLE function): what
# the search's GIN index holds, so that a search reads the entries of the caller's
# workspaces only, whatever other tenants' tasks hold. Not mapped either.
WORKSPACE_WORDS_SQL = "taskmanager_workspace_words(workspace_id, (title)::text, description)"
WORKSPACE_WORDS = Column("workspace_words", TSVECTOR, Computed(WORKSPACE_WORDS_SQL, persisted=True))
cast(Table, Task.__table__).append_column(WORKSPACE_WORDS)
# Full-text search (`q`): which of the caller's tasks hold a word, without reading every row
# (fastupdate off: a pending list of new entries, every tenant's, would be read by every
# search).
Index(
    "ix_tasks_workspace_words",
    WORKSPACE_WORDS,
    postgresql_using="gin",
    postgresql_with={"fastupdate": "off"},
)


# Unique in a workspace regardless of case: "Work" and "work" are the same category.
Index(UQ_CATEGORIES_NAME, Category.workspace_id, func.lower(Category.name), unique=True)


class Label(Base):
    """A tag of a workspace's tasks (many per task): a name unique ignoring case in the
    workspace, and an optional colour."""

    __tablename__ = "labels"
    __table_args__ = (
        CheckConstraint("char_length(btrim(name)) > 0", name="name_not_blank"),
        CheckConstraint(f"colour ~ '{LABEL_COLOUR_PATTERN}'", name="colour_hex"),
        # The target of task_labels' composite foreign key.
        UniqueConstraint("id", "workspace_id", name="uq_labels_id_workspace_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    workspace_id: Mapped[int] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(LABEL_NAME_MAX_LENGTH))
    colour: Mapped[str | None] = mapped_column(String(7), default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # Bumped by every change: the ETag clients send back in If-Match (optimistic locking).
    version: Mapped[int] = mapped_column(default=1, server_default=text("1"))

    __mapper_args__ = {"eager_defaults": True}  # noqa: RUF012  (SQLAlchemy reads it per class)


Index(UQ_LABELS_NAME, Label.workspace_id, func.lower(Label.name), unique=True)


class TaskLabel(Base):
    """A label on a task. Both composite foreign keys carry the workspace, so a label can
    only ever be on a task of its own workspace, whatever code writes the row; deleting
    either side deletes the row."""

    __tablename__ = "task_labels"
    __table_args__ = (
        ForeignKeyConstraint(
            ["task_id", "workspace_id"],
            ["tasks.id", "tasks.workspace_id"],
            name=FK_TASK_LABELS_TASK,
            ondelete="CASCADE",
        ),
        ForeignKeyConstraint(
            ["label_id", "workspace_id"],
            ["labels.id", "labels.workspace_id"],
            name=FK_TASK_LABELS_LABEL,
            ondelete="CASCADE",
        ),
        # The label_id filter and deleting a label look rows up by label; the primary
        # key serves "the labels of a task".
        Index("ix_task_labels_label_id_task_id", "label_id", "task_id"),
    )

    task_id: Mapped[int] = mapped_column(primary_key=True)
    label_id: Mapped[int] = mapped_column(primary_key=True)
    workspace_id: Mapped[int]


class IdempotencyKey(Base):
    """A POST's Idempotency-Key and the response it produced, replayed to retries.

    Stored in PostgreSQL so the promise holds across workers and restarts; the claim and the
    created row commit in one transaction, so a stored response always names a real row.
    """

    __tablename__ = "idempotency_keys"
    __table_args__ = (Index("ix_idempotency_keys_expires_at", "expires_at"),)

    # Keys belong to one user: the same key from two users is two keys.
    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    scope: Mapped[str] = mapped_column(String(100), primary_key=True)  # e.g. "POST /tasks"
    key: Mapped[str] = mapped_column(String(IDEMPOTENCY_KEY_MAX_LENGTH), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int | None]
    # json, not jsonb: a replay sends back the body as it was first sent (key order kept).
    response_body: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    response_headers: Mapped[dict[str, str] | None] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Activity(Base):
    """One change of a workspace's data, written by PostgreSQL itself in the transaction of
    the change (migration 0011's trigger on each logged table): who (the caller's user id;
    None for the database's owner), what (`kind`, e.g. `task.updated`; the object's type
    and id), the fields `before` and `after` it, and the request that made it. Append-only:
    requests may only read it (their workspaces' rows); `taskmanager db purge-activity`
    deletes what is older than the retention.

    No foreign keys: the log outlives the object, the workspace and the account."""

    __tablename__ = "activity"
    __table_args__ = (
        # A workspace's activity newest first (id order), filtered by actor or kind; an
        # object's history; the purge by age (BRIN: rows arrive in created_at order).
        Index("ix_activity_workspace_id_id", "workspace_id", "id"),
        Index("ix_activity_workspace_id_actor_id_id", "workspace_id", "actor_id", "id"),
        Index("ix_activity_workspace_id_kind_id", "workspace_id", "kind", "id"),
        Index("ix_activity_object_type_object_id_id", "object_type", "object_id", "id"),
        Index("ix_activity_created_at", "created_at", postgresql_using="brin"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    workspace_id: Mapped[int]
    actor_id: Mapped[int | None]
    kind: Mapped[str] = mapped_column(String(60))
    object_type: Mapped[str] = mapped_column(String(30))
    # Text: the key of any logged table (every id is an integer today).
    object_id: Mapped[str] = mapped_column(String(100))
    before: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    request_id: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


CALENDAR_NAME_MAX_LENGTH = 100
CALENDAR_URL_MAX_LENGTH = 2048
UQ_CALENDAR_SUBSCRIPTIONS_URL = "uq_calendar_subscriptions_workspace_id_url"


class CalendarSubscription(Base):
    """A workspace's subscription to an external calendar feed (an .ics URL), and the state
    of fetching it: the answer's validators, the last good copy of its events, and the
    circuit breaker (failures in a row, skipped until). Added and removed by a role with
    tasks:write; the fetch state is written only by the service's fetcher, entered for
    'maintenance' (migration 0016)."""

    __tablename__ = "calendar_subscriptions"
    __table_args__ = (
        CheckConstraint("char_length(btrim(name)) > 0", name="name_not_blank"),
        CheckConstraint(
            "events IS NULL OR (jsonb_typeof(events) = 'array' "
            "AND jsonb_array_length(events) <= 100000)",
            name="events_bounded",
        ),
        CheckConstraint("consecutive_failures >= 0", name="failures_counted"),
        UniqueConstraint("id", "workspace_id", name="uq_calendar_subscriptions_id_workspace_id"),
        UniqueConstraint("workspace_id", "url", name=UQ_CALENDAR_SUBSCRIPTIONS_URL),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    workspace_id: Mapped[int] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"))
    url: Mapped[str] = mapped_column(String(CALENDAR_URL_MAX_LENGTH))
    name: Mapped[str] = mapped_column(String(CALENDAR_NAME_MAX_LENGTH))
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # The fetch state: no Python defaults, so an INSERT names only the columns the caller
    # role may insert.
    etag: Mapped[str | None] = mapped_column(String(200))
    last_modified: Mapped[str | None] = mapped_column(String(100))
    last_fetched_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_success_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(String(500))
    consecutive_failures: Mapped[int] = mapped_column(server_default=text("0"))
    skip_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The last good copy's occurrences (taskmanager.integrations.subscribed_calendars), deferred:
    # only the agenda reads them.
    events: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONB, deferred=True)

    __mapper_args__ = {"eager_defaults": True}  # noqa: RUF012  (SQLAlchemy reads it per class)


WEBHOOK_URL_MAX_LENGTH = 2048
WEBHOOK_DESCRIPTION_MAX_LENGTH = 500
WEBHOOK_STATUSES = ("pending", "delivered", "failed")


class WebhookEndpoint(Base):
    """A workspace's webhook endpoint: where its events go (`url`), which (`events`), and
    whether they go (`enabled`; `disabled_reason` says why not). The signing secret is
    never stored: it is derived from the service's key, the id and `secret_nonce`
    (taskmanager.security.webhook_secrets); after a rotation `previous_nonce` signs too,
    until `previous_valid_until`. The caller role cannot read either nonce (migration 0017:
    the delivery worker reads them through a function for maintenance only)."""

    __tablename__ = "webhook_endpoints"
    __table_args__ = (
        UniqueConstraint("id", "workspace_id", name="uq_webhook_endpoints_id_workspace_id"),
        # The fan-out's one probe per change: a workspace's enabled endpoints.
        Index(
            "ix_webhook_endpoints_workspace_id_enabled",
            "workspace_id",
            postgresql_where=text("enabled"),
        ),
        Index("ix_webhook_endpoints_workspace_id_created_at", "workspace_id", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    workspace_id: Mapped[int] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"))
    url: Mapped[str] = mapped_column(String(WEBHOOK_URL_MAX_LENGTH))
    description: Mapped[str] = mapped_column(
        String(WEBHOOK_DESCRIPTION_MAX_LENGTH), server_default=text("''")
    )
    events: Mapped[list[str]] = mapped_column(ARRAY(Text))
    enabled: Mapped[bool] = mapped_column(server_default=true())
    disabled_reason: Mapped[str | None] = mapped_column(String(200))
    disabled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Since when every attempt failed (cleared by a success; started again after a day
    # without a failure): N days of it disable it.
    failing_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The last failed attempt: a failure more than a day after it starts a new streak.
    last_failed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    secret_nonce: Mapped[bytes] = mapped_column(LargeBinary)
    previous_nonce: Mapped[bytes | None] = mapped_column(LargeBinary)
    previous_valid_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    version: Mapped[int] = mapped_column(server_default=text("1"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class WebhookDelivery(Base):
    """One event for one endpoint: the webhooks' outbox. Written only by PostgreSQL (the
    fan-out trigger on `activity`, the replay and test functions of migration 0017), sent
    by the delivery worker. `message_id` is the `webhook-id` header: the same on every
    retry and on a replay."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        ForeignKeyConstraint(
            ["endpoint_id", "workspace_id"],
            ["webhook_endpoints.id", "webhook_endpoints.workspace_id"],
            name="fk_webhook_deliveries_endpoint_id_webhook_endpoints",
            ondelete="CASCADE",
        ),
        CheckConstraint(
            "status IN ({})".format(", ".join(f"'{s}'" for s in WEBHOOK_STATUSES)),
            name="status_known",
        ),
        UniqueConstraint("id", "workspace_id", name="uq_webhook_deliveries_id_workspace_id"),
        # What the worker claims: the pending ones that are due, soonest first.
        Index(
            "ix_webhook_deliveries_next_attempt_at",
            "next_attempt_at",
            postgresql_where=text("status = 'pending'"),
        ),
        # An endpoint's delivery log, newest first.
        Index("ix_webhook_deliveries_endpoint_id_created_at", "endpoint_id", "created_at"),
        # The cap on an endpoint's test events and replays waiting to be sent.
        Index(
            "ix_webhook_deliveries_endpoint_id_manual",
            "endpoint_id",
            postgresql_where=text(
                "status = 'pending' AND (event_type = 'webhook.test' OR replay_of IS NOT NULL)"
            ),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(
        Uuid, primary_key=True, server_default=func.gen_random_uuid()
    )
    workspace_id: Mapped[int]
    endpoint_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    message_id: Mapped[str] = mapped_column(String(40))
    event_type: Mapped[str] = mapped_column(String(60))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    status: Mapped[str] = mapped_column(String(10), server_default=text("'pending'"))
    attempts: Mapped[int] = mapped_column(server_default=text("0"))
    next_attempt_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    replay_of: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_status_code: Mapped[int | None]
    last_error: Mapped[str | None] = mapped_column(Text)


class WebhookAttempt(Base):
    """One try at sending a delivery: when, the answer's status (None: no answer), how
    long it took, the start of the answer's body, or what went wrong."""

    __tablename__ = "webhook_attempts"
    __table_args__ = (
        ForeignKeyConstraint(
            ["delivery_id", "workspace_id"],
            ["webhook_deliveries.id", "webhook_deliveries.workspace_id"],
            name="fk_webhook_attempts_delivery_id_webhook_deliveries",
            ondelete="CASCADE",
        ),
        Index("ix_webhook_attempts_delivery_id_id", "delivery_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    workspace_id: Mapped[int]
    delivery_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    attempted_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    status_code: Mapped[int | None]
    latency_ms: Mapped[int]
    response_excerpt: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
