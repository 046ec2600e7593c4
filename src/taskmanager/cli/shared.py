"""What every command shares: the console, the database help, the caller key, one transaction."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import typer
from rich.console import Console

from taskmanager.config import Settings

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from taskmanager.security.caller_key import CallerKey

T = TypeVar("T")

console = Console(stderr=True, soft_wrap=True)

# Where the data lives, said by every help that starts or changes something.
DATABASE_HELP = (
    "The database: DATABASE_URL, the service's login (unset: an embedded PostgreSQL in "
    ".taskmanager/pgdata, started and stopped as needed); OWNER_DATABASE_URL, the login that owns "
    "the tables and migrates them (with DATABASE_URL; the embedded server has both)."
)


def caller_key(settings: Settings) -> CallerKey:
    """The caller key of the signing key; a bad signing key is one line and exit code 2."""
    from taskmanager.security.caller_key import CallerKey
    from taskmanager.security.signing_key import SigningKeyError, signing_key

    try:
        return CallerKey(signing_key(settings))
    except (SigningKeyError, OSError) as exc:
        console.print(f"[red]Configuration error (signing key): {exc}[/red]", highlight=False)
        raise typer.Exit(2) from None


def in_one_transaction(
    settings: Settings, url: str, work: Callable[[AsyncSession], Awaitable[T]]
) -> T:
    """Run `work` in one transaction of a session on `url` (committed when it returns,
    rolled back when it raises), on an engine made for it and disposed of afterwards."""
    from taskmanager.database import create_engine, create_session_factory

    async def run() -> T:
        engine = create_engine(settings, url)
        try:
            async with create_session_factory(engine)() as session, session.begin():
                return await work(session)
        finally:
            await engine.dispose()

    return asyncio.run(run())
