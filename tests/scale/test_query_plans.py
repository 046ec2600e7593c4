"""Week 7 checked: with 100,000 tasks in place, every list query the API offers reads
`tasks` through an index, and a cursor page deep in the list reads about a page of rows.

The plans are PostgreSQL's own (`EXPLAIN (ANALYZE, FORMAT JSON)`) for the exact statements
TaskRepository.get_page sends (taskmanager.explain catches them), run as the seeded account
under row-level security, on data seeded by `taskmanager db seed`'s own code (due dates,
priorities, labels) and analysed (VACUUM ANALYZE), as after a real bulk load.

What is checked is the page: X-Total-Count's total is what it is (counting most of a table
is rightly a sequential scan; that is why cursor pages do not count), and so are offset
pages deep in a list (`taskmanager db explain --deep` shows them).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import fields

import pytest
import pytest_asyncio
from sqlalchemy.ext.asyncio import AsyncEngine

from taskmanager.config import Settings
from taskmanager.database import create_engine
from taskmanager.explain import Plan, explain_list_queries
from taskmanager.repositories.task_queries.filters import TaskFilters
from taskmanager.repositories.task_queries.sorts import SORTS
from taskmanager.seed import DEMO_EMAIL, seed
from tests.support.databases import TEST_KEY, owner_url

SEEDED_TASKS = 100_000

LIMIT = 50

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest.fixture(scope="module")
def plans_url(make_database: pytest.FixtureRequest) -> str:
    return make_database("scale_query_plans")  # type: ignore[operator, no-any-return]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def seeded(plans_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(Settings(database_url=plans_url), plans_url)
    owner = create_engine(Settings(database_url=plans_url), owner_url(plans_url))
    try:
        await seed(engine, TEST_KEY, SEEDED_TASKS, 50, owner_engine=owner)
        yield engine
    finally:
        await engine.dispose()
        await owner.dispose()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def plans(seeded: AsyncEngine) -> list[Plan]:
    """Every sort order with no filter, each filter and every two filters: first pages; and
    with no filter and each filter: cursor pages (after the first page: where the plan
    could differ from the first's)."""
    first = await explain_list_queries(seeded, TEST_KEY, DEMO_EMAIL, pairs=True, pages=("first",))
    after = await explain_list_queries(
        seeded, TEST_KEY, DEMO_EMAIL, pages=("cursor",), deep_rows=LIMIT
    )
    return first + after


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def deep_plans(seeded: AsyncEngine) -> list[Plan]:
    """Every sort order unfiltered (relevance: with q only), a cursor page 10,000 tasks in,
    run (ANALYZE) to count the rows it reads."""
    return await explain_list_queries(
        seeded,
        TEST_KEY,
        DEMO_EMAIL,
        analyze=True,
        pages=("cursor",),
        filtered=False,
        deep_rows=10_000,
    )


def _filters_of(filters: TaskFilters) -> list[str]:
    return [f.name for f in fields(filters) if getattr(filters, f.name) not in (None, "", ())]


def _shown(plan: Plan) -> str:
    reads = ", ".join(f"{r.node} {r.index or ''} ({r.rows:.0f} rows)" for r in plan.part("page"))
    return f"{plan.query.label}: {reads}"


async def test_every_list_query_reads_tasks_through_an_index(plans: list[Plan]) -> None:
    # Every order, alone and with every filter (relevance always searches), both pages.
    names = [f.name for f in fields(TaskFilters)]
    asked = {(p.query.sort, p.query.page, n) for p in plans for n in _filters_of(p.query.filters)}
    for sort in SORTS:
        for page in ("first", "cursor"):
            assert {n for s, pg, n in asked if (s, pg) == (sort, page)} == set(names)
    sequential = [
        _shown(plan) for plan in plans if any(r.node == "Seq Scan" for r in plan.part("page"))
    ]
    assert sequential == []
    assert all(plan.indexes("page") for plan in plans)


async def test_a_deep_cursor_page_reads_about_a_page_of_rows(deep_plans: list[Plan]) -> None:
    """In every order, 10,000 tasks in, the page reads its own rows (and the one after,
    which says whether another page follows), not the 10,000 before it."""
    assert len(deep_plans) == len(SORTS)
    assert all(not plan.part("count") for plan in deep_plans)  # cursor pages do not count
    unfiltered = [plan for plan in deep_plans if plan.query.filters == TaskFilters()]
    assert len(unfiltered) == len(SORTS) - 1
    too_many = [_shown(p) for p in unfiltered if p.rows_read("page") > 2 * (LIMIT + 1)]
    assert too_many == []
