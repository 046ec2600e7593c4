"""SQL running in a request, as an attacker would send it: it finds no foreign row.

Each test connects as the service's own login (what the app connects as), enters a
transaction exactly as a request does (as the attacker, with the service's proof), and
then runs what injected SQL could run: RESET ROLE, SET ROLE, set_config of the role and of
the caller, replays of a sealed caller, forged proofs for taskmanager_enter, every
SECURITY DEFINER function under a forged caller, temporary tables and functions that would
shadow the app's. The victim's rows, workspaces and password hash never come back; most of
these are refused outright (42501).

Migration 0008 and taskmanager/security/caller_key.py say how it holds; docs/security.md,
"What holds", what.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
from httpx import ASGITransport, AsyncClient
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.pool import NullPool

from taskmanager.config import Settings
from taskmanager.integrations.webhook_events import EVENT_TYPES
from taskmanager.main import create_app
from taskmanager.postgres.deployment import RoleNames, caller_role_name
from taskmanager.repositories.user_repository import UserRepository
from taskmanager.security.caller_key import VOUCHED_SUBJECT, Entry, Purpose, attempt_subject
from taskmanager.security.feed_secrets import feed_secret_hash
from taskmanager.security.mail_tokens import MailTokenKey, mail_token_hash
from taskmanager.security.tokens import read_access_token
from tests.support.accounts import TEST_SECRET, register_and_login
from tests.support.databases import TEST_KEY, database_of, run_as, superuser_url
from tests.support.live_app import live_client
from tests.support.row_level_security import INSUFFICIENT_PRIVILEGE, sqlstate

VICTIM = "victim@example.com"
ATTACKER = "attacker@example.com"
VICTIM_TITLE = "the victim's secret plan"
CHECK_VIOLATION = "23514"
UNDEFINED_FUNCTION = "42883"
PROGRAM_LIMIT_EXCEEDED = "54000"
NOT_IN_PREREQUISITE_STATE = "55000"
FAR = 4_102_444_800  # 2100-01-01: a valid_until no proof is needed for the test to reach


@dataclass(frozen=True)
class Person:
    user_id: int
    session_id: uuid.UUID
    email: str
    workspace_id: int
    task_id: int
    headers: dict[str, str]

    def entry(self, purpose: Purpose = "request") -> Entry:
        session_id = self.session_id if purpose == "request" else None
        valid_until = int(time.time()) + 600 if purpose == "request" else None
        return TEST_KEY.entry(purpose, self.user_id, session_id, valid_until=valid_until)


@dataclass(frozen=True)
class Tenants:
    url: str  # the service's login
    victim: Person
    attacker: Person


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def tenants(own_database_url: str) -> Tenants:
    """Two accounts registered through the API on this module's own database, each with a
    task, a category and a label (committed)."""
    people = {}
    async with live_client(own_database_url) as client:
        for email in (VICTIM, ATTACKER):
            headers = await register_and_login(client, email)
            claims = read_access_token(TEST_SECRET, headers["Authorization"].split()[1])
            me = (await client.get("/users/me", headers=headers)).json()
            title = VICTIM_TITLE if email == VICTIM else "the attacker's own task"
            task = await client.post("/tasks", json={"title": title}, headers=headers)
            assert task.status_code == 201, task.text
            for path in ("/categories", "/labels"):
                created = await client.post(path, json={"name": f"{email}'s"}, headers=headers)
                assert created.status_code == 201, created.text
            subscribed = await client.post(
                f"/workspaces/{me['personal_workspace_id']}/calendars",
                json={"url": f"https://calendar.example.com/{email}.ics", "name": f"{email}'s"},
                headers=headers,
            )
            assert subscribed.status_code == 201, subscribed.text
            people[email] = Person(
                claims.user_id,
                claims.session_id,
                email,
                me["personal_workspace_id"],
                task.json()["id"],
                headers,
            )
    return Tenants(own_database_url, people[VICTIM], people[ATTACKER])


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def service(tenants: Tenants) -> AsyncIterator[AsyncEngine]:
    """Connections as the service's login, as the app makes them."""
    engine = create_async_engine(tenants.url, pool_size=2)
    yield engine
    await engine.dispose()


async def enter(connection: AsyncConnection, entry: Entry) -> None:
    """The first statement of every request's transaction (UserRepository.enter)."""
    session = AsyncSession(bind=connection)
    assert await UserRepository(session).enter(entry) is not None


async def attempt(connection: AsyncConnection, sql: str, **params: Any) -> list[Any]:
    """Run `sql` in a savepoint: its rows, or the error PostgreSQL raised (rolled back)."""
    try:
        async with connection.begin_nested():
            result = await connection.execute(text(sql), params)
            return list(result.all()) if result.returns_rows else []
    except DBAPIError as error:
        return [error]


def refused(outcome: list[Any]) -> bool:
    """PostgreSQL refused it for lack of privilege (42501)."""
    return (
        len(outcome) == 1
        and isinstance(outcome[0], DBAPIError)
        and sqlstate(outcome[0]) == INSUFFICIENT_PRIVILEGE
    )


def nothing_of(victim: Person, outcome: Iterable[Any]) -> bool:
    """No returned row is the victim's: none holds a text of theirs (their email, task
    title, any password hash), and none names them by an id, in a column labelled with
    what the id is (task_id, workspace_id, user_id, session_id; see TENANT_READS)."""
    theirs = {
        "task_id": victim.task_id,
        "workspace_id": victim.workspace_id,
        "user_id": victim.user_id,
        "session_id": victim.session_id,
    }
    for row in outcome:
        if isinstance(row, DBAPIError):
            continue
        for value in row:
            shown = str(value)
            if victim.email in shown or VICTIM_TITLE in shown or "$argon2" in shown:
                return False
        labelled = row._mapping
        if any(labelled.get(column) == value for column, value in theirs.items()):
            return False
    return True


# Each tenant table read in full, its ids labelled with what they are (for nothing_of):
# the rows of workspaces, memberships and login sessions hold only ids and names every
# personal workspace shares.
TENANT_READS = {
    "tasks": "SELECT id AS task_id, title, workspace_id FROM tasks",
    "categories": "SELECT id, name, workspace_id FROM categories",
    "labels": "SELECT id, name, workspace_id FROM labels",
    "workspaces": "SELECT id AS workspace_id, name, created_by AS user_id FROM workspaces",
    "memberships": "SELECT workspace_id, user_id FROM memberships",
    "users": "SELECT id AS user_id, email FROM users",
    "auth_sessions": "SELECT id AS session_id, user_id FROM auth_sessions",
    "login_failures": "SELECT key FROM login_failures",
    "calendar_subscriptions": (
        "SELECT id, url, name, workspace_id, created_by AS user_id FROM calendar_subscriptions"
    ),
}


async def reads(connection: AsyncConnection) -> list[Any]:
    """Every tenant table read in full, each in a savepoint (errors as outcomes)."""
    found: list[Any] = []
    for sql in TENANT_READS.values():
        found += await attempt(connection, sql)
    return found


# ─────────────────────────────── the control


async def test_the_control_entered_as_the_victim_the_same_reads_find_their_rows(
    service: AsyncEngine, tenants: Tenants
) -> None:
    """The reads below are not vacuous: as the victim, each read of a table the victim has
    rows in returns rows that nothing_of knows for the victim's."""
    async with service.connect() as connection, connection.begin():
        await enter(connection, tenants.victim.entry())
        for table, sql in TENANT_READS.items():
            if table != "login_failures":  # the victim never failed to log in
                assert not nothing_of(tenants.victim, await attempt(connection, sql)), table
        hashes = await attempt(
            connection,
            "SELECT password_hash FROM taskmanager_password_hash(:email, :until, :proof)",
            email=VICTIM,
            until=(proof := TEST_KEY.password_hash_proof(VICTIM))[0],
            proof=proof[1],
        )
        assert str(hashes[0][0]).startswith("$argon2")  # with the service's proof only
        await connection.rollback()


# ─────────────────────────────── leaving the caller role


ROLE_ESCAPES = {
    "RESET ROLE": "RESET ROLE",
    "SET ROLE NONE": "SET ROLE NONE",
    "set_config('role', 'none')": "SELECT set_config('role', 'none', true)",
    "SET SESSION AUTHORIZATION DEFAULT": "SET SESSION AUTHORIZATION DEFAULT",
    "RESET ALL": "RESET ALL",
}


