"""Cursor pages of GET /tasks: walking them while tasks come and go, the Link header, the
count policy, and every cursor that must not be used (a 422 naming `query.cursor`)."""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, get_args
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi import FastAPI
from httpx import AsyncClient, Response
from sqlalchemy import REAL, bindparam, delete, func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from taskmanager.cursors import CursorCodec, fingerprint
from taskmanager.models import PRIORITIES, Task
from taskmanager.repositories.task_queries.filters import TaskFilters
from taskmanager.repositories.task_queries.sorts import SORTS, SORTS_NEEDING_Q, keyset
from taskmanager.repositories.task_queries.statements import page_statement
from taskmanager.repositories.task_repository import TaskRepository
from taskmanager.schemas import TaskSort
from taskmanager.security.scope import Scope
from tests.support.accounts import TEST_SECRET, Account
from tests.support.problems import assert_validation_problem

TASKS = Task.__table__
BASE = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
LINK_NEXT = 'rel="next"'


# ─────────────────────────────── helpers


def next_url(response: Response) -> str | None:
    """The URL of the Link header's rel="next", if there is one."""
    link = response.headers.get("link")
    if link is None:
        return None
    target, relation = link.split(";", 1)
    assert relation.strip() == LINK_NEXT, link
    assert target.startswith("<"), link
    assert target.endswith(">"), link
    return target[1:-1]


def cursor_of(response: Response) -> str:
    url = next_url(response)
    assert url is not None, response.headers
    return parse_qs(urlsplit(url).query)["cursor"][0]


def random_row(rng: random.Random, workspace_id: int) -> dict[str, Any]:
    """A task whose sort keys often tie with others' (few distinct values), so the id must
    break ties for the walk to be right."""
    created = BASE + timedelta(minutes=rng.randrange(6))
    return {
        "workspace_id": workspace_id,
        "title": rng.choice(["alpha", "Alpha", "beta", "gamma", "gamma ray", "ä"]),
        "completed": rng.random() < 0.3,
        "created_at": created,
        "updated_at": created,
        "due_at": rng.choice([None, None, BASE, BASE + timedelta(days=rng.randrange(4))]),
        "priority": rng.choice(PRIORITIES),
    }


