"""The packaged Alembic migrations: one head, reversible, and in agreement with the models.

The schema of every test database comes from these migrations (never `create_all`), so a
migration that drifts from `models.py` or does not downgrade cleanly fails here first.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import BigInteger, Integer, Text, Uuid, bindparam, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from taskmanager.accounts.callers import scope_of_account
from taskmanager.accounts.registration import register_account
from taskmanager.config import Settings, get_settings
from taskmanager.database import create_engine, create_session_factory, run_on_one_connection
from taskmanager.models import FK_TASKS_CATEGORY, UQ_CATEGORIES_NAME, Base
from taskmanager.postgres import migrate
from taskmanager.postgres.deployment import SCHEMA_REVISION, prepare_deployment
from taskmanager.postgres.embedded import EmbeddedPostgres
from taskmanager.postgres.logins import ConnectionTarget
from taskmanager.repositories.task_queries.filters import TaskFilters
from taskmanager.repositories.task_repository import TaskRepository
from taskmanager.security.roles import PERMISSIONS
from tests.support.accounts import PASSWORD, login, register_and_login
from tests.support.databases import (
    TEST_KEY,
    DatabaseAt,
    caller_role_of,
    logins_of,
    owner_url,
    public_tables,
    service_url,
    superuser_execute,
    superuser_rows,
    superuser_url,
    table_exists,
)
from tests.support.databases import migrate as migrate_deployment
from tests.support.live_app import live_client
from tests.support.processes import free_port

APP_TABLES = {"categories", "tasks"}


def _compare(url: str) -> list[Any]:
    """Alembic's autogenerate diff between the database at `url` and the models."""

    def diff(connection: Connection) -> list[Any]:
        context = MigrationContext.configure(
            connection,
            opts={"compare_type": True, "compare_server_default": True},
        )
        return list(compare_metadata(context, Base.metadata))

    async def run() -> list[Any]:
        engine = create_async_engine(superuser_url(url))
        try:
            async with engine.connect() as connection:
                return await connection.run_sync(diff)
        finally:
            await engine.dispose()

    return asyncio.run(run())


@pytest.fixture(scope="module")
def fresh_url(make_database: Callable[[str], str]) -> str:
    """A database migrated to head by the fixture, untouched by the other tests' writes."""
    return make_database("migrations_fresh")


def test_exactly_one_head() -> None:
    heads = migrate.heads()
    assert len(heads) == 1, f"migration scripts have several heads: {heads}"


def test_upgrade_downgrade_upgrade_round_trip(make_database: Callable[[str], str]) -> None:
    url = make_database("migrations_roundtrip")  # already upgraded to head
    (head,) = migrate.heads()
    assert migrate.current(url) == head
    assert public_tables(url) >= APP_TABLES

    migrate.downgrade(owner_url(url), "base")
    assert migrate.current(owner_url(url)) is None
    # Only Alembic's bookkeeping table may remain once everything is downgraded.
    assert public_tables(url) <= {"alembic_version"}
    # And no type, sequence or index was left behind by the downgrade.
    leftovers = superuser_rows(
        url,
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' AND c.relname <> 'alembic_version' "
        "AND c.relname NOT LIKE 'alembic_version%'",
    )
    assert leftovers == []
    # Nor a function or a row-level policy of the accounts migration (the caller role is
    # the cluster's: it stays, without grants here).
    assert (
        superuser_rows(url, "SELECT proname FROM pg_proc WHERE proname LIKE 'taskmanager%'") == []
    )
    assert superuser_rows(url, "SELECT policyname FROM pg_policies") == []
    assert (
        superuser_rows(
            url,
            "SELECT table_name FROM information_schema.role_table_grants "
            "WHERE grantee = :caller AND table_catalog = current_database()",
            caller=caller_role_of(url),
        )
        == []
    )

    migrate.upgrade(owner_url(url))
    assert migrate.current(url) == head
    assert public_tables(url) >= APP_TABLES
    # The re-created schema works: a row goes in through the constraints.
    superuser_rows(url, "SELECT count(*) FROM tasks")