@pytest.mark.parametrize("escape", ROLE_ESCAPES)
async def test_leaving_the_caller_role_leads_to_a_login_with_no_privilege(
    service: AsyncEngine, tenants: Tenants, escape: str
) -> None:
    async with service.connect() as connection, connection.begin():
        await enter(connection, tenants.attacker.entry())
        await attempt(connection, ROLE_ESCAPES[escape])
        current, session = (
            await connection.execute(text("SELECT current_user, session_user"))
        ).one()
        service_login = RoleNames.of(database_of(tenants.url)).service
        assert session == service_login
        found = await reads(connection)
        assert nothing_of(tenants.victim, found), found
        if current == service_login:  # out of the caller role: no privilege at all
            assert all(refused([outcome]) for outcome in found), found
        else:  # RESET ALL keeps the role, and drops the caller: nobody's rows
            assert current == caller_role_name(database_of(tenants.url))
            assert [row for row in found if not isinstance(row, DBAPIError)] == []
        await connection.rollback()


@pytest.mark.parametrize(
    "target", ["owner", "postgres", "another deployment's caller", "pg_read_all_data"]
)
async def test_no_role_reaches_the_owner_or_another_deployment(
    service: AsyncEngine, tenants: Tenants, target: str
) -> None:
    database = database_of(tenants.url)
    role = {
        "owner": RoleNames.of(database).owner,
        "postgres": "postgres",
        # The session's own test database: another deployment on this cluster.
        "another deployment's caller": caller_role_name("taskmanager_test"),
        "pg_read_all_data": "pg_read_all_data",
    }[target]
    async with service.connect() as connection, connection.begin():
        await enter(connection, tenants.attacker.entry())
        for sql in (
            f'SET ROLE "{role}"',
            f"SELECT set_config('role', '{role}', true)",
            f'SET SESSION AUTHORIZATION "{role}"',
        ):
            assert refused(await attempt(connection, sql)), sql
        await attempt(connection, "RESET ROLE")
        for sql in (f'SET ROLE "{role}"', f"SELECT set_config('role', '{role}', false)"):
            assert refused(await attempt(connection, sql)), sql
        await connection.rollback()


# ─────────────────────────────── forging the caller


async def test_setting_the_caller_by_hand_is_refused(
    service: AsyncEngine, tenants: Tenants
) -> None:
    victim, attacker = tenants.victim, tenants.attacker
    async with service.connect() as connection, connection.begin():
        await enter(connection, attacker.entry())
        sealed = (
            await connection.execute(text("SELECT current_setting('taskmanager.caller')"))
        ).scalar_one()
        seal = sealed.rsplit("|", 1)[1]
        forgeries = [
            f"{victim.user_id}|{victim.session_id}|request||{seal}",  # the attacker's seal
            f"{victim.user_id}|{victim.session_id}|request|",
            f"{victim.user_id}||operator||{seal}",
            f"{victim.user_id}",  # what the setting held before 0008
            "||||",
        ]
        for forged in forgeries:
            await connection.execute(
                text("SELECT set_config('taskmanager.caller', :forged, true)"), {"forged": forged}
            )
            found = await reads(connection)
            assert all(refused([outcome]) for outcome in found), (forged, found)
        # The setting of before 0008 names nobody any more.
        await enter(connection, attacker.entry())
        await connection.execute(
            text("SELECT set_config('taskmanager.user_id', :victim, true)"),
            {"victim": str(victim.user_id)},
        )
        assert nothing_of(victim, await reads(connection))
        await connection.rollback()


async def test_a_sealed_caller_does_not_outlive_its_transaction(
    service: AsyncEngine, tenants: Tenants
) -> None:
    """The seal binds the backend and the transaction: the attacker's own sealed setting,
    kept from one transaction and set again in the next (entered or switched to the caller
    role by hand), verifies nowhere."""
    attacker = tenants.attacker
    async with service.connect() as connection:
        async with connection.begin():
            await enter(connection, attacker.entry())
            kept = (
                await connection.execute(text("SELECT current_setting('taskmanager.caller')"))
            ).scalar_one()
            await connection.commit()
        caller = caller_role_name(database_of(tenants.url))
        async with connection.begin():
            await connection.execute(text(f'SET LOCAL ROLE "{caller}"'))
            await connection.execute(
                text("SELECT set_config('taskmanager.caller', :kept, true)"), {"kept": kept}
            )
            found = await reads(connection)
            assert all(refused([outcome]) for outcome in found), found
            await connection.rollback()
        # Without any caller, the caller role sees nothing at all.
        async with connection.begin():
            await connection.execute(text(f'SET LOCAL ROLE "{caller}"'))
            found = await reads(connection)
            assert [row for row in found if not isinstance(row, DBAPIError)] == []
            await connection.rollback()


async def test_forged_proofs_do_not_enter(service: AsyncEngine, tenants: Tenants) -> None:
    victim, attacker = tenants.victim, tenants.attacker
    own = attacker.entry()
    until = int(time.time()) + 300
    forgeries = {
        "the attacker's proof, the victim's id": (victim.user_id, attacker.session_id, own),
        "the attacker's proof, the victim's session": (
            victim.user_id,
            victim.session_id,
            own,
        ),
        "a login proof, as an operator": (
            None,
            None,
            Entry(None, None, "operator", until, TEST_KEY.entry("login").proof),
        ),
        "a maintenance proof, with a user": (
            victim.user_id,
            None,
            Entry(None, None, "maintenance", until, TEST_KEY.entry("maintenance").proof),
        ),
        "a proof made with another key": (
            victim.user_id,
            victim.session_id,
            Entry(None, None, "request", own.valid_until, "0" * 64),
        ),
    }
    async with service.connect() as connection, connection.begin():
        for what, (user_id, session_id, entry) in forgeries.items():
            outcome = await attempt(
                connection,
                "SELECT * FROM taskmanager_enter(:user_id, :session_id, :purpose, :until, :proof)",
                user_id=user_id,
                session_id=session_id,
                purpose=entry.purpose,
                until=entry.valid_until,
                proof=entry.proof,
            )
            assert refused(outcome), (what, outcome)
        # A proof of the service's own that has expired is refused too; a request's
        # expired proof enters nobody.
        expired = TEST_KEY.entry("operator", victim.user_id, valid_until=int(time.time()) - 5)
        assert refused(await _enter_raw(connection, expired))
        gone = TEST_KEY.entry(
            "request", attacker.user_id, attacker.session_id, valid_until=int(time.time()) - 5
        )
        assert await _enter_raw(connection, gone) == []
        await connection.rollback()


async def _enter_raw(connection: AsyncConnection, entry: Entry) -> list[Any]:
    return await attempt(
        connection,
        "SELECT * FROM taskmanager_enter(:user_id, :session_id, :purpose, :until, :proof)",
        user_id=entry.user_id,
        session_id=entry.session_id,
        purpose=entry.purpose,
        until=entry.valid_until,
        proof=entry.proof,
    )


# ─────────────────────────────── every SECURITY DEFINER function


