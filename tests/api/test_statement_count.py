"""The list endpoint costs a constant number of SQL statements, whatever the page size.

No N+1: the categories of a page come with the page (a join), and X-Total-Count is one
COUNT. Statements are counted with a `before_cursor_execute` listener on the test engine,
whose connection the `client` fixture's session uses; only what runs during the request
counts. The test fixture's SAVEPOINT/RELEASE statements (the stand-in for the real
commit) are tallied separately and must be the only extras.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from httpx import AsyncClient, Response
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from taskmanager.repositories.category_repository import CategoryRepository
from taskmanager.repositories.task_repository import TaskRepository

MAX_LIST_STATEMENTS = 3
SAVEPOINT_PREFIXES = ("SAVEPOINT ", "RELEASE SAVEPOINT ", "ROLLBACK TO SAVEPOINT ")


class StatementLog:
    def __init__(self) -> None:
        self.statements: list[str] = []

    @property
    def queries(self) -> list[str]:
        return [s for s in self.statements if not is_savepoint(s)]

    @property
    def savepoints(self) -> list[str]:
        return [s for s in self.statements if is_savepoint(s)]


def is_savepoint(statement: str) -> bool:
    return statement.lstrip().upper().startswith(SAVEPOINT_PREFIXES)


@contextmanager
def count_statements(engine: AsyncEngine) -> Iterator[StatementLog]:
    log = StatementLog()

    def before_cursor_execute(
        conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool
    ) -> None:
        log.statements.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", before_cursor_execute)
    try:
        yield log
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", before_cursor_execute)


@pytest.fixture
async def seeded(db_session: AsyncSession) -> dict[int, str]:
    """60 tasks spread over 5 categories; returns category id -> name."""
    categories = CategoryRepository(db_session)
    tasks = TaskRepository(db_session)
    names = {}
    for n in range(5):
        category = await categories.create(f"Category {n}")
        names[category.id] = category.name
    category_ids = list(names)
    for n in range(60):
        await tasks.create(title=f"Task {n}", category_id=category_ids[n % 5], completed=n % 2 == 0)
    await db_session.commit()  # releases the seeding savepoint; the outer transaction stays
    return names


async def list_counting(
    client: AsyncClient, engine: AsyncEngine, params: dict[str, Any]
) -> tuple[Response, StatementLog]:
    with count_statements(engine) as log:
        response = await client.get("/tasks", params=params)
    assert response.status_code == 200, response.text
    return response, log


async def test_list_costs_a_constant_number_of_statements(
    client: AsyncClient, engine: AsyncEngine, seeded: dict[int, str]
) -> None:
    big, big_log = await list_counting(client, engine, {"limit": 50})
    small, small_log = await list_counting(client, engine, {"limit": 5})

    assert len(big.json()) == 50
    assert len(small.json()) == 5
    assert big.headers["x-total-count"] == small.headers["x-total-count"] == "60"
    assert 1 <= len(big_log.queries) <= MAX_LIST_STATEMENTS, big_log.queries
    assert len(big_log.queries) == len(small_log.queries), (big_log.queries, small_log.queries)
    # Every statement is either one of those queries or the fixture's savepoint handling.
    for log in (big_log, small_log):
        assert len(log.queries) + len(log.savepoints) == len(log.statements)
        assert all(q.lstrip().upper().startswith("SELECT") for q in log.queries), log.queries
    assert sum("count(" in q.lower() for q in big_log.queries) == 1


async def test_every_listed_task_carries_its_category(
    client: AsyncClient, engine: AsyncEngine, seeded: dict[int, str]
) -> None:
    response, _ = await list_counting(client, engine, {"limit": 50})

    tasks = response.json()
    assert len(tasks) == 50
    for task in tasks:
        category = task["category"]
        assert category is not None, task
        assert category["name"] == seeded[category["id"]]
    # Spread over all five categories, as seeded.
    assert {task["category"]["id"] for task in tasks} == set(seeded)


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 100},
        {"limit": 1},
        {"limit": 50, "offset": 40},
        {"completed": "true"},
        {"q": "task 1"},
    ],
)
async def test_statement_count_does_not_depend_on_page_or_filters(
    client: AsyncClient, engine: AsyncEngine, seeded: dict[int, str], params: dict[str, Any]
) -> None:
    _, reference = await list_counting(client, engine, {"limit": 50})
    response, log = await list_counting(client, engine, params)

    assert len(log.queries) == len(reference.queries) <= MAX_LIST_STATEMENTS
    assert all(task["category"] is not None for task in response.json())


async def test_filtering_by_category_also_costs_constant_statements(
    client: AsyncClient, engine: AsyncEngine, seeded: dict[int, str]
) -> None:
    _, reference = await list_counting(client, engine, {"limit": 50})
    category_id = next(iter(seeded))

    response, log = await list_counting(client, engine, {"category_id": category_id})

    assert len(response.json()) == 12
    assert len(log.queries) == len(reference.queries)
    assert {t["category"]["name"] for t in response.json()} == {seeded[category_id]}


async def test_create_reads_generated_fields_back_with_returning_not_refresh(
    client: AsyncClient, engine: AsyncEngine
) -> None:
    """The lecture's create() flushes, then `refresh()`es: a SELECT after the INSERT. With
    `eager_defaults=True` the INSERT brings id and timestamps back itself (RETURNING), so a
    task without a category costs ONE statement, and one with a category a second (its
    category, for the answer)."""
    with count_statements(engine) as plain:
        created = await client.post("/tasks", json={"title": "Buy milk"})
    category = (await client.post("/categories", json={"name": "Errands"})).json()
    with count_statements(engine) as categorised:
        answered = await client.post(
            "/tasks", json={"title": "Post", "category_id": category["id"]}
        )

    assert created.status_code == answered.status_code == 201
    for generated in ("id", "created_at", "updated_at"):
        assert created.json()[generated], generated
    [insert] = plain.queries
    assert insert.lstrip().upper().startswith("INSERT INTO TASKS"), insert
    assert "RETURNING" in insert.upper()
    assert len(categorised.queries) == 2, categorised.queries
    assert categorised.queries[1].lstrip().upper().startswith("SELECT CATEGORIES."), categorised
    assert answered.json()["category"] == {"id": category["id"], "name": "Errands"}
