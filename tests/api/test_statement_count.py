"""The list endpoint costs a constant number of SQL statements, whatever the page size.

No N+1: the categories of a page come with the page (a join), and X-Total-Count rides
along with it. Statements are counted with a `before_cursor_execute` listener on the test
engine (tests/support/statements.py), whose connection the `client` fixture's session
uses; only what runs during the request counts. What the test fixture adds is tallied
separately and must be the only extra: its SAVEPOINT/RELEASE statements (the stand-in for
the real transaction) and the statement that ends the caller's scope after each request (a
real COMMIT would).

Every request that needs a caller also runs ONE statement saying who is calling
(`UserRepository.enter`: the service's proof checked, the token's user and login session
checked, memberships read, the transaction switched to the caller role), whatever the route:
counted apart as `caller`.
In production a read also begins and commits its READ ONLY transaction (it ran in
autocommit before the caller's transaction-local settings existed): asyncpg sends those
itself, not through a cursor, so the last test counts them with the engine's begin and
commit events on the app's real sessions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from httpx import ASGITransport, AsyncClient, Response
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from taskmanager.config import Settings
from taskmanager.models import Category, Label, Task, TaskLabel
from tests.support.accounts import Account
from tests.support.real_sessions import app_with_real_sessions
from tests.support.statements import StatementLog, count_statements

# The list's own statements: the page (with its total), and a COUNT only for a page past
# the end (no row to carry the total). The caller's statement comes on top of these.
MAX_LIST_STATEMENTS = 2
CALLER_STATEMENTS = 1


@pytest.fixture
async def seeded(db_session: AsyncSession, account: Account) -> dict[int, str]:
    """60 tasks spread over 5 categories in the `client` account's personal workspace;
    returns category id -> name."""
    workspace_id = account.personal_workspace_id
    categories = [Category(name=f"Category {n}", workspace_id=workspace_id) for n in range(5)]
    db_session.add_all(categories)
    await db_session.flush()
    names = {category.id: category.name for category in categories}
    category_ids = list(names)
    db_session.add_all(
        Task(
            title=f"Task {n}",
            category_id=category_ids[n % 5],
            completed=n % 2 == 0,
            workspace_id=workspace_id,
        )
        for n in range(60)
    )
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
    # One statement for the whole page with its total: no query per task or per category.
    assert len(big_log.queries) == 1, big_log.queries
    assert len(big_log.queries) == len(small_log.queries), (big_log.queries, small_log.queries)
    for log in (big_log, small_log):
        # ... plus the one statement that says who is calling, the same for every request ...
        assert len(log.caller) == CALLER_STATEMENTS, log.statements
        # ... and nothing else but the fixture's stand-ins for the real transaction.
        assert len(log.queries) + len(log.caller) + len(log.fixture) == len(log.statements)
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
    ],
)
async def test_statement_count_does_not_depend_on_page_or_filters(
    client: AsyncClient, engine: AsyncEngine, seeded: dict[int, str], params: dict[str, Any]
) -> None:
    _, reference = await list_counting(client, engine, {"limit": 50})
    response, log = await list_counting(client, engine, params)

    assert len(log.queries) == len(reference.queries) <= MAX_LIST_STATEMENTS
    assert len(log.caller) == CALLER_STATEMENTS
    assert all(task["category"] is not None for task in response.json())


@pytest.mark.parametrize("limit", [1, 100])
async def test_a_search_asks_first_how_many_tasks_it_may_match(
    client: AsyncClient, engine: AsyncEngine, seeded: dict[int, str], limit: int
) -> None:
    """One statement more than a list, whatever the page: whether to walk the order's index
    or read the matches by id (TaskRepository._search_way)."""
    _, reference = await list_counting(client, engine, {"limit": 50})
    response, log = await list_counting(client, engine, {"q": "task 1", "limit": limit})

    assert response.status_code == 200
    assert len(log.queries) == len(reference.queries) + 1
    assert "taskmanager_matches_at_least" in log.queries[0]
    assert all(task["category"] is not None for task in response.json())


async def test_a_page_past_the_end_costs_one_count_more(
    client: AsyncClient, engine: AsyncEngine, seeded: dict[int, str]
) -> None:
    """No row comes back to carry the total, so it is counted on its own."""
    response, log = await list_counting(client, engine, {"offset": 500})

    assert response.json() == []
    assert response.headers["x-total-count"] == "60"
    assert len(log.queries) == MAX_LIST_STATEMENTS, log.queries
    assert "count(" in log.queries[-1].lower()


@pytest.mark.parametrize("sort", ["newest", "due", "priority", "title"])
async def test_a_cursor_page_is_one_statement_too_and_counts_nothing(
    client: AsyncClient, engine: AsyncEngine, seeded: dict[int, str], sort: str
) -> None:
    first, _ = await list_counting(client, engine, {"limit": 5, "sort": sort})
    link = first.headers["link"]
    with count_statements(engine) as log:
        response = await client.get(link[1 : link.index(">")])

    assert response.status_code == 200, response.text
    assert len(response.json()) == 5
    assert "x-total-count" not in response.headers
    assert len(log.queries) == 1, log.queries
    assert len(log.caller) == CALLER_STATEMENTS
    assert "count(" not in log.queries[0].lower()


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
    category, for the answer); each after the caller's statement."""
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
    assert len(plain.caller) == len(categorised.caller) == CALLER_STATEMENTS
    assert len(categorised.queries) == 2, categorised.queries
    assert categorised.queries[1].lstrip().upper().startswith("SELECT CATEGORIES."), categorised
    assert answered.json()["category"] == {"id": category["id"], "name": "Errands"}


