"""Test database, per-test isolation and the HTTP client (lecture Part 6, made real).

- A throwaway embedded PostgreSQL per test run (or TEST_DATABASE_URL), its schema built by
  the Alembic migrations, never the development database.
- Each test runs inside an outer transaction that is rolled back at the end; the session
  joins it with join_transaction_mode="create_savepoint", so the app's own commit and
  rollback act on a SAVEPOINT and nothing a test writes survives it.
- The app's session dependency is overridden to use that session, committing on success
  and rolling back on error exactly like the real one, and expunging the session before
  each request so a forgotten eager load fails here as it would in production.

Whatever depends on the REAL commit (commit-before-response, data surviving a restart)
is tested over a real socket against its own database: see `server_database_url`.
"""

from __future__ import annotations

import asyncio
import atexit
import gc
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
import pytest_asyncio
from fastapi import FastAPI
from httpx import AsyncClient
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

from taskmanager.accounts.callers import scope_of_account
from taskmanager.cache.client import CALLER_SECONDS, CacheClient
from taskmanager.cache.local_redis import redis_server_binary
from taskmanager.config import Settings, normalize_database_url
from taskmanager.database import (
    create_engine,
)
from taskmanager.main import create_app
from taskmanager.postgres.deployment import DatabaseLogins
from taskmanager.postgres.embedded import EmbeddedPostgres
from taskmanager.postgres.migrate import upgrade
from taskmanager.security.scope import Scope
from tests.support.accounts import TEST_SECRET, Account, create_account, register_and_login
from tests.support.databases import (
    SUPERUSER,
    TEST_DATABASE,
    TEST_KEY,
    DatabaseAt,
    database_of,
    logins_of,
    migrate,
    provision,
)
from tests.support.live_app import live_client, observer_engine
from tests.support.redis import REDIS_MISSING, RedisServer, redis_server_in_scratch_directory
from tests.support.rolled_back import rolled_back_client

# Without an SMTP server, every app (and `taskmanager serve` started by a test) writes its
# mail as .eml files: into a directory of this test run's, never the checkout's .taskmanager.
if "TASKMANAGER_MAIL_DIR" not in os.environ:
    _MAIL_DIR = tempfile.mkdtemp(prefix="taskmanager-test-mail-")
    os.environ["TASKMANAGER_MAIL_DIR"] = _MAIL_DIR
    atexit.register(shutil.rmtree, _MAIL_DIR, ignore_errors=True)

# The reliability log (the `reliability` fixture and the hooks writing it), as a plugin.
pytest_plugins = ("tests.support.reliability",)


# ─── Real commits: a database of the test module's own, the real app on it, an observer


@pytest.fixture(scope="module")
def own_database_url(make_database: Callable[[str], str], request: pytest.FixtureRequest) -> str:
    """A migrated database for this test module only (named after it), for real commits."""
    # tests.reliability.test_faults -> reliability_faults: unique across the test packages.
    package, module = request.module.__name__.split(".")[-2:]
    return make_database(f"{package}_{module.removeprefix('test_')}")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def live(own_database_url: str) -> AsyncIterator[AsyncClient]:
    """The real app (its own engine and pool of 30) on the module's own database, logged in
    as an account registered there through the API."""
    async with live_client(own_database_url) as client:
        client.headers.update(await register_and_login(client, "live@example.com"))
        yield client


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def observer(own_database_url: str) -> AsyncIterator[AsyncEngine]:
    """A separate engine that looks at what the live app committed."""
    async with observer_engine(own_database_url) as engine:
        yield engine


@pytest.fixture(autouse=True)
def collector_left_alone() -> Iterator[None]:
    """Every test shares this process: none may leave Python's garbage collector tuned or
    frozen (an app lifespan run in-process needs gc_threshold=0; see live_app.py)."""
    before = (gc.get_threshold(), gc.get_freeze_count())
    yield
    after = (gc.get_threshold(), gc.get_freeze_count())
    assert after == before, f"the garbage collector was changed: {before} -> {after}"


