"""Alembic, driven from code: the CLI, the lifespan and the tests migrate the same way.

The migration scripts ship inside the package (`taskmanager/migrations`), so an installed
`taskmanager` can migrate a database without a source checkout.
"""

from __future__ import annotations

from typing import TextIO

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

SCRIPT_LOCATION = "taskmanager:migrations"


def alembic_config(database_url: str, *, stdout: TextIO | None = None) -> Config:
    """An Alembic Config for `database_url` (an asyncpg URL) using the packaged scripts."""
    config = Config(stdout=stdout) if stdout is not None else Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    # Passed as an attribute, not an ini option: URLs may contain '%' (configparser syntax).
    config.attributes["database_url"] = database_url
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str) -> None:
    command.downgrade(alembic_config(database_url), revision)


def heads() -> tuple[str, ...]:
    """The head revisions of the packaged migration scripts."""
    script = ScriptDirectory.from_config(alembic_config("postgresql+asyncpg://unused"))
    return tuple(script.get_heads())


def current(database_url: str) -> str | None:
    """The revision `database_url` is at (None for an empty database)."""
    import asyncio

    from sqlalchemy.ext.asyncio import create_async_engine

    from taskmanager.database import pooler_safe_connect_args

    async def read() -> str | None:
        # Like the migrations: safe through PgBouncer too.
        engine = create_async_engine(database_url, connect_args=pooler_safe_connect_args())
        try:
            async with engine.connect() as connection:
                return await connection.run_sync(
                    lambda sync: MigrationContext.configure(sync).get_current_revision()
                )
        finally:
            await engine.dispose()

    return asyncio.run(read())
