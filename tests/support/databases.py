"""The test databases' logins: each database has the deployment's three (an owner, the
service login, the caller role; see taskmanager.postgres.deployment) beside the test server's
superuser, and tests name the one they mean.

- The service's URL is what an app under test connects as (`make_database` returns it).
- The superuser's (`superuser_url`) looks at what PostgreSQL really holds, past every
  policy: the observers of real commits, and the rolled-back fixture's own connection.
- The owner's (`owner_url`) migrates and is what `taskmanager db upgrade` gets.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine
from sqlalchemy.pool import NullPool

from taskmanager.postgres.deployment import DatabaseLogins, RoleNames, caller_role_name
from taskmanager.postgres.migrate import upgrade_deployment
from taskmanager.security.caller_key import CallerKey
from tests.support.accounts import TEST_SECRET

# The test run's own database (on a throwaway server, or TEST_DATABASE_URL's).
TEST_DATABASE = "taskmanager_test"
# The superuser of the test server (the embedded one's; or TEST_DATABASE_URL's user).
SUPERUSER = {"name": "postgres"}
TEST_KEY = CallerKey(TEST_SECRET)
# The `database_at` fixture's: (name, revision or None) -> the new database's service URL.
DatabaseAt = Callable[[str, str | None], str]


def as_user(url: str, user: str) -> str:
    return make_url(url).set(username=user).render_as_string(hide_password=False)


def database_of(url: str) -> str:
    database = make_url(url).database
    assert database, url
    return database


def superuser_url(url: str) -> str:
    """`url`'s database, as the test server's superuser."""
    return as_user(url, SUPERUSER["name"])


def owner_url(url: str) -> str:
    """`url`'s database, as its owner."""
    return as_user(url, RoleNames.of(database_of(url)).owner)


def service_url(url: str) -> str:
    """`url`'s database, as its service login."""
    return as_user(url, RoleNames.of(database_of(url)).service)


def logins_of(url: str) -> DatabaseLogins:
    return DatabaseLogins(
        service=service_url(url), owner=owner_url(url), superuser=superuser_url(url)
    )


def database_env(url: str) -> dict[str, str]:
    """The environment of a command given `url`'s database the way an operator gives it:
    both logins, and the signing key its caller key was installed from."""
    return {
        "DATABASE_URL": service_url(url),
        "OWNER_DATABASE_URL": owner_url(url),
        "TASKMANAGER_JWT_SECRET": TEST_SECRET,
    }


def migrate(logins: DatabaseLogins) -> None:
    """Migrate to head as the owner and prepare the deployment with the test key."""
    upgrade_deployment(logins, TEST_KEY)


async def run_as(url: str, sql: str, **params: Any) -> list[Any]:
    """One statement on a connection of its own (committed), as `url`'s user."""
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.begin() as connection:
            result = await connection.execute(text(sql), params)
            return list(result.all()) if result.returns_rows else []
    finally:
        await engine.dispose()


def run_as_sync(url: str, sql: str, **params: Any) -> list[Any]:
    return asyncio.run(run_as(url, sql, **params))


# What PostgreSQL holds in `url`'s database, read (or written) as the superuser, from the
# plain `def` tests (each on a connection of its own, committed).


def superuser_rows(url: str, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    """The rows of one statement, as tuples."""
    return [tuple(row) for row in run_as_sync(superuser_url(url), sql, **params)]


def scalar(url: str, sql: str, **params: Any) -> Any:
    """The one value of the one row a statement answers."""
    (row,) = superuser_rows(url, sql, **params)
    return row[0]


def table_exists(url: str, name: str) -> bool:
    return scalar(url, "SELECT to_regclass(:name) IS NOT NULL", name=f"public.{name}") is True


def public_tables(url: str) -> set[str]:
    rows = superuser_rows(url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    return {name for (name,) in rows}


def superuser_execute(url: str, *statements: str) -> None:
    """Statements in one transaction."""

    async def run() -> None:
        engine = create_async_engine(superuser_url(url), poolclass=NullPool)
        try:
            async with engine.begin() as connection:
                for statement in statements:
                    await connection.execute(text(statement))
        finally:
            await engine.dispose()

    asyncio.run(run())


async def provision(superuser: AsyncConnection, database: str) -> None:
    """Make `database`'s roles on a server given by URL (TEST_DATABASE_URL), as the
    embedded server does for its own databases."""
    from taskmanager.postgres.embedded import provision_statements

    for statement in provision_statements(database):
        await superuser.execute(text(statement))


def caller_role_of(url: str) -> str:
    """The caller role of `url`'s database."""
    return caller_role_name(database_of(url))