def test_models_and_migrations_agree(fresh_url: str) -> None:
    """Autogenerate against a freshly migrated database finds nothing to change.

    A difference here means models.py and migrations/versions disagree: the next
    `alembic revision --autogenerate` would emit it, and tests built on the migrated
    schema would not be testing what the models describe.
    """
    differences = _compare(fresh_url)
    assert differences == [], "models and migrations differ:\n" + "\n".join(
        repr(d) for d in differences
    )


@pytest.mark.parametrize(
    ("drift", "undo", "expected"),
    [
        pytest.param(
            "ALTER TABLE tasks ADD COLUMN drift_probe integer",
            "ALTER TABLE tasks DROP COLUMN drift_probe",
            ("remove_column", "drift_probe"),
            id="extra-column",
        ),
        pytest.param(
            f"DROP INDEX {UQ_CATEGORIES_NAME}",
            f"CREATE UNIQUE INDEX {UQ_CATEGORIES_NAME} ON categories (workspace_id, lower(name))",
            ("add_index", UQ_CATEGORIES_NAME),
            id="missing-functional-unique-index",
        ),
        pytest.param(
            "ALTER TABLE tasks ALTER COLUMN completed SET DEFAULT true",
            "ALTER TABLE tasks ALTER COLUMN completed SET DEFAULT false",
            ("modify_default", "completed"),
            id="server-default",
        ),
    ],
)
def test_compare_detects_drift(
    fresh_url: str, drift: str, undo: str, expected: tuple[str, str]
) -> None:
    """The comparison above can fail: a schema the models do not describe is reported."""

    async def execute(statement: str) -> None:
        engine = create_async_engine(owner_url(fresh_url))
        try:
            async with engine.begin() as connection:
                await connection.execute(text(statement))
        finally:
            await engine.dispose()

    asyncio.run(execute(drift))
    try:
        found = {_describe(d) for d in _flatten(_compare(fresh_url))}
        assert expected in found, found
    finally:
        asyncio.run(execute(undo))
    assert _compare(fresh_url) == []


def _flatten(differences: list[Any]) -> list[tuple[Any, ...]]:
    # Column modifications come grouped in a list per column; everything else is a tuple.
    out: list[tuple[Any, ...]] = []
    for difference in differences:
        out.extend(difference if isinstance(difference, list) else [difference])
    return out


def _describe(difference: tuple[Any, ...]) -> tuple[str, str]:
    """(operation, name of the column or index it is about)."""
    operation = difference[0]
    if operation in ("add_column", "remove_column"):
        return operation, difference[3].name
    if operation.startswith("modify_"):
        return operation, difference[3]
    return operation, getattr(difference[1], "name", str(difference[1]))


