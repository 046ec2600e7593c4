"""Deployments as they run: a PostgreSQL cluster reached over TCP with passwords, two
deployments in it (staging and production, each with its own owner, service login and
caller role), set up the way docs/security.md says, with `taskmanager db upgrade`.

- Both migrate and serve, whichever way their caller role came to be: made by a superuser
  beforehand (production, whose owner may not create roles), or by the migration
  (staging, whose owner may).
- Neither's logins reach the other's database or role; neither's key enters the other.
- What is missing is said in one line, before any migration runs: a caller role nobody can
  make, no OWNER_DATABASE_URL, one login for both; and `serve` refuses a login that owns
  the tables or a database that does not know its key.

Run on the embedded server's PostgreSQL and, where installed, on Debian's PostgreSQL 15
(whose CREATEROLE differs: it may grant any role).
"""

from __future__ import annotations

import asyncio
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from taskmanager.postgres.deployment import (
    SCHEMA_REVISION,
    DeploymentError,
    check_service,
    quoted,
)
from taskmanager.postgres.migrate import current, heads
from taskmanager.security.caller_key import CallerKey
from tests.support.accounts import register_and_login
from tests.support.clusters import Cluster, Deployment, debian_postgres_15, tcp_cluster
from tests.support.live_app import live_client
from tests.support.processes import clean_env, free_port

pytestmark = pytest.mark.server

TIMEOUT = 90
SERVERS = {
    "embedded": None,
    "debian-15": debian_postgres_15(),
}


@pytest.fixture(scope="module", params=list(SERVERS))
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    if request.param == "debian-15" and SERVERS["debian-15"] is None:
        pytest.skip(
            "Debian's PostgreSQL 15 is not installed (package postgresql-15; "
            "scripts/install-system-deps.sh installs it)"
        )
    with tcp_cluster(SERVERS[request.param]) as server:
        yield server


@pytest.fixture(scope="module")
def production(cluster: Cluster) -> Deployment:
    """Roles made by a superuser beforehand; the owner may not create roles."""
    deployment = cluster.deployment("production")
    migrated = taskmanager(["db", "upgrade"], deployment.env())
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    return deployment


@pytest.fixture(scope="module")
def staging(cluster: Cluster, production: Deployment) -> Deployment:
    """In the same cluster, after production; its owner may create roles and the
    migration makes its caller role."""
    deployment = cluster.deployment("staging", owner_may_create_roles=True, caller_role=False)
    migrated = taskmanager(["db", "upgrade"], deployment.env())
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    return deployment


def taskmanager(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "taskmanager", *args],
        env=clean_env(**env),
        cwd=Path(__file__).parent,  # not the project root: no .env
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def one_line(result: subprocess.CompletedProcess[str], *expected: str) -> str:
    """A failure said in one line (no traceback) containing `expected`."""
    output = (result.stdout + result.stderr).strip()
    assert result.returncode != 0, output
    assert "Traceback" not in output, output
    assert len(output.splitlines()) == 1, output
    for part in expected:
        assert part in output, output
    return output


async def _register_and_add_a_task(deployment: Deployment, email: str) -> int:
    async with live_client(deployment.service_url, jwt_secret=deployment.secret) as client:
        headers = await register_and_login(client, email)
        created = await client.post("/tasks", json={"title": f"{email}'s"}, headers=headers)
        assert created.status_code == 201, created.text
        listed = await client.get("/tasks", headers=headers)
        assert [task["title"] for task in listed.json()] == [f"{email}'s"]
        return int(created.json()["id"])


def _connect(url: str, sql: str = "SELECT 1") -> list[Any]:
    async def run() -> list[Any]:
        engine = create_async_engine(url, poolclass=NullPool)
        try:
            async with engine.connect() as connection:
                return list((await connection.execute(text(sql))).all())
        finally:
            await engine.dispose()

    return asyncio.run(run())


def _to(url: str, database: str) -> str:
    return make_url(url).set(database=database).render_as_string(hide_password=False)


def test_two_deployments_migrated_by_two_owners_both_work(
    production: Deployment, staging: Deployment
) -> None:
    for deployment in (production, staging):
        (head,) = heads()
        assert current(deployment.owner_url) == head
        email = f"someone@{deployment.database}.example.com"
        asyncio.run(_register_and_add_a_task(deployment, email))


