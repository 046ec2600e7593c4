"""A pooled connection the server closed is replaced when it is checked out, not handed to
a request that would answer 503 (database._replace_a_closed_connection)."""

from __future__ import annotations

import asyncio

import asyncpg
from sqlalchemy import text

from taskmanager.config import Settings
from taskmanager.database import create_engine


async def test_a_connection_the_server_ended_is_replaced_at_checkout(
    own_database_url: str,
) -> None:
    settings = Settings(database_url=own_database_url, pool_size=1)
    engine = create_engine(settings, own_database_url)
    try:
        async with engine.connect() as connection:
            pid = (await connection.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        # Ended by the server, as a restart ends every backend; the pool keeps it idle.
        plain = own_database_url.replace("postgresql+asyncpg://", "postgresql://", 1)
        killer = await asyncpg.connect(plain)
        try:
            assert await killer.fetchval("SELECT pg_terminate_backend($1)", pid)
        finally:
            await killer.close()
        await asyncio.sleep(0.3)  # asyncpg reads the server's goodbye
        async with engine.connect() as connection:
            again = (await connection.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        assert again != pid
    finally:
        await engine.dispose()