def test_naming_convention_applied(fresh_url: str) -> None:
    constraints = dict(
        superuser_rows(
            fresh_url,
            "SELECT c.conname, c.contype::text FROM pg_constraint c "
            "JOIN pg_class t ON t.oid = c.conrelid "
            "JOIN pg_namespace n ON n.oid = t.relnamespace "
            "WHERE n.nspname = 'public' AND t.relname IN ('tasks', 'categories') "
            # PostgreSQL 18 also lists NOT NULL constraints (contype 'n'), named by itself.
            "AND c.contype IN ('p', 'f', 'c', 'u', 'x')",
        )
    )
    assert constraints == {
        "pk_tasks": "p",
        "pk_categories": "p",
        FK_TASKS_CATEGORY: "f",
        "fk_tasks_workspace_id_workspaces": "f",
        "fk_categories_workspace_id_workspaces": "f",
        "uq_categories_id_workspace_id": "u",
        "uq_tasks_id_workspace_id": "u",  # the target of task_labels' composite key
        "ck_tasks_title_not_blank": "c",
        "ck_categories_name_not_blank": "c",
    }
    assert FK_TASKS_CATEGORY == "fk_tasks_category_id_categories"
    # Every other table's constraints follow the same convention: <kind>_<table>_...
    prefixes = {"p": "pk", "f": "fk", "c": "ck", "u": "uq", "x": "ex"}
    everywhere = superuser_rows(
        fresh_url,
        "SELECT t.relname, c.conname, c.contype::text FROM pg_constraint c "
        "JOIN pg_class t ON t.oid = c.conrelid "
        "JOIN pg_namespace n ON n.oid = t.relnamespace "
        "WHERE n.nspname = 'public' AND c.contype IN ('p', 'f', 'c', 'u', 'x') "
        "AND t.relname <> 'alembic_version'",
    )
    assert len(everywhere) > 20, everywhere  # every table of the accounts migration too
    misnamed = [
        (table, name)
        for table, name, kind in everywhere
        if not name.startswith(f"{prefixes[kind]}_{table}_") and name != f"pk_{table}"
    ]
    assert misnamed == []

    indexes = dict(
        superuser_rows(
            fresh_url,
            "SELECT indexname, indexdef FROM pg_indexes "
            "WHERE schemaname = 'public' AND tablename IN ('tasks', 'categories')",
        )
    )
    assert set(indexes) == {
        "pk_tasks",
        "pk_categories",
        UQ_CATEGORIES_NAME,
        "uq_categories_id_workspace_id",
        "uq_tasks_id_workspace_id",
        "ix_tasks_created_at_id",
        "ix_tasks_completed_created_at_id",
        "ix_tasks_category_id_created_at_id",
        "ix_tasks_workspace_id_created_at_id",
        "ix_tasks_workspace_words",
        "ix_tasks_due_key_id",
        "ix_tasks_priority_rank_created_at_id",
        "ix_tasks_title_id",
    }
    # Full-text search: the words qualified by workspace, without a pending list (0009).
    assert (
        "USING gin (workspace_words) WITH (fastupdate=off)" in (indexes["ix_tasks_workspace_words"])
    )
    # errors.py maps this name to 409: it must be a UNIQUE index on (workspace, lower(name)).
    assert "UNIQUE" in indexes[UQ_CATEGORIES_NAME]
    assert "(workspace_id, lower((name)::text))" in indexes[UQ_CATEGORIES_NAME]


def _printed_sql() -> str:
    """`alembic upgrade head --sql` as the settings of the moment make it."""
    get_settings.cache_clear()
    config = Config(output_buffer=(output := io.StringIO()))
    config.set_main_option("script_location", migrate.SCRIPT_LOCATION)
    try:
        command.upgrade(config, "head", sql=True)
    finally:
        get_settings.cache_clear()
    return output.getvalue()


def test_printing_the_sql_needs_no_server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`alembic upgrade head --sql` (offline mode) renders the migrations for a DATABASE_URL
    that nothing answers: it needs the dialect, not a connection."""
    monkeypatch.chdir(tmp_path)  # no .env of the project's
    monkeypatch.setenv("DATABASE_URL", f"postgresql://app:pw@127.0.0.1:{free_port()}/tasks")
    assert "CREATE TABLE tasks" in _printed_sql()


def test_printing_the_sql_starts_no_embedded_server(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Without DATABASE_URL, `alembic upgrade head --sql` neither starts nor makes the
    embedded server: the dialect is all it needs."""
    monkeypatch.chdir(tmp_path)  # no .env of the project's
    for name in ("DATABASE_URL", "TASKMANAGER_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TASKMANAGER_DATA_DIR", str(tmp_path / "pgdata"))
    assert "CREATE TABLE tasks" in _printed_sql()
    assert not (tmp_path / "pgdata").exists()


# ─────────────────────────────────────────────
# The accounts migration (0003) with data in place
# ─────────────────────────────────────────────

BEFORE_ACCOUNTS = "0002"
SHARED_WORKSPACE = "Shared (from before accounts)"
TASK_COLUMNS = "id, title, description, completed, category_id, version, created_at, updated_at"


