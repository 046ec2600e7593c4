"""Memberships without limit must not break an account.

An account in tens of thousands of workspaces (made before the caps below existed, or by
an operator) still gets its lists: the caller's workspace ids travel as ONE array
parameter (`= ANY($1)`), never one parameter per workspace, which asyncpg refuses beyond
32,767 and which answered 503 on every category, label and workspace list of such an
account.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from httpx import AsyncClient
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from tests.api.test_statement_count import is_caller, is_fixture
from tests.support.accounts import Account

# More than asyncpg's 32,767 bind parameters, as many as the account the issue reported.
MANY = 40_000
# What a statement of these routes binds besides the workspace ids: an id, a limit and an
# offset, the names of a label's fields in a task's JSON...
FEW = 8


# ─────────────────────────────── helpers


@dataclass
class Sent:
    """The statements a request sent, each with the values bound to it."""

    statements: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)

    @property
    def queries(self) -> list[tuple[str, tuple[Any, ...]]]:
        """The route's own statements (not the caller's, not the test fixture's)."""
        return [(s, p) for s, p in self.statements if not is_fixture(s) and not is_caller(s)]


@contextmanager
def capture(engine: AsyncEngine) -> Iterator[Sent]:
    sent = Sent()

    def before_cursor_execute(
        conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool
    ) -> None:
        sent.statements.append((statement, tuple(parameters or ())))

    event.listen(engine.sync_engine, "before_cursor_execute", before_cursor_execute)
    try:
        yield sent
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", before_cursor_execute)


async def join_workspaces(db_session: AsyncSession, user_id: int, how_many: int) -> list[int]:
    """Make `user_id` a member of `how_many` new workspaces in three statements, as an
    operator's bulk SQL would (rolled back with the test)."""
    ids = list(
        (
            await db_session.execute(
                text("SELECT nextval('workspaces_id_seq') FROM generate_series(1, :n)"),
                {"n": how_many},
            )
        ).scalars()
    )
    # workspaces forces row-level security on its owner too: a row names its creator, who
    # must be the caller the transaction acts for.
    await db_session.execute(
        text("SELECT set_config('taskmanager.user_id', :user_id, true)"),
        {"user_id": str(user_id)},
    )
    await db_session.execute(
        text(
            "INSERT INTO workspaces (id, name, created_by) "
            "SELECT id, 'Bulk ' || id, :user_id FROM unnest(CAST(:ids AS integer[])) AS id"
        ),
        {"ids": ids, "user_id": user_id},
    )
    await db_session.execute(
        text(
            "INSERT INTO memberships (workspace_id, user_id, role) "
            "SELECT id, :user_id, 'member' FROM unnest(CAST(:ids AS integer[])) AS id"
        ),
        {"ids": ids, "user_id": user_id},
    )
    await db_session.execute(text("SELECT set_config('taskmanager.user_id', '', true)"))
    await db_session.commit()  # releases the seeding savepoint; the outer transaction stays
    return ids


async def ok(client: AsyncClient, url: str) -> Any:
    response = await client.get(url)
    assert response.status_code == 200, (url, response.status_code, response.text[:500])
    return response.json()


# ─────────────────────────────── the caller's workspaces, one array parameter


async def test_an_account_in_40000_workspaces_still_gets_its_lists(
    client: AsyncClient, db_session: AsyncSession, account: Account
) -> None:
    joined = await join_workspaces(db_session, account.user_id, MANY)
    category = (await client.post("/categories", json={"name": "Errands"})).json()
    label = (await client.post("/labels", json={"name": "home"})).json()
    task = (await client.post("/tasks", json={"title": "t", "label_ids": [label["id"]]})).json()

    workspaces = await ok(client, "/workspaces")
    assert len(workspaces) == MANY + 1
    assert {w["id"] for w in workspaces} == {account.personal_workspace_id, *joined}
    assert [c["id"] for c in await ok(client, "/categories")] == [category["id"]]
    assert [lb["id"] for lb in await ok(client, "/labels")] == [label["id"]]
    assert [t["id"] for t in await ok(client, "/tasks")] == [task["id"]]
    assert [t["id"] for t in await ok(client, f"/tasks?label_id={label['id']}")] == [task["id"]]
    assert (await ok(client, f"/categories/{category['id']}"))["name"] == "Errands"
    assert (await ok(client, f"/labels/{label['id']}"))["name"] == "home"
    assert (await ok(client, f"/workspaces/{joined[-1]}"))["role"] == "member"


async def test_the_callers_workspace_ids_are_bound_as_one_array(
    client: AsyncClient, engine: AsyncEngine, db_session: AsyncSession, account: Account
) -> None:
    """Statement by statement: whatever the number of workspaces, a list binds a few
    values, one of which is the list of all the caller's workspace ids."""
    joined = await join_workspaces(db_session, account.user_id, 50)
    category = (await client.post("/categories", json={"name": "Errands"})).json()
    label = (await client.post("/labels", json={"name": "home"})).json()
    mine = sorted([account.personal_workspace_id, *joined])

    for url in (
        "/workspaces",
        "/categories",
        "/labels",
        "/tasks",
        f"/categories/{category['id']}",
        f"/labels/{label['id']}",
    ):
        with capture(engine) as sent:
            await ok(client, url)
        assert sent.queries, url
        for statement, parameters in sent.queries:
            assert len(parameters) <= FEW, (url, statement, len(parameters))
        arrays = [p for _, ps in sent.queries for p in ps if isinstance(p, list | tuple)]
        assert [sorted(array) for array in arrays] == [mine] * len(arrays), url
        assert arrays, (url, sent.queries)
