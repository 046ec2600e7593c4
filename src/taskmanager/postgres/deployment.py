"""The logins of a deployment, and whether they are safe to serve requests with.

A deployment uses three roles of its PostgreSQL cluster, all its own (roles are shared by
the whole cluster, so none is shared between two deployments):

- the owner (OWNER_DATABASE_URL): owns the database and its tables, runs the migrations;
- the service login (DATABASE_URL), the authenticator: owns nothing and has no privilege
  of its own, only membership in the caller role, which each transaction switches to;
- the caller role, `<database>_caller`: NOLOGIN, owning nothing, under every policy.

`taskmanager db upgrade` migrates as the owner, then `prepare_deployment` does what depends
on the deployment rather than the schema (the caller key, the service login's membership,
the database's CONNECT and TEMPORARY privileges). `check_service_login` says, in one line,
what makes a service login unsafe; the service refuses to start on one.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from taskmanager.security.caller_key import CallerKey

log = logging.getLogger(__name__)

# The migration this version of the service needs the database at (a test keeps it equal to
# the scripts' head; the service checks it at start-up without loading Alembic).
SCHEMA_REVISION = "0017"
_MAX_BASE_BYTES = 48  # room for "_authenticator" within PostgreSQL's 63-byte names
SEE_README = "see docs/security.md, Your own PostgreSQL"


class DeploymentError(RuntimeError):
    """A login or a privilege is not as the service needs it; the message says what to do,
    in one line."""


def role_base(database: str, schema: str = "public") -> str:
    """What this deployment's role names start with (as migration 0008 computes it)."""
    base = database if schema == "public" else f"{database}_{schema}"
    if len(base.encode()) > _MAX_BASE_BYTES:
        base = "taskmanager_" + hashlib.md5(base.encode()).hexdigest()[:16]
    return base


def quoted(name: str) -> str:
    """`name` as an SQL identifier, whatever it holds: in double quotes, each inside doubled."""
    return '"' + name.replace('"', '""') + '"'


def caller_role_name(database: str, schema: str = "public") -> str:
    return f"{role_base(database, schema)}_caller"


@dataclass(frozen=True, slots=True)
class DatabaseLogins:
    """The ways into a deployment's database (taskmanager.postgres.logins.database_logins)."""

    service: str  # requests (DATABASE_URL): a login that owns nothing
    owner: str | None  # migrations (OWNER_DATABASE_URL); None when not given
    # The embedded server's superuser (the lecture's demonstrations, which run the
    # lecture's own code beside the policies); None for a server given by URL.
    superuser: str | None = None


@dataclass(frozen=True, slots=True)
class RoleNames:
    """The names the embedded server gives a database's roles (and docs/security.md suggests)."""

    owner: str
    service: str
    caller: str

    @classmethod
    def of(cls, database: str) -> RoleNames:
        base = role_base(database)
        return cls(owner=f"{base}_owner", service=f"{base}_authenticator", caller=f"{base}_caller")


# ─── checking the service's login


# Everything is read from the catalogs, which any login may read: the check needs no
# privilege, and runs before the login is trusted with anything.
_SERVICE_FACTS = text(
    """
    SELECT r.rolname AS login, r.rolsuper AS superuser, r.rolbypassrls AS bypassrls,
           r.rolcreaterole AS createrole,
           d.datdba = r.oid AS owns_database,
           EXISTS (SELECT FROM pg_class c WHERE c.relowner = r.oid
                   AND c.relnamespace = current_schema()::regnamespace) AS owns_tables,
           EXISTS (SELECT FROM pg_proc p WHERE p.proowner = r.oid
                   AND p.pronamespace = current_schema()::regnamespace) AS owns_functions,
           has_schema_privilege(r.oid, current_schema(), 'CREATE')
               OR has_database_privilege(r.oid, current_database(), 'CREATE') AS may_create,
           has_database_privilege('public', current_database(), 'CONNECT') AS public_connect,
           has_database_privilege(r.oid, current_database(), 'TEMPORARY') AS may_temp,
           to_regprocedure('taskmanager_caller_role()') IS NOT NULL AS migrated,
           ARRAY(SELECT g.rolname FROM pg_roles g
                 WHERE g.oid <> r.oid AND pg_has_role(r.oid, g.oid, 'MEMBER')
                 ORDER BY g.rolname) AS reachable
    FROM pg_roles r, pg_database d
    WHERE r.rolname = session_user AND d.datname = current_database()
    """
)
_CALLER_ROLE = text("SELECT taskmanager_caller_role()")
# Once migrated: the caller role, which every request runs as, and what it may do beyond
# the policies (NULLs when it does not exist); whether the login inherits its privileges;
# the revision the database is at.
_CALLER_FACTS = text(
    """
    SELECT c.caller, r.oid IS NOT NULL AS caller_exists,
           r.rolsuper OR r.rolbypassrls OR r.rolcreaterole OR r.rolcanlogin AS powerful,
           has_database_privilege(r.oid, current_database(), 'CREATE')
               OR has_schema_privilege(r.oid, current_schema(), 'CREATE') AS may_create,
           EXISTS (SELECT FROM pg_class t WHERE t.relowner = r.oid
                   AND t.relnamespace = current_schema()::regnamespace) AS owns_tables,
           has_database_privilege(r.oid, current_database(), 'TEMPORARY') AS may_temp,
           pg_has_role(session_user, r.oid, 'USAGE') AS inherited,
           (SELECT version_num FROM alembic_version) AS revision
    FROM (SELECT taskmanager_caller_role() AS caller) c
    LEFT JOIN pg_roles r ON r.rolname = c.caller
    """
)
_ENTER = text(
    "SELECT e.caller_role, set_config('role', e.caller_role, true) AS role "
    "FROM taskmanager_enter(:user_id, :session_id, :purpose, :valid_until, :proof) e"
)