# Each SECURITY DEFINER function of the schema, called as the attacker could: a test below
# fails when one is added without being listed here.
DEFINER_CALLS = {
    "taskmanager_attempt_keys()": "SELECT taskmanager_attempt_keys()",
    "taskmanager_enter(integer,uuid,text,bigint,text,text)": (
        "SELECT * FROM taskmanager_enter(:victim, :session, 'request', :far, 'forged')"
    ),
    "taskmanager_caller()": "SELECT taskmanager_caller()",
    "taskmanager_user_id()": "SELECT taskmanager_user_id()",
    "taskmanager_purpose()": "SELECT taskmanager_purpose()",
    "taskmanager_workspace_ids()": "SELECT taskmanager_workspace_ids()",
    "taskmanager_owned_workspace_ids()": "SELECT taskmanager_owned_workspace_ids()",
    "taskmanager_workspace_ids_allowing(text)": (
        "SELECT taskmanager_workspace_ids_allowing('tasks:write')"
    ),
    "taskmanager_manageable_memberships()": (
        "SELECT split_part(m, ':', 1)::integer FROM unnest(taskmanager_manageable_memberships()) m"
    ),
    "taskmanager_workspace_roles()": (
        "SELECT key::integer FROM jsonb_each_text(taskmanager_workspace_roles())"
    ),
    "taskmanager_may_own_first(integer)": "SELECT taskmanager_may_own_first(:workspace)",
    "taskmanager_password_hash(text,bigint,text)": (
        "SELECT * FROM taskmanager_password_hash(:email, :far, 'forged')"
    ),
    "taskmanager_refresh_token_session(text)": (
        "SELECT s.* FROM refresh_tokens t, taskmanager_refresh_token_session(t.token_hash) s"
    ),
    # Invitations (migration 0014): the caller's own verified address; whether they are
    # invited somewhere; a workspace's member count for its invitee; their invitations; an
    # invitation with a token hash of the attacker's choosing; a resend of anyone's.
    "taskmanager_caller_verified_email()": "SELECT taskmanager_caller_verified_email()",
    "taskmanager_invited_as(integer,text)": "SELECT taskmanager_invited_as(:workspace, 'owner')",
    "taskmanager_invitee_member_count(integer)": (
        "SELECT taskmanager_invitee_member_count(:workspace)"
    ),
    "taskmanager_my_invitations()": "SELECT * FROM taskmanager_my_invitations()",
    "taskmanager_record_invitation(uuid,integer,text,text,text,integer,bigint,text)": (
        "SELECT taskmanager_record_invitation(gen_random_uuid(), :workspace, :email, 'owner', "
        "encode(sha256('chosen'), 'hex'), 3600, :far, 'forged')"
    ),
    "taskmanager_resend_invitation(uuid,bigint,text)": (
        "SELECT taskmanager_resend_invitation(gen_random_uuid(), :far, 'forged')"
    ),
    "taskmanager_matching_tasks(text[],tsquery)": (
        "SELECT * FROM taskmanager_matching_tasks(ARRAY['secret'], "
        "to_tsquery('simple', 'secret:*'))"
    ),
    "taskmanager_matches_at_least(text[],integer)": (
        "SELECT taskmanager_matches_at_least(ARRAY['secret'], 1)"
    ),
    "taskmanager_purge_activity(integer)": "SELECT taskmanager_purge_activity(1)",
    # Housekeeping (migrations 0012 and 0014): maintenance only.
    "taskmanager_purge_account_tokens()": "SELECT taskmanager_purge_account_tokens()",
    "taskmanager_purge_invitations(integer)": "SELECT taskmanager_purge_invitations(1)",
    # A trigger's (asyncpg cannot even describe a SELECT of it).
    "taskmanager_log_activity()": "DO $$ BEGIN PERFORM taskmanager_log_activity(); END $$",
    # A reset token of the attacker's choosing for the victim, and the victim's tokens.
    "taskmanager_record_mail(text,text,uuid,text,integer,bigint,text)": (
        "SELECT taskmanager_record_mail('password_reset', :email, gen_random_uuid(), "
        "encode(sha256('chosen'), 'hex'), 1800, :far, 'forged')"
    ),
    "taskmanager_verify_email(text)": (
        "SELECT taskmanager_verify_email(t.token_hash) FROM account_tokens t"
    ),
    "taskmanager_password_reset_valid(text)": (
        "SELECT taskmanager_password_reset_valid(encode(sha256('guessed'), 'hex'))"
    ),
    "taskmanager_reset_password(text,text)": (
        "SELECT taskmanager_reset_password(encode(sha256('guessed'), 'hex'), '$argon2id$mine')"
    ),
    "taskmanager_caller_token()": "SELECT taskmanager_caller_token()",
    "taskmanager_token_used()": "SELECT taskmanager_token_used()",
    "taskmanager_token_allows(text,boolean)": (
        "SELECT taskmanager_token_allows('tasks:write', false)"
    ),
    # Whether the registration is one the operator vouches for (0012); a trigger's (0013).
    "taskmanager_vouched()": "SELECT taskmanager_vouched()",
    "taskmanager_token_keeps_the_password()": (
        "DO $$ BEGIN PERFORM taskmanager_token_keeps_the_password(); END $$"
    ),
    # Webhooks (0015): a trigger's; a manager's (their own workspace's endpoints only);
    # the delivery worker's (maintenance only).
    "taskmanager_webhook_fan_out()": "DO $$ BEGIN PERFORM taskmanager_webhook_fan_out(); END $$",
    "taskmanager_rotate_webhook_secret(uuid,integer)": (
        "SELECT taskmanager_rotate_webhook_secret(gen_random_uuid(), 60)"
    ),
    "taskmanager_replay_webhook_delivery(uuid)": (
        "SELECT taskmanager_replay_webhook_delivery(gen_random_uuid())"
    ),
    "taskmanager_send_webhook_test(uuid)": (
        "SELECT taskmanager_send_webhook_test(gen_random_uuid())"
    ),
    "taskmanager_claim_webhook_deliveries(integer,double precision,integer)": (
        "SELECT * FROM taskmanager_claim_webhook_deliveries(10, 60, 8)"
    ),
    "taskmanager_disable_webhook_endpoint(uuid,text)": (
        "SELECT taskmanager_disable_webhook_endpoint(gen_random_uuid(), 'forged')"
    ),
}


async def test_every_security_definer_function_is_called_below(
    service: AsyncEngine,
) -> None:
    async with service.connect() as connection:
        listed = (
            await connection.execute(
                text(
                    "SELECT replace(p.oid::regprocedure::text, ' ', '') FROM pg_proc p "
                    "WHERE p.prosecdef AND p.pronamespace = current_schema()::regnamespace"
                )
            )
        ).scalars()
        assert set(listed) == {name.replace(" ", "") for name in DEFINER_CALLS}


@pytest.mark.parametrize("function", DEFINER_CALLS)
@pytest.mark.parametrize("caller", ["forged as the victim", "none", "the attacker"])
async def test_no_security_definer_function_answers_with_the_victims_rows(
    service: AsyncEngine, tenants: Tenants, function: str, caller: str
) -> None:
    victim, attacker = tenants.victim, tenants.attacker
    async with service.connect() as connection, connection.begin():
        await enter(connection, attacker.entry())
        if caller == "forged as the victim":
            sealed = (
                await connection.execute(text("SELECT current_setting('taskmanager.caller')"))
            ).scalar_one()
            seal = sealed.rsplit("|", 1)[1]
            forged = f"{victim.user_id}|{victim.session_id}|request||{seal}"
            await connection.execute(
                text("SELECT set_config('taskmanager.caller', :forged, true)"), {"forged": forged}
            )
        elif caller == "none":
            await connection.execute(text("SELECT set_config('taskmanager.caller', '', true)"))
        outcome = await attempt(
            connection,
            DEFINER_CALLS[function],
            victim=victim.user_id,
            session=victim.session_id,
            workspace=victim.workspace_id,
            email=VICTIM,
            far=FAR,
        )
        if caller == "forged as the victim":
            assert refused(outcome), outcome
        else:
            assert nothing_of(victim, outcome), outcome
            numbers = {
                value
                for row in outcome
                if not isinstance(row, DBAPIError)
                for value in row
                if isinstance(value, int) and not isinstance(value, bool)
            }
            # Nothing tells an account's id from its address any more (invitations go to
            # the address, whoever has it).
            assert victim.workspace_id not in numbers
            assert victim.user_id not in numbers
        await connection.rollback()


# ─────────────────────────────── password hashes


async def test_a_request_cannot_write_a_calendars_fetch_state(
    service: AsyncEngine, tenants: Tenants
) -> None:
    """Only the service's fetcher (entered for 'maintenance') writes what a feed holds and
    how fetching it went: a request, even on its own workspace's subscription, can neither
    plant events nor clear a failing feed's breaker, nor insert a row with a state."""
    planted = "UPDATE calendar_subscriptions SET events = '[]', skip_until = NULL RETURNING id"
    async with service.connect() as connection, connection.begin():
        await enter(connection, tenants.attacker.entry())
        own = await attempt(connection, "SELECT id FROM calendar_subscriptions")
        assert len(own) == 1, own  # their own subscription, and only it, is visible
        assert await attempt(connection, planted) == []
        for sql in (
            "INSERT INTO calendar_subscriptions (workspace_id, url, name, created_by, events) "
            "VALUES (:workspace, 'https://x.example.com/a.ics', 'x', :attacker, '[]')",
            "UPDATE calendar_subscriptions SET url = 'https://x.example.com/b.ics'",
        ):
            outcome = await attempt(
                connection,
                sql,
                workspace=tenants.attacker.workspace_id,
                attacker=tenants.attacker.user_id,
            )
            assert refused(outcome), (sql, outcome)
        await connection.rollback()
    # The control: the fetcher's purpose writes it.
    async with service.connect() as connection, connection.begin():
        await enter(connection, TEST_KEY.entry("maintenance"))
        assert len(await attempt(connection, planted)) >= 2
        await connection.rollback()


@pytest.mark.parametrize(
    "purpose", ["request", "login", "register", "refresh", "operator", "maintenance"]
)
async def test_no_caller_reads_a_password_hash(
    service: AsyncEngine, tenants: Tenants, purpose: Purpose
) -> None:
    """Under every purpose a transaction may enter with, the hash column is not readable,
    and the one function that returns a hash wants a proof only the service makes."""
    attacker = tenants.attacker
    user_id = None if purpose in ("register", "maintenance") else attacker.user_id
    session_id = attacker.session_id if purpose in ("request", "refresh") else None
    until = int(time.time()) + 300
    async with service.connect() as connection, connection.begin():
        await enter(connection, TEST_KEY.entry(purpose, user_id, session_id, valid_until=until))
        for sql in (
            "SELECT password_hash FROM users",
            "SELECT * FROM users",
            "SELECT users FROM users",
            "SELECT row_to_json(u) FROM users u",
            "SELECT * FROM taskmanager_password_hash(:email, :far, 'forged')",
        ):
            assert refused(await attempt(connection, sql, email=VICTIM, far=FAR)), sql
        await connection.rollback()


