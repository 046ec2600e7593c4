"""Which PostgreSQL the service talks to, as whom: the one place that decides, and says why
it can't.

`DATABASE_URL` set: that server, as that login (the service's, which owns nothing), and
`OWNER_DATABASE_URL` for what only the tables' owner may do (migrations); each is checked
with one connection before the caller uses it; a server that cannot be reached raises
`DatabaseUnreachableError`, whose message names the server (host and port, or the Unix
socket), the database and the user - never the password - the cause in plain words and what
to check. Unset: the embedded PostgreSQL under the data directory, started for as long as
the caller needs it (and stopped afterwards if the caller started it), with both logins made
for it. The app's lifespan, every CLI command, Alembic's env.py and the demonstrations all
ask here, so they can never disagree about which database they mean.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy.engine import make_url

from taskmanager.config import Settings
from taskmanager.postgres.deployment import DatabaseLogins

# asyncpg's `ssl=` values (libpq's sslmode, normalised by config) that refuse a plain connection.
_SSL_REQUIRED = {"require", "verify-ca", "verify-full", "true"}


class OwnerLoginMissingError(Exception):
    """A command must run as the tables' owner, and OWNER_DATABASE_URL is unset."""


class DatabaseUnreachableError(Exception):
    """No connection to PostgreSQL could be opened. The message is meant for the person who
    set DATABASE_URL: where, why, and what to check (never the password)."""


@contextmanager
def database_logins(settings: Settings, *, check: bool = True) -> Iterator[DatabaseLogins]:
    """The asyncpg URLs to use: DATABASE_URL and OWNER_DATABASE_URL, or the embedded
    server's logins (the server started if needed).

    With `check`, each given URL is first connected to once, so a wrong password, an unknown
    database or a server that is down is one `DatabaseUnreachableError` here instead of a
    driver traceback from deep inside whatever the caller does next.
    """
    if settings.database_url is not None:
        owner = settings.owner_database_url
        if check:
            ensure_reachable(settings.database_url, timeout=settings.connect_timeout)
            if owner is not None:
                ensure_reachable(
                    owner, timeout=settings.connect_timeout, setting="OWNER_DATABASE_URL"
                )
        yield DatabaseLogins(service=settings.database_url, owner=owner)
        return
    from taskmanager.postgres.embedded import EmbeddedPostgres

    embedded = EmbeddedPostgres(settings.data_dir)
    logins = embedded.start()
    try:
        yield logins
    finally:
        embedded.stop()


@contextmanager
def database_url(settings: Settings, *, check: bool = True) -> Iterator[str]:
    """The service's URL (see database_logins)."""
    with database_logins(settings, check=check) as logins:
        yield logins.service


def owner_url_of(logins: DatabaseLogins) -> str:
    """The owner's URL, for what only the tables' owner may do (the migrations);
    OwnerLoginMissingError when DATABASE_URL is set without OWNER_DATABASE_URL."""
    if logins.owner is None:
        raise OwnerLoginMissingError(
            "this command runs as the owner of the tables: set OWNER_DATABASE_URL to the "
            "owner's login (DATABASE_URL is the service's, which owns nothing)"
        )
    return logins.owner


