"""Which PostgreSQL the service talks to: the one place that decides.

`DATABASE_URL` set: that server. Unset: the embedded PostgreSQL under the data directory,
started for as long as the caller needs it (and stopped afterwards if the caller started
it). The app's lifespan, every CLI command, Alembic's env.py and the demonstrations all ask
here, so they can never disagree about which database they mean.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from taskmanager.config import Settings


@contextmanager
def database_url(settings: Settings) -> Iterator[str]:
    """The asyncpg URL to use: DATABASE_URL, or the embedded server's (started if needed)."""
    if settings.database_url is not None:
        yield settings.database_url
        return
    from taskmanager.embedded import EmbeddedPostgres

    embedded = EmbeddedPostgres(settings.data_dir)
    url = embedded.start()
    try:
        yield url
    finally:
        embedded.stop()