# ─────────────────────────────── the outbox and mailed tokens (migration 0012)


async def test_a_request_sees_no_outbox_row_and_marks_none_sent(
    service: AsyncEngine, tenants: Tenants
) -> None:
    """The registrations recorded a mail each: a request sees none of them, and can neither
    mark one sent, push it out of reach nor delete it; it cannot record one either (only
    the database's functions do, naming the recipient themselves)."""
    async with service.connect() as connection, connection.begin():
        await enter(connection, tenants.attacker.entry())
        for sql in (
            "SELECT * FROM outbox",
            "UPDATE outbox SET sent_at = now() RETURNING id",
            "UPDATE outbox SET attempts = 1000, next_attempt_at = 'infinity' RETURNING id",
            "DELETE FROM outbox RETURNING id",
        ):
            assert await attempt(connection, sql) == [], sql
        for sql in (
            "INSERT INTO outbox (kind, payload) VALUES ('mail.password_reset', "
            "jsonb_build_object('to', 'attacker@example.com', 'token_id', gen_random_uuid()))",
            "UPDATE outbox SET payload = '{}'",
            "UPDATE outbox SET kind = 'mail.password_reset'",
        ):
            assert refused(await attempt(connection, sql)), sql
        await connection.rollback()
    # The control: the worker's purpose sees them.
    async with service.connect() as connection, connection.begin():
        await enter(connection, TEST_KEY.entry("maintenance"))
        recipients = await attempt(connection, "SELECT payload->>'to' FROM outbox")
        assert {VICTIM, ATTACKER} <= {row[0] for row in recipients}
        await connection.rollback()


@pytest.mark.parametrize(
    "purpose", ["request", "login", "register", "refresh", "operator", "maintenance"]
)
async def test_no_caller_reads_or_writes_a_mailed_token(
    service: AsyncEngine, tenants: Tenants, purpose: Purpose
) -> None:
    attacker = tenants.attacker
    user_id = None if purpose in ("register", "maintenance") else attacker.user_id
    session_id = attacker.session_id if purpose in ("request", "refresh") else None
    until = int(time.time()) + 300
    async with service.connect() as connection, connection.begin():
        await enter(connection, TEST_KEY.entry(purpose, user_id, session_id, valid_until=until))
        for sql in (
            "SELECT token_hash FROM account_tokens",
            "SELECT count(*) FROM account_tokens",
            "UPDATE account_tokens SET expires_at = 'infinity'",
            "DELETE FROM account_tokens",
            "INSERT INTO account_tokens (id, user_id, purpose, token_hash, email, expires_at) "
            "VALUES (gen_random_uuid(), :victim, 'password_reset', 'chosen', :email, "
            "'2100-01-01')",
        ):
            outcome = await attempt(connection, sql, victim=tenants.victim.user_id, email=VICTIM)
            assert refused(outcome), (sql, outcome)
        await connection.rollback()
    # The control: the tokens are there (the victim's verification link, as a hash).
    hashes = await run_as(
        superuser_url(tenants.url),
        "SELECT t.token_hash FROM account_tokens t JOIN users u ON u.id = t.user_id "
        "WHERE u.email = :email",
        email=VICTIM,
    )
    assert len(hashes) == 1


async def test_a_request_cannot_verify_its_own_address_without_the_mail(
    service: AsyncEngine, tenants: Tenants
) -> None:
    attacker = tenants.attacker
    async with service.connect() as connection, connection.begin():
        await enter(connection, attacker.entry())
        for sql in (
            "UPDATE users SET email_verified_at = now() WHERE id = :me",
            # A verification token of a hash the attacker knows the token of.
            "SELECT taskmanager_record_mail('verify_email', NULL, gen_random_uuid(), "
            "encode(sha256('mine'), 'hex'), 60, :far, 'forged')",
        ):
            assert refused(await attempt(connection, sql, me=attacker.user_id, far=FAR)), sql
        assert await attempt(
            connection, "SELECT taskmanager_verify_email(encode(sha256('mine'), 'hex'))"
        ) == [(None,)]
        verified = await attempt(
            connection, "SELECT email_verified_at FROM users WHERE id = :me", me=attacker.user_id
        )
        assert verified == [(None,)]
        await connection.rollback()


async def _enter_to_register(connection: AsyncConnection, entry: Entry) -> int:
    """Enter `entry` (a registration) as the service does; the id allocated for it."""
    entered = await UserRepository(AsyncSession(bind=connection)).enter(entry)
    assert entered is not None
    assert entered.user_id is not None
    return entered.user_id


VERIFIED_INSERT = (
    "INSERT INTO users (id, email, display_name, password_hash, email_verified_at) "
    "VALUES (:id, :email, 'squatter', '$argon2id$mine', now()) RETURNING id"
)


async def _register_verified(connection: AsyncConnection, entry: Entry, email: str) -> list[Any]:
    """Enter `entry` (a registration) and insert an account for `email` with its address
    verified, as SQL in that transaction could."""
    user_id = await _enter_to_register(connection, entry)
    return await attempt(connection, VERIFIED_INSERT, id=user_id, email=email)


async def test_a_public_registration_cannot_insert_a_verified_account(
    service: AsyncEngine,
) -> None:
    """POST /auth/register enters for 'register' with no subject: SQL in its transaction
    may insert the account unverified, never verified (it would then accept the
    invitations sent to someone else's address). Only the operator's vouched registration
    may (taskmanager users create, db seed)."""
    email = f"invitee-{uuid.uuid4().hex[:8]}@example.com"
    async with service.connect() as connection, connection.begin():
        outcome = await _register_verified(connection, TEST_KEY.entry("register"), email)
        assert refused(outcome), outcome
        await connection.rollback()
    # Nor with a subject that is not the operator's (a registration counting attempts).
    async with service.connect() as connection, connection.begin():
        entry = TEST_KEY.entry("register", subject=attempt_subject("192.0.2.1", email))
        assert refused(await _register_verified(connection, entry, email))
        await connection.rollback()
    # Nor with the vouched subject set by hand over a public registration's caller.
    async with service.connect() as connection, connection.begin():
        user_id = await _enter_to_register(connection, TEST_KEY.entry("register"))
        sealed = (
            await connection.execute(text("SELECT current_setting('taskmanager.caller')"))
        ).scalar_one()
        parts = sealed.split("|")
        parts[3] = VOUCHED_SUBJECT.encode().hex()
        await connection.execute(
            text("SELECT set_config('taskmanager.caller', :forged, true)"),
            {"forged": "|".join(parts)},
        )
        outcome = await attempt(connection, VERIFIED_INSERT, id=user_id, email=email)
        assert refused(outcome), outcome
        await connection.rollback()
    # The control: unverified it may, and the operator's vouched registration verified.
    async with service.connect() as connection, connection.begin():
        user_id = await _enter_to_register(connection, TEST_KEY.entry("register"))
        assert await attempt(
            connection,
            "INSERT INTO users (id, email, display_name, password_hash) "
            "VALUES (:id, :email, 'newcomer', '$argon2id$mine') RETURNING id",
            id=user_id,
            email=email,
        ) == [(user_id,)]
        await connection.rollback()
    async with service.connect() as connection, connection.begin():
        entry = TEST_KEY.entry("register", subject=VOUCHED_SUBJECT)
        outcome = await _register_verified(connection, entry, email)
        assert len(outcome) == 1, outcome
        assert not isinstance(outcome[0], DBAPIError), outcome
        await connection.rollback()


# ─────────────────────────────── memberships come from accepted invitations only


async def _invite(connection: AsyncConnection, inviter: Person, email: str, role: str) -> str:
    """The inviter's invitation of `email`, recorded as the service records one (entered
    as the inviter, with the service's proof); its id."""
    await enter(connection, inviter.entry())
    invitation_id = uuid.uuid4()
    token_hash = mail_token_hash(MailTokenKey(TEST_SECRET).token(invitation_id))
    until, proof = TEST_KEY.invitation_proof(
        invitation_id, inviter.workspace_id, email, role, token_hash, 3600
    )
    await connection.execute(
        text(
            "SELECT taskmanager_record_invitation(:id, :workspace, :email, :role, :hash, 3600, "
            ":until, :proof)"
        ),
        {
            "id": invitation_id,
            "workspace": inviter.workspace_id,
            "email": email,
            "role": role,
            "hash": token_hash,
            "until": until,
            "proof": proof,
        },
    )
    await connection.execute(text("RESET ROLE"))
    return str(invitation_id)