def ensure_reachable(url: str, *, timeout: float, setting: str = "DATABASE_URL") -> None:
    """Open one connection to `url` (asyncpg URL) and close it again; on failure raise
    DatabaseUnreachableError with `explain_connection_error`'s message.

    It blocks (its own event loop): call it from synchronous code or a worker thread.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass  # no loop running in this thread: asyncio.run below may start one
    else:
        raise RuntimeError("ensure_reachable() blocks; call it from a worker thread")
    try:
        asyncio.run(_connect_once(url, timeout))
    except Exception as exc:
        message = explain_connection_error(url, exc, timeout, setting)
        raise DatabaseUnreachableError(message) from exc


async def _connect_once(url: str, within: float) -> None:
    from taskmanager.database import one_connection

    # Connected as the migrations connect (safe through PgBouncer too), bounded as a whole:
    # a server that accepts the connection and then never answers is a timeout as well.
    async with asyncio.timeout(within), one_connection(url, connect_timeout=within):
        pass


@dataclass(frozen=True)
class ConnectionTarget:
    """Where a URL points, as the driver will resolve it, without its password."""

    where: str  # "127.0.0.1:5433" or "the Unix socket /run/postgresql/.s.PGSQL.5432"
    database: str
    user: str
    host: str
    is_socket: bool
    ssl_required: bool

    @classmethod
    def from_url(cls, url: str) -> ConnectionTarget:
        parsed = make_url(url)
        # asyncpg's own defaults for what the URL leaves out: PG* variables, then libpq's.
        hosts = _values(parsed.query.get("host")) or [
            parsed.host or os.environ.get("PGHOST") or "localhost"
        ]
        port = str(
            parsed.port
            or next(iter(_values(parsed.query.get("port"))), None)
            or os.environ.get("PGPORT")
            or 5432
        )
        # SQLAlchemy hands asyncpg the query's `user` over the URL's user name.
        user = (
            next(iter(_values(parsed.query.get("user"))), None)
            or parsed.username
            or os.environ.get("PGUSER")
            or getpass.getuser()
        )
        database = parsed.database or os.environ.get("PGDATABASE") or user
        places = []
        for host in hosts:
            if host.startswith("/"):
                places.append(f"the Unix socket {host.rstrip('/')}/.s.PGSQL.{port}")
            elif host.count(":") == 1:  # host:port, as a multi-host URL's query gives it
                places.append(host)
            elif ":" in host and not host.startswith("["):
                places.append(f"[{host}]:{port}")  # an IPv6 address
            else:
                places.append(f"{host}:{port}")
        return cls(
            where=" or ".join(places),
            database=database,
            user=user,
            host=hosts[0],
            is_socket=all(host.startswith("/") for host in hosts),
            ssl_required=bool(set(_values(parsed.query.get("ssl"))) & _SSL_REQUIRED),
        )


def explain_connection_error(
    url: str, error: BaseException, timeout: float, setting: str = "DATABASE_URL"
) -> str:
    """One line for a failed connection to `url` (the value of `setting`): which server,
    database and user, the cause in plain words, and what to check. The password never
    appears in it."""
    target = ConnectionTarget.from_url(url)
    password = make_url(url).password
    cause = _cause(driver_error(error), target, timeout, str(password or ""), setting)
    return (
        f'cannot connect to PostgreSQL at {target.where} (database "{target.database}", '
        f'user "{target.user}"): {cause}'
    )


def _cause(
    error: BaseException, target: ConnectionTarget, timeout: float, password: str, setting: str
) -> str:
    """The cause and the advice (what to check in `setting`), for the error the driver
    raised."""
    import asyncpg

    detail = str(error).strip().rstrip(".")
    if password:  # the driver's message should not echo it, but never rely on that
        detail = detail.replace(password, "***")
    if isinstance(error, asyncpg.InvalidPasswordError):
        # Also what PostgreSQL says for a user that does not exist (it does not tell which).
        return f"the password was refused. Check the user name and password in {setting}."
    if isinstance(error, asyncpg.InvalidAuthorizationSpecificationError):
        if "pg_hba.conf" in detail:
            return (
                "the server does not let this user into this database from here (no "
                f"pg_hba.conf entry). Check the user and database in {setting}, or ask "
                "for them to be allowed in the server's pg_hba.conf."
            )
        if "does not exist" in detail:
            return (
                f'there is no user "{target.user}" on this server. Check the user name in '
                f"{setting}."
            )
        return f"the login was refused ({detail}). Check the user name and password in {setting}."
    if isinstance(error, asyncpg.InvalidCatalogNameError):
        return (
            f'there is no database "{target.database}" on this server. Create it '
            f"(createdb {target.database}) or check the database name in {setting}."
        )
    if isinstance(error, asyncpg.CannotConnectNowError):
        return "the server is starting up or shutting down. Try again in a moment."
    if isinstance(error, asyncpg.TooManyConnectionsError):
        return (
            "the server has no connection slot left. Check max_connections on the server "
            "and how many connections other clients hold."
        )
    if isinstance(error, asyncpg.PostgresError):
        return f"the server refused the connection ({detail}). Check {setting}."
    if isinstance(error, TimeoutError):
        return (
            f"no answer within {timeout:g} s. Check the host and port in {setting} and that "
            "no firewall drops the connection (TASKMANAGER_CONNECT_TIMEOUT sets the wait)."
        )
    if isinstance(error, socket.gaierror):
        return f'the host name "{target.host}" cannot be resolved. Check the host in {setting}.'
    if target.is_socket and isinstance(error, FileNotFoundError | ConnectionRefusedError):
        return (
            "no server is running on that socket. Check that PostgreSQL is running and the "
            f"socket directory (host=) in {setting}."
        )
    if isinstance(error, ConnectionRefusedError):
        return (
            "the connection was refused (nothing listens on that port). Check that "
            f"PostgreSQL is running and the host and port in {setting}."
        )
    if "rejected SSL upgrade" in detail and target.ssl_required:
        return (
            f"the server refused SSL, which the ssl setting in {setting} requires (or "
            "what answers there is not PostgreSQL). Check the ssl setting, host and port "
            f"in {setting}."
        )
    if "rejected SSL upgrade" in detail or "connection_lost" in detail:
        # Not PostgreSQL's answer to asyncpg's first message: another service on that port,
        # or a proxy that closed the connection.
        return (
            "what answers there does not speak PostgreSQL's protocol. Check the host and "
            f"port in {setting}."
        )
    if isinstance(error, ssl.SSLError):
        return (
            f"the SSL handshake failed ({detail}). Check the ssl setting in {setting} "
            "and the server's certificate."
        )
    if isinstance(error, OSError):
        reason = error.strerror or detail or type(error).__name__
        return f"{reason[:1].lower()}{reason[1:]}. Check the host and port in {setting}."
    return f"{type(error).__name__}: {detail}. Check {setting}."


def driver_error(error: BaseException) -> BaseException:
    """The driver's own exception under SQLAlchemy's wrappers (or `error` itself)."""
    import asyncpg

    chain = []
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append(current)
        current = current.__cause__ or current.__context__
    for kind in (asyncpg.PostgresError, TimeoutError, OSError):
        for candidate in chain:
            if isinstance(candidate, kind):
                return candidate
    return error


def _values(value: str | tuple[str, ...] | None) -> list[str]:
    """A URL query value as a list (SQLAlchemy gives a tuple for a repeated key)."""
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)