async def insert_tasks(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> list[int]:
    if not rows:
        return []
    result = await session.execute(insert(TASKS).returning(TASKS.c.id), list(rows))
    ids = list(result.scalars())
    await session.commit()  # releases the savepoint; the test's outer transaction stays
    return ids


async def delete_tasks(session: AsyncSession, ids: Sequence[int]) -> None:
    if ids:
        await session.execute(delete(TASKS).where(TASKS.c.id.in_(ids)))
        await session.commit()


async def matching(session: AsyncSession, workspace_id: int, params: dict[str, Any]) -> set[int]:
    """The ids of the tasks in the workspace the test's filters select."""
    query = select(TASKS.c.id).where(TASKS.c.workspace_id == workspace_id)
    if "completed" in params:
        query = query.where(TASKS.c.completed == (params["completed"] == "true"))
    if "priority" in params:
        query = query.where(TASKS.c.priority == params["priority"])
    if "q" in params:  # the walks search for a word that only starts titles
        query = query.where(TASKS.c.title.startswith(params["q"]))
    return set((await session.execute(query)).scalars())


async def walk(client: AsyncClient, params: dict[str, Any]) -> list[int]:
    """Every page of a list, first to last, following Link headers: the ids in order."""
    seen: list[int] = []
    response = await client.get("/tasks", params=params)
    while True:
        assert response.status_code == 200, response.text
        seen += [task["id"] for task in response.json()]
        url = next_url(response)
        if url is None:
            return seen
        response = await client.get(url)


# ─────────────────────────────── the property


FILTERED_WALKS = [
    {"completed": "false", "sort": "due"},
    {"priority": "high", "sort": "newest"},
    {"completed": "true", "sort": "title"},
]


@pytest.mark.parametrize(
    "params",
    [{"sort": sort} for sort in get_args(TaskSort) if sort not in SORTS_NEEDING_Q]
    + [{"sort": sort, "q": "gamma"} for sort in SORTS_NEEDING_Q]
    + FILTERED_WALKS,
    ids=lambda params: "&".join(f"{k}={v}" for k, v in params.items()),
)
@pytest.mark.parametrize("seed", [1, 2])
async def test_a_cursor_walk_never_repeats_nor_skips_a_task_while_others_come_and_go(
    client: AsyncClient,
    db_session: AsyncSession,
    account: Account,
    params: dict[str, Any],
    seed: int,
) -> None:
    rng = random.Random(f"{seed}-{sorted(params.items())}")
    workspace = account.personal_workspace_id
    await insert_tasks(db_session, [random_row(rng, workspace) for _ in range(40)])
    at_start = await matching(db_session, workspace, params)
    deleted: set[int] = set()

    seen: list[int] = []
    response = await client.get("/tasks", params={**params, "limit": rng.choice([3, 4, 5])})
    while True:
        assert response.status_code == 200, response.text
        seen += [task["id"] for task in response.json()]
        # Between two pages: new tasks (some sorting before, some after the page just
        # shown) and deletions anywhere, including tasks not reached yet.
        await insert_tasks(
            db_session, [random_row(rng, workspace) for _ in range(rng.randrange(3))]
        )
        present = sorted((await matching(db_session, workspace, {})) - deleted)
        doomed = rng.sample(present, min(len(present), rng.randrange(3)))
        await delete_tasks(db_session, doomed)
        deleted |= set(doomed)
        url = next_url(response)
        if url is None:
            break
        response = await client.get(url)

    assert len(seen) == len(set(seen)), "a task was shown twice"
    throughout = at_start - deleted
    assert throughout <= set(seen), f"skipped: {sorted(throughout - set(seen))}"
    # And in the list's own order: the survivors, as one page now shows them.
    now = await client.get("/tasks", params={**params, "limit": 100})
    shown_now = [task["id"] for task in now.json() if task["id"] in throughout]
    assert [task_id for task_id in seen if task_id in throughout] == shown_now


# ─────────────────────────────── Link and the count


async def seed(db_session: AsyncSession, account: Account, count: int) -> list[int]:
    rng = random.Random(count)
    return await insert_tasks(
        db_session, [random_row(rng, account.personal_workspace_id) for _ in range(count)]
    )


async def test_link_is_this_url_with_the_next_cursor_and_without_offset(
    client: AsyncClient, db_session: AsyncSession, account: Account
) -> None:
    await seed(db_session, account, 7)
    response = await client.get("/tasks?sort=oldest&completed=false&limit=2&offset=1")
    assert response.status_code == 200
    link = response.headers["link"]
    assert link.startswith("<http://test/tasks?")
    assert link.endswith('>; rel="next"')
    url = next_url(response)
    assert url is not None
    query = parse_qs(urlsplit(url).query)
    assert set(query) == {"sort", "completed", "limit", "cursor"}
    assert (query["sort"], query["completed"], query["limit"]) == (["oldest"], ["false"], ["2"])
    # The cursor is URL-safe: it needs no escaping.
    assert f"cursor={query['cursor'][0]}" in url


async def test_the_last_page_has_no_link(
    client: AsyncClient, db_session: AsyncSession, account: Account
) -> None:
    await seed(db_session, account, 4)
    assert "link" not in (await client.get("/tasks", params={"limit": 4})).headers
    assert "link" in (await client.get("/tasks", params={"limit": 3})).headers
    second = await client.get(next_url(await client.get("/tasks", params={"limit": 3})) or "")
    assert len(second.json()) == 1
    assert "link" not in second.headers
    assert "link" not in (await client.get("/tasks")).headers  # no tasks: no next page


async def test_a_walk_from_an_offset_page_continues_where_it_left_off(
    client: AsyncClient, db_session: AsyncSession, account: Account
) -> None:
    await seed(db_session, account, 9)
    everything = [t["id"] for t in (await client.get("/tasks?sort=title")).json()]
    assert await walk(client, {"sort": "title", "limit": 2, "offset": 3}) == everything[3:]


async def test_offset_pages_count_unless_asked_not_to_and_cursor_pages_only_when_asked(
    client: AsyncClient, db_session: AsyncSession, account: Account
) -> None:
    await seed(db_session, account, 5)
    first = await client.get("/tasks", params={"limit": 2})
    assert first.headers["x-total-count"] == "5"
    uncounted = await client.get("/tasks", params={"limit": 2, "count": "false"})
    assert "x-total-count" not in uncounted.headers
    assert uncounted.json() == first.json()
    cursor = cursor_of(first)
    cursor_page = await client.get("/tasks", params={"limit": 2, "cursor": cursor})
    assert "x-total-count" not in cursor_page.headers
    counted = await client.get("/tasks", params={"limit": 2, "cursor": cursor, "count": "true"})
    assert counted.headers["x-total-count"] == "5"
    assert counted.json() == cursor_page.json()
    # The count query parameter is not part of what a cursor continues.
    assert "count=true" in counted.headers["link"]


async def test_a_counted_cursor_page_past_the_end_still_counts(
    client: AsyncClient, db_session: AsyncSession, account: Account
) -> None:
    ids = await seed(db_session, account, 3)
    first = await client.get("/tasks", params={"limit": 2, "sort": "title"})
    await delete_tasks(db_session, ids)  # all gone, the last one shown too
    await insert_tasks(db_session, [random_row(random.Random(0), account.personal_workspace_id)])
    rest = await client.get("/tasks", params={"cursor": cursor_of(first), "sort": "title"})
    counted = await client.get(
        "/tasks", params={"cursor": cursor_of(first), "sort": "title", "count": "true"}
    )
    assert rest.status_code == counted.status_code == 200
    assert counted.json() == rest.json()
    assert counted.headers["x-total-count"] == "1"


def test_the_document_says_which_headers_a_page_may_carry_and_the_new_parameters(
    app: FastAPI,
) -> None:
    operation = app.openapi()["paths"]["/tasks"]["get"]
    headers = operation["responses"]["200"]["headers"]
    assert headers["Link"]["required"] is False
    assert headers["X-Total-Count"]["required"] is False  # not on cursor pages
    parameters = {p["name"]: p for p in operation["parameters"]}
    assert parameters["cursor"]["schema"]["type"] == "string"
    assert parameters["count"]["schema"]["type"] == "boolean"


# ─────────────────────────────── cursors that must not be used


async def first_cursor(client: AsyncClient, params: dict[str, Any]) -> str:
    return cursor_of(await client.get("/tasks", params={"limit": 1, **params}))


def assert_cursor_refused(response: Response, words: str) -> None:
    body = assert_validation_problem(response, "query.cursor")
    assert words in body["detail"], body


async def test_a_cursor_with_an_offset_is_422(
    client: AsyncClient, db_session: AsyncSession, account: Account
) -> None:
    await seed(db_session, account, 3)
    cursor = await first_cursor(client, {})
    response = await client.get("/tasks", params={"cursor": cursor, "offset": 1})
    assert_cursor_refused(response, "offset")
    ok = await client.get("/tasks", params={"cursor": cursor, "offset": 0})
    assert ok.status_code == 200


async def test_a_cursor_for_another_sort_or_other_filters_is_422(
    client: AsyncClient, db_session: AsyncSession, account: Account
) -> None:
    await seed(db_session, account, 3)
    cursor = await first_cursor(client, {"sort": "due", "completed": "false"})
    same = await client.get(
        "/tasks", params={"cursor": cursor, "sort": "due", "completed": "false"}
    )
    assert same.status_code == 200
    other_sort = {"cursor": cursor, "sort": "title", "completed": "false"}
    assert_cursor_refused(await client.get("/tasks", params=other_sort), "sort=due")
    for other_filters in (
        {"completed": "true"},
        {},
        {"completed": "false", "q": "a"},
        {"completed": "false", "priority": "low"},
    ):
        response = await client.get(
            "/tasks", params={"cursor": cursor, "sort": "due", **other_filters}
        )
        assert_cursor_refused(response, "other filters")


async def test_another_users_cursor_is_422(
    client: AsyncClient, db_session: AsyncSession, account: Account, other_account: Account
) -> None:
    await seed(db_session, account, 3)
    cursor = await first_cursor(client, {})
    client.headers.update(other_account.headers)
    response = await client.get("/tasks", params={"cursor": cursor})
    assert_cursor_refused(response, "not issued to you")


async def test_a_tampered_cursor_is_422(
    client: AsyncClient, db_session: AsyncSession, account: Account
) -> None:
    await seed(db_session, account, 3)
    cursor = await first_cursor(client, {})
    payload, tag = cursor.split(".")
    content = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    content["k"][-1] += 1  # continue after another id
    forged = base64.urlsafe_b64encode(json.dumps(content).encode()).rstrip(b"=").decode()
    assert_cursor_refused(
        await client.get("/tasks", params={"cursor": f"{forged}.{tag}"}), "altered"
    )
    flipped = ("A" if tag[0] != "A" else "B") + tag[1:]
    assert_cursor_refused(
        await client.get("/tasks", params={"cursor": f"{payload}.{flipped}"}), "altered"
    )


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "x",
        ".",
        "abc.",
        ".abc",
        "a.b.c",
        "not a cursor",
        "////.////",
        "ab=.cd==",
        "é.é",
        "\x00.\x00",
        "A" * 3000,
        "AAAA.AAAA",
        "AB.AA",  # not canonical: the last character's unused bits are set
    ],
)
async def test_a_malformed_cursor_is_422(client: AsyncClient, cursor: str) -> None:
    assert_validation_problem(await client.get("/tasks", params={"cursor": cursor}), "query.cursor")