@pytest.fixture(scope="session")
def embedded_server() -> Iterator[EmbeddedPostgres | None]:
    """A throwaway PostgreSQL for this test run (None when TEST_DATABASE_URL is set)."""
    if os.environ.get("TEST_DATABASE_URL"):
        yield None
        return
    data_dir = Path(tempfile.mkdtemp(prefix="taskmanager-test-")) / "pgdata"
    server = EmbeddedPostgres(data_dir, database=TEST_DATABASE, delete=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def test_logins(embedded_server: EmbeddedPostgres | None) -> DatabaseLogins:
    """The migrated test database's logins: the service's, the owner's, the superuser's.

    TEST_DATABASE_URL, when set, names that database as a superuser of its server (the
    tests make the deployment's roles there, and look past the policies as it)."""
    explicit = os.environ.get("TEST_DATABASE_URL")
    if explicit:
        url = normalize_database_url(explicit)
        development = os.environ.get("DATABASE_URL")
        if development and normalize_database_url(development) == url:
            pytest.exit("TEST_DATABASE_URL must not be the development DATABASE_URL", 2)
        SUPERUSER["name"] = make_url(url).username or "postgres"

        async def provision_explicit() -> None:
            engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
            try:
                async with engine.connect() as connection:
                    await provision(connection, database_of(url))
            finally:
                await engine.dispose()

        asyncio.run(provision_explicit())
        logins = logins_of(url)
    else:
        assert embedded_server is not None
        logins = embedded_server.logins(TEST_DATABASE)
    migrate(logins)
    return logins


@pytest.fixture(scope="session")
def database_url(test_logins: DatabaseLogins) -> str:
    """The migrated test database, as the service logs in to it."""
    return test_logins.service


@pytest.fixture(scope="session")
def make_database(
    embedded_server: EmbeddedPostgres | None, database_url: str
) -> Callable[[str], str]:
    """Create (or recreate) another migrated database on the test server, with its roles;
    return its service URL (tests.support.databases has the others).

    For tests that need the real commit, outside the rollback fixture.
    """

    def make(name: str) -> str:
        if embedded_server is None:
            pytest.skip("needs the embedded test server to create extra databases")
        embedded_server.drop_database(name)
        logins = embedded_server.logins(name)
        migrate(logins)
        return logins.service

    return make


@pytest.fixture
def database_at(embedded_server: EmbeddedPostgres | None) -> DatabaseAt:
    """`database_at(name, revision)`: (re)create a database on the test server with its
    roles, migrated by its owner to `revision` (None: not at all) and not prepared for the
    service any further; return its service URL. For the migrations' own tests."""

    def make(name: str, revision: str | None) -> str:
        if embedded_server is None:
            pytest.skip("needs the embedded test server to create extra databases")
        embedded_server.drop_database(name)
        logins = embedded_server.logins(name)
        assert logins.owner is not None
        if revision is not None:
            upgrade(logins.owner, revision)
        return logins.service

    return make


@pytest.fixture(scope="session")
def settings(database_url: str) -> Settings:
    return Settings(database_url=database_url, pool_size=5, max_overflow=5, jwt_secret=TEST_SECRET)


@pytest_asyncio.fixture(scope="session")
async def engine(settings: Settings, test_logins: DatabaseLogins) -> AsyncIterator[AsyncEngine]:
    """The rolled-back tests' connections, built by the project's own create_engine (the
    production connection settings), as the test server's superuser: the app enters every
    transaction as its caller, under the policies, exactly as on the service's login, and
    a test may set up or look past the policies before it does (see also `service_engine`)."""
    assert test_logins.superuser is not None
    engine = create_engine(settings, test_logins.superuser)
    yield engine
    await engine.dispose()


@pytest_asyncio.fixture(scope="session")
async def service_engine(settings: Settings, database_url: str) -> AsyncIterator[AsyncEngine]:
    """Connections as the service's own login: what a request's SQL can reach."""
    engine = create_engine(settings, database_url)
    yield engine
    await engine.dispose()


@pytest_asyncio.fixture(scope="session")
async def account(engine: AsyncEngine) -> Account:
    """The account the `client` fixture is logged in as (committed once per test run)."""
    return await create_account(engine, "alice@example.com")


@pytest_asyncio.fixture(scope="session")
async def other_account(engine: AsyncEngine) -> Account:
    """Someone else: shares no workspace with `account`."""
    return await create_account(engine, "mallory@example.com")


@pytest_asyncio.fixture
async def scope(db_session: AsyncSession, account: Account) -> Scope:
    """`account`'s scope, entered in `db_session` (its transaction now runs as that user
    under row-level security), for repository tests."""
    entered = await scope_of_account(db_session, TEST_KEY, account.user_id)
    db_session.info["scope"] = entered
    return entered


@pytest_asyncio.fixture
async def db_session(engine: AsyncEngine) -> AsyncIterator[AsyncSession]:
    """A session inside a transaction that is rolled back after the test: a clean slate."""
    async with engine.connect() as connection:
        transaction = await connection.begin()
        session = AsyncSession(
            bind=connection,
            expire_on_commit=False,
            join_transaction_mode="create_savepoint",
        )
        try:
            yield session
        finally:
            await session.close()
            await transaction.rollback()


@pytest.fixture(scope="session")
def app(settings: Settings) -> FastAPI:
    return create_app(settings)


@pytest_asyncio.fixture
async def client(
    app: FastAPI, engine: AsyncEngine, db_session: AsyncSession, account: Account
) -> AsyncIterator[AsyncClient]:
    """Test client whose requests all use the test's rolled-back session, logged in as
    `account`."""
    async with rolled_back_client(app, engine, db_session) as ac:
        ac.headers.update(account.headers)
        yield ac
    app.dependency_overrides.clear()


# ─── Redis (the cache): one redis-server per test process, emptied for each test


@pytest.fixture(scope="session")
def session_redis() -> Iterator[RedisServer]:
    """This test process's redis-server (under pytest-xdist, each worker has its own)."""
    if redis_server_binary() is None:
        pytest.skip(REDIS_MISSING)
    with redis_server_in_scratch_directory() as server:
        yield server


@pytest.fixture
def redis_server(session_redis: RedisServer) -> Iterator[RedisServer]:
    """The test Redis, running and empty (FLUSHALL) when the test starts; a test may stop
    it (`redis_server.down()`), and the next test finds it running again."""
    session_redis.start()
    session_redis.flushall()
    yield session_redis
    session_redis.start()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The URL (unix://.../redis.sock) of an empty Redis of the test run's own."""
    return redis_server.url


@pytest_asyncio.fixture
async def cached_client(
    client: AsyncClient, app: FastAPI, redis_url: str
) -> AsyncIterator[AsyncClient]:
    """The rolled-back `client` with the cache on: the app reads tasks through the test's
    (empty) Redis, and every write voids what it changed there, as in production."""
    app.state.cache = CacheClient.connect(
        redis_url, "test", timeout_ms=1000, ttl_seconds=300, caller_seconds=CALLER_SECONDS
    )
    try:
        yield client
    finally:
        await app.state.cache.close()
        app.state.cache = None


@pytest.fixture
def stopped_redis(redis_server: RedisServer) -> Callable[[], AbstractContextManager[None]]:
    """`with stopped_redis(): ...`: Redis is down inside the block, and back (empty, at the
    same URL) after it."""
    return redis_server.down