def _rows_from_before_accounts(url: str) -> None:
    """Categories and tasks as a database without accounts held them (one with a
    category, one done, one with a description), and an idempotency key."""
    superuser_execute(
        url,
        "INSERT INTO categories (id, name) VALUES (7, 'Home'), (8, 'Work')",
        "INSERT INTO tasks (id, title, description, completed, category_id) VALUES "
        "(11, 'Buy milk', NULL, false, 7), (12, 'Write report', 'Q3', false, 8), "
        "(13, 'Water plants', NULL, true, NULL)",
        "UPDATE tasks SET version = 3 WHERE id = 12",
        "SELECT setval('tasks_id_seq', 13), setval('categories_id_seq', 8)",
        "INSERT INTO idempotency_keys (scope, key, request_hash, expires_at) "
        "VALUES ('POST /tasks', 'before', 'x', now() + interval '1 day')",
    )


def test_the_accounts_migration_keeps_every_row_in_one_unclaimed_workspace(
    database_at: DatabaseAt,
) -> None:
    url = database_at("migrations_existing_rows", BEFORE_ACCOUNTS)
    _rows_from_before_accounts(url)
    tasks_before = superuser_rows(url, f"SELECT {TASK_COLUMNS} FROM tasks ORDER BY id")
    categories_before = superuser_rows(url, "SELECT id, name, version FROM categories ORDER BY id")

    migrate.upgrade(owner_url(url))

    assert superuser_rows(url, f"SELECT {TASK_COLUMNS} FROM tasks ORDER BY id") == tasks_before
    assert superuser_rows(url, "SELECT id, name, version FROM categories ORDER BY id") == (
        categories_before
    )
    workspaces = superuser_rows(url, "SELECT id, name, created_by, personal FROM workspaces")
    assert len(workspaces) == 1, workspaces
    ((shared, name, created_by, personal),) = workspaces
    assert (name, created_by, personal) == (SHARED_WORKSPACE, None, False)
    assert superuser_rows(url, "SELECT DISTINCT workspace_id FROM tasks") == [(shared,)]
    assert superuser_rows(url, "SELECT DISTINCT workspace_id FROM categories") == [(shared,)]
    assert superuser_rows(url, "SELECT workspace_id FROM unclaimed_workspaces") == [(shared,)]
    assert superuser_rows(url, "SELECT count(*) FROM memberships") == [(0,)]
    # Keys from before accounts belong to no one: dropped, as the migration says.
    assert superuser_rows(url, "SELECT count(*) FROM idempotency_keys") == [(0,)]


def test_the_accounts_migration_on_an_empty_database_makes_no_workspace(
    database_at: DatabaseAt,
) -> None:
    url = database_at("migrations_no_rows", BEFORE_ACCOUNTS)
    migrate.upgrade(owner_url(url))
    assert superuser_rows(url, "SELECT count(*) FROM workspaces") == [(0,)]
    assert superuser_rows(url, "SELECT count(*) FROM unclaimed_workspaces") == [(0,)]


async def _operator_creates_account(url: str, email: str) -> int:
    """What `taskmanager users create EMAIL` does (tests/service/test_cli.py runs the real
    command): register_account with claim_unowned=True, committed."""
    engine = create_engine(Settings(database_url=url), url)
    try:
        async with create_session_factory(engine)() as session, session.begin():
            user = await register_account(session, TEST_KEY, email, PASSWORD, claim_unowned=True)
            return user.id
    finally:
        await engine.dispose()