@pytest.mark.parametrize("login", ["service", "owner"])
def test_no_login_of_one_deployment_connects_to_the_other(
    production: Deployment, staging: Deployment, login: str
) -> None:
    for mine, theirs in ((staging, production), (production, staging)):
        own = mine.service_url if login == "service" else mine.owner_url
        assert _connect(own) == [(1,)]  # the control: its own database
        with pytest.raises(DBAPIError, match="permission denied for database"):
            _connect(_to(own, theirs.database))


def test_no_login_of_one_deployment_takes_the_others_role_or_key(
    production: Deployment, staging: Deployment
) -> None:
    for mine, theirs in ((staging, production), (production, staging)):
        with pytest.raises(DBAPIError, match="permission denied to set role"):
            _connect(mine.service_url, f"SET ROLE {theirs.database}_caller")
        their_key = CallerKey(theirs.secret).entry("maintenance")
        with pytest.raises(DBAPIError, match="proof is not valid"):
            _connect(
                mine.service_url,
                f"SELECT * FROM taskmanager_enter(NULL, NULL, 'maintenance', "
                f"{their_key.valid_until}, '{their_key.proof}')",
            )


def test_a_caller_role_nobody_may_make_is_one_line_and_nothing_is_migrated(
    cluster: Cluster,
) -> None:
    lacking = cluster.deployment("lacking", caller_role=False)
    result = taskmanager(["db", "upgrade"], lacking.env())
    one_line(
        result,
        'as a superuser run CREATE ROLE "lacking_caller" NOLOGIN',
        'GRANT "lacking_caller" TO "lacking_authenticator"',
    )
    assert current(lacking.owner_url) is None  # not one migration ran


def test_a_service_login_named_with_a_quote_and_a_colon_is_granted_its_role(
    cluster: Cluster,
) -> None:
    """`db upgrade` grants the caller role to the service's login as it is named: a double
    quote and a colon in the name are the name's, not SQL's."""
    odd = cluster.deployment("oddname", owner_may_create_roles=True, caller_role=False)
    login = 'odd"name:x'
    password = secrets.token_urlsafe(18)
    cluster.admin(f"CREATE ROLE {quoted(login)} LOGIN NOINHERIT PASSWORD '{password}'")
    service_url = (
        make_url(odd.service_url)
        .set(username=login, password=password)
        .render_as_string(hide_password=False)
    )
    result = taskmanager(["db", "upgrade"], odd.env() | {"DATABASE_URL": service_url})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "requests run as the caller role oddname_caller" in result.stderr, result.stderr
    assert _connect(service_url, "SELECT pg_has_role('oddname_caller', 'MEMBER')") == [(True,)]


def test_migrating_needs_the_owners_login_said_in_one_line(production: Deployment) -> None:
    env = production.env()
    del env["OWNER_DATABASE_URL"]
    one_line(taskmanager(["db", "upgrade"], env), "OWNER_DATABASE_URL")
    env = production.env() | {"DATABASE_URL": production.owner_url}
    one_line(taskmanager(["db", "upgrade"], env), "both log in as", "production_owner")


def test_serve_refuses_a_login_that_owns_the_tables(production: Deployment) -> None:
    env = {"DATABASE_URL": production.owner_url, "TASKMANAGER_JWT_SECRET": production.secret}
    result = taskmanager(["serve", "--port", str(free_port())], env)
    one_line(result, '"production_owner"', "owns the database or its tables")


def test_serve_refuses_a_database_that_does_not_know_its_key(production: Deployment) -> None:
    env = {
        "DATABASE_URL": production.service_url,
        "TASKMANAGER_JWT_SECRET": "another-signing-key-that-is-long-enough-0123",
    }
    result = taskmanager(["serve", "--port", str(free_port())], env)
    one_line(result, "does not know this service's key")