async def test_a_real_list_request_is_one_read_only_transaction_of_two_statements(
    settings: Settings, engine: AsyncEngine, account: Account
) -> None:
    """On the app's own read session: BEGIN (READ ONLY), the caller's statement, the page,
    COMMIT. The transaction (rather than autocommit) is what keeps the caller's settings,
    which are transaction-local, for the page's statement."""
    app = app_with_real_sessions(settings, engine)
    log = StatementLog()
    transactions: list[str] = []

    def before_cursor_execute(
        conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool
    ) -> None:
        log.record(statement, parameters)

    def begin(conn: Any) -> None:
        read_only = conn.get_execution_options().get("postgresql_readonly", False)
        transactions.append("BEGIN READ ONLY" if read_only else "BEGIN")

    def commit(conn: Any) -> None:
        transactions.append("COMMIT")

    listeners: dict[str, Callable[..., None]] = {
        "before_cursor_execute": before_cursor_execute,
        "begin": begin,
        "commit": commit,
    }
    for name, listener in listeners.items():
        event.listen(engine.sync_engine, name, listener)
    try:
        async with AsyncClient(transport=ASGITransport(app=app), base_url="http://test") as c:
            response = await c.get("/tasks", headers=account.headers)
    finally:
        for name, listener in listeners.items():
            event.remove(engine.sync_engine, name, listener)

    assert response.status_code == 200, response.text
    assert transactions == ["BEGIN READ ONLY", "COMMIT"]
    assert len(log.caller) == CALLER_STATEMENTS
    assert len(log.queries) == 1, log.statements
    assert log.fixture == []


# ─────────────────────────────── labels: still constant


@pytest.fixture
async def labelled(db_session: AsyncSession, account: Account) -> dict[int, list[str]]:
    """60 tasks carrying 0 to 11 of 12 labels (task n carries the first n % 12, so pages
    differ in how many labels their tasks carry); returns task id -> its label names in
    answer order."""
    workspace_id = account.personal_workspace_id
    labels = [Label(name=f"Label {n:02}", workspace_id=workspace_id) for n in range(12)]
    tasks = [Task(title=f"Task {n}", workspace_id=workspace_id) for n in range(60)]
    db_session.add_all([*labels, *tasks])
    await db_session.flush()
    db_session.add_all(
        TaskLabel(task_id=task.id, label_id=label.id, workspace_id=workspace_id)
        for n, task in enumerate(tasks)
        for label in labels[: n % 12]
    )
    await db_session.commit()
    return {task.id: [label.name for label in labels[: n % 12]] for n, task in enumerate(tasks)}