async def test_no_caller_joins_a_workspace_or_adds_anyone_without_an_accepted_invitation(
    tenants: Tenants,
) -> None:
    """Request SQL inserts a membership only for itself, with exactly the role of an
    invitation of its VERIFIED address that it accepted in the same transaction: not
    without one, not with another role, not unverified, not while it is still open; and a
    workspace's owner no longer inserts anyone else's. (Not in a later transaction either:
    tests/api/test_invitations_api.py.) All in one transaction, rolled back (as the superuser,
    which enters as the service does, then runs under the caller role)."""
    victim, attacker = tenants.victim, tenants.attacker
    insert_as = (
        "INSERT INTO memberships (workspace_id, user_id, role) VALUES (:workspace, :me, :role)"
    )
    engine = create_async_engine(superuser_url(tenants.url), poolclass=NullPool)
    try:
        async with engine.connect() as connection, connection.begin():

            async def join(role: str) -> list[Any]:
                await enter(connection, attacker.entry())
                outcome = await attempt(
                    connection,
                    insert_as,
                    workspace=victim.workspace_id,
                    me=attacker.user_id,
                    role=role,
                )
                await connection.execute(text("RESET ROLE"))
                return outcome

            # No invitation: refused.
            assert refused(await join("member"))
            # The owner adds nobody directly (only invitations do).
            await enter(connection, victim.entry())
            added = await attempt(
                connection,
                insert_as,
                workspace=victim.workspace_id,
                me=attacker.user_id,
                role="viewer",
            )
            assert refused(added), added
            await connection.execute(text("RESET ROLE"))
            # Invited as a viewer, but the address is not verified yet: refused.
            invitation_id = await _invite(connection, victim, attacker.email.upper(), "viewer")
            assert refused(await join("viewer"))
            await connection.execute(
                text("UPDATE users SET email_verified_at = now() WHERE id = :id"),
                {"id": attacker.user_id},
            )
            # Verified: another role than the invitation's is refused; its own is allowed.
            for role in ("owner", "admin", "member"):
                assert refused(await join(role)), role
            await enter(connection, attacker.entry())
            # The invitee answers, and changes nothing else of the invitation.
            for sql in (
                "UPDATE invitations SET role = 'owner'",
                "UPDATE invitations SET expires_at = 'infinity'",
                "UPDATE invitations SET revoked_at = now()",
                "UPDATE invitations SET accepted_at = now(), declined_at = now()",
                "DELETE FROM invitations",
                "INSERT INTO invitations (id, workspace_id, email, role, token_hash, "
                "expires_at) VALUES (gen_random_uuid(), :workspace, :email, 'owner', 'x', "
                "'infinity')",
            ):
                outcome = await attempt(
                    connection, sql, workspace=victim.workspace_id, email=attacker.email
                )
                assert outcome == [] or refused(outcome) or sqlstate(outcome[0]) == "23514", (
                    sql,
                    outcome,
                )
            await connection.execute(text("RESET ROLE"))
            # Open, the invitation lets nobody in: it must be accepted first, in the same
            # transaction (so a join always closes it).
            assert refused(await join("viewer"))
            await enter(connection, attacker.entry())
            accepted = await attempt(
                connection,
                "UPDATE invitations SET accepted_at = now() WHERE id = :id RETURNING id",
                id=invitation_id,
            )
            assert len(accepted) == 1, accepted
            await connection.execute(text("RESET ROLE"))
            assert await join("viewer") == []
            members = await connection.execute(
                text("SELECT user_id, role FROM memberships WHERE workspace_id = :w"),
                {"w": victim.workspace_id},
            )
            assert set(members.all()) == {(victim.user_id, "owner"), (attacker.user_id, "viewer")}
            stored = await connection.execute(
                text(
                    "SELECT role, expires_at < 'infinity', revoked_at FROM invitations "
                    "WHERE id = :id"
                ),
                {"id": invitation_id},
            )
            assert stored.one() == ("viewer", True, None)
            await connection.rollback()
    finally:
        await engine.dispose()


# ─────────────────────────────── shadowing what the app reads


@pytest.mark.parametrize("role", ["the caller role", "the service's login"])
async def test_nothing_can_be_created_to_shadow_the_apps_tables_or_functions(
    service: AsyncEngine, tenants: Tenants, role: str
) -> None:
    """A temporary table named like the app's (found first for the next request on this
    pooled connection), or a function in a schema on the search path: refused."""
    async with service.connect() as connection, connection.begin():
        await enter(connection, tenants.attacker.entry())
        if role == "the service's login":
            await connection.execute(text("RESET ROLE"))
        for sql in (
            "CREATE TEMPORARY TABLE tasks (id integer, title text)",
            "CREATE TABLE public.stolen (x text)",
            "CREATE FUNCTION public.taskmanager_caller() RETURNS text[] LANGUAGE sql "
            "AS $$ SELECT NULL::text[] $$",
            "CREATE SCHEMA evil",
        ):
            assert refused(await attempt(connection, sql)), sql
        await connection.rollback()


async def test_the_service_login_owns_nothing_and_cannot_connect_elsewhere(
    tenants: Tenants,
) -> None:
    """The login requests arrive on: no database but its own, nothing owned."""
    other = make_url(tenants.url).set(database="taskmanager_test")
    engine = create_async_engine(other)
    try:
        with pytest.raises(DBAPIError, match="permission denied for database"):
            async with engine.connect():
                pass
    finally:
        await engine.dispose()
    owner = create_async_engine(superuser_url(tenants.url))
    try:
        async with owner.connect() as connection:
            owned = (
                await connection.execute(
                    text(
                        "SELECT count(*) FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner "
                        "WHERE r.rolname = :service"
                    ),
                    {"service": RoleNames.of(database_of(tenants.url)).service},
                )
            ).scalar_one()
    finally:
        await owner.dispose()
    assert owned == 0


# ─────────────────────────────── what a pooled connection carries to the next request


@pytest_asyncio.fixture
async def one_connection_app(tenants: Tenants) -> AsyncIterator[tuple[AsyncClient, AsyncEngine]]:
    """The real app with a pool of ONE connection, and its engine: SQL run on that engine
    runs on the connection the next request gets, as SQL in a request would."""
    app = create_app(
        Settings(
            database_url=tenants.url,
            pool_size=1,
            max_overflow=0,
            jwt_secret=TEST_SECRET,
            log_level="WARNING",
            gc_threshold=0,
            # No worker of the app's own on the one connection: it would meet the
            # tampered statement before the victim's request does (and drop it, which is
            # safe, but not what this test looks at).
            in_process_worker=False,
        )
    )
    async with (
        app.router.lifespan_context(app),
        AsyncClient(transport=ASGITransport(app=app), base_url="http://test") as client,
    ):
        yield client, app.state.engine


LEAK = "SELECT current_setting('attacker.leak', true)"


@pytest.mark.parametrize("tampering", ["replace the first statement", "only deallocate it"])
async def test_a_statement_prepared_by_sql_serves_no_later_request(
    one_connection_app: tuple[AsyncClient, AsyncEngine], tenants: Tenants, tampering: str
) -> None:
    """Named prepared statements outlive the transaction on a pooled connection. SQL in the
    attacker's request replaces the one every request starts with (taskmanager_enter) by
    one that also keeps its arguments, the next user's proof among them, in a setting of
    the session; or just deallocates it. The victim's next request on that connection is
    answered 503 without running anything of the attacker's, the connection is dropped,
    and the retry is served on a clean one."""
    client, engine = one_connection_app
    victim = tenants.victim
    warm = await client.get(f"/tasks/{victim.task_id}", headers=victim.headers)
    assert warm.status_code == 200, warm.text  # the first statement is prepared and cached

    async with engine.connect() as connection, connection.begin():  # the pool's one
        await enter(connection, tenants.attacker.entry())
        found = (
            await connection.execute(
                text(
                    "SELECT name, array_to_string(parameter_types, ',') "
                    "FROM pg_prepared_statements WHERE statement LIKE '%taskmanager_enter(%' "
                    "AND statement NOT LIKE '%pg_prepared_statements%'"
                )
            )
        ).all()
        assert found  # the app's first statement, cached on this connection
        for name, types in found:
            await connection.execute(text(f'DEALLOCATE "{name}"'))
            if tampering == "replace the first statement":
                await connection.execute(
                    text(
                        f'PREPARE "{name}"({types}) AS SELECT e.user_id, '
                        "e.personal_workspace_id, e.workspace_ids, "
                        "taskmanager_workspace_roles() AS workspace_roles, "
                        "set_config('role', e.caller_role, true) AS role "
                        "FROM taskmanager_enter($1, $2, $3, $4, $5) e WHERE set_config("
                        "'attacker.leak', concat_ws('|', $1, $2, $3, $4, $5), false) "
                        "IS NOT NULL"
                    )
                )
        await connection.commit()

    refused = await client.get(f"/tasks/{victim.task_id}", headers=victim.headers)
    assert refused.status_code == 503, refused.text
    async with engine.connect() as connection:  # a new connection: nothing was kept
        assert (await connection.execute(text(LEAK))).scalar_one() in (None, "")
    again = await client.get(f"/tasks/{victim.task_id}", headers=victim.headers)
    assert again.status_code == 200, again.text
    assert again.json()["title"] == VICTIM_TITLE


