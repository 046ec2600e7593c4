"""Mistake 3: forgetting expire_on_commit=False (lecture, Common Mistakes; 2.3).

Both factories run the same code: add a task, commit, read its title.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.exc import MissingGreenlet
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from taskmanager.database import create_session_factory
from taskmanager.demo.mistakes import harness
from taskmanager.demo.mistakes.harness import Demonstration, Observation, SessionFactory
from taskmanager.models import Task


async def create_and_read_title(session_factory: SessionFactory, title: str) -> str:
    async with session_factory() as session:
        task = Task(title=title)
        session.add(task)
        await session.commit()
        return task.title  # 💥 with the default: attribute expired, triggers lazy load → crash!


# ❌ DEFAULT: expire_on_commit=True
def default_factory(engine: AsyncEngine) -> SessionFactory:
    return async_sessionmaker(bind=engine, class_=AsyncSession)


# ✅ CORRECT: Keep loaded data after commit
def fixed_factory(engine: AsyncEngine) -> SessionFactory:
    return async_sessionmaker(
        bind=engine,
        class_=AsyncSession,
        expire_on_commit=False,  # ← Prevents this crash
    )


# ── Below: the machinery that runs the code above and says what it did ──────────────────────


async def observe(database_url: str) -> Observation:
    marker = harness.new_marker()
    sent: list[str] = []  # the SQL that reached the driver
    commits: list[int] = []  # how much of it had been sent at each COMMIT
    async with harness.fresh_engine(database_url) as engine:

        @event.listens_for(engine.sync_engine, "before_cursor_execute")
        def record(*args: Any) -> None:
            sent.append(" ".join(str(args[2]).split()))

        @event.listens_for(engine.sync_engine, "commit")
        def committing(*args: Any) -> None:
            commits.append(len(sent))

        try:
            outcomes = []
            for factory in (default_factory, fixed_factory):
                sent.clear()
                outcome = await harness.caught(
                    create_and_read_title(factory(engine), f"{marker} Test")
                )
                outcomes.append((outcome, [abridged(sql) for sql in sent[commits[-1] :]]))
        finally:
            await harness.delete_marked(engine, marker)

    ((_, mistake), attempted), ((title, fix_error), read_sql) = outcomes
    title = (title or "").removeprefix(marker).strip()
    project_expires = create_session_factory(engine).kw["expire_on_commit"]
    return Observation(
        summary=type(mistake).__name__ if mistake else "no error",
        mistake_observed=(
            f"task.title right after await session.commit() raised {harness.outcome(mistake)} "
            "(the commit expired every attribute; reading one started a refresh "
            f"({'; '.join(attempted) or 'no statement'}), i.e. IO without await)"
        ),
        mistake_failed_as_predicted=isinstance(mistake, MissingGreenlet),
        fix_observed=(
            f"with expire_on_commit=False: task.title → {title!r}, {len(read_sql)} SQL statements "
            f"sent to read it. taskmanager.database.create_session_factory sets "
            f"expire_on_commit={project_expires}"
        ),
        fix_worked=title == "Test" and not read_sql and fix_error is None and not project_expires,
        mistake_exception=harness.exception_name(mistake) if mistake else None,
        facts={
            "expired title": harness.outcome(mistake),
            "statements the failed read attempted": "; ".join(attempted) or None,
            "title after commit": title,
            "statements sent by the reads after commit": len(read_sql),
            "create_session_factory expire_on_commit": project_expires,
        },
    )


def abridged(sql: str) -> str:
    """`SELECT … FROM tasks WHERE tasks.id = …`: a statement without its column list."""
    verb, _, rest = sql.partition(" ")
    _, found, source = rest.partition(" FROM ")
    return f"{verb} … FROM {source}" if found else sql


DEMONSTRATION = Demonstration(
    3,
    "expire-on-commit",
    "Forgetting expire_on_commit=False",
    "Common Mistakes, Mistake 3; 2.3",
    'With the default expire_on_commit=True, print(task.title) after commit: "Attribute '
    'expired, triggers lazy load → crash!" (MissingGreenlet).',
    "async_sessionmaker(bind=engine, class_=AsyncSession, expire_on_commit=False), as "
    "taskmanager.database.create_session_factory does.",
    observe,
)
