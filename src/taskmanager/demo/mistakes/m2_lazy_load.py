"""Mistake 2: accessing a lazy-loaded relationship (lecture, Common Mistakes).

`Task` and `Category` are the lecture's models: relationships at SQLAlchemy's default
`lazy="select"`, mapped onto the project's tables.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import MissingGreenlet
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from taskmanager import models
from taskmanager.demo.mistakes import harness
from taskmanager.demo.mistakes.harness import Demonstration, Observation
from taskmanager.demo.mistakes.lecture import Category, Task


# ❌ CRASH: MissingGreenlet error
async def get_task_with_category(session: AsyncSession, task_id: int) -> Category | None:
    result = await session.execute(select(Task).where(Task.id == task_id))
    task = result.scalar_one()
    return task.category  # 💥 Lazy load attempt in async!


# ✅ CORRECT: Eagerly load what you need
async def get_task_with_category_loaded(session: AsyncSession, task_id: int) -> Category | None:
    stmt = select(Task).where(Task.id == task_id).options(selectinload(Task.category))
    result = await session.execute(stmt)
    task = result.scalar_one()
    return task.category  # ✅ Already loaded


# ✅ What this project adds (taskmanager/models.py): every relationship lazy="raise", so a
# forgotten eager load fails at once, naming the attribute, instead of as MissingGreenlet.
async def get_project_task_category(session: AsyncSession, task_id: int) -> object:
    result = await session.execute(select(models.Task).where(models.Task.id == task_id))
    task = result.scalar_one()
    return task.category  # 💥 InvalidRequestError: 'Task.category' is not available …


# ── Below: the machinery that runs the code above and says what it did ──────────────────────


async def observe(database_url: str) -> Observation:
    marker = harness.new_marker()
    async with harness.fresh_engine(database_url) as engine, AsyncSession(engine) as session:
        try:  # nothing is ever committed: everything below is rolled back
            task = Task(title=f"{marker} Write report", category=Category(name=f"{marker} Work"))
            session.add(task)
            await session.flush()
            task_id = task.id
            outcomes = []
            for read in (
                get_task_with_category,
                get_task_with_category_loaded,
                get_project_task_category,
            ):
                session.expunge_all()  # a new request: nothing loaded yet
                outcomes.append(await harness.caught(read(session, task_id)))
        finally:
            await session.rollback()

    (_, mistake), (loaded, fix_error), (_, own_error) = outcomes
    name = loaded.name.removeprefix(marker).strip() if isinstance(loaded, Category) else None
    return Observation(
        summary=type(mistake).__name__ if mistake else "no error",
        mistake_observed=(
            f"task.category after select(Task) raised {harness.outcome(mistake)}. The project's "
            f"models (lazy='raise') raise instead {harness.outcome(own_error)} — loud and "
            "immediate, with the attribute's name"
        ),
        mistake_failed_as_predicted=isinstance(mistake, MissingGreenlet),
        fix_observed=(
            f"select(Task).options(selectinload(Task.category)): task.category.name → {name!r}, "
            f"{harness.outcome(fix_error)}"
        ),
        fix_worked=name == "Work" and fix_error is None,
        mistake_exception=harness.exception_name(mistake) if mistake else None,
        facts={
            "lazy category": harness.outcome(mistake),
            "selectinload category.name": name,
            "taskmanager.models Task.category": harness.outcome(own_error),
            "taskmanager.models exception": (
                harness.exception_name(own_error) if own_error else None
            ),
        },
    )


DEMONSTRATION = Demonstration(
    2,
    "lazy-load",
    "Accessing a lazy-loaded relationship",
    "Common Mistakes, Mistake 2",
    '"CRASH: MissingGreenlet error" — print(task.category.name) after a plain select: '
    '"Lazy load attempt in async!"',
    "select(Task).options(selectinload(Task.category)): eagerly load what you need. "
    "(The project also declares every relationship lazy='raise'.)",
    observe,
)