def test_the_fingerprint_of_filters_tells_them_apart_and_only_them() -> None:
    moment = datetime(2026, 3, 1, tzinfo=UTC)
    assert fingerprint(TaskFilters(due_before=moment)) == fingerprint(
        TaskFilters(due_before=moment)
    )
    assert fingerprint(TaskFilters(due_before=moment)) != fingerprint(TaskFilters(due_after=moment))
    assert fingerprint(TaskFilters(q="milk")) != fingerprint(TaskFilters(q="Milk"))
    assert fingerprint(TaskFilters()) != fingerprint(TaskFilters(completed=False))

    @dataclass(frozen=True)
    class WithSet:
        ids: frozenset[int]

    assert fingerprint(WithSet(frozenset({3, 1, 2}))) == fingerprint(WithSet(frozenset({2, 3, 1})))


def signed(account: Account, content: Any) -> str:
    """A cursor with a valid tag around any content: what only a bug (or a leaked key)
    could produce, checked as carefully as everything else."""
    codec = CursorCodec(TEST_SECRET, account.user_id)
    payload = json.dumps(content).encode() if not isinstance(content, bytes) else content
    encoded = base64.urlsafe_b64encode(payload).rstrip(b"=").decode()
    tag = base64.urlsafe_b64encode(codec._tag(payload)).rstrip(b"=").decode()
    return f"{encoded}.{tag}"