def check_service(url: str, key: CallerKey) -> str:
    """check_service_login on a connection of its own to `url` (blocking: for commands)."""
    from taskmanager.database import run_on_one_connection

    return run_on_one_connection(url, lambda connection: check_service_login(connection, key))


async def check_service_login_when_reachable(engine: AsyncEngine, key: CallerKey) -> None:
    """check_service_login at start-up; a database that cannot be connected to now is not
    an error (the service answers 503 until it is back), a login that is not safe is."""
    connection = engine.connect()
    try:
        await connection.start()
    except (OSError, TimeoutError, DBAPIError):
        log.warning("the service's login could not be checked: the database is not reachable")
        return
    try:
        await check_service_login(connection, key)
    finally:
        await connection.close()


async def check_service_login(connection: AsyncConnection, key: CallerKey) -> str:
    """Raise DeploymentError naming everything that makes this connection's login unsafe
    or unusable for requests; else return the caller role's name. Runs in a transaction
    of its own, rolled back (it enters once, to check the key)."""
    facts = (await connection.execute(_SERVICE_FACTS)).one()
    login = facts.login
    if not facts.migrated:
        await connection.rollback()
        raise DeploymentError(
            f'the database has not been migrated for this version (the service logs in as "'
            f'{login}"): run `taskmanager db upgrade` with OWNER_DATABASE_URL set'
        )
    role = (await connection.execute(_CALLER_FACTS)).one()
    caller = str(role.caller)
    problems = []
    if facts.superuser:
        problems.append("it is a superuser")
    if facts.bypassrls:
        problems.append("it has BYPASSRLS")
    if facts.createrole:
        problems.append("it may create roles (CREATEROLE)")
    if facts.owns_database or facts.owns_tables or facts.owns_functions:
        problems.append(
            "it owns the database or its tables (migrate as the owner; serve as a login "
            "that owns nothing)"
        )
    if facts.may_create:
        problems.append("it may create objects (a schema, or in the schema)")
    if not role.caller_exists:
        problems.append(f'the caller role "{caller}" does not exist')
    elif role.powerful or role.may_create or role.owns_tables:
        problems.append(
            f'the caller role "{caller}" may do more than the policies let it (LOGIN, '
            "SUPERUSER, BYPASSRLS, CREATEROLE, CREATE on the database or schema, or owning "
            "a table)"
        )
    reachable = [name for name in facts.reachable if name != caller]
    if caller not in facts.reachable:
        problems.append(
            f'it is not a member of the caller role "{caller}" '
            f"(GRANT {quoted(caller)} TO {quoted(login)})"
        )
    elif role.inherited:
        problems.append(
            f'it inherits the privileges of "{caller}" (ALTER ROLE {quoted(login)} '
            "NOINHERIT, or grant the role WITH INHERIT FALSE)"
        )
    if reachable:
        problems.append(f"it may act as other roles: {', '.join(reachable)}")
    if facts.public_connect:
        problems.append(
            "any login of the cluster may connect to this database (REVOKE CONNECT "
            "ON DATABASE ... FROM PUBLIC: `taskmanager db upgrade` does it)"
        )
    if facts.may_temp or role.may_temp:
        problems.append(
            "it may create temporary tables (REVOKE TEMPORARY ON DATABASE ... FROM "
            "PUBLIC: `taskmanager db upgrade` does it)"
        )
    if problems:
        await connection.rollback()
        raise DeploymentError(
            f'the service\'s login "{login}" (DATABASE_URL) cannot serve requests: '
            + "; ".join(problems)
            + f"; {SEE_README}"
        )
    await _check_key(connection, key, login)
    await connection.rollback()
    if role.revision != SCHEMA_REVISION:
        raise DeploymentError(
            f"the database is at revision {role.revision}, this version needs "
            f"{SCHEMA_REVISION}: run `taskmanager db upgrade` with OWNER_DATABASE_URL set"
        )
    return caller