# ─────────────────────────────── what an identity may make last


async def test_a_refresh_enters_only_a_live_login_session(
    service: AsyncEngine, tenants: Tenants
) -> None:
    """A refresh enters as the owner of a refresh token's login session only while that
    session lives: one that was revoked (say after a password change), or made up, enters
    nobody."""
    victim = tenants.victim
    async with service.connect() as connection, connection.begin():
        for session_id in (uuid.uuid4(), None):
            entry = TEST_KEY.entry("refresh", victim.user_id, session_id)
            assert await _enter_raw(connection, entry) == []
        live = TEST_KEY.entry("refresh", victim.user_id, victim.session_id)
        assert len(await _enter_raw(connection, live)) == 1  # the control
        await connection.rollback()


@pytest.mark.parametrize(
    ("purpose", "sql"),
    [
        ("request", "INSERT INTO auth_sessions (id, user_id, expires_at) "
                    "VALUES (gen_random_uuid(), :me, '2099-01-01')"),
        ("refresh", "INSERT INTO auth_sessions (id, user_id, expires_at) "
                    "VALUES (gen_random_uuid(), :me, '2099-01-01')"),
        ("request", "INSERT INTO refresh_tokens (token_hash, session_id) "
                    "SELECT 'chosen', id FROM auth_sessions LIMIT 1"),
        ("request", "INSERT INTO tasks (id, workspace_id, title) "
                    "VALUES (nextval('tasks_id_seq') + 1000, :workspace, 'squatter')"),
        ("request", "INSERT INTO workspaces (id, name, created_by) "
                    "VALUES (nextval('workspaces_id_seq') + 1000, 'squatter', :me)"),
    ],
    ids=[
        "a login session, by a request",
        "a login session, by a refresh",
        "a refresh token, by a request",
        "a task with an id of the sequence's future",
        "a workspace with an id of the sequence's future",
    ],
)  # fmt: skip
async def test_no_identity_makes_what_outlives_it_or_takes_others_ids(
    service: AsyncEngine, tenants: Tenants, purpose: Purpose, sql: str
) -> None:
    """Only a login opens a login session and only a login or a refresh issues a refresh
    token (else SQL in any request could make its own caller last for years); no caller
    inserts ids the sequences will hand to others next (their inserts would fail)."""
    attacker = tenants.attacker
    session_id = attacker.session_id if purpose in ("request", "refresh") else None
    async with service.connect() as connection, connection.begin():
        await enter(
            connection,
            TEST_KEY.entry(
                purpose, attacker.user_id, session_id, valid_until=int(time.time()) + 300
            ),
        )
        outcome = await attempt(
            connection, sql, me=attacker.user_id, workspace=attacker.workspace_id
        )
        assert refused(outcome), outcome
        await connection.rollback()


async def test_a_login_sees_and_changes_only_its_own_attempt_counts(
    service: AsyncEngine, tenants: Tenants
) -> None:
    """A login (or a registration) counts attempts at the subject it was entered with, the
    client's network and the username typed, and nothing else: not the victim's counts (an
    email and an address each), nor a key of its own making to lock the victim out or to
    pass as the victim's known address."""
    victim_keys = [f"account-address:192.0.2.7 {VICTIM}", f"known-address:192.0.2.7 {VICTIM}"]
    superuser = create_async_engine(superuser_url(tenants.url))
    try:
        async with superuser.begin() as connection:
            for key in victim_keys:
                await connection.execute(
                    text("INSERT INTO login_failures VALUES (:key, 1, now())"), {"key": key}
                )
        async with service.connect() as connection, connection.begin():
            subject = attempt_subject("203.0.113.9", ATTACKER)
            await enter(connection, TEST_KEY.entry("login", subject=subject))
            mine = f"account-address:203.0.113.9 {ATTACKER}"
            await connection.execute(
                text("INSERT INTO login_failures VALUES (:key, 1, now())"), {"key": mine}
            )
            seen = {row[0] for row in await attempt(connection, "SELECT key FROM login_failures")}
            assert mine in seen
            assert not [key for key in seen if VICTIM in key], seen
            for sql in (
                f"INSERT INTO login_failures VALUES ('account-day:{VICTIM}', 1000000, now())",
                "INSERT INTO login_failures VALUES "
                f"('known-address:203.0.113.9 {VICTIM}', 0, now())",
                f"UPDATE login_failures SET key = 'account:{VICTIM}x' WHERE key = '{mine}'",
            ):
                assert refused(await attempt(connection, sql)), sql
            deleted = await attempt(connection, "DELETE FROM login_failures RETURNING key")
            assert {row[0] for row in deleted} == seen
            await connection.rollback()
        async with superuser.connect() as connection:
            left = await connection.execute(
                text("SELECT key FROM login_failures WHERE key = ANY(:keys)"), {"keys": victim_keys}
            )
            assert sorted(row[0] for row in left) == sorted(victim_keys)
    finally:
        async with superuser.begin() as connection:
            await connection.execute(
                text("DELETE FROM login_failures WHERE key = ANY(:keys)"), {"keys": victim_keys}
            )
        await superuser.dispose()


async def test_one_invitation_lets_its_invitee_in_once_and_only_by_accepting_it(
    tenants: Tenants,
) -> None:
    """The membership an invitation allows is inserted only in the transaction that
    accepts it (accepted_at is that transaction's now(), and no other moment may be
    written): not while it is open, and not again once the member was removed. Committed
    transactions (each its own now()), undone at the end; the last test of the module."""
    victim, attacker = tenants.victim, tenants.attacker
    engine = create_async_engine(superuser_url(tenants.url), poolclass=NullPool)
    join = "INSERT INTO memberships (workspace_id, user_id, role) VALUES (:w, :me, 'viewer')"
    accept = "UPDATE invitations SET accepted_at = {moment} WHERE id = :id RETURNING id"
    ids = {"w": victim.workspace_id, "me": attacker.user_id}
    try:
        async with engine.begin() as connection:
            await connection.execute(
                text("UPDATE users SET email_verified_at = now() WHERE id = :me"), ids
            )
            invitation_id = await _invite(connection, victim, attacker.email, "viewer")
        async with engine.begin() as connection:
            await enter(connection, attacker.entry())
            assert refused(await attempt(connection, join, **ids))  # open, not accepted
            # An acceptance at another moment than now (one a later transaction could
            # start at) is refused.
            later = accept.format(moment="now() + interval '1 second'")
            assert refused(await attempt(connection, later, id=invitation_id))
            accepted = await attempt(connection, accept.format(moment="now()"), id=invitation_id)
            assert len(accepted) == 1, accepted
            assert await attempt(connection, join, **ids) == []
        async with engine.begin() as connection:
            await enter(connection, victim.entry())
            removed = await attempt(
                connection,
                "DELETE FROM memberships WHERE workspace_id = :w AND user_id = :me "
                "RETURNING user_id",
                **ids,
            )
            assert len(removed) == 1, removed
        async with engine.connect() as connection, connection.begin():
            await enter(connection, attacker.entry())
            assert refused(await attempt(connection, join, **ids))
            again = await attempt(connection, accept.format(moment="now()"), id=invitation_id)
            assert again == []  # closed
            assert refused(await attempt(connection, join, **ids))
            await connection.rollback()
    finally:
        async with engine.begin() as connection:
            await connection.execute(
                text("DELETE FROM memberships WHERE workspace_id = :w AND user_id = :me"), ids
            )
            await connection.execute(
                text("DELETE FROM invitations WHERE workspace_id = :w"), {"w": victim.workspace_id}
            )
            await connection.execute(
                text("DELETE FROM outbox WHERE kind = 'mail.invitation'"),
            )
            await connection.execute(
                text("UPDATE users SET email_verified_at = NULL WHERE id = :me"), ids
            )
        await engine.dispose()


# ─────────────────────────────── a calendar feed's caller (migration 0015)

