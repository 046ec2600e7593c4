"""Every activity list reads `activity` through an index, and a cursor page deep in a
workspace's log reads about a page of rows: with 200,000 rows of 40 workspaces in place
(a quarter of them the demo account's), analysed, as the demo account under row-level
security. The statements are ActivityRepository.page's own (caught on their way to the
driver, as taskmanager.explain catches the task list's)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from taskmanager.accounts.callers import scope_of_account
from taskmanager.config import Settings
from taskmanager.database import create_engine, create_session_factory, driver_connection
from taskmanager.explain import SEQUENTIAL_SCAN, TableRead, caught_statement, table_reads
from taskmanager.repositories.activity_repository import ActivityFilters, ActivityRepository
from taskmanager.seed import demo_account
from tests.support.databases import TEST_KEY, owner_url

ROWS = 200_000
LIMIT = 50
DEEP = 20_000  # rows into the demo workspace's log, for the deep cursor pages

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest.fixture(scope="module")
def plans_url(make_database: Callable[[str], str]) -> str:
    return make_database("scale_activity_plans")


@dataclass(frozen=True)
class Seeded:
    engine: AsyncEngine
    user_id: int
    workspace_id: int


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def seeded(plans_url: str) -> AsyncIterator[Seeded]:
    """The demo account, and ROWS activity rows: every fourth in its personal workspace,
    the rest in 39 others; 20 actors, 8 kinds, 5,000 tasks."""
    engine = create_engine(Settings(database_url=plans_url), plans_url)
    owner = create_engine(Settings(database_url=plans_url), owner_url(plans_url))
    try:
        async with create_session_factory(engine)() as session, session.begin():
            user_id, _ = await demo_account(session, TEST_KEY)
        async with owner.begin() as connection:
            workspace_id = (
                await connection.execute(
                    text("SELECT personal_workspace_id FROM users WHERE id = :id"), {"id": user_id}
                )
            ).scalar_one()
            await connection.execute(
                text(
                    """
                    INSERT INTO activity (workspace_id, actor_id, kind, object_type, object_id,
                                          after, created_at)
                    SELECT CASE WHEN n % 4 = 0 THEN :workspace ELSE 1000000 + n % 39 END,
                           CASE WHEN n % 20 = 0 THEN :user ELSE 1000 + n % 20 END,
                           (ARRAY['task.created', 'task.updated', 'task.deleted',
                                  'task.label_added', 'category.created', 'label.created',
                                  'member.added', 'workspace.renamed'])[1 + n % 8],
                           'task', (n % 5000)::text, '{"title": "x"}'::jsonb,
                           now() - make_interval(secs => :rows - n)
                    FROM generate_series(1, :rows) n
                    """
                ),
                {"workspace": workspace_id, "user": user_id, "rows": ROWS},
            )
        async with owner.connect() as connection:
            autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
            await autocommit.execute(text("VACUUM (ANALYZE) activity"))
        yield Seeded(engine, user_id, workspace_id)
    finally:
        await engine.dispose()
        await owner.dispose()


@dataclass(frozen=True)
class ActivityPlan:
    label: str
    reads: tuple[TableRead, ...]

    @property
    def rows(self) -> float:
        return sum(read.rows for read in self.reads)

    def __str__(self) -> str:
        shown = ", ".join(f"{r.node} {r.index or ''} ({r.rows:.0f} rows)" for r in self.reads)
        return f"{self.label}: {shown}"


async def _plans(seeded: Seeded, deep: bool) -> list[ActivityPlan]:
    """Each filter the API offers alone and with the kind, and a task's history: first
    pages, or (deep) the page after the row DEEP rows in (ANALYZE: rows actually read)."""
    workspace = seeded.workspace_id
    queries = {
        "workspace": ActivityFilters(workspace_id=workspace),
        "workspace, task_id": ActivityFilters(workspace_id=workspace, task_id=40),
        "workspace, actor_id": ActivityFilters(workspace_id=workspace, actor_id=seeded.user_id),
        "workspace, kind": ActivityFilters(workspace_id=workspace, kind="task.created"),
        "workspace, actor_id, kind": ActivityFilters(
            workspace_id=workspace, actor_id=1004, kind="task.label_added"
        ),
        "workspace, task_id, kind": ActivityFilters(
            workspace_id=workspace, task_id=40, kind="task.created"
        ),
        "task history": ActivityFilters(task_id=40),
    }
    found = []
    async with create_session_factory(seeded.engine)() as session, session.begin():
        scope = await scope_of_account(session, TEST_KEY, seeded.user_id)
        repository = ActivityRepository(session, scope)
        for label, filters in queries.items():
            after = None
            if deep:
                everything = await repository.page(filters, limit=DEEP)
                if everything.next_after is None:
                    continue  # a list shorter than the depth: its first page says it all
                after = everything.next_after
            statement, parameters = await caught_statement(
                session,
                lambda filters=filters, after=after: repository.page(
                    filters, limit=LIMIT, after=after
                ),
                table="activity",
            )
            driver = await driver_connection(session)
            document = await driver.fetchval(
                f"EXPLAIN (ANALYZE, FORMAT JSON) {statement}", *parameters
            )
            if isinstance(document, str):
                document = json.loads(document)
            reads = tuple(table_reads(document[0]["Plan"], table="activity"))
            found.append(ActivityPlan(label + (" (deep cursor page)" if deep else ""), reads))
        await session.rollback()
    return found


async def test_every_activity_list_reads_through_an_index(seeded: Seeded) -> None:
    plans = await _plans(seeded, deep=False)
    assert len(plans) == 7
    sequential = [str(p) for p in plans if any(r.node == SEQUENTIAL_SCAN for r in p.reads)]
    assert sequential == []
    assert all(read.index for plan in plans for read in plan.reads), [str(p) for p in plans]


async def test_a_deep_cursor_page_of_a_workspace_reads_about_a_page(seeded: Seeded) -> None:
    """20,000 rows into the demo workspace's log (50,000 rows), newest first: the page reads
    its own rows and the one after, not the 20,000 before it."""
    plans = await _plans(seeded, deep=True)
    labels = {plan.label for plan in plans}
    assert "workspace (deep cursor page)" in labels
    too_many = [str(p) for p in plans if p.rows > 2 * (LIMIT + 1)]
    assert too_many == []
    assert all(not any(r.node == SEQUENTIAL_SCAN for r in p.reads) for p in plans)
