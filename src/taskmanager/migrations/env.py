"""Alembic environment, async: migrations run over asyncpg like the application does.

The database URL comes from the Config attribute `database_url` (set by
`taskmanager.postgres.migrate`), else from the settings: migrations run as the owner of the tables
(OWNER_DATABASE_URL; the embedded server's owner when DATABASE_URL is unset, the server
stopped again afterwards). Printing SQL (`--sql`) needs only the dialect, and no server.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from alembic import context
from sqlalchemy.engine import Connection

from taskmanager.config import ASYNC_DRIVER
from taskmanager.database import run_on_one_connection
from taskmanager.models import Base

config = context.config
target_metadata = Base.metadata


@contextmanager
def _database_url() -> Iterator[str]:
    """The URL `taskmanager.postgres.migrate` passed in; else the owner's, from the one place
    that decides for the app (which first connects once to each URL it was given)."""
    url = config.attributes.get("database_url")
    if url:
        yield str(url)
        return
    from taskmanager.config import get_settings
    from taskmanager.postgres.logins import database_logins, owner_url_of

    with database_logins(get_settings()) as logins:
        yield owner_url_of(logins)


def _configure(**kwargs: object) -> None:
    context.configure(
        target_metadata=target_metadata,
        compare_type=True,
        compare_server_default=True,
        # Every pending migration in ONE transaction: one that fails (a privilege missing,
        # say) rolls back all of them, so the database stays at the revision it was at
        # before the command, never part-way. Hence no migration may need its own
        # transaction (CREATE INDEX CONCURRENTLY, an enum value used where it is added).
        transaction_per_migration=False,
        **kwargs,  # type: ignore[arg-type]
    )


def run_migrations_offline() -> None:
    """`alembic upgrade --sql`: print the SQL instead of running it. That needs only the
    dialect: no server is asked, nor the embedded one started."""
    _configure(url=f"{ASYNC_DRIVER}://", literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def _run_sync(connection: Connection) -> None:
    _configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:  # a caller already holds a (sync-facing) connection
        _run_sync(connection)
    else:
        # The owner's URL may be PgBouncer's: one_connection prepares nothing that could
        # clash there with another client's statements.
        with _database_url() as url:
            run_on_one_connection(url, lambda connection: connection.run_sync(_run_sync))


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
