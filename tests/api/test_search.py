"""Full-text search: `q` finds tasks whose title or description holds every word of it as a
word prefix, ignoring case; `sort=relevance` puts the best matches first; the GIN index
serves the search, under row-level security too."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import pytest_asyncio
from httpx import AsyncClient
from sqlalchemy import Select, inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.pool import NullPool

from taskmanager.accounts.callers import scope_of_account
from taskmanager.config import Settings
from taskmanager.database import create_engine, create_session_factory
from taskmanager.models import Task
from taskmanager.repositories.task_queries.filters import (
    TaskFilters,
    active_filters,
    filter_parameters,
)
from taskmanager.repositories.task_queries.sorts import SORTS
from taskmanager.repositories.task_queries.statements import page_statement
from taskmanager.repositories.task_repository import TaskRepository
from taskmanager.security.scope import Scope
from taskmanager.seed import demo_account, seed
from tests.support.accounts import Account, create_account
from tests.support.databases import TEST_KEY, owner_url
from tests.support.pages import walk_both_ways
from tests.support.problems import assert_validation_problem


async def create(client: AsyncClient, title: str, **fields: Any) -> dict[str, Any]:
    response = await client.post("/tasks", json={"title": title, **fields})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def search(client: AsyncClient, q: str, **params: Any) -> list[str]:
    """The titles `q` finds (newest first unless `sort` says otherwise)."""
    response = await client.get("/tasks", params={"q": q, **params})
    assert response.status_code == 200, response.text
    titles = [task["title"] for task in response.json()]
    assert response.headers["x-total-count"] == str(len(titles))
    return titles


# ─────────────────────────────────────────────
# What matches
# ─────────────────────────────────────────────


async def test_a_word_prefix_matches(client: AsyncClient) -> None:
    await create(client, "Buy milk")
    await create(client, "Call mum")
    assert await search(client, "mil") == ["Buy milk"]
    assert await search(client, "milk") == ["Buy milk"]


async def test_not_a_substring_any_more(client: AsyncClient) -> None:
    """The ILIKE '%…%' this replaces found "ilk" in "milk"; a word search does not."""
    await create(client, "Buy milk")
    assert await search(client, "ilk") == []
    assert await search(client, "milky") == []  # longer than the word: not a prefix of it


async def test_case_is_ignored_both_ways(client: AsyncClient) -> None:
    await create(client, "Buy MILK")
    await create(client, "Über Straße")
    assert await search(client, "Milk") == ["Buy MILK"]
    assert await search(client, "mIL") == ["Buy MILK"]
    assert await search(client, "über STRASSE") == []  # no stemming, no folding of ß
    assert await search(client, "ÜBER straße") == ["Über Straße"]


async def test_the_description_is_searched_too(client: AsyncClient) -> None:
    await create(client, "Shopping", description="oat milk and bread")
    await create(client, "Errands", description=None)
    assert await search(client, "bread") == ["Shopping"]
    assert await search(client, "shop bre") == ["Shopping"]  # one word in each


async def test_every_word_is_needed_in_any_order(client: AsyncClient) -> None:
    await create(client, "Buy oat milk")
    await create(client, "Buy bread")
    await create(client, "milk the cow")
    assert await search(client, "milk buy") == ["Buy oat milk"]
    assert await search(client, "bu mi oa") == ["Buy oat milk"]
    assert await search(client, "milk bread") == []
    assert await search(client, "milk") == ["milk the cow", "Buy oat milk"]


async def test_a_changed_title_is_searched_as_changed(client: AsyncClient) -> None:
    task = await create(client, "Buy milk")
    response = await client.patch(f"/tasks/{task['id']}", json={"title": "Buy bread"})
    assert response.status_code == 200, response.text
    assert await search(client, "milk") == []
    assert await search(client, "bread") == ["Buy bread"]


def test_the_orm_never_reads_the_search_document() -> None:
    """Not mapped: neither loading a Task nor INSERT/UPDATE ... RETURNING carries it."""
    assert "search_vector" in Task.__table__.c
    assert "search_vector" not in inspect(Task).attrs


async def test_the_search_document_is_never_shown(client: AsyncClient) -> None:
    task = await create(client, "Buy milk")
    shown = [
        task,
        (await client.get(f"/tasks/{task['id']}")).json(),
        (await client.get("/tasks", params={"q": "milk"})).json()[0],
        (await client.patch(f"/tasks/{task['id']}", json={"completed": True})).json(),
    ]
    assert all("search_vector" not in body for body in shown)


@pytest.mark.parametrize("walking", [False, True])
async def test_a_word_longer_than_the_index_keeps_is_still_matched_whole(
    db_session: AsyncSession, scope: Scope, monkeypatch: pytest.MonkeyPatch, walking: bool
) -> None:
    """The search's index keeps a word's first 500 characters (migration 0009: with the
    workspace in front, a lexeme must stay within PostgreSQL's 2,047 bytes). The longest
    word PostgreSQL indexes (2,046 bytes) is stored and found; a word of q longer than the
    index keeps (below the API, which takes at most 200 characters of q) still matches only
    the words it is a prefix of, by the matches' ids and walking alike, page and count."""

    async def decided(*_: object) -> bool:
        return walking

    monkeypatch.setattr(TaskRepository, "_walk_finds_the_page_sooner", decided)
    repository = TaskRepository(db_session, scope)
    for title, description in (
        ("one", "a" * 600),
        ("other", "a" * 550 + "b" * 50),
        ("widest", "é" * 1023),
    ):
        await repository.create(title, description=description)

    async def found(q: str) -> tuple[list[str], int | None]:
        page = await repository.get_page(TaskFilters(q=q))
        return sorted(task["title"] for task in page.items), page.total

    assert await found("a" * 600) == (["one"], 1)
    assert await found("a" * 550 + "b") == (["other"], 1)
    assert await found("a" * 520) == (["one", "other"], 2)
    assert await found("é" * 1023) == (["widest"], 1)


# Whatever a client types, q is words: tsquery's operators, quotes, backslashes and LIKE's
# wildcards are punctuation between them, never syntax (and never a 500).
@pytest.mark.parametrize(
    ("q", "expected"),
    [
        ("a & b", ["a b c"]),
        ("a | zzz", []),  # not "or": every word is needed
        ("!milk", ["Buy milk"]),  # not "not"
        ("milk:*", ["Buy milk"]),
        ("milk:A", []),  # "milk" and "a": no "a" word in "Buy milk"
        ("buy <-> milk", ["Buy milk"]),
        ("(milk", ["Buy milk"]),
        ("'milk'", ["Buy milk"]),
        ('"milk"', ["Buy milk"]),
        ("it's", ["it's done"]),
        ("O'Brien", ["Call O'Brien"]),
        ("back\\slash", ["back\\slash"]),
        ("milk\\", ["Buy milk"]),
        ("%milk_", ["Buy milk"]),
        ("x.com/a'b\\c", ["see x.com/a'b\\c"]),  # a URL: a word with a quote and a backslash
    ],
)
async def test_query_syntax_in_q_is_only_punctuation(
    client: AsyncClient, q: str, expected: list[str]
) -> None:
    for title in ("a b c", "Buy milk", "it's done", "Call O'Brien", "back\\slash"):
        await create(client, title)
    await create(client, "see x.com/a'b\\c")
    assert await search(client, q) == expected


@pytest.mark.parametrize("q", ["!!!", "&", "'", ":*", "<->", "\\", "%", "-", "  ", "<b></b>"])
async def test_a_q_without_words_is_422_naming_q(client: AsyncClient, q: str) -> None:
    await create(client, "Buy milk")
    body = assert_validation_problem(await client.get("/tasks", params={"q": q}), "query.q")
    assert "no words" in body["detail"]


async def test_a_q_without_words_is_422_past_the_end_too(client: AsyncClient) -> None:
    response = await client.get("/tasks", params={"q": "!!!", "offset": 100})
    assert_validation_problem(response, "query.q")


async def test_a_search_past_the_end_still_counts_the_matches(client: AsyncClient) -> None:
    await create(client, "Buy milk")
    response = await client.get("/tasks", params={"q": "milk", "offset": 5})
    assert response.status_code == 200
    assert (response.json(), response.headers["x-total-count"]) == ([], "1")


async def test_the_search_combines_with_other_filters(client: AsyncClient) -> None:
    await create(client, "Report draft", priority="high")
    await create(client, "Report taxes", priority="high", completed=True)
    await create(client, "Report lunch", priority="low")
    assert await search(client, "rep", priority="high", completed="false") == ["Report draft"]
    assert await search(client, "rep", completed="true") == ["Report taxes"]
    assert await search(client, "rep tax", priority="low") == []


async def test_another_accounts_tasks_are_not_found(
    client: AsyncClient, other_account: Account
) -> None:
    await create(client, "Buy milk")
    response = await client.post(
        "/tasks", json={"title": "Buy milk, Mallory's"}, headers=other_account.headers
    )
    assert response.status_code == 201, response.text
    assert await search(client, "milk") == ["Buy milk"]
    assert await search(client, "mallory") == []


@pytest.mark.parametrize("walking", [False, True])
async def test_each_of_the_callers_workspaces_is_searched_on_its_own(
    client: AsyncClient, monkeypatch: pytest.MonkeyPatch, walking: bool
) -> None:
    """The index holds a task's words under its workspace (migration 0009) and a search asks
    for q's words in each of the caller's workspaces: tasks of all of them are found, and a
    word in one workspace's task with another in another's makes no match."""

    async def decided(*_: object) -> bool:
        return walking

    monkeypatch.setattr(TaskRepository, "_walk_finds_the_page_sooner", decided)
    created = await client.post("/workspaces", json={"name": "Team"})
    assert created.status_code == 201, created.text
    team = created.json()["id"]
    await create(client, "Buy milk")
    await create(client, "Buy milk for the team", workspace_id=team)
    await create(client, "Buy bread")
    await create(client, "Milk shake", workspace_id=team)
    assert await search(client, "buy mil") == ["Buy milk for the team", "Buy milk"]
    assert await search(client, "bread shake") == []
    assert await search(client, "mil", workspace_id=team) == ["Milk shake", "Buy milk for the team"]


# ─────────────────────────────────────────────
# Relevance
# ─────────────────────────────────────────────


async def test_relevance_puts_the_best_matches_first_ties_by_newest_id(
    client: AsyncClient,
) -> None:
    once = await create(client, "Buy milk")
    twice = await create(client, "milk, more milk")
    also_described = await create(client, "Buy milk", description="the milk for the cake")
    other_once = await create(client, "milk shake")

    response = await client.get("/tasks", params={"q": "milk", "sort": "relevance"})

    assert response.status_code == 200, response.text
    ranked = [task["id"] for task in response.json()]
    assert set(ranked[:2]) == {twice["id"], also_described["id"]}
    assert ranked[2:] == [other_once["id"], once["id"]]  # equal rank: the higher id first


async def test_relevance_pages_are_stable(client: AsyncClient) -> None:
    ids = [(await create(client, f"milk {n}"))["id"] for n in range(5)]
    pages = [
        (
            await client.get(
                "/tasks", params={"q": "milk", "sort": "relevance", "limit": 2, "offset": offset}
            )
        ).json()
        for offset in (0, 2, 4)
    ]
    assert [task["id"] for page in pages for task in page] == sorted(ids, reverse=True)


async def test_relevance_without_q_is_422_naming_sort(client: AsyncClient) -> None:
    body = assert_validation_problem(
        await client.get("/tasks", params={"sort": "relevance"}), "query.sort"
    )
    assert "needs q" in body["detail"]


# ─────────────────────────────────────────────
# The GIN index serves the search (EXPLAIN, as a request runs it)
# ─────────────────────────────────────────────

SEEDED_TASKS = 5_000


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def seeded_engine(own_database_url: str) -> AsyncIterator[AsyncEngine]:
    """The module's own database with a few thousand seeded tasks and fresh statistics."""
    engine = create_engine(Settings(database_url=own_database_url), own_database_url)
    owner = create_engine(Settings(database_url=own_database_url), owner_url(own_database_url))
    try:
        await seed(engine, TEST_KEY, SEEDED_TASKS, 5, owner_engine=owner)  # and VACUUM (ANALYZE)
        yield engine
    finally:
        await engine.dispose()
        await owner.dispose()


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", ()):
        yield from _nodes(child)


def _paths(
    plan: dict[str, Any], above: tuple[dict[str, Any], ...] = ()
) -> Iterator[tuple[dict[str, Any], ...]]:
    """Every node of a plan with the nodes above it, top first."""
    path = (*above, plan)
    yield path
    for child in plan.get("Plans", ()):
        yield from _paths(child, path)


async def _plan(session: AsyncSession, statement: Select[Any], parameters: dict[str, Any]) -> Any:
    """EXPLAIN (FORMAT JSON) of `statement`, in `session` (as its caller, under row-level
    security), with `parameters` bound as the repository would bind them."""
    connection = await session.connection()
    compiled = statement.compile(dialect=connection.dialect)
    values = compiled.construct_params(parameters)
    order = compiled.positiontup or []
    result = await connection.exec_driver_sql(
        f"EXPLAIN (FORMAT JSON) {compiled}", tuple(values[name] for name in order)
    )
    return result.scalar_one()[0]["Plan"]


@pytest.mark.parametrize("sort", sorted(SORTS))
@pytest.mark.parametrize("q", ["milk", "lecture notes 12"])
async def test_the_search_reads_tasks_through_the_gin_index(
    seeded_engine: AsyncEngine, sort: str, q: str
) -> None:
    async with create_session_factory(seeded_engine)() as session, session.begin():
        user_id, _ = await demo_account(session, TEST_KEY)
        scope = await scope_of_account(
            session, TEST_KEY, user_id
        )  # as a request: under the policies
        assert (await session.execute(text("SELECT count(*) FROM tasks"))).scalar_one() == (
            SEEDED_TASKS
        )
        filters = TaskFilters(q=q)
        active = active_filters(filters)
        parameters = {
            **filter_parameters(filters, active),
            "workspace_ids": list(scope.workspace_ids),
            "limit": 50,
            "offset": 0,
        }
        plan = await _plan(session, page_statement(active, sort), parameters)

    # The page and its count (X-Total-Count) each take the matches from the search function
    # (its own plan is checked below) and read those tasks under the policy. How they read
    # them depends on the table's size: at a few thousand tasks, a scan with the matches in
    # a hash; at 100,000, by id (tests/scale/test_query_plans.py).
    functions = [node.get("Function Name") for node in _nodes(plan)]
    assert functions.count("taskmanager_matching_tasks") == 2, plan
    # The tsquery is built once per statement (an InitPlan), not once per row: every scan of
    # q's words (unnest) is under an InitPlan.
    word_scans = [path for path in _paths(plan) if path[-1].get("Function Name") == "unnest"]
    assert word_scans, plan
    for path in word_scans:
        relations = [node.get("Parent Relationship") for node in path]
        assert "InitPlan" in relations, plan
        assert "SubPlan" not in relations, plan


# A search function's parameters, as constants: the words of q, the same as a tsquery, and
# how many matches are enough.
_FUNCTION_ARGUMENTS = {
    "words": lambda q: "ARRAY[" + ", ".join(f"'{word}'" for word in q.split()) + "]::text[]",
    "query": lambda q: "to_tsquery('simple', '" + " & ".join(f"{w}:*" for w in q.split()) + "')",
    "enough": lambda q: "100",
}


@pytest.mark.parametrize("function", ["taskmanager_matching_tasks", "taskmanager_matches_at_least"])
@pytest.mark.parametrize("q", ["milk", "lecture notes 12"])
async def test_the_search_functions_find_matches_through_the_gin_index(
    seeded_engine: AsyncEngine, own_database_url: str, function: str, q: str
) -> None:
    """The search functions run as the tables' owner, whom the policy does not bind, so the
    GIN index serves their `@@` (for the request role it could not: `@@` is not LEAKPROOF):
    the index of the words qualified by workspace (migration 0009), never a scan of tasks."""
    owner = create_async_engine(owner_url(own_database_url), poolclass=NullPool)
    async with owner.connect() as connection:
        body = (
            await connection.execute(
                text("SELECT prosrc FROM pg_proc WHERE proname = :function"),
                {"function": function},
            )
        ).scalar_one()
        statement = body
        for name, argument in _FUNCTION_ARGUMENTS.items():
            statement = re.sub(rf"\b{name}\b", argument(q), statement)
        assert statement != body
        plan = (await connection.execute(text(f"EXPLAIN (FORMAT JSON) {statement}"))).scalar_one()
    await owner.dispose()
    nodes = list(_nodes(plan[0]["Plan"]))
    assert "Seq Scan" not in [node["Node Type"] for node in nodes], plan
    assert "ix_tasks_workspace_words" in [node.get("Index Name") for node in nodes], plan
    # The query the index is searched with is built once (an InitPlan), not for each row a
    # lossy page of a bitmap bigger than work_mem makes PostgreSQL test again.
    rechecks = [node["Recheck Cond"] for node in nodes if "Recheck Cond" in node]
    assert rechecks, plan
    assert not any("taskmanager_workspace_query" in recheck for recheck in rechecks), rechecks


# ─────────────────────────────────────────────
# Two ways to find a search's page, one answer
# ─────────────────────────────────────────────


@pytest.mark.parametrize("sort", ["newest", "oldest", "due", "priority", "title"])
async def test_both_ways_of_finding_a_search_page_answer_alike(
    client: AsyncClient, monkeypatch: pytest.MonkeyPatch, sort: str
) -> None:
    """By the matches' ids (a rare word) or by walking the order's index testing each task
    (a common word, TaskRepository._search_way): the same tasks, in the same order, on every
    page, whichever way PostgreSQL's estimate picks."""
    for n in range(12):
        await create(client, f"{'Buy milk' if n % 3 else 'Call mum'} {n}", description=None)

    by_id, by_walking = await walk_both_ways(
        client, monkeypatch, f"/tasks?q=mil&sort={sort}&limit=3"
    )
    assert by_id == by_walking
    assert by_id.total == 8  # X-Total-Count: n % 3 != 0, 8 of the 12
    assert len(by_id.ids) == 8


# ─────────────────────────────────────────────
# What a search reads follows the caller's own tasks
# ─────────────────────────────────────────────

# Blocks of `tasks` and of its indexes this transaction has asked for so far (found in shared
# buffers or read): PostgreSQL's own per-transaction counters, which include what the
# SECURITY DEFINER search functions read for the caller.
_TASK_BLOCKS = text(
    "SELECT sum(pg_stat_get_xact_blocks_fetched(oid))::bigint FROM pg_class "
    "WHERE oid = 'tasks'::regclass "
    "OR oid IN (SELECT indexrelid FROM pg_index WHERE indrelid = 'tasks'::regclass)"
)


async def _search_as(engine: AsyncEngine, user_id: int, q: str) -> tuple[list[str], int]:
    """The titles a first page of `q` shows `user_id`, found as GET /tasks?q= finds them (the
    question of how to find the page, then the page with its count), and the blocks of tasks
    and its indexes that took."""
    async with create_session_factory(engine)() as session, session.begin():
        scope = await scope_of_account(session, TEST_KEY, user_id)
        before = (await session.execute(_TASK_BLOCKS)).scalar_one()
        page = await TaskRepository(session, scope).get_page(TaskFilters(q=q))
        after = (await session.execute(_TASK_BLOCKS)).scalar_one()
    return sorted(task["title"] for task in page.items), after - before


OTHERS_TASKS = 20_000


async def test_what_a_search_reads_does_not_follow_other_tenants_matches(
    make_database: Callable[[str], str],
) -> None:
    """The issue "timing oracles": the GIN index found every tenant's matches and only then
    were the caller's kept, so what a search cost told anyone how many of everyone else's
    tasks held a word (q=s took 200 ms for an account without tasks, at a million tasks of
    others). Here another tenant's 20,000 tasks all hold words starting with s (none with m):
    for an account with four tasks, and for one with none, searching s reads exactly the
    blocks searching m does, for a prefix and for a whole word alike. (Two words at one
    moment, not one word at two table sizes: a bigger table can add a level to the index
    trees each lookup descends, whoever's rows made it bigger.)"""
    url = await asyncio.to_thread(make_database, "search_others_matches")  # it migrates
    engine = create_engine(Settings(database_url=url), url)
    owner = create_async_engine(owner_url(url), poolclass=NullPool)
    try:
        reader = await create_account(engine, "reader@example.com")
        newcomer = await create_account(engine, "newcomer@example.com")
        other = await create_account(engine, "other@example.com")
        async with owner.begin() as connection:  # as the tables' owner: in bulk
            await connection.execute(
                text(
                    "INSERT INTO tasks (workspace_id, title) VALUES (:reader, 'Sort the socks'), "
                    "(:reader, 'Something small'), (:reader, 'Make muffins'), "
                    "(:reader, 'Mend the mitten')"
                ),
                {"reader": reader.personal_workspace_id},
            )
            await connection.execute(
                text(
                    "INSERT INTO tasks (workspace_id, title, description) "
                    "SELECT :other, 'Something seeded ' || n, 'see the summary' "
                    "FROM generate_series(1, CAST(:tasks AS integer)) n"
                ),
                {"other": other.personal_workspace_id, "tasks": OTHERS_TASKS},
            )
        async with owner.connect() as connection:  # as autovacuum would after a bulk load
            autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
            await autocommit.execute(text("VACUUM (ANALYZE) tasks"))

        read: dict[tuple[str, str], int] = {}
        # The last of six rounds counts: in a session PostgreSQL plans a statement (the
        # search functions' too) afresh for its first five runs, then may keep one plan, and
        # planning reads index metapages; by the sixth every search is planned alike.
        for _ in range(6):
            for account, found in (
                (reader, {"s": 2, "m": 2, "something": 1, "muffins": 1}),
                (newcomer, {"s": 0, "m": 0, "something": 0, "muffins": 0}),
            ):
                for q, count in found.items():
                    titles, read[account.email, q] = await _search_as(engine, account.user_id, q)
                    assert len(titles) == count, (account.email, q, titles)
    finally:
        await engine.dispose()
        await owner.dispose()
    for email in (reader.email, newcomer.email):
        for others, none_of_theirs in (("s", "m"), ("something", "muffins")):
            assert read[email, others] == read[email, none_of_theirs], read