async def test_the_first_operator_made_account_takes_over_the_rows_from_before_accounts(
    database_at: DatabaseAt,
) -> None:
    """A stranger registering through the API gets nothing of the old rows (on a server the
    internet reaches, the first registration could be anyone's); the first account made by
    the operator (`taskmanager users create`) becomes the owner of the shared workspace and
    its GET /tasks lists the old tasks; the next account sees none."""
    url = await asyncio.to_thread(database_at, "migrations_first_account", BEFORE_ACCOUNTS)
    await asyncio.to_thread(_rows_from_before_accounts, url)
    await asyncio.to_thread(migrate_deployment, logins_of(url))

    async with live_client(url) as http:
        stranger = await http.post(
            "/auth/register", json={"email": "stranger@example.com", "password": PASSWORD}
        )
        assert stranger.status_code == 202, stranger.text
        strangers = await login(http, "stranger@example.com")
        assert (await http.get("/tasks", headers=strangers)).json() == []
        assert (
            await asyncio.to_thread(superuser_rows, url, "SELECT * FROM unclaimed_workspaces") != []
        )

        first_id = await _operator_creates_account(url, "first@example.com")
        headers = await login(http, "first@example.com")
        me = (await http.get("/users/me", headers=headers)).json()

        listed = await http.get("/tasks", headers=headers)
        assert listed.status_code == 200, listed.text
        assert listed.headers["X-Total-Count"] == "3"
        by_id = {task["id"]: task for task in listed.json()}
        assert set(by_id) == {11, 12, 13}
        assert by_id[11]["category"] == {"id": 7, "name": "Home"}
        assert (by_id[12]["description"], by_id[12]["version"]) == ("Q3", 3)
        assert by_id[13]["completed"] is True
        shared = by_id[11]["workspace_id"]
        categories = await http.get("/categories", headers=headers)
        assert {c["name"] for c in categories.json()} == {"Home", "Work"}
        workspaces = {w["id"]: w for w in (await http.get("/workspaces", headers=headers)).json()}
        assert workspaces[shared]["name"] == SHARED_WORKSPACE
        assert workspaces[shared]["role"] == "owner"
        assert workspaces[me["personal_workspace_id"]]["personal"] is True
        # A new task still goes to the personal workspace, not the shared one.
        created = await http.post("/tasks", json={"title": "after accounts"}, headers=headers)
        assert created.status_code == 201, created.text
        assert created.json()["workspace_id"] == me["personal_workspace_id"]

        await _operator_creates_account(url, "second@example.com")
        for email in ("second@example.com", "stranger@example.com"):
            others = await login(http, email)
            nothing = await http.get("/tasks", headers=others)
            assert nothing.status_code == 200, nothing.text
            assert (nothing.json(), nothing.headers["X-Total-Count"]) == ([], "0")
            assert (await http.get("/categories", headers=others)).json() == []
            assert (await http.get("/tasks/11", headers=others)).status_code == 404
            assert (await http.get(f"/workspaces/{shared}", headers=others)).status_code == 404

    owners = await asyncio.to_thread(
        superuser_rows, url, "SELECT workspace_id, user_id, role FROM memberships ORDER BY 1"
    )
    assert [row for row in owners if row[0] == shared] == [(shared, first_id, "owner")]
    assert await asyncio.to_thread(superuser_rows, url, "SELECT * FROM unclaimed_workspaces") == []


def test_downgrading_the_accounts_migration_keeps_every_task(
    database_at: DatabaseAt,
) -> None:
    """Back to one pool of tasks: every task stays. Two workspaces may each have a
    category named alike; one name survives (the oldest category), and the tasks of the
    other follow it instead of pointing at a category that is gone."""
    url = database_at("migrations_downgrade_rows", "head")
    superuser_execute(
        url,
        "INSERT INTO workspaces (id, name) VALUES (1, 'one'), (2, 'two')",
        "INSERT INTO categories (id, name, workspace_id) VALUES "
        "(1, 'Home', 1), (2, 'home', 2), (3, 'Work', 2)",
        "INSERT INTO tasks (id, title, category_id, workspace_id) VALUES "
        "(1, 'in one', 1, 1), (2, 'in two', 2, 2), (3, 'work in two', 3, 2), (4, 'none', NULL, 1)",
    )

    migrate.downgrade(owner_url(url), BEFORE_ACCOUNTS)

    assert superuser_rows(url, "SELECT id, title, category_id FROM tasks ORDER BY id") == [
        (1, "in one", 1),
        (2, "in two", 1),
        (3, "work in two", 3),
        (4, "none", None),
    ]
    assert superuser_rows(url, "SELECT id, name FROM categories ORDER BY id") == [
        (1, "Home"),
        (3, "Work"),
    ]
    migrate.upgrade(owner_url(url))  # and up again, the rows going to the shared workspace
    assert superuser_rows(url, "SELECT count(*) FROM tasks") == [(4,)]


