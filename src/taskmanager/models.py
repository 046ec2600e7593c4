"""SQLAlchemy models: the physical books in the archive.

Every relationship is `lazy="raise"`: what a response reads must be loaded eagerly by the
repository, and a forgotten eager load fails loudly in tests instead of turning into
MissingGreenlet in production.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    MetaData,
    String,
    Text,
    false,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSON, JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Stable constraint names: errors.py and the migrations refer to them.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

TITLE_MAX_LENGTH = 200
IDEMPOTENCY_KEY_MAX_LENGTH = 255
CATEGORY_NAME_MAX_LENGTH = 100

# Constraint names used by errors.py to say which field a database error is about.
FK_TASKS_CATEGORY = "fk_tasks_category_id_categories"
UQ_CATEGORIES_NAME = "uq_categories_name_lower"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Category(Base):
    __tablename__ = "categories"
    __table_args__ = (CheckConstraint("char_length(btrim(name)) > 0", name="name_not_blank"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(CATEGORY_NAME_MAX_LENGTH))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # Bumped by every change: the ETag clients send back in If-Match (optimistic locking).
    version: Mapped[int] = mapped_column(default=1, server_default=text("1"))

    # passive_deletes: PostgreSQL's ON DELETE SET NULL does the work, so deleting a
    # category never has to load its tasks (which lazy="raise" would forbid anyway).
    tasks: Mapped[list[Task]] = relationship(
        back_populates="category", lazy="raise", passive_deletes=True
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
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(TITLE_MAX_LENGTH))
    description: Mapped[str | None] = mapped_column(Text, default=None)
    completed: Mapped[bool] = mapped_column(default=False, server_default=false())
    category_id: Mapped[int | None] = mapped_column(
        ForeignKey("categories.id", ondelete="SET NULL"), default=None
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )
    # Bumped by every change: the ETag clients send back in If-Match (optimistic locking).
    version: Mapped[int] = mapped_column(default=1, server_default=text("1"))

    category: Mapped[Category | None] = relationship(back_populates="tasks", lazy="raise")

    # eager_defaults: INSERT/UPDATE ... RETURNING brings back id, created_at and
    # updated_at, so they are readable after flush() without a lazy load.
    __mapper_args__ = {"eager_defaults": True}  # noqa: RUF012  (SQLAlchemy reads it per class)


# Unique regardless of case: "Work" and "work" are the same category.
Index(UQ_CATEGORIES_NAME, func.lower(Category.name), unique=True)


class IdempotencyKey(Base):
    """A POST's Idempotency-Key and the response it produced, replayed to retries.

    Stored in PostgreSQL so the promise holds across workers and restarts; the claim and the
    created row commit in one transaction, so a stored response always names a real row.
    """

    __tablename__ = "idempotency_keys"
    __table_args__ = (Index("ix_idempotency_keys_expires_at", "expires_at"),)

    scope: Mapped[str] = mapped_column(String(100), primary_key=True)  # e.g. "POST /tasks"
    key: Mapped[str] = mapped_column(String(IDEMPOTENCY_KEY_MAX_LENGTH), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int | None]
    # json, not jsonb: a replay sends back the body as it was first sent (key order kept).
    response_body: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    response_headers: Mapped[dict[str, str] | None] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