async def _check_key(connection: AsyncConnection, key: CallerKey, login: str) -> None:
    entry = key.entry("maintenance")
    try:
        await connection.execute(
            _ENTER,
            {
                "user_id": None,
                "session_id": None,
                "purpose": entry.purpose,
                "valid_until": entry.valid_until,
                "proof": entry.proof,
            },
        )
    except DBAPIError as exc:
        await connection.rollback()
        if "proof" not in str(exc.orig):
            raise
        raise DeploymentError(
            f'the database does not know this service\'s key (logged in as "{login}"): the '
            "signing key (TASKMANAGER_JWT_SECRET, or the generated key file) differs from the "
            "one `taskmanager db upgrade` installed; run it again with this service's "
            "settings (OWNER_DATABASE_URL set), or check the database clock if it is off by "
            "minutes"
        ) from None


# ─── checking the owner's login, before the migrations


_OWNER_BEFORE = text(
    """
    SELECT current_user AS owner, current_database() AS database, current_schema() AS schema,
           r.rolsuper AS superuser, r.rolcreaterole AS createrole,
           r.rolsuper OR d.datdba = r.oid AS owns_database,
           has_database_privilege('public', current_database(), 'CONNECT')
               OR has_database_privilege('public', current_database(), 'TEMPORARY')
               AS public_may_connect,
           current_setting('server_version_num')::integer AS version,
           to_regprocedure('taskmanager_caller_role()') IS NOT NULL AS migrated
    FROM pg_roles r, pg_database d
    WHERE r.rolname = current_user AND d.datname = current_database()
    """
)
_ROLE_EXISTS = text("SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = :name)")
_GRANTED = text(
    "SELECT pg_has_role(CAST(:service AS name), CAST(:caller AS name), 'MEMBER') AS member, "
    "pg_has_role(current_user, CAST(:caller AS name), 'MEMBER WITH ADMIN OPTION') AS admin"
)


async def check_owner_login(owner: AsyncConnection, service_login: str) -> None:
    """Before migrating: raise DeploymentError naming, in one line, everything a superuser
    must do first for this owner and service login (so that no migration starts that
    could not finish), or return."""
    facts = (await owner.execute(_OWNER_BEFORE)).one()
    if facts.migrated:  # named once, by migration 0008 (a renamed database keeps it)
        caller = str((await owner.execute(_CALLER_ROLE)).scalar_one())
    else:
        caller = caller_role_name(facts.database, facts.schema)
    if service_login == facts.owner:
        raise DeploymentError(
            f'DATABASE_URL and OWNER_DATABASE_URL both log in as "{service_login}": requests '
            "must run as a login that owns nothing; create one and set DATABASE_URL to it "
            f"({SEE_README})"
        )
    needed = []
    service_exists = (await owner.execute(_ROLE_EXISTS, {"name": service_login})).scalar_one()
    if not service_exists:
        needed.append(f"CREATE ROLE {quoted(service_login)} LOGIN NOINHERIT PASSWORD '...'")
    # PostgreSQL 15 lets CREATEROLE grant any role; 16 and later, the roles one administers
    # (those one created, among others).
    may_grant_any = facts.superuser or (facts.createrole and facts.version < 160000)
    if not (await owner.execute(_ROLE_EXISTS, {"name": caller})).scalar_one():
        if not (facts.superuser or facts.createrole):
            needed.append(f"CREATE ROLE {quoted(caller)} NOLOGIN")
            needed.append(f"GRANT {quoted(caller)} TO {quoted(service_login)}")
        elif not service_exists:
            needed.append(f"GRANT {quoted(caller)} TO {quoted(service_login)} (after migrating)")
    elif service_exists:
        granted = (
            await owner.execute(_GRANTED, {"service": service_login, "caller": caller})
        ).one()
        if not granted.member and not (granted.admin or may_grant_any):
            needed.append(f"GRANT {quoted(caller)} TO {quoted(service_login)}")
    if facts.public_may_connect and not facts.owns_database:
        needed.append(
            f"REVOKE CONNECT, TEMPORARY ON DATABASE {quoted(facts.database)} FROM PUBLIC; "
            f"GRANT CONNECT ON DATABASE {quoted(facts.database)} TO {quoted(service_login)}"
        )
    if needed:
        raise DeploymentError(
            f'"{facts.owner}" cannot set up this deployment on its own: as a superuser run '
            + "; ".join(needed)
            + f"; then run `taskmanager db upgrade` again ({SEE_README})"
        )


