"""Alembic, driven from code: the CLI, the lifespan and the tests migrate the same way.

The migration scripts ship inside the package (`taskmanager/migrations`), so an installed
`taskmanager` can migrate a database without a source checkout.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, TextIO

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from taskmanager.postgres.logins import ConnectionTarget, driver_error, owner_url_of

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection
    from sqlalchemy.ext.asyncio import AsyncConnection

    from taskmanager.config import Settings
    from taskmanager.postgres.deployment import DatabaseLogins
    from taskmanager.security.caller_key import CallerKey

SCRIPT_LOCATION = "taskmanager:migrations"


def alembic_config(database_url: str, *, stdout: TextIO | None = None) -> Config:
    """An Alembic Config for `database_url` (an asyncpg URL) using the packaged scripts."""
    config = Config(stdout=stdout) if stdout is not None else Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    # Passed as an attribute, not an ini option: URLs may contain '%' (configparser syntax).
    config.attributes["database_url"] = database_url
    return config


class MigrationError(Exception):
    """A migration failed and everything the command had applied was rolled back; the
    message says, in one line, where the database stays and PostgreSQL's reason."""


def upgrade(database_url: str, revision: str = "head") -> None:
    """Migrate `database_url` up to `revision`, every pending migration in one transaction
    (migrations/env.py): on failure MigrationError, the database where it was."""
    with _rolled_back_as_one(database_url, f"upgrading to {revision}"):
        command.upgrade(alembic_config(database_url), revision)


def upgrade_deployment(logins: DatabaseLogins, key: CallerKey, revision: str = "head") -> None:
    """What `serve` and `db upgrade` do, as the owner, in ONE transaction: check what the
    owner may do (taskmanager.postgres.deployment.check_owner_login), migrate up to
    `revision` and, at head, prepare the deployment for its service login (prepare_deployment).
    A failure anywhere leaves the database as it was. OwnerLoginMissingError without the
    owner's login; a migration PostgreSQL refuses is MigrationError."""
    from taskmanager.database import run_on_one_connection
    from taskmanager.postgres.deployment import check_owner_login, prepare_deployment

    owner = owner_url_of(logins)
    service_login = ConnectionTarget.from_url(logins.service).user
    prepare = reaches_head(revision)

    def migrate(connection: Connection) -> None:
        config = alembic_config(owner)
        config.attributes["connection"] = connection  # env.py migrates in its transaction
        command.upgrade(config, revision)

    async def work(connection: AsyncConnection) -> None:
        await check_owner_login(connection, service_login)
        await connection.run_sync(migrate)
        if prepare:
            await prepare_deployment(connection, service_login, key)

    with _rolled_back_as_one(owner, f"upgrading to {revision}"):
        run_on_one_connection(owner, work, begin=True)


def reaches_head(revision: str) -> bool:
    """Whether upgrading to `revision` brings the database to head."""
    return revision in ("head", *heads())


@contextmanager
def migrated(settings: Settings) -> Iterator[DatabaseLogins]:
    """The deployment's logins (taskmanager.postgres.logins.database_logins), its database migrated
    to head and prepared with the caller key of `settings`' signing key: for the commands
    that migrate before they work (`db seed`, the demonstrations). Needs the owner's login
    (OwnerLoginMissingError without one)."""
    from taskmanager.postgres.logins import database_logins
    from taskmanager.security.caller_key import CallerKey
    from taskmanager.security.signing_key import signing_key

    with database_logins(settings) as logins:
        upgrade_deployment(logins, CallerKey(signing_key(settings)))
        yield logins


def downgrade(database_url: str, revision: str) -> None:
    """Migrate `database_url` down to `revision`, in one transaction, like `upgrade`."""
    with _rolled_back_as_one(database_url, f"downgrading to {revision}"):
        command.downgrade(alembic_config(database_url), revision)


@contextmanager
def _rolled_back_as_one(database_url: str, doing: str) -> Iterator[None]:
    """A DBAPIError PostgreSQL answered with, inside, becomes MigrationError: the one
    transaction was rolled back, so the revision read afterwards is the one before."""
    from sqlalchemy.exc import DBAPIError

    try:
        yield
    except DBAPIError as exc:
        refusal = _refusal(exc)
        if refusal is None:  # the connection failed: where the database is, is not known
            raise
        try:
            before = current(database_url)
        except DBAPIError:
            raise exc from None
        stays = "stays empty" if before is None else f"stays at {before}"
        raise MigrationError(
            f"{doing} failed and was rolled back, the database {stays}: {refusal}"
        ) from exc


def _refusal(exc: BaseException) -> str | None:
    """PostgreSQL's reason for refusing a statement, with its hint, in one line; None when
    the error did not come from PostgreSQL (a connection that failed)."""
    import asyncpg

    cause = driver_error(exc)
    if not isinstance(cause, asyncpg.PostgresError) or isinstance(
        cause, asyncpg.PostgresConnectionError
    ):
        return None
    parts = [getattr(cause, "message", None) or str(cause)]
    parts += [
        f"{name}: {text}" for name in ("detail", "hint") if (text := getattr(cause, name, None))
    ]
    return " ".join(" ".join(parts).split())


def heads() -> tuple[str, ...]:
    """The head revisions of the packaged migration scripts."""
    script = ScriptDirectory.from_config(alembic_config("postgresql+asyncpg://unused"))
    return tuple(script.get_heads())


def current(database_url: str) -> str | None:
    """The revision `database_url` is at (None for an empty database)."""
    from taskmanager.database import run_on_one_connection

    async def read(connection: AsyncConnection) -> str | None:
        return await connection.run_sync(
            lambda sync: MigrationContext.configure(sync).get_current_revision()
        )

    return run_on_one_connection(database_url, read)
