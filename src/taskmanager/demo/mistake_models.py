"""The lecture's own models, as a student would first write them: relationships left at
SQLAlchemy's default `lazy="select"`.

They map the SAME real `tasks` and `categories` tables as `taskmanager.models`, but on a
separate declarative Base, so Mistake 2 shows what the default does in async code whatever
the project's models choose (they choose `lazy="raise"`). Only the columns the demonstration
writes or reads are mapped; the others keep their server defaults.
"""

from __future__ import annotations

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class LectureBase(DeclarativeBase):
    """A registry of its own: these classes never meet `taskmanager.models.Base`."""


class Category(LectureBase):
    __tablename__ = "categories"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))

    tasks: Mapped[list[Task]] = relationship(back_populates="category")  # lazy="select"


class Task(LectureBase):
    __tablename__ = "tasks"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    category_id: Mapped[int | None] = mapped_column(ForeignKey("categories.id"), default=None)

    category: Mapped[Category | None] = relationship(back_populates="tasks")  # lazy="select"