# ─── preparing a deployment, as the owner, after the migrations


_OWNER_FACTS = text(
    """
    SELECT current_user AS owner, current_database() AS database,
           taskmanager_caller_role() AS caller,
           has_database_privilege('public', current_database(), 'CONNECT') AS public_connect,
           has_database_privilege('public', current_database(), 'TEMPORARY') AS public_temp
    """
)
_SERVICE_ROLE = text(
    "SELECT oid, pg_has_role(oid, CAST(:caller AS name), 'MEMBER') AS member, "
    "has_database_privilege(oid, current_database(), 'CONNECT') AS may_connect "
    "FROM pg_roles WHERE rolname = :login"
)


async def prepare_deployment(owner: AsyncConnection, service_login: str, key: CallerKey) -> None:
    """After migrating, as the owner: install the caller key, make `service_login` a member
    of the caller role if it is not, and keep every other login out of the database (no
    CONNECT, no TEMPORARY for PUBLIC; CONNECT for the service login). Idempotent. Raises
    DeploymentError saying what a superuser must run where the owner may not do it."""
    facts = (await owner.execute(_OWNER_FACTS)).one()
    if service_login == facts.owner:
        raise DeploymentError(
            f'DATABASE_URL logs in as "{service_login}", the owner of the tables: requests must '
            "run as a login that owns nothing; create one and set DATABASE_URL to it "
            f"({SEE_README})"
        )
    service = (
        await owner.execute(_SERVICE_ROLE, {"login": service_login, "caller": facts.caller})
    ).one_or_none()
    if service is None:
        raise DeploymentError(
            f'there is no login "{service_login}" (the user of DATABASE_URL): as a superuser '
            f"run CREATE ROLE {quoted(service_login)} LOGIN NOINHERIT PASSWORD '...'; GRANT "
            f"{quoted(facts.caller)} TO {quoted(service_login)} ({SEE_README})"
        )
    await install_caller_key(owner, key)
    database = facts.database
    needed = []
    if not service.member:
        needed.append(f"GRANT {quoted(facts.caller)} TO {quoted(service_login)}")
    if facts.public_connect or facts.public_temp:
        needed.append(f"REVOKE CONNECT, TEMPORARY ON DATABASE {quoted(database)} FROM PUBLIC")
    if not service.may_connect or facts.public_connect:
        needed.append(f"GRANT CONNECT ON DATABASE {quoted(database)} TO {quoted(service_login)}")
    failed = []
    for statement in needed:
        try:
            async with owner.begin_nested():
                await owner.exec_driver_sql(statement)
        except DBAPIError:
            failed.append(statement)
    if failed:
        raise DeploymentError(
            f'"{facts.owner}" may not do what the service needs here: as a superuser run '
            + "; ".join(failed)
            + f"; then run `taskmanager db upgrade` again ({SEE_README})"
        )


_INSTALL = text(
    """
    INSERT INTO caller_key (inner_pad, outer_pad) VALUES (:inner_pad, :outer_pad)
    ON CONFLICT (singleton) DO UPDATE
    SET inner_pad = excluded.inner_pad, outer_pad = excluded.outer_pad, installed_at = now()
    WHERE (caller_key.inner_pad, caller_key.outer_pad)
          IS DISTINCT FROM (excluded.inner_pad, excluded.outer_pad)
    """
)


async def install_caller_key(owner: AsyncConnection, key: CallerKey) -> None:
    """Store `key` in the database (as the tables' owner; a no-op if it is there already)."""
    inner_pad, outer_pad = key.pads()
    await owner.execute(_INSTALL, {"inner_pad": inner_pad, "outer_pad": outer_pad})