# ─────────────────────────────────────────────
# The search within workspaces (0009) with data in place
# ─────────────────────────────────────────────

BEFORE_SEARCH_WITHIN_WORKSPACES = "0008"


# The first statement as revision 0008's service ran it (today's reads what later revisions
# added to the door's answer).
_ENTER_AT_0008 = text(
    "SELECT set_config('role', e.caller_role, true) FROM taskmanager_enter(:user_id, "
    ":session_id, :purpose, :valid_until, :proof, :subject) e"
).bindparams(
    bindparam("user_id", type_=Integer),
    bindparam("session_id", type_=Uuid),
    bindparam("purpose", type_=Text),
    bindparam("valid_until", type_=BigInteger),
    bindparam("proof", type_=Text),
    bindparam("subject", type_=Text),
)


async def _found_by_0006s_function(url: str, user_id: int, words: str) -> list[str]:
    """What migration 0006's taskmanager_matching_tasks(tsquery) finds for `user_id`, as the
    caller role (the repository of then sent that)."""
    engine = create_engine(Settings(database_url=url), url)
    try:
        async with engine.begin() as connection:
            entry = TEST_KEY.entry("operator", user_id)
            await connection.execute(_ENTER_AT_0008, dataclasses.asdict(entry))
            rows = await connection.execute(
                text(
                    "SELECT title FROM tasks WHERE id IN "
                    "(SELECT taskmanager_matching_tasks(to_tsquery('simple', :words)))"
                ),
                {"words": words},
            )
            return sorted(title for (title,) in rows)
    finally:
        await engine.dispose()


async def _found_by_the_repository(url: str, user_id: int, q: str) -> list[str]:
    engine = create_engine(Settings(database_url=url), url)
    try:
        async with create_session_factory(engine)() as session, session.begin():
            scope = await scope_of_account(session, TEST_KEY, user_id)
            page = await TaskRepository(session, scope).get_page(TaskFilters(q=q))
            return sorted(task["title"] for task in page.items)
    finally:
        await engine.dispose()


def _account_in_sql(url: str, email: str) -> int:
    """An account with its personal workspace, as the tables of 0008 hold one (today's code
    reads columns later revisions added, so it cannot make one there)."""
    superuser_execute(
        url,
        f"INSERT INTO users (email, display_name, password_hash) VALUES ('{email}', 'x', 'x')",
        "INSERT INTO workspaces (name, created_by, personal) "
        f"SELECT 'Personal', id, true FROM users WHERE email = '{email}'",
        "INSERT INTO memberships (workspace_id, user_id, role) "
        f"SELECT w.id, w.created_by, 'owner' FROM workspaces w JOIN users u "
        f"ON u.id = w.created_by WHERE u.email = '{email}'",
        "UPDATE users u SET personal_workspace_id = w.id FROM workspaces w "
        f"WHERE w.created_by = u.id AND u.email = '{email}'",
    )
    user_id: int = superuser_rows(url, f"SELECT id FROM users WHERE email = '{email}'")[0][0]
    return user_id