NO_FILTERS = fingerprint(TaskFilters())


@pytest.mark.parametrize(
    ("sort", "content"),
    [
        ("newest", b"\xff\xfe"),
        ("newest", b"{"),
        ("newest", []),
        ("newest", None),
        ("newest", {"s": "newest", "f": NO_FILTERS}),
        ("newest", {"s": "newest", "f": NO_FILTERS, "k": "2026"}),
        ("newest", {"s": 1, "f": NO_FILTERS, "k": []}),
        ("newest", {"s": "newest", "f": NO_FILTERS, "k": []}),
        ("newest", {"s": "newest", "f": NO_FILTERS, "k": ["2026-03-01T09:00:00+00:00"]}),
        ("newest", {"s": "newest", "f": NO_FILTERS, "k": ["2026-03-01T09:00:00+00:00", 1, 2]}),
        ("newest", {"s": "newest", "f": NO_FILTERS, "k": ["2026-03-01T09:00:00", 1]}),
        ("newest", {"s": "newest", "f": NO_FILTERS, "k": ["yesterday", 1]}),
        ("newest", {"s": "newest", "f": NO_FILTERS, "k": [1700000000, 1]}),
        ("newest", {"s": "newest", "f": NO_FILTERS, "k": ["2026-03-01T09:00:00Z", "1"]}),
        ("newest", {"s": "newest", "f": NO_FILTERS, "k": ["2026-03-01T09:00:00Z", True]}),
        ("newest", {"s": "newest", "f": NO_FILTERS, "k": ["2026-03-01T09:00:00Z", 1.5]}),
        ("newest", {"s": "newest", "f": NO_FILTERS, "k": ["2026-03-01T09:00:00Z", 2**31]}),
        ("newest", {"s": "newest", "f": NO_FILTERS, "k": ["2026-03-01T09:00:00Z", None]}),
        ("title", {"s": "title", "f": NO_FILTERS, "k": ["a\u0000b", 1]}),
        ("title", {"s": "title", "f": NO_FILTERS, "k": ["\ud800", 1]}),
        ("title", {"s": "title", "f": NO_FILTERS, "k": [{"a": 1}, 1]}),
        ("title", {"s": "title", "f": NO_FILTERS, "k": [7, 1]}),
        (
            "priority",
            {"s": "priority", "f": NO_FILTERS, "k": ["critical", "2026-03-01T09:00:00Z", 1]},
        ),
        (
            "priority",
            {"s": "priority", "f": NO_FILTERS, "k": ["urgent", "2026-03-01T09:00:00Z", 1]},
        ),
        ("priority", {"s": "priority", "f": NO_FILTERS, "k": [2**15, "2026-03-01T09:00:00Z", 1]}),
    ],
)
async def test_a_signed_cursor_with_bad_content_is_422_never_500(
    client: AsyncClient, account: Account, sort: str, content: Any
) -> None:
    response = await client.get("/tasks", params={"sort": sort, "cursor": signed(account, content)})
    assert_validation_problem(response, "query.cursor")


