"""The plans PostgreSQL chooses for the task list: the lecture's Week 7 ("query optimization
with EXPLAIN; your repository methods are where you'll optimize") made visible.

Nothing here writes SQL of its own for the list: each combination of filters and sort order
the API offers is run through `TaskRepository.get_page` itself, and the statement it sends
is caught on its way to the driver (and not sent); then PostgreSQL is asked how it would run
exactly that statement, with exactly those parameters, as the same caller under row-level
security (`EXPLAIN (FORMAT JSON)`, or `EXPLAIN (ANALYZE, ...)` to run it and count rows).
Used by `taskmanager db explain` and by the test that checks every plan reads `tasks`
through an index.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import event, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from taskmanager.accounts.callers import account_id, scope_of_account
from taskmanager.database import create_session_factory, driver_connection
from taskmanager.models import Category, Label, Task
from taskmanager.repositories.array_parameters import in_scope
from taskmanager.repositories.task_queries.filters import TaskFilters
from taskmanager.repositories.task_queries.sorts import SORTS, SORTS_NEEDING_Q
from taskmanager.repositories.task_repository import TaskRepository
from taskmanager.security.caller_key import CallerKey

# The node type that reads a whole table.
SEQUENTIAL_SCAN = "Seq Scan"


class _CaughtError(Exception):
    """Raised by the listener to stop a statement from being sent once it is caught."""


@dataclass(frozen=True, slots=True)
class ListQuery:
    """One request the list endpoint can be sent: filters, sort order, and where the page
    starts (offset 0, a deep offset, or after a cursor)."""

    filters: TaskFilters
    sort: str
    page: str = "first"  # "first" | "cursor" | "offset"

    @property
    def label(self) -> str:
        """The query as GET /tasks is sent it (`label_id=1&label_id=2`), dates shortened."""
        parts = [f"sort={self.sort}"]
        for f in fields(TaskFilters):
            value = getattr(self.filters, f.name)
            if value in (None, "", ()):
                continue
            name = _QUERY_PARAMETERS.get(f.name, f.name)
            values = value if isinstance(value, tuple | list) else (value,)
            parts += [f"{name}={_shown(v)}" for v in values]
        return "&".join(parts) + ("" if self.page == "first" else f" ({self.page} page)")


# TaskFilters' fields the API's query parameters name otherwise: one `label_id` per label.
_QUERY_PARAMETERS = {"label_ids": "label_id"}


def _shown(value: Any) -> str:
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d")
    return str(value).lower() if isinstance(value, bool) else str(value)


@dataclass(frozen=True, slots=True)
class TableRead:
    """One plan node that reads `tasks`: how (node type), through which index, how many rows
    it was expected to return (estimated) or did (with ANALYZE: rows x loops), and for what:
    the page itself, or the total of X-Total-Count (the count rides along in a subquery that
    PostgreSQL runs once, an InitPlan)."""

    node: str
    index: str | None
    rows: float
    part: str  # "page" | "count"


@dataclass(frozen=True, slots=True)
class Plan:
    query: ListQuery
    cost: float  # PostgreSQL's estimate for the whole statement, in its cost units
    reads: tuple[TableRead, ...]  # every node reading `tasks`
    milliseconds: float | None  # with ANALYZE: the execution time PostgreSQL measured

    def part(self, part: str) -> tuple[TableRead, ...]:
        return tuple(read for read in self.reads if read.part == part)

    @property
    def sequential(self) -> bool:
        return any(read.node == SEQUENTIAL_SCAN for read in self.reads)

    def indexes(self, part: str = "page") -> tuple[str, ...]:
        return tuple(dict.fromkeys(r.index for r in self.part(part) if r.index is not None))

    def rows_read(self, part: str = "page") -> float:
        return sum(read.rows for read in self.part(part))


def table_reads(
    node: dict[str, Any], table: str = "tasks", part: str = "page"
) -> Iterator[TableRead]:
    """The nodes of a JSON plan (and its subplans) that read `table`. A bitmap heap scan
    names its index in the Bitmap Index Scan under it; what an InitPlan reads is the count."""
    if node.get("Parent Relationship") == "InitPlan":
        part = "count"
    if node.get("Relation Name") == table:
        index = node.get("Index Name")
        if index is None and node["Node Type"] == "Bitmap Heap Scan":
            index = ", ".join(_bitmap_indexes(node)) or None
        if "Actual Rows" in node:  # what it returned, and what it read and threw away
            rows = node["Actual Rows"] + node.get("Rows Removed by Filter", 0)
            rows += node.get("Rows Removed by Index Recheck", 0)
            rows *= node.get("Actual Loops", 1)
        else:
            rows = node.get("Plan Rows", 0.0)
        yield TableRead(node["Node Type"], index, float(rows), part)
    for child in node.get("Plans", ()):
        yield from table_reads(child, table, part)


def _bitmap_indexes(node: dict[str, Any]) -> Iterator[str]:
    for child in node.get("Plans", ()):
        if "Index Name" in child:
            yield child["Index Name"]
        yield from _bitmap_indexes(child)


async def caught_statement(
    session: AsyncSession, run: Callable[[], Awaitable[Any]], table: str = "tasks"
) -> tuple[str, Sequence[Any]]:
    """The first statement reading `table` that `run()` sends on `session`, with its
    parameters as the driver would get them; the statement is not sent."""
    connection = (await session.connection()).sync_connection
    assert connection is not None
    caught: list[tuple[str, Sequence[Any]]] = []

    def catch(
        conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool
    ) -> None:
        if statement.lstrip().upper().startswith("SELECT") and f"FROM {table}" in statement:
            caught.append((statement, parameters))
            raise _CaughtError

    event.listen(connection, "before_cursor_execute", catch)
    try:
        await run()
    except _CaughtError:
        pass
    finally:
        event.remove(connection, "before_cursor_execute", catch)
    if not caught:
        raise LookupError(f"the call sent no statement reading {table}")
    return caught[0]


async def explain(
    session: AsyncSession,
    repository: TaskRepository,
    query: ListQuery,
    *,
    analyze: bool = False,
    limit: int = 50,
    deep_rows: int | None = None,
) -> Plan:
    """PostgreSQL's plan for the page `query` asks for, as `repository` would ask for it;
    a deep page starts `deep_rows` tasks in (default DEEP_ROWS)."""
    call = await page_call(repository, query, limit, DEEP_ROWS if deep_rows is None else deep_rows)
    statement, parameters = await caught_statement(session, call)
    options = "ANALYZE, BUFFERS, FORMAT JSON" if analyze else "FORMAT JSON"
    driver = await driver_connection(session)
    document = await driver.fetchval(f"EXPLAIN ({options}) {statement}", *parameters)
    if isinstance(document, str):  # the engine's json codec decodes it; a bare driver not
        document = json.loads(document)
    top = document[0]
    root = top["Plan"]
    return Plan(
        query=query,
        cost=float(root["Total Cost"]),
        reads=tuple(table_reads(root)),
        milliseconds=top.get("Execution Time"),
    )


# The kinds of page explained: the first (as a client gets it without asking: counted), one
# deep in the list after a cursor (not counted, as cursor pages are), and the same depth by
# offset (counted).
PAGES = ("first", "cursor", "offset")

# How deep the deep pages start: far enough that reading the rows before them would show.
DEEP_ROWS = 10_000


async def page_call(
    repository: TaskRepository, query: ListQuery, limit: int, deep_rows: int = DEEP_ROWS
) -> Callable[[], Awaitable[Any]]:
    """The call asking `repository` for the page `query` names. For a cursor page, the
    cursor's keys are those of the task `deep_rows` in (or nearer the start, for a list
    shorter than that), read first, here."""
    filters, sort = query.filters, query.sort
    if query.page == "offset":
        return lambda: repository.get_page(filters, limit=limit, offset=deep_rows, sort=sort)
    if query.page == "cursor":
        after = None
        for depth in dict.fromkeys((deep_rows, limit, 0)):
            before = await repository.get_page(
                filters, limit=1, offset=depth, sort=sort, counted=False
            )
            if before.next_after is not None:
                after = before.next_after
                break
        if after is None:  # one task or none: a cursor after anything reads nothing anyway
            return lambda: repository.get_page(filters, limit=limit, sort=sort, counted=False)
        return lambda: repository.get_page(
            filters, limit=limit, sort=sort, after=after, counted=False
        )
    return lambda: repository.get_page(filters, limit=limit, sort=sort)


@dataclass(frozen=True, slots=True)
class Samples:
    """Filter values taken from the data, so that each filter selects real rows."""

    values: dict[str, Any]

    def filters(self, *names: str) -> TaskFilters:
        return TaskFilters(**{name: self.values[name] for name in names})


async def samples(session: AsyncSession, repository: TaskRepository) -> Samples:
    """A value for every filter of TaskFilters, from the caller's data. A filter without a
    sample is an error: a new filter must say here how it is exercised."""
    scope = repository.scope
    category_id = await session.scalar(
        select(Category.id).where(in_scope(Category.workspace_id, scope)).order_by(Category.id)
    )
    workspace_id = await session.scalar(
        select(Task.workspace_id).where(in_scope(Task.workspace_id, scope)).limit(1)
    )
    label_id = await session.scalar(
        select(Label.id).where(in_scope(Label.workspace_id, scope)).order_by(Label.id)
    )
    now = datetime.now(UTC)
    values: dict[str, Any] = {
        "completed": False,
        "category_id": category_id or 1,
        "q": "milk",
        "workspace_id": workspace_id or scope.workspace_ids[0],
        "due_before": now + timedelta(days=7),
        "due_after": now - timedelta(days=7),
        "overdue": True,
        "priority": "urgent",
        "label_ids": (label_id or 1,),
    }
    missing = {f.name for f in fields(TaskFilters)} - set(values)
    if missing:
        raise LookupError(f"no sample value for the filter(s) {', '.join(sorted(missing))}")
    return Samples(values)


def list_queries(
    samples: Samples,
    *,
    pairs: bool = True,
    pages: Sequence[str] = PAGES,
    sorts: Sequence[str] | None = None,
) -> Iterator[ListQuery]:
    """Every sort order (or those of `sorts`) with no filter, each filter alone and (with
    `pairs`) every two filters together, for each kind of page of `pages`."""
    names = [f.name for f in fields(TaskFilters)]
    combinations: list[tuple[str, ...]] = [(), *((name,) for name in names)]
    if pairs:
        combinations += [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
    for sort in sorts or SORTS:
        asked: set[frozenset[str]] = set()
        for combination in combinations:
            if sort in SORTS_NEEDING_Q:  # relevance ranks matches of q: always with one
                combination = tuple(dict.fromkeys(("q", *combination)))
            if frozenset(combination) in asked:
                continue
            asked.add(frozenset(combination))
            filters = samples.filters(*combination)
            for page in pages:
                yield ListQuery(filters, sort, page)


def _least_filters(sort: str, samples: Samples) -> TaskFilters:
    """The filters an order cannot go without: none, or q for relevance."""
    return samples.filters("q") if sort in SORTS_NEEDING_Q else TaskFilters()


class NoSuchAccountError(LookupError):
    """`db explain` was asked to explain as an account that does not exist."""


async def explain_list_queries(
    engine: AsyncEngine,
    key: CallerKey,
    email: str,
    *,
    analyze: bool = False,
    pairs: bool = False,
    pages: Sequence[str] = ("first",),
    sorts: Sequence[str] | None = None,
    filtered: bool = True,
    deep_rows: int = DEEP_ROWS,
    on_plan: Callable[[Plan], None] | None = None,
) -> list[Plan]:
    """The plan of every list query (each sort with no filter, each filter alone, and with
    `pairs` every two filters; with `filtered=False` only the unfiltered ones) as the
    account `email` would send it, on the current data. Nothing is changed: the transaction
    is rolled back."""
    session_factory = create_session_factory(engine)
    async with session_factory() as session, session.begin():
        user_id = await account_id(session, key, email)
        if user_id is None:
            raise NoSuchAccountError(email)
        repository = TaskRepository(session, await scope_of_account(session, key, user_id))
        values = await samples(session, repository)
        plans = []
        for query in list_queries(values, pairs=pairs, pages=pages, sorts=sorts):
            if not filtered and query.filters != _least_filters(query.sort, values):
                continue
            plan = await explain(session, repository, query, analyze=analyze, deep_rows=deep_rows)
            plans.append(plan)
            if on_plan is not None:
                on_plan(plan)
        await session.rollback()
    return plans