async def test_the_search_within_workspaces_migrates_both_ways_with_tasks_in_place(
    database_at: DatabaseAt,
) -> None:
    """Upgrading indexes the tasks already there by workspace; downgrading gives back 0006's
    index and function, which find the same tasks; the tasks added meanwhile are found
    after upgrading again. (The accounts and their tasks are made at the head, by today's
    code, then taken down to before 0009 with the later revisions' downgrades.)"""
    url = await asyncio.to_thread(
        database_at, "migrations_search_within_workspaces", SCHEMA_REVISION
    )
    service_login = ConnectionTarget.from_url(service_url(url)).user
    await asyncio.to_thread(  # the caller key, which 0008 checks callers with
        run_on_one_connection,
        owner_url(url),
        lambda owner: prepare_deployment(owner, service_login, TEST_KEY),
        begin=True,
    )
    mine = await asyncio.to_thread(_account_in_sql, url, "mine@example.com")
    theirs = await asyncio.to_thread(_account_in_sql, url, "theirs@example.com")
    insert = (
        "INSERT INTO tasks (workspace_id, title) SELECT personal_workspace_id, title "
        "FROM users, (VALUES {}) AS titles(title) WHERE users.id = {}"
    )
    await asyncio.to_thread(
        superuser_execute,
        url,
        insert.format("('Buy milk'), ('Call mum')", mine),
        insert.format("('Milk the cow'), ('Mill the corn')", theirs),
    )
    await asyncio.to_thread(migrate.downgrade, owner_url(url), BEFORE_SEARCH_WITHIN_WORKSPACES)

    await asyncio.to_thread(migrate.upgrade, owner_url(url))
    assert await _found_by_the_repository(url, mine, "mil") == ["Buy milk"]
    assert await _found_by_the_repository(url, theirs, "mil") == ["Milk the cow", "Mill the corn"]

    await asyncio.to_thread(migrate.downgrade, owner_url(url), BEFORE_SEARCH_WITHIN_WORKSPACES)
    await asyncio.to_thread(superuser_execute, url, insert.format("('Millet for the birds')", mine))
    assert await _found_by_0006s_function(url, mine, "mil:*") == [
        "Buy milk",
        "Millet for the birds",
    ]
    assert await _found_by_0006s_function(url, theirs, "mil:*") == [
        "Milk the cow",
        "Mill the corn",
    ]

    await asyncio.to_thread(migrate.upgrade, owner_url(url))
    assert await _found_by_the_repository(url, mine, "mil") == ["Buy milk", "Millet for the birds"]
    assert await _found_by_the_repository(url, theirs, "mill") == ["Mill the corn"]


# ─────────────────────────────────────────────
# The four roles (0010) with memberships in place
# ─────────────────────────────────────────────

BEFORE_ROLES = "0009"


async def test_the_roles_migration_makes_admins_and_viewers_members_on_the_way_down(
    database_at: DatabaseAt,
) -> None:
    """The two-role schema has no admin nor viewer: downgrading makes them members (and
    keeps every owner); upgrading again gives back the matrix the policies read."""
    url = await asyncio.to_thread(database_at, "migrations_roles", SCHEMA_REVISION)
    service_login = ConnectionTarget.from_url(service_url(url)).user
    await asyncio.to_thread(
        run_on_one_connection,
        owner_url(url),
        lambda owner: prepare_deployment(owner, service_login, TEST_KEY),
        begin=True,
    )
    people = [
        await _operator_creates_account(url, f"{role}@example.com")
        for role in ("owner", "admin", "member", "viewer")
    ]
    memberships = ", ".join(
        f"((SELECT id FROM team), {user_id}, '{role}')"
        for user_id, role in zip(people, ("owner", "admin", "member", "viewer"), strict=True)
    )
    await asyncio.to_thread(
        superuser_execute,
        url,
        f"WITH team AS (INSERT INTO workspaces (name, created_by) VALUES ('Team', {people[0]}) "
        f"RETURNING id) INSERT INTO memberships (workspace_id, user_id, role) VALUES {memberships}",
    )
    team_roles = (
        "SELECT m.user_id, m.role FROM memberships m JOIN workspaces w ON w.id = m.workspace_id "
        "WHERE w.name = 'Team' ORDER BY m.user_id"
    )

    await asyncio.to_thread(migrate.downgrade, owner_url(url), BEFORE_ROLES)
    roles = await asyncio.to_thread(superuser_rows, url, team_roles)
    assert roles == [
        (people[0], "owner"),
        (people[1], "member"),
        (people[2], "member"),
        (people[3], "member"),
    ]
    assert not await asyncio.to_thread(table_exists, url, "role_permissions")

    await asyncio.to_thread(migrate.upgrade, owner_url(url))
    stored = await asyncio.to_thread(superuser_rows, url, "SELECT count(*) FROM role_permissions")
    assert stored == [(sum(len(actions) for actions in PERMISSIONS.values()),)]
    assert await asyncio.to_thread(superuser_rows, url, team_roles) == roles