@pytest.mark.parametrize(
    ("grant", "undo"),
    [
        ("ALTER ROLE production_caller BYPASSRLS", "ALTER ROLE production_caller NOBYPASSRLS"),
        (
            "GRANT CREATE ON DATABASE production TO production_caller",
            "REVOKE CREATE ON DATABASE production FROM production_caller",
        ),
    ],
    ids=["bypassrls", "create-on-database"],
)
def test_serve_refuses_a_caller_role_that_may_step_around_the_policies(
    cluster: Cluster, production: Deployment, grant: str, undo: str
) -> None:
    """What every request runs as may not bypass the policies nor create a schema to
    shadow the app's tables (a superuser's mistake, caught at start-up)."""
    cluster.admin(grant)
    try:
        env = {"DATABASE_URL": production.service_url, "TASKMANAGER_JWT_SECRET": production.secret}
        result = taskmanager(["serve", "--port", str(free_port())], env)
        one_line(result, 'the caller role "production_caller" may do more than the policies')
    finally:
        cluster.admin(undo)


def _inherit(value: bool) -> str:
    """The service login of production inheriting the caller role's privileges, or not: a
    grant's own option from PostgreSQL 16, the login's attribute before."""
    grant = f"GRANT production_caller TO production_authenticator WITH INHERIT {value}"
    role = f"ALTER ROLE production_authenticator {'INHERIT' if value else 'NOINHERIT'}"
    return (
        "DO $$ BEGIN IF current_setting('server_version_num')::integer >= 160000 "
        f"THEN EXECUTE '{grant}'; ELSE EXECUTE '{role}'; END IF; END $$"
    )


@pytest.mark.parametrize(
    ("change", "undo", "refusal"),
    [
        (_inherit(True), _inherit(False), 'it inherits the privileges of "production_caller"'),
        (
            "GRANT TEMPORARY ON DATABASE production TO production_caller",
            "REVOKE TEMPORARY ON DATABASE production FROM production_caller",
            "it may create temporary tables",
        ),
        (
            "UPDATE alembic_version SET version_num = '0008'",
            f"UPDATE alembic_version SET version_num = '{SCHEMA_REVISION}'",
            f"the database is at revision 0008, this version needs {SCHEMA_REVISION}",
        ),
    ],
    ids=["inherits", "caller-temporary", "revision"],
)
def test_the_service_check_names_what_is_wrong(
    cluster: Cluster, production: Deployment, change: str, undo: str, refusal: str
) -> None:
    key = CallerKey(production.secret)
    assert check_service(production.service_url, key) == "production_caller"  # the control
    cluster.admin(change, database="production")
    try:
        with pytest.raises(DeploymentError, match=re.escape(refusal)):
            check_service(production.service_url, key)
    finally:
        cluster.admin(undo, database="production")


def test_downgrading_below_0008_gives_the_owner_back_the_role_deployments_used_to_share(
    cluster: Cluster,
) -> None:
    """Before 0008 requests ran as the cluster's one request role, on the owner's connection.
    Upgrading takes the owner out of it where the owner may (PostgreSQL 15's CREATEROLE may;
    from 16 only a superuser, and the owner stays a member); downgrading to 0007 gives the
    membership back, so 0007's code runs again."""
    legacy = cluster.deployment("legacy", owner_may_create_roles=True, caller_role=False)
    cluster.admin(
        "CREATE ROLE taskmanager_request NOLOGIN NOINHERIT",
        "GRANT taskmanager_request TO legacy_owner",
    )
    member = "SELECT pg_has_role('legacy_owner', 'taskmanager_request', 'MEMBER')"
    try:
        upgraded = taskmanager(["db", "upgrade"], legacy.env())
        assert upgraded.returncode == 0, upgraded.stdout + upgraded.stderr
        (version,) = _connect(legacy.superuser_url, "SHOW server_version_num")[0]
        if int(version) < 160000:
            assert _connect(legacy.superuser_url, member) == [(False,)]  # the control

        downgraded = taskmanager(["db", "downgrade", "0007"], legacy.env())
        assert downgraded.returncode == 0, downgraded.stdout + downgraded.stderr

        assert _connect(legacy.superuser_url, member) == [(True,)]
    finally:
        cluster.admin("DROP OWNED BY taskmanager_request", database="legacy")
        cluster.admin("DROP ROLE taskmanager_request")