# What SQL run as a feed's caller could try beyond reading its tasks, each with RETURNING
# (an UPDATE or DELETE its policies hide the rows of returns nothing, an INSERT they
# refuse raises 42501): not one row may come back.
CALENDAR_WRITES = {
    "rename a task": "UPDATE tasks SET title = 'changed by a feed' RETURNING id",
    "delete a task": "DELETE FROM tasks RETURNING id",
    "add a task": "INSERT INTO tasks (title, workspace_id) VALUES ('planted', :workspace) "
    "RETURNING id",
    "rename a category": "UPDATE categories SET name = 'changed' RETURNING id",
    "label a task": "INSERT INTO task_labels (task_id, label_id, workspace_id) "
    "SELECT t.id, l.id, t.workspace_id FROM tasks t, labels l RETURNING task_id",
    "rename a workspace": "UPDATE workspaces SET name = 'changed' RETURNING id",
    "make a workspace": "INSERT INTO workspaces (id, name, created_by) VALUES "
    "(nextval('workspaces_id_seq'), 'planted', :me) RETURNING id",
    "rename the account": "UPDATE users SET display_name = 'changed' RETURNING id",
    "leave a workspace": "DELETE FROM memberships RETURNING workspace_id",
    "end a login": "UPDATE auth_sessions SET revoked_at = now() RETURNING id",
    "make a token": "INSERT INTO access_tokens (id, user_id, name, token_hash, prefix, scopes) "
    "VALUES (gen_random_uuid(), :me, 'planted', encode(sha256('x'), 'hex'), 'tm_pat_x', "
    "ARRAY['tasks:write']) RETURNING id",
    "make another feed": "INSERT INTO calendar_feeds (id, user_id, token_hash, prefix) "
    "VALUES (gen_random_uuid(), :me, encode(sha256('x'), 'hex'), 'tm_cal_x') RETURNING id",
    "choose its own secret": "UPDATE calendar_feeds SET token_hash = encode(sha256('x'), "
    "'hex') RETURNING id",
    "delete its feed": "DELETE FROM calendar_feeds RETURNING id",
}
# What a feed's caller reads nothing of: everything but the feed's own tables.
CALENDAR_HIDDEN = {
    "users": "SELECT id AS user_id, email FROM users",
    "memberships": "SELECT workspace_id, user_id FROM memberships",
    "auth_sessions": "SELECT id AS session_id, user_id FROM auth_sessions",
    "access_tokens": "SELECT id, user_id FROM access_tokens",
    "idempotency_keys": "SELECT key FROM idempotency_keys",
    "activity": "SELECT id FROM activity",
}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def attackers_feed(tenants: Tenants) -> str:
    """The hash of a calendar feed's secret the attacker made of all their workspaces
    (committed)."""
    async with live_client(tenants.url) as client:
        made = await client.post("/calendar/feeds", json={}, headers=tenants.attacker.headers)
        assert made.status_code == 201, made.text
    secret = made.json()["url"].rsplit("/", 1)[1].removesuffix(".ics")
    return feed_secret_hash(secret)


async def test_a_feeds_caller_reads_its_tasks_and_nothing_else(
    service: AsyncEngine, tenants: Tenants, attackers_feed: str
) -> None:
    async with service.connect() as connection, connection.begin():
        await enter(connection, TEST_KEY.entry("calendar", subject=attackers_feed))
        tasks = await attempt(connection, "SELECT id AS task_id, workspace_id FROM tasks")
        assert [tuple(row) for row in tasks] == [
            (tenants.attacker.task_id, tenants.attacker.workspace_id)
        ]
        for table, sql in CALENDAR_HIDDEN.items():
            assert await attempt(connection, sql) == [], table
        assert nothing_of(tenants.victim, await reads(connection))
        await connection.rollback()


@pytest.mark.parametrize("write", CALENDAR_WRITES)
async def test_a_feeds_caller_changes_nothing(
    service: AsyncEngine, tenants: Tenants, attackers_feed: str, write: str
) -> None:
    attacker = tenants.attacker
    parameters = {"me": attacker.user_id, "workspace": attacker.workspace_id}
    async with service.connect() as connection, connection.begin():
        await enter(connection, TEST_KEY.entry("calendar", subject=attackers_feed))
        outcome = await attempt(connection, CALENDAR_WRITES[write], **parameters)
        assert outcome == [] or refused(outcome), outcome
        await connection.rollback()


async def test_the_same_writes_as_a_login_change_rows(
    service: AsyncEngine, tenants: Tenants, attackers_feed: str
) -> None:
    """The control: the attacker's own login session changes its own rows with the same
    statements, so a feed's empty answers above are its policies' doing."""
    attacker = tenants.attacker
    parameters = {"me": attacker.user_id, "workspace": attacker.workspace_id}
    async with service.connect() as connection, connection.begin():
        await enter(connection, attacker.entry())
        for write in ("rename a task", "rename the account", "choose its own secret"):
            outcome = await attempt(connection, CALENDAR_WRITES[write], **parameters)
            assert outcome, write
            assert not isinstance(outcome[0], DBAPIError), (write, outcome)
        await connection.rollback()


async def test_a_feed_enters_by_its_hash_alone(
    service: AsyncEngine, tenants: Tenants, attackers_feed: str
) -> None:
    """An unknown hash enters nobody; a feed's entry naming a user is refused."""
    attacker = tenants.attacker
    async with service.connect() as connection, connection.begin():
        unknown = TEST_KEY.entry("calendar", subject=feed_secret_hash("tm_cal_guessed"))
        assert await _enter_raw_with_subject(connection, unknown) == []
        named = TEST_KEY.entry("calendar", attacker.user_id, subject=attackers_feed)
        outcome = await _enter_raw_with_subject(connection, named)
        assert len(outcome) == 1, outcome
        assert isinstance(outcome[0], DBAPIError), outcome
        await connection.rollback()


async def _enter_raw_with_subject(connection: AsyncConnection, entry: Entry) -> list[Any]:
    return await attempt(
        connection,
        "SELECT * FROM taskmanager_enter(:user_id, :session_id, :purpose, :until, :proof, "
        ":subject)",
        user_id=entry.user_id,
        session_id=entry.session_id,
        purpose=entry.purpose,
        until=entry.valid_until,
        proof=entry.proof,
        subject=entry.subject,
    )


async def test_every_table_under_row_level_security_is_closed_to_a_feeds_caller(
    service: AsyncEngine,
) -> None:
    """Each table with row-level security has migration 0015's restrictive policies: one
    refusing a feed's caller everything, or (the tables a feed reads) one per write. A
    table added after 0015 fails here until its migration gives it one of the two
    (`schema_statements.closed_to_calendar_feeds`)."""
    async with service.connect() as connection:
        rows = (
            await connection.execute(
                text(
                    "SELECT c.relname, array_agg(p.polname::text ORDER BY p.polname) "
                    "FILTER (WHERE p.polname::text ~ '_(calendar_reads_only_"
                    "(insert|update|delete)|not_for_a_calendar)$' AND NOT p.polpermissive) "
                    "FROM pg_class c LEFT JOIN pg_policy p ON p.polrelid = c.oid "
                    "WHERE c.relnamespace = current_schema()::regnamespace "
                    "AND c.relkind IN ('r', 'p') AND c.relrowsecurity GROUP BY c.relname"
                )
            )
        ).all()
    assert len(rows) > 10, rows
    for table, policies in rows:
        reads_only = [f"{table}_calendar_reads_only_{c}" for c in ("delete", "insert", "update")]
        assert policies in ([f"{table}_not_for_a_calendar"], reads_only), (table, policies)


# ─────────────────────────────── webhooks (migration 0015)


