"""`taskmanager db seed`: a demo account, and plausible tasks, categories and labels in its
personal workspace, fast.

Tasks go in with COPY in batches (100,000 take seconds), spread over the past year so
the list endpoint's newest-first order means something. Each task carries 0 to 3 of the
labels, attached in SQL as the batch is inserted (no label rows cross the wire).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from taskmanager.accounts.callers import account_id, scope_of_account
from taskmanager.accounts.registration import register_account
from taskmanager.database import create_session_factory
from taskmanager.models import PRIORITIES
from taskmanager.repositories.category_repository import CategoryRepository
from taskmanager.repositories.label_repository import LabelRepository
from taskmanager.repositories.task_queries.filters import TaskFilters
from taskmanager.repositories.task_repository import TaskRepository
from taskmanager.security.caller_key import CallerKey

BATCH_SIZE = 10_000

_VERBS = ("Buy", "Call", "Email", "Fix", "Plan", "Review", "Write", "Book", "Clean", "Pay")
_OBJECTS = (
    "milk",
    "the dentist",
    "quarterly report",
    "bike tyre",
    "team offsite",
    "pull request",
    "blog post",
    "flights",
    "garage",
    "electricity bill",
    "birthday gift",
    "lecture notes",
)
_CATEGORY_WORDS = (
    "Work",
    "Home",
    "Errands",
    "Health",
    "Finance",
    "Study",
    "Travel",
    "Garden",
    "Family",
    "Hobbies",
)
# The demo workspace's labels, with their colours.
LABELS = (
    ("urgent", "#e53935"),
    ("waiting", "#fb8c00"),
    ("someday", "#8e24aa"),
    ("quick win", "#43a047"),
    ("blocked", "#6d4c41"),
    ("important", "#d81b60"),
    ("outdoors", "#00897b"),
    ("phone", "#1e88e5"),
    ("computer", "#3949ab"),
    ("shopping", "#fdd835"),
    ("with kids", "#f4511e"),
    ("low energy", "#757575"),
)

# How often each priority (models.PRIORITIES, lowest first) is seeded.
_PRIORITY_WEIGHTS = (50, 30, 15, 5)

DEMO_EMAIL = "demo@example.com"
DEMO_PASSWORD = "demo-password"


@dataclass(frozen=True, slots=True)
class SeedResult:
    tasks: int
    categories: int
    labels: int = 0
    email: str = DEMO_EMAIL
    account_created: bool = False
    deleted: int = 0  # the demo account's tasks deleted first (`fresh`)
    total: int = 0  # the tasks in its personal workspace afterwards


async def demo_account(
    session: AsyncSession, key: CallerKey, email: str = DEMO_EMAIL
) -> tuple[int, bool]:
    """The demo account's id, creating it (password DEMO_PASSWORD) if it does not exist;
    and whether it was created."""
    user_id = await account_id(session, key, email)
    if user_id is not None:
        return user_id, False
    # The operator's own demo account: its address needs no mailed proof.
    user = await register_account(session, key, email, DEMO_PASSWORD, "Demo", verified=True)
    return user.id, True


def category_names(count: int) -> list[str]:
    """`count` distinct category names: the plain words first, then numbered ones."""
    names = list(_CATEGORY_WORDS[:count])
    names += [
        f"{_CATEGORY_WORDS[i % len(_CATEGORY_WORDS)]} {i // len(_CATEGORY_WORDS) + 1}"
        for i in range(len(names), count)
    ]
    return names


def task_rows(
    count: int, category_ids: list[int], rng: random.Random, now: datetime, workspace_id: int
) -> Iterator[tuple[Any, ...]]:
    """`count` task rows in BULK_TASK_COLUMNS order, created over the past year; half of
    them due within 90 days of their creation (so some are overdue), most of low priority.
    About 30% are done: last changed (their updated_at, which bulk_insert makes their
    completed_at) a third of the way to their due date (within 30 days of their creation),
    and not after `now`. Done takes no draw of its own, so a `--seed` gives the rows it gave
    before completed_at was set (bench/search_scope.py compares seeds of two versions)."""
    priorities = rng.choices(PRIORITIES, weights=_PRIORITY_WEIGHTS, k=count)
    for i in range(count):
        created = now - timedelta(seconds=rng.randrange(365 * 24 * 3600))
        category_id = rng.choice(category_ids) if category_ids and rng.random() < 0.8 else None
        description = f"Seeded task {i + 1}" if rng.random() < 0.5 else None
        due = created + timedelta(seconds=rng.randrange(90 * 24 * 3600))
        title = f"{rng.choice(_VERBS)} {rng.choice(_OBJECTS)} #{i + 1}"
        completed = rng.random() < 0.3
        due_at = due if rng.random() < 0.5 else None
        updated = min(now, created + (due - created) / 3) if completed else created
        yield (
            workspace_id,
            title,
            description,
            completed,
            category_id,
            created,
            updated,
            due_at,
            priorities[i],
        )


async def seed(
    engine: AsyncEngine,
    key: CallerKey,
    tasks: int,
    categories: int,
    *,
    seed_value: int = 42,
    on_progress: Callable[[int], None] | None = None,
    owner_engine: AsyncEngine | None = None,
    fresh: bool = False,
) -> SeedResult:
    """Insert `categories` categories and the LABELS (existing names are reused) and
    `tasks` tasks, each with 0 to 3 of the labels, in the demo account's personal workspace:
    added to the tasks already there, or, with `fresh`, in place of them (they are deleted
    first; its categories and labels stay, and are reused).

    Each batch is its own transaction, so a long seed shows progress and an interrupted
    one keeps what was done. `on_progress(n)` is called after each batch of n tasks.
    With `owner_engine` (the tables' owner: only the owner may VACUUM them), the planner's
    statistics are refreshed at the end; without, autovacuum does it later.
    """
    session_factory = create_session_factory(engine)
    async with session_factory() as session, session.begin():
        user_id, created = await demo_account(session, key)
    async with session_factory() as session, session.begin():
        scope = await scope_of_account(session, key, user_id, logged=False)
        workspace_id = scope.workspace_for_new_row(None)
        category_ids = await CategoryRepository(session, scope).ensure_names(
            category_names(categories), workspace_id
        )
        label_ids = await LabelRepository(session, scope).ensure_names(LABELS, workspace_id)
        deleted = (
            await TaskRepository(session, scope).delete_all_in_workspace(workspace_id)
            if fresh
            else 0
        )
    rng = random.Random(seed_value)
    now = datetime.now(UTC)
    rows = task_rows(tasks, category_ids, rng, now, workspace_id)
    inserted = 0
    while inserted < tasks:
        batch = [
            row for _, row in zip(range(min(BATCH_SIZE, tasks - inserted)), rows, strict=False)
        ]
        async with session_factory() as session, session.begin():
            scope = await scope_of_account(session, key, user_id, logged=False)
            inserted += await TaskRepository(session, scope).bulk_insert(batch, label_ids)
        if on_progress is not None:
            on_progress(len(batch))
    if (inserted or deleted) and owner_engine is not None:
        await refresh_statistics(owner_engine)
    async with session_factory() as session, session.begin():
        scope = await scope_of_account(session, key, user_id, logged=False)
        total = await TaskRepository(session, scope).count(TaskFilters(workspace_id=workspace_id))
    return SeedResult(
        tasks=inserted,
        categories=len(category_ids),
        labels=len(label_ids),
        account_created=created,
        deleted=deleted,
        total=total,
    )


async def refresh_statistics(engine: AsyncEngine) -> None:
    """VACUUM (ANALYZE) after a bulk load: fresh planner statistics, and a visibility map
    that lets COUNT(*) and the list's index scans skip the table's pages. `engine` must log
    in as the tables' owner."""
    async with engine.connect() as connection:
        autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
        await autocommit.execute(text("VACUUM (ANALYZE) tasks, categories, labels, task_labels"))
