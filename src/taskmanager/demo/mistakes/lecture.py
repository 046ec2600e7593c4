"""The lecture's own code that the demonstrations build on, as a student first writes it.

- `Task` and `Category` (lecture 3.4, models.py): relationships at SQLAlchemy's default
  `lazy="select"`. They map the SAME `tasks` and `categories` tables as `taskmanager.models`,
  on a declarative Base of their own, so Mistake 2 shows what the default does whatever the
  project's models choose (they choose `lazy="raise"`). Only the columns the demonstration
  writes or reads are mapped; the others keep their server defaults. `workspace_id` is not
  the lecture's (Week 6 has no accounts): the harness fills it in (`harness.demo_workspace`).
- `get_async_session` (lecture 3.2): the session dependency, line for line, except that the
  session factory comes from the app (each demonstration builds its own engine).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

from fastapi import Request
from sqlalchemy import ForeignKey, String
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    """A registry of its own: these classes never meet `taskmanager.models.Base`."""


class Task(Base):
    __tablename__ = "tasks"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    category_id: Mapped[int | None] = mapped_column(ForeignKey("categories.id"), default=None)
    workspace_id: Mapped[int | None] = mapped_column(default=None)  # not the lecture's

    category: Mapped[Category | None] = relationship(back_populates="tasks")  # lazy="select"


class Category(Base):
    __tablename__ = "categories"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    workspace_id: Mapped[int | None] = mapped_column(default=None)  # not the lecture's

    tasks: Mapped[list[Task]] = relationship(back_populates="category")  # lazy="select"


async def get_async_session(request: Request) -> AsyncGenerator[AsyncSession, None]:
    async with request.app.state.async_session_factory() as session:
        try:
            yield session  # ← Provide session to the route
            await session.commit()  # ← If no exception: commit
        except Exception:
            await session.rollback()  # ← If exception: rollback
            raise  # ← Re-raise
        # session.close() is called automatically by async with