async def test_a_request_reads_no_nonce_sees_no_foreign_endpoint_and_forges_no_delivery(
    service: AsyncEngine, tenants: Tenants
) -> None:
    """The victim's endpoint and delivery: the attacker sees neither, and nobody's request
    reads an endpoint's nonces (the secrets are derived from them), inserts a delivery,
    claims one, or replays, tests, rotates or disables another workspace's."""
    superuser = superuser_url(tenants.url)
    endpoint, delivery = uuid.uuid4(), uuid.uuid4()
    await run_as(
        superuser,
        "INSERT INTO webhook_endpoints (id, workspace_id, url, events, secret_nonce) "
        "VALUES (:id, :workspace, 'https://victim.example/hooks', ARRAY['task.created'], "
        "decode(repeat('cd', 16), 'hex'))",
        id=endpoint,
        workspace=tenants.victim.workspace_id,
    )
    await run_as(
        superuser,
        "INSERT INTO webhook_deliveries (id, workspace_id, endpoint_id, message_id, "
        "event_type, payload) VALUES (:id, :workspace, :endpoint, 'msg_victim', "
        "'task.created', '{}')",
        id=delivery,
        workspace=tenants.victim.workspace_id,
        endpoint=endpoint,
    )
    ids = {"endpoint": endpoint, "delivery": delivery}
    try:
        async with service.connect() as connection, connection.begin():
            await enter(connection, tenants.attacker.entry())
            for sql in (
                "SELECT id, url FROM webhook_endpoints",
                "SELECT id, payload FROM webhook_deliveries",
                "SELECT id FROM webhook_attempts",
                "UPDATE webhook_deliveries SET status = 'pending' RETURNING id",
                "DELETE FROM webhook_endpoints RETURNING id",
            ):
                assert await attempt(connection, sql) == [], sql
            for sql, answer in (
                ("SELECT taskmanager_replay_webhook_delivery(:delivery)", None),
                ("SELECT taskmanager_send_webhook_test(:endpoint)", None),
                ("SELECT taskmanager_rotate_webhook_secret(:endpoint, 60)", None),
            ):
                assert [tuple(row) for row in await attempt(connection, sql, **ids)] == [
                    (answer,)
                ], sql
            for sql in (
                "SELECT * FROM taskmanager_claim_webhook_deliveries(10, 60, 8)",
                "SELECT taskmanager_disable_webhook_endpoint(:endpoint, 'forged')",
                "INSERT INTO webhook_deliveries (workspace_id, endpoint_id, message_id, "
                "event_type, payload) VALUES (:workspace, :endpoint, 'msg_forged', "
                "'task.created', '{}')",
                "INSERT INTO webhook_attempts (workspace_id, delivery_id, latency_ms) "
                "VALUES (:workspace, :delivery, 1)",
            ):
                outcome = await attempt(
                    connection, sql, workspace=tenants.attacker.workspace_id, **ids
                )
                assert refused(outcome), (sql, outcome)
            await connection.rollback()
        # The victim, owner of the workspace, sees the endpoint, but not its nonces.
        async with service.connect() as connection, connection.begin():
            await enter(connection, tenants.victim.entry())
            shown = await attempt(connection, "SELECT id FROM webhook_endpoints")
            assert [row[0] for row in shown] == [endpoint]
            for column in ("secret_nonce", "previous_nonce"):
                outcome = await attempt(connection, f"SELECT {column} FROM webhook_endpoints")
                assert refused(outcome), column
            await connection.rollback()
    finally:
        await run_as(superuser, "DELETE FROM webhook_endpoints WHERE id = :id", id=endpoint)


def _failed_with(outcome: list[Any], state: str) -> bool:
    return (
        len(outcome) == 1 and isinstance(outcome[0], DBAPIError) and sqlstate(outcome[0]) == state
    )


_ENDPOINT_INSERT = (
    "INSERT INTO webhook_endpoints (id, workspace_id, url, events, secret_nonce, created_by) "
    "VALUES (gen_random_uuid(), :workspace, 'https://hooks.example/x', "
    "CAST(:events AS text[]), decode(:nonce, 'hex'), :created_by) RETURNING id"
)


async def test_a_request_adds_an_endpoint_only_as_itself_with_a_long_nonce_and_known_events(
    service: AsyncEngine, tenants: Tenants
) -> None:
    """In its own workspace, where it is an owner, request SQL still cannot name someone
    else as the endpoint's creator, give it a short nonce, or subscribe it to an event
    the service does not know; every event of the catalogue is accepted."""
    attacker, victim = tenants.attacker, tenants.victim
    valid = {
        "workspace": attacker.workspace_id,
        "events": ["task.created"],
        "nonce": "ab" * 16,
        "created_by": attacker.user_id,
    }
    async with service.connect() as connection, connection.begin():
        await enter(connection, attacker.entry())
        # Control: the same insert as itself, with a nonce of 16 bytes, is allowed.
        assert len(await attempt(connection, _ENDPOINT_INSERT, **valid)) == 1
        everything = await attempt(connection, _ENDPOINT_INSERT, **valid | {"events": EVENT_TYPES})
        assert len(everything) == 1, everything
        forged = await attempt(
            connection, _ENDPOINT_INSERT, **valid | {"created_by": victim.user_id}
        )
        assert refused(forged), forged
        nobody = await attempt(connection, _ENDPOINT_INSERT, **valid | {"created_by": None})
        assert refused(nobody), nobody
        for nonce in ("00", "ab" * 15):
            short = await attempt(connection, _ENDPOINT_INSERT, **valid | {"nonce": nonce})
            assert _failed_with(short, CHECK_VIOLATION), (nonce, short)
        for events in (["workspace.deleted"], ["task.created", "webhook.test"]):
            unknown = await attempt(connection, _ENDPOINT_INSERT, **valid | {"events": events})
            assert _failed_with(unknown, CHECK_VIOLATION), (events, unknown)
        await connection.rollback()


async def test_a_request_neither_chooses_a_rotated_nonce_nor_stretches_the_overlap(
    service: AsyncEngine, tenants: Tenants
) -> None:
    """Rotating takes no nonce (PostgreSQL makes one of 32 bytes) and bounds the overlap
    to 48 hours, whatever request SQL asks."""
    attacker = tenants.attacker
    endpoint = uuid.uuid4()
    superuser = superuser_url(tenants.url)
    await run_as(
        superuser,
        "INSERT INTO webhook_endpoints (id, workspace_id, url, events, secret_nonce) "
        "VALUES (:id, :workspace, 'https://attacker.example/hooks', ARRAY['task.created'], "
        "decode(repeat('cd', 16), 'hex'))",
        id=endpoint,
        workspace=attacker.workspace_id,
    )
    try:
        async with service.connect() as connection, connection.begin():
            await enter(connection, attacker.entry())
            chosen = await attempt(
                connection,
                "SELECT taskmanager_rotate_webhook_secret(:id, decode(repeat('00', 16), 'hex'), "
                "999999)",
                id=endpoint,
            )
            assert _failed_with(chosen, UNDEFINED_FUNCTION), chosen
            ((made,),) = await attempt(
                connection, "SELECT taskmanager_rotate_webhook_secret(:id, 999999)", id=endpoint
            )
            await connection.commit()
        ((nonce, previous, overlap),) = await run_as(
            superuser,
            "SELECT secret_nonce, previous_nonce, "
            "extract(epoch FROM previous_valid_until - updated_at) "
            "FROM webhook_endpoints WHERE id = :id",
            id=endpoint,
        )
        assert bytes(nonce) == bytes(made)
        assert len(bytes(nonce)) == 32
        assert bytes(previous) == bytes.fromhex("cd" * 16)
        assert float(overlap) == 48 * 3600
    finally:
        await run_as(superuser, "DELETE FROM webhook_endpoints WHERE id = :id", id=endpoint)


async def test_a_request_cannot_queue_more_than_100_test_events_and_replays_per_endpoint(
    service: AsyncEngine, tenants: Tenants
) -> None:
    """The cap is in the functions, so request SQL calling them in a loop meets it too;
    and a replay to a disabled endpoint is refused."""
    attacker = tenants.attacker
    endpoint = uuid.uuid4()
    superuser = superuser_url(tenants.url)
    await run_as(
        superuser,
        "INSERT INTO webhook_endpoints (id, workspace_id, url, events, secret_nonce) "
        "VALUES (:id, :workspace, 'https://attacker.example/hooks', ARRAY['task.created'], "
        "decode(repeat('cd', 16), 'hex'))",
        id=endpoint,
        workspace=attacker.workspace_id,
    )
    try:
        async with service.connect() as connection, connection.begin():
            await enter(connection, attacker.entry())
            made = await attempt(
                connection,
                "SELECT taskmanager_send_webhook_test(:id) FROM generate_series(1, 100)",
                id=endpoint,
            )
            assert len(made) == 100, made[:1]
            one_more = await attempt(
                connection, "SELECT taskmanager_send_webhook_test(:id)", id=endpoint
            )
            assert _failed_with(one_more, PROGRAM_LIMIT_EXCEEDED), one_more
            replay = await attempt(
                connection, "SELECT taskmanager_replay_webhook_delivery(:id)", id=made[0][0]
            )
            assert _failed_with(replay, PROGRAM_LIMIT_EXCEEDED), replay
            await attempt(
                connection,
                "UPDATE webhook_endpoints SET enabled = false WHERE id = :id",
                id=endpoint,
            )
            disabled = await attempt(
                connection, "SELECT taskmanager_replay_webhook_delivery(:id)", id=made[0][0]
            )
            assert _failed_with(disabled, NOT_IN_PREREQUISITE_STATE), disabled
            await connection.rollback()
    finally:
        await run_as(superuser, "DELETE FROM webhook_endpoints WHERE id = :id", id=endpoint)