def test_the_service_checks_for_the_scripts_head() -> None:
    """The revision the service checks at start-up (without loading Alembic) is the head."""
    assert migrate.heads() == (SCHEMA_REVISION,)


async def test_a_database_the_superuser_migrated_is_taken_over_by_its_owner(
    embedded_server: EmbeddedPostgres | None,
) -> None:
    """Before caller roles, `make run` migrated the embedded database as the superuser,
    which owned every table. The next start hands them to the database's owner, migrates on
    and serves through the service's login, the rows kept."""
    if embedded_server is None:
        pytest.skip("needs the embedded test server to create extra databases")
    name = "migrations_taken_over"
    await asyncio.to_thread(embedded_server.drop_database, name)
    await asyncio.to_thread(embedded_server.create_database, name)
    superuser = embedded_server.url(name)
    await asyncio.to_thread(migrate.upgrade, superuser, "0007")
    await asyncio.to_thread(
        superuser_execute,
        superuser,
        "INSERT INTO workspaces (name) VALUES ('from before')",
        "INSERT INTO tasks (workspace_id, title) VALUES (currval('workspaces_id_seq'), 'kept')",
    )

    logins = await asyncio.to_thread(embedded_server.logins, name)
    await asyncio.to_thread(migrate_deployment, logins)

    owners = await asyncio.to_thread(
        superuser_rows,
        superuser,
        "SELECT DISTINCT pg_get_userbyid(relowner) FROM pg_class "
        "WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'S', 'i')",
    )
    assert owners == [(f"{name}_owner",)]
    assert await asyncio.to_thread(superuser_rows, superuser, "SELECT title FROM tasks") == [
        ("kept",)
    ]
    async with live_client(logins.service) as http:
        headers = await register_and_login(http, "after@example.com")
        created = await http.post("/tasks", json={"title": "new"}, headers=headers)
        assert created.status_code == 201, created.text
        assert [t["title"] for t in (await http.get("/tasks", headers=headers)).json()] == ["new"]


def test_the_role_deployments_used_to_share_keeps_nothing_of_this_database(
    embedded_server: EmbeddedPostgres | None,
) -> None:
    """A database migrated before 0008 granted the cluster's one request role its tables
    and functions (any deployment's login could switch to it); after 0008 it holds no
    privilege here. (The owner stays its member where only a superuser may revoke that:
    docs/security.md says to drop the role once no database uses it.)"""
    if embedded_server is None:
        pytest.skip("needs the embedded test server to create extra databases")
    name = "migrations_legacy_role"
    embedded_server.drop_database(name)
    logins = embedded_server.logins(name)
    assert logins.owner is not None
    superuser = embedded_server.url(name)
    superuser_execute(superuser, "CREATE ROLE taskmanager_request NOLOGIN NOINHERIT")
    try:
        superuser_execute(superuser, f"GRANT taskmanager_request TO {name}_owner")
        migrate.upgrade(logins.owner, "0007")
        granted = (
            "SELECT count(*) FROM information_schema.role_table_grants "
            "WHERE grantee = 'taskmanager_request' AND table_catalog = current_database()"
        )
        assert superuser_rows(superuser, granted)[0][0] > 0  # the control: 0003's grants

        migrate_deployment(logins)

        assert superuser_rows(superuser, granted) == [(0,)]
        assert superuser_rows(
            superuser,
            "SELECT count(*) FROM pg_proc WHERE has_function_privilege("
            "'taskmanager_request', oid, 'EXECUTE') AND pronamespace = 'public'::regnamespace "
            "AND NOT has_function_privilege('public', oid, 'EXECUTE')",
        ) == [(0,)]
    finally:
        embedded_server.drop_database(name)
        superuser_execute(embedded_server.url(), "DROP ROLE IF EXISTS taskmanager_request")