@pytest.mark.parametrize("params", [{"limit": 50}, {"limit": 5}, {"limit": 100, "offset": 7}])
async def test_a_page_with_its_labels_is_still_one_statement(
    client: AsyncClient,
    engine: AsyncEngine,
    labelled: dict[int, list[str]],
    params: dict[str, Any],
) -> None:
    response, log = await list_counting(client, engine, params)

    assert len(log.queries) == 1, log.queries
    assert len(log.caller) == CALLER_STATEMENTS
    tasks = response.json()
    assert tasks
    for task in tasks:
        assert [label["name"] for label in task["labels"]] == labelled[task["id"]]
    assert sum(len(task["labels"]) for task in tasks) > len(tasks)  # many labels per task


async def test_the_label_filter_costs_two_statements_more(
    client: AsyncClient, engine: AsyncEngine, labelled: dict[int, list[str]]
) -> None:
    """The page, and before it two statements, whatever the labels: one checking that the
    labels are the caller's (reading labels only, so that another tenant's label is
    answered without reading its tasks), one choosing how to find the page (by the
    carriers' ids, or by walking the order's index: TaskRepository._labels_way)."""
    _, reference = await list_counting(client, engine, {"limit": 50})
    labels = (await client.get("/labels")).json()
    wanted = [labels[0]["id"], labels[5]["id"]]

    response, log = await list_counting(client, engine, {"label_id": wanted})

    assert len(reference.queries) == 1
    assert len(log.queries) == 3
    assert "FROM labels" in log.queries[0]
    assert "task_labels" not in log.queries[0]
    assert "pg_class" in log.queries[1]
    expected = {task_id for task_id, names in labelled.items() if len(names) > 5}
    assert {task["id"] for task in response.json()} == expected


async def test_get_one_is_one_statement_however_many_labels(
    client: AsyncClient, engine: AsyncEngine, labelled: dict[int, list[str]]
) -> None:
    for task_id in (
        min(labelled, key=lambda i: len(labelled[i])),
        max(labelled, key=lambda i: len(labelled[i])),
    ):
        with count_statements(engine) as log:
            response = await client.get(f"/tasks/{task_id}")
        assert response.status_code == 200, response.text
        assert [label["name"] for label in response.json()["labels"]] == labelled[task_id]
        assert len(log.queries) == 1, log.queries


async def test_writing_labels_costs_the_same_statements_for_one_label_or_many(
    client: AsyncClient, engine: AsyncEngine, labelled: dict[int, list[str]]
) -> None:
    """Create: the labels checked (and read for the answer), the INSERT, the task_labels
    rows in one statement. Change: the locked task, the labels checked, the set replaced
    in one statement, the UPDATE."""
    label_ids = [label["id"] for label in (await client.get("/labels")).json()]
    counts = {}
    for how_many in (1, 11):
        with count_statements(engine) as log:
            created = await client.post(
                "/tasks", json={"title": "t", "label_ids": label_ids[:how_many]}
            )
        assert created.status_code == 201, created.text
        assert len(created.json()["labels"]) == how_many
        with count_statements(engine) as changed_log:
            changed = await client.patch(
                f"/tasks/{created.json()['id']}", json={"label_ids": label_ids[-how_many:]}
            )
        assert changed.status_code == 200, changed.text
        assert [label["id"] for label in changed.json()["labels"]] == label_ids[-how_many:]
        counts[how_many] = (len(log.queries), len(changed_log.queries))
    assert counts[1] == counts[11] == (3, 4), counts