async def test_random_cursors_are_422_never_500(client: AsyncClient, account: Account) -> None:
    rng = random.Random(9)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/%é"
    for _ in range(40):
        cursor = "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 60)))
        response = await client.get("/tasks", params={"cursor": cursor})
        assert_validation_problem(response, "query.cursor")
    for _ in range(20):  # signed, but keys of random JSON types
        keys = [
            rng.choice(
                [
                    rng.random(),
                    rng.randrange(-(2**40), 2**40),
                    "x" * rng.randrange(5),
                    [],
                    {},
                    None,
                    False,
                ]
            )
            for _ in range(2)
        ]
        cursor = signed(account, {"s": "newest", "f": NO_FILTERS, "k": keys})
        assert_validation_problem(
            await client.get("/tasks", params={"cursor": cursor}), "query.cursor"
        )


# ─────────────────────────────── the orders


def test_every_sort_is_a_keyset() -> None:
    """Keys all one way and never NULL: what the one-row-comparison continuation needs."""
    for sort in SORTS:
        assert keyset(sort).keys, sort


@pytest.mark.parametrize(
    "order",
    [
        (TASKS.c.due_at.asc().nulls_last(), TASKS.c.id.asc()),  # NULLS LAST: not one key
        (TASKS.c.due_at.asc(), TASKS.c.id.asc()),  # may be NULL
        (TASKS.c.priority.desc(), TASKS.c.id.asc()),  # two directions
        (TASKS.c.id,),  # no direction
    ],
)
def test_an_order_that_is_no_keyset_is_refused(
    monkeypatch: pytest.MonkeyPatch, order: tuple[Any, ...]
) -> None:
    monkeypatch.setitem(SORTS, "broken", order)
    with pytest.raises(ValueError, match="broken"):
        keyset.__wrapped__("broken")


@pytest.fixture
def rank_sort(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Iterator[str]:
    """A sort like a search's relevance: a float computed with a bound parameter (q's)."""
    rank = func.ts_rank(
        func.to_tsvector("simple", TASKS.c.title),
        func.plainto_tsquery("simple", bindparam("q")),
        type_=request.param,
    )
    monkeypatch.setitem(SORTS, "rank", (rank.desc(), TASKS.c.id.desc()))
    keyset.cache_clear()
    page_statement.cache_clear()
    yield "rank"
    keyset.cache_clear()
    page_statement.cache_clear()


@pytest.mark.parametrize("rank_sort", [None, REAL()], indirect=True, ids=["untyped", "real"])
async def test_an_order_on_a_float_with_a_bound_parameter_pages_too(
    db_session: AsyncSession, scope: Scope, account: Account, rank_sort: str
) -> None:
    rng = random.Random(5)
    titles = ["milk", "milk milk", "oat milk", "milk and honey", "please buy milk now", "tea"]
    rows = [
        {**random_row(rng, account.personal_workspace_id), "title": rng.choice(titles)}
        for _ in range(30)
    ]
    await insert_tasks(db_session, rows)
    repo = TaskRepository(db_session, scope)
    filters = TaskFilters(q="milk")
    everything = await repo.get_page(filters, sort=rank_sort, limit=100)
    codec = CursorCodec(TEST_SECRET, account.user_id)
    shown: list[int] = []
    after: tuple[Any, ...] | None = None
    while True:
        page = await repo.get_page(filters, sort=rank_sort, limit=4, after=after, counted=False)
        shown += [task["id"] for task in page.items]
        if page.next_after is None:
            break
        assert any(isinstance(key, float) for key in page.next_after)
        cursor = codec.issue(rank_sort, fingerprint(filters), page.next_after)
        after = codec.read(
            cursor,
            sort=rank_sort,
            filters_fingerprint=fingerprint(filters),
            key_types=keyset(rank_sort).types,
        )
    assert shown == [task["id"] for task in everything.items]
    assert len(shown) == sum("milk" in row["title"] for row in rows)


async def test_a_signed_cursor_at_the_end_of_time_continues_among_tasks_without_due_date(
    client: AsyncClient, db_session: AsyncSession, account: Account
) -> None:
    """'due' sorts a task without a due date as due at infinity; the cursor carries that."""
    workspace = account.personal_workspace_id
    rows = [{**random_row(random.Random(n), workspace), "due_at": None} for n in range(3)]
    ids = sorted(await insert_tasks(db_session, rows))
    assert await walk(client, {"sort": "due", "limit": 1}) == ids
