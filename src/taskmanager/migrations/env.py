"""Alembic environment, async: migrations run over asyncpg like the application does.

The database URL comes from the Config attribute `database_url` (set by
`taskmanager.migrate`), else from the settings (DATABASE_URL); an `alembic` command run
with neither uses the embedded PostgreSQL.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from taskmanager.database import pooler_safe_connect_args
from taskmanager.models import Base

config = context.config
target_metadata = Base.metadata


def _database_url() -> str:
    url = config.attributes.get("database_url")
    if url:
        return str(url)
    from taskmanager.config import get_settings

    settings = get_settings()
    if settings.database_url:
        return settings.database_url
    from taskmanager.embedded import EmbeddedPostgres

    return EmbeddedPostgres(settings.data_dir).start()


def _configure(**kwargs: object) -> None:
    context.configure(
        target_metadata=target_metadata,
        compare_type=True,
        compare_server_default=True,
        transaction_per_migration=True,
        **kwargs,  # type: ignore[arg-type]
    )


def run_migrations_offline() -> None:
    """`alembic upgrade --sql`: print the SQL instead of running it."""
    _configure(url=_database_url(), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def _run_sync(connection: Connection) -> None:
    _configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


async def _run_async() -> None:
    # `serve` migrates through DATABASE_URL, which may be PgBouncer: no cached or named
    # statements to clash there with another client's (each runs once here anyway).
    engine = create_async_engine(
        _database_url(), poolclass=pool.NullPool, connect_args=pooler_safe_connect_args()
    )
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run_sync)
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:  # a caller already holds a (sync-facing) connection
        _run_sync(connection)
    else:
        asyncio.run(_run_async())


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
