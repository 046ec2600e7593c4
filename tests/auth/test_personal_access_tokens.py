"""Personal access tokens (POST/GET/DELETE /users/me/tokens, `Authorization: Bearer
tm_pat_...`): their format, what is stored of them, who may make and revoke them, when they
stop working, and what the database lets a token's caller do when the application is out
of the way. (Every operation against every scope: test_access_token_matrix.py.)"""

from __future__ import annotations

import hashlib
import re
import uuid
import zlib
from datetime import UTC, datetime, timedelta
from typing import get_args

import pytest
from httpx import AsyncClient
from sqlalchemy import delete, func, insert, select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from taskmanager import schemas
from taskmanager.models import AccessToken, AuthSession, Invitation, Membership, Task, User
from taskmanager.problems import FORBIDDEN, LIMIT_REACHED
from taskmanager.repositories.user_repository import UserRepository
from taskmanager.security.access_tokens import (
    ALPHABET,
    PREFIX,
    TOKEN_SCOPES,
    TokenScope,
    access_token_hash,
    well_formed,
)
from taskmanager.security.roles import Action
from tests.auth.conftest import ClientAt
from tests.support.accounts import Account
from tests.support.databases import TEST_KEY
from tests.support.invitations import add_member, invite
from tests.support.problems import assert_problem, assert_validation_problem
from tests.support.row_level_security import (
    INSUFFICIENT_PRIVILEGE,
    enter_scope,
    is_policy_violation,
    leave_scope,
    sqlstate,
)
from tests.support.statements import count_statements
from tests.support.tokens import assert_unauthorized, bearer, make_access_token

TOKEN = re.compile(r"^tm_pat_[0-9A-Za-z]{32}[0-9A-Za-z]{6}$")


def _base62(number: int) -> str:
    digits = ""
    while number:
        number, digit = divmod(number, 62)
        digits = ALPHABET[digit] + digits
    return digits.rjust(6, "0")


# ─────────────────────────────── the token itself


async def test_a_token_is_prefixed_random_and_carries_its_crc32(
    client: AsyncClient, account: Account
) -> None:
    made = await make_access_token(client, account, ["tasks:read"])
    token = made["token"]
    assert TOKEN.match(token), token
    secret, checksum = token[len(PREFIX) : -6], token[-6:]
    assert checksum == _base62(zlib.crc32(secret.encode()))
    assert made["prefix"] == token[: len(PREFIX) + 4]
    other = await make_access_token(client, account, ["tasks:read"])
    assert other["token"] != token


def test_a_typo_breaks_the_checksum() -> None:
    secret = "A" * 32
    token = f"{PREFIX}{secret}{_base62(zlib.crc32(secret.encode()))}"
    assert well_formed(token)
    assert not well_formed(token[:-1] + ("0" if token[-1] != "0" else "1"))
    assert not well_formed("B" + token[1:])  # the prefix
    assert not well_formed(token[: len(PREFIX)] + "B" + token[len(PREFIX) + 1 :])
    assert not well_formed(token + "A")
    assert not well_formed(token[:-1] + "-")


async def test_a_mistyped_token_is_401_without_asking_the_database(
    client: AsyncClient, account: Account, engine: AsyncEngine
) -> None:
    token = (await make_access_token(client, account, ["tasks:read"]))["token"]
    typo = token[:10] + ("x" if token[10] != "x" else "y") + token[11:]
    with count_statements(engine) as log:
        response = await client.get("/tasks", headers=bearer(typo))
    assert_unauthorized(response, token_given=True)
    assert log.caller == [], log.statements
    assert log.queries == [], log.statements


async def test_only_the_hash_is_stored(
    client: AsyncClient, db_session: AsyncSession, account: Account
) -> None:
    made = await make_access_token(client, account, ["tasks:read"], name="backup")
    token = made["token"]
    # As the tables' owner (the test engine's superuser), past every policy.
    stored = (
        await db_session.execute(
            text("SELECT to_jsonb(t) AS row FROM access_tokens t WHERE id = :id"),
            {"id": made["id"]},
        )
    ).scalar_one()
    assert stored["token_hash"] == hashlib.sha256(token.encode()).hexdigest()
    assert stored["prefix"] == token[:11]
    secret = token[len(PREFIX) :]
    assert all(secret[4:] not in str(value) for value in stored.values()), stored


async def test_the_list_shows_no_secret(client: AsyncClient, account: Account) -> None:
    made = await make_access_token(client, account, ["tasks:write"], name="ci", expires_in_days=7)
    listed = await client.get("/users/me/tokens")
    assert listed.status_code == 200, listed.text
    (entry,) = [token for token in listed.json() if token["id"] == made["id"]]
    assert set(entry) == {
        "id",
        "name",
        "prefix",
        "scopes",
        "workspace_id",
        "created_at",
        "expires_at",
        "last_used_at",
    }
    assert entry["name"] == "ci"
    assert entry["scopes"] == ["tasks:read", "tasks:write"]  # writing includes reading
    assert entry["workspace_id"] is None
    assert entry["last_used_at"] is None
    assert made["token"][len(PREFIX) + 4 :] not in listed.text
    assert {key: made[key] for key in entry} == entry


def test_the_scopes_are_the_matrix_actions_and_the_accounts() -> None:
    assert {str(action) for action in Action} <= set(TOKEN_SCOPES)
    assert set(TOKEN_SCOPES) - {str(action) for action in Action} == {
        "account:read",
        "account:write",
    }
    assert set(get_args(schemas.ScopeName)) == set(TOKEN_SCOPES)


# ─────────────────────────────── what is refused making one


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "x", "scopes": ["tasks:delete"]}, "body.scopes.0"),
        ({"name": "x", "scopes": []}, "body.scopes"),
        ({"name": "x", "scopes": ["tasks:read", "tasks:read"]}, "body.scopes"),
        ({"name": " ", "scopes": ["tasks:read"]}, "body.name"),
        ({"name": "x", "scopes": ["tasks:read"], "expires_in_days": 0}, "body.expires_in_days"),
        (
            {"name": "x", "scopes": ["tasks:read"], "expires_at": "2020-01-01T00:00:00Z"},
            "body.expires_at",
        ),
        (
            {
                "name": "x",
                "scopes": ["tasks:read"],
                "expires_at": "2999-01-01T00:00:00Z",
                "expires_in_days": 3,
            },
            "body.expires_in_days",
        ),
        ({"name": "x", "scopes": ["tasks:read"], "workspace_id": None}, "body.workspace_id"),
    ],
)
async def test_a_bad_request_is_422_naming_the_field(
    client: AsyncClient,
    db_session: AsyncSession,
    account: Account,
    body: dict[str, object],
    field: str,
) -> None:
    response = await client.post("/users/me/tokens", json=body)
    assert_validation_problem(response, field)
    assert (await db_session.scalars(select(AccessToken.id))).all() == []


async def test_a_workspace_of_someone_elses_is_422(
    client: AsyncClient, db_session: AsyncSession, other_account: Account
) -> None:
    response = await client.post(
        "/users/me/tokens",
        json={
            "name": "x",
            "scopes": ["tasks:read"],
            "workspace_id": other_account.personal_workspace_id,
        },
    )
    assert_validation_problem(response, "body.workspace_id")
    assert (await db_session.scalars(select(AccessToken.id))).all() == []


async def test_past_the_cap_is_409(
    client_at: ClientAt, db_session: AsyncSession, account: Account
) -> None:
    capped = client_at(max_access_tokens_per_user=2)
    for _ in range(2):
        await make_access_token(capped, account, ["tasks:read"])
    refused = await capped.post(
        "/users/me/tokens",
        json={"name": "third", "scopes": ["tasks:read"]},
        headers=account.headers,
    )
    assert_problem(refused, 409, problem_type=LIMIT_REACHED)
    assert len((await db_session.scalars(select(AccessToken.id))).all()) == 2
    # An expired token does not count.
    await db_session.execute(
        update(AccessToken).values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
    )
    await make_access_token(capped, account, ["tasks:read"])


# ─────────────────────────────── what a token may not do at all


@pytest.mark.parametrize(
    ("method", "url", "body"),
    [
        ("POST", "/users/me/tokens", {"name": "from a token", "scopes": ["tasks:read"]}),
        ("GET", "/users/me/tokens", None),
        ("DELETE", "/users/me/tokens", None),
        ("POST", "/auth/logout", None),
        ("POST", "/auth/logout-all", None),
        ("PATCH", "/users/me", {"password": "a new password 123", "current_password": "x"}),
    ],
)
async def test_a_token_cannot_manage_tokens_sessions_or_the_password(
    client: AsyncClient,
    db_session: AsyncSession,
    account: Account,
    method: str,
    url: str,
    body: dict[str, object] | None,
) -> None:
    made = await make_access_token(client, account, list(TOKEN_SCOPES))
    before = (await db_session.execute(select(AccessToken.id, AccessToken.name))).all()
    sessions = (await db_session.execute(select(AuthSession.id, AuthSession.revoked_at))).all()
    password = await db_session.scalar(select(User.password_hash).where(User.id == account.user_id))

    response = await client.request(method, url, json=body, headers=bearer(made["token"]))

    problem = assert_problem(response, 403, problem_type=FORBIDDEN)
    assert "login session" in problem["detail"], problem
    assert (await db_session.execute(select(AccessToken.id, AccessToken.name))).all() == before
    assert (
        await db_session.execute(select(AuthSession.id, AuthSession.revoked_at))
    ).all() == sessions
    assert (
        await db_session.scalar(select(User.password_hash).where(User.id == account.user_id))
    ) == password


async def test_a_token_may_rename_its_user_with_account_write(
    client: AsyncClient, account: Account
) -> None:
    writer = (await make_access_token(client, account, ["account:write"]))["token"]
    reader = (await make_access_token(client, account, ["account:read"]))["token"]
    refused = await client.patch("/users/me", json={"display_name": "X"}, headers=bearer(reader))
    assert "account:write" in assert_problem(refused, 403, problem_type=FORBIDDEN)["detail"]
    renamed = await client.patch(
        "/users/me", json={"display_name": "Renamed"}, headers=bearer(writer)
    )
    assert renamed.status_code == 200, renamed.text
    me = await client.get("/users/me", headers=bearer(reader))
    assert me.json()["display_name"] == "Renamed"


# ─────────────────────────────── when a token stops working


async def test_revoked_is_401_on_the_next_request(client: AsyncClient, account: Account) -> None:
    made = await make_access_token(client, account, ["tasks:read"])
    assert (await client.get("/tasks", headers=bearer(made["token"]))).status_code == 200

    revoked = await client.delete(f"/users/me/tokens/{made['id']}")
    assert revoked.status_code == 204, revoked.text

    assert_unauthorized(await client.get("/tasks", headers=bearer(made["token"])), token_given=True)
    assert made["id"] not in [
        token["id"] for token in (await client.get("/users/me/tokens")).json()
    ]
    assert_problem(await client.delete(f"/users/me/tokens/{made['id']}"), 404)


async def test_revoking_another_accounts_token_is_404(
    client: AsyncClient, account: Account, other_account: Account
) -> None:
    theirs = await make_access_token(client, other_account, ["tasks:read"])
    missing = await client.delete("/users/me/tokens/00000000-0000-4000-8000-000000000000")
    response = await client.delete(f"/users/me/tokens/{theirs['id']}")
    assert_problem(response, 404)
    assert response.content == missing.content
    assert (await client.get("/tasks", headers=bearer(theirs["token"]))).status_code == 200


async def test_revoking_them_all(client: AsyncClient, account: Account) -> None:
    tokens = [(await make_access_token(client, account, ["tasks:read"]))["token"] for _ in "ab"]
    assert (await client.delete("/users/me/tokens")).status_code == 204
    for token in tokens:
        assert_unauthorized(await client.get("/tasks", headers=bearer(token)), token_given=True)
    assert (await client.get("/users/me/tokens")).json() == []


async def test_expired_is_401(
    client: AsyncClient, db_session: AsyncSession, account: Account
) -> None:
    made = await make_access_token(client, account, ["tasks:read"], expires_in_days=1)
    assert (await client.get("/tasks", headers=bearer(made["token"]))).status_code == 200
    await db_session.execute(
        update(AccessToken)
        .where(AccessToken.id == made["id"])
        .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
    )
    await db_session.commit()
    assert_unauthorized(await client.get("/tasks", headers=bearer(made["token"])), token_given=True)


async def test_a_disabled_account_ends_its_tokens(
    client: AsyncClient, db_session: AsyncSession, account: Account
) -> None:
    made = await make_access_token(client, account, ["tasks:read", "tasks:write"])
    await db_session.execute(update(User).where(User.id == account.user_id).values(is_active=False))
    await db_session.commit()  # into the test's transaction: a refused request rolls back
    assert_unauthorized(await client.get("/tasks", headers=bearer(made["token"])), token_given=True)
    response = await client.post("/tasks", json={"title": "x"}, headers=bearer(made["token"]))
    assert_unauthorized(response, token_given=True)
    assert (await db_session.scalars(select(Task.id))).all() == []


async def test_logging_out_everywhere_leaves_tokens_working_unless_asked(
    client: AsyncClient, account: Account
) -> None:
    made = await make_access_token(client, account, ["tasks:read"])
    assert (await client.post("/auth/logout-all")).status_code == 204
    assert (await client.get("/tasks", headers=bearer(made["token"]))).status_code == 200


async def test_logging_out_everywhere_with_the_tokens(
    client_at: ClientAt, account: Account, member_account: Account
) -> None:
    client = client_at()
    made = await make_access_token(client, member_account, ["tasks:read"])
    response = await client.post(
        "/auth/logout-all", json={"include_access_tokens": True}, headers=member_account.headers
    )
    assert response.status_code == 204, response.text
    assert_unauthorized(await client.get("/tasks", headers=bearer(made["token"])), token_given=True)


async def test_a_password_change_leaves_tokens_working(
    client: AsyncClient, account: Account
) -> None:
    made = await make_access_token(client, account, ["account:read"])
    changed = await client.patch(
        "/users/me",
        json={"password": "another good passphrase", "current_password": account.password},
    )
    assert changed.status_code == 200, changed.text
    assert (await client.get("/users/me", headers=bearer(made["token"]))).status_code == 200


# ─────────────────────────────── a token bound to a workspace


async def test_a_bound_token_works_in_its_workspace_only(
    client: AsyncClient, account: Account
) -> None:
    team = (await client.post("/workspaces", json={"name": "Team"})).json()["id"]
    in_team = (await client.post("/tasks", json={"title": "team", "workspace_id": team})).json()
    personal = (await client.post("/tasks", json={"title": "mine"})).json()
    bound = await make_access_token(
        client, account, ["tasks:write", "workspaces:write"], workspace_id=team
    )
    headers = bearer(bound["token"])

    listed = await client.get("/tasks", headers=headers)
    assert [task["id"] for task in listed.json()] == [in_team["id"]]
    assert [w["id"] for w in (await client.get("/workspaces", headers=headers)).json()] == [team]
    assert_problem(await client.get(f"/tasks/{personal['id']}", headers=headers), 404)
    assert_problem(
        await client.get(f"/workspaces/{account.personal_workspace_id}", headers=headers), 404
    )
    # Without a workspace named, a new task goes in the token's.
    made = await client.post("/tasks", json={"title": "by the script"}, headers=headers)
    assert made.status_code == 201, made.text
    assert made.json()["workspace_id"] == team
    # It makes no workspace (it could not see it).
    refused = await client.post("/workspaces", json={"name": "another"}, headers=headers)
    assert "bound to workspace" in assert_problem(refused, 403, problem_type=FORBIDDEN)["detail"]


async def test_leaving_the_workspace_deletes_its_bound_tokens(
    client: AsyncClient, account: Account, member_account: Account
) -> None:
    team = (await client.post("/workspaces", json={"name": "Team"})).json()["id"]
    await add_member(client, team, member_account.email, member_account.headers)
    bound = await make_access_token(client, member_account, ["tasks:read"], workspace_id=team)
    left = await client.delete(
        f"/workspaces/{team}/members/{member_account.user_id}", headers=member_account.headers
    )
    assert left.status_code == 204, left.text
    assert_unauthorized(
        await client.get("/tasks", headers=bearer(bound["token"])), token_given=True
    )


async def test_a_token_does_what_both_its_scopes_and_the_role_allow(
    client: AsyncClient, account: Account, member_account: Account
) -> None:
    """A viewer's token with tasks:write still cannot write: 403 naming the roles."""
    team = (await client.post("/workspaces", json={"name": "Team"})).json()["id"]
    await add_member(client, team, member_account.email, member_account.headers, "viewer")
    token = (await make_access_token(client, member_account, ["tasks:write"]))["token"]
    response = await client.post(
        "/tasks", json={"title": "x", "workspace_id": team}, headers=bearer(token)
    )
    assert assert_problem(response, 403, problem_type=FORBIDDEN)["detail"].endswith(
        "yours is viewer"
    )


async def test_a_membership_a_token_gives_is_within_its_scopes(
    client: AsyncClient, account: Account, member_account: Account
) -> None:
    """members:write without tasks:write invites viewers, not members (who could write)."""
    team = (await client.post("/workspaces", json={"name": "Team"})).json()["id"]
    token = bearer((await make_access_token(client, account, ["members:write"]))["token"])
    body = {"email": member_account.email, "role": "member"}
    refused = await client.post(f"/workspaces/{team}/invitations", json=body, headers=token)
    detail = assert_problem(refused, 403, problem_type=FORBIDDEN)["detail"]
    assert detail == "a membership as member needs an access token with the scope tasks:write"
    body["role"] = "viewer"
    invited = await client.post(f"/workspaces/{team}/invitations", json=body, headers=token)
    assert invited.status_code == 202, invited.text


# ─────────────────────────────── the database, with the application out of the way


async def _enter_as_token(session: AsyncSession, token: str) -> None:
    entered = await UserRepository(session).enter(
        TEST_KEY.entry("token", subject=access_token_hash(token))
    )
    assert entered is not None
    assert entered.token is not None


async def test_sql_as_a_read_only_tokens_caller_cannot_write(
    client: AsyncClient, db_session: AsyncSession, account: Account
) -> None:
    task = (await client.post("/tasks", json={"title": "keep me"})).json()
    token = (await make_access_token(client, account, ["tasks:read"]))["token"]
    workspace = account.personal_workspace_id
    await _enter_as_token(db_session, token)

    # It reads.
    assert (await db_session.scalars(select(Task.title))).all() == ["keep me"]
    # It writes nothing: the policies refuse an insert (and a change of the workspace it
    # may lock), and hide the rows from a change.
    for refused in (
        insert(Task).values(title="forged", workspace_id=workspace, version=1),
        text("UPDATE workspaces SET name = 'renamed' WHERE id = :id").bindparams(id=workspace),
    ):
        with pytest.raises(DBAPIError) as raised:
            async with db_session.begin_nested():
                await db_session.execute(refused)
        assert is_policy_violation(raised.value), raised.value
    for statement in (
        update(Task).where(Task.id == task["id"]).values(title="changed"),
        delete(Task).where(Task.id == task["id"]),
        text("UPDATE users SET display_name = 'renamed'"),
        text("UPDATE auth_sessions SET revoked_at = now()"),
        text("DELETE FROM memberships"),
        text("DELETE FROM access_tokens"),
    ):
        async with db_session.begin_nested():
            result = await db_session.execute(statement)
        assert getattr(result, "rowcount", None) == 0, statement
    # Nor does it see its own tokens, or the login sessions.
    assert (await db_session.execute(text("SELECT id FROM access_tokens"))).all() == []
    assert (await db_session.execute(text("SELECT id FROM auth_sessions"))).all() == []
    with pytest.raises(DBAPIError) as raised:
        async with db_session.begin_nested():
            await db_session.execute(
                text(
                    "INSERT INTO access_tokens (id, user_id, name, token_hash, prefix, scopes) "
                    "VALUES (gen_random_uuid(), :me, 'x', repeat('0', 64), 'tm_pat_', "
                    "ARRAY['tasks:write'])"
                ).bindparams(me=account.user_id)
            )
    assert is_policy_violation(raised.value), raised.value
    await leave_scope(db_session)
    assert (await db_session.scalar(select(Task.title).where(Task.id == task["id"]))) == "keep me"


async def test_sql_as_an_account_write_tokens_caller_cannot_set_the_password(
    client: AsyncClient, db_session: AsyncSession, account: Account
) -> None:
    """account:write renames the account, but SQL as the token cannot set a password of
    its own (then log in with it: the token would be a full login), nor move the
    personal workspace: the database refuses (42501), whatever the application does."""
    team = (await client.post("/workspaces", json={"name": "Team"})).json()["id"]
    token = (await make_access_token(client, account, ["account:write"]))["token"]
    before = (
        await db_session.execute(
            text("SELECT password_hash, password_changed_at FROM users WHERE id = :id"),
            {"id": account.user_id},
        )
    ).one()
    await _enter_as_token(db_session, token)

    for sql in (
        "UPDATE users SET password_hash = '$argon2id$mine' WHERE id = :id",
        "UPDATE users SET password_changed_at = now() - interval '1 day' WHERE id = :id",
        "UPDATE users SET personal_workspace_id = :team WHERE id = :id",
    ):
        with pytest.raises(DBAPIError) as raised:
            async with db_session.begin_nested():
                await db_session.execute(text(sql), {"id": account.user_id, "team": team})
        assert sqlstate(raised.value) == INSUFFICIENT_PRIVILEGE, (sql, raised.value)
    # It still renames the account.
    async with db_session.begin_nested():
        renamed = await db_session.execute(
            text("UPDATE users SET display_name = 'renamed' WHERE id = :id"),
            {"id": account.user_id},
        )
    assert getattr(renamed, "rowcount", None) == 1
    await leave_scope(db_session)
    after = (
        await db_session.execute(
            text(
                "SELECT password_hash, password_changed_at, display_name FROM users WHERE id = :id"
            ),
            {"id": account.user_id},
        )
    ).one()
    assert (after.password_hash, after.password_changed_at) == tuple(before)
    assert after.display_name == "renamed"


async def test_sql_as_a_bound_tokens_caller_sees_its_workspace_only(
    client: AsyncClient, db_session: AsyncSession, account: Account
) -> None:
    team = (await client.post("/workspaces", json={"name": "Team"})).json()["id"]
    await client.post("/tasks", json={"title": "team", "workspace_id": team})
    await client.post("/tasks", json={"title": "mine"})
    token = (await make_access_token(client, account, ["tasks:write"], workspace_id=team))["token"]
    await _enter_as_token(db_session, token)

    assert (await db_session.scalars(select(Task.title))).all() == ["team"]
    ids = (await db_session.execute(text("SELECT taskmanager_workspace_ids()"))).scalar_one()
    assert ids == [team]
    result = await db_session.execute(update(Task).values(title="changed"))
    assert getattr(result, "rowcount", None) == 1  # the team's task only
    with pytest.raises(DBAPIError) as raised:
        async with db_session.begin_nested():
            await db_session.execute(
                insert(Task).values(
                    title="elsewhere", workspace_id=account.personal_workspace_id, version=1
                )
            )
    assert is_policy_violation(raised.value), raised.value


def test_every_scope_has_its_enum_member() -> None:
    assert [scope.value for scope in TokenScope] == list(TOKEN_SCOPES)


async def test_a_tokens_idempotency_keys_are_its_own(
    client: AsyncClient, db_session: AsyncSession, account: Account
) -> None:
    """The login's response is not replayed to a token (bound elsewhere, it could not see
    the task): the same key and body create the token's own task."""
    team = (await client.post("/workspaces", json={"name": "Team"})).json()["id"]
    token = (await make_access_token(client, account, ["tasks:write"], workspace_id=team))["token"]
    key = {"Idempotency-Key": "nightly-1"}
    by_login = await client.post("/tasks", json={"title": "same"}, headers=key)
    by_token = await client.post("/tasks", json={"title": "same"}, headers={**key, **bearer(token)})
    again = await client.post("/tasks", json={"title": "same"}, headers={**key, **bearer(token)})
    assert (by_login.status_code, by_token.status_code, again.status_code) == (201, 201, 201)
    assert by_token.json()["workspace_id"] == team
    assert by_token.json()["id"] != by_login.json()["id"]
    assert again.json() == by_token.json()
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert len((await db_session.scalars(select(Task.id))).all()) == 2


async def test_sql_as_a_token_reads_and_writes_its_own_tokens_idempotency_keys_only(
    client: AsyncClient, db_session: AsyncSession, account: Account
) -> None:
    """The service tells a token's keys apart by their scope (" token <its id>"); request
    SQL as another token, or as a read-only one, sees and writes none of the login's or
    another token's stored responses, and the login's caller none of a token's."""
    team = (await client.post("/workspaces", json={"name": "Team"})).json()["id"]
    writer = await make_access_token(client, account, ["tasks:write"], workspace_id=team)
    reader = await make_access_token(client, account, ["tasks:read"], workspace_id=team)
    key = {"Idempotency-Key": "nightly-1"}
    assert (await client.post("/tasks", json={"title": "a"}, headers=key)).status_code == 201
    by_writer = await client.post(
        "/tasks", json={"title": "b"}, headers={**key, **bearer(writer["token"])}
    )
    assert by_writer.status_code == 201, by_writer.text
    scopes = text("SELECT scope FROM idempotency_keys ORDER BY scope")
    insert_key = text(
        "INSERT INTO idempotency_keys (user_id, scope, key, request_hash, expires_at) "
        "VALUES (:me, :scope, 'forged', 'x', now() + interval '1 hour')"
    )

    await _enter_as_token(db_session, reader["token"])
    assert (await db_session.scalars(scopes)).all() == []
    for statement in (
        text("UPDATE idempotency_keys SET response_body = '{}'::jsonb"),
        text("DELETE FROM idempotency_keys"),
    ):
        async with db_session.begin_nested():
            result = await db_session.execute(statement)
        assert getattr(result, "rowcount", None) == 0, statement
    for scope in ("POST /tasks", f"POST /tasks token {writer['id']}"):
        with pytest.raises(DBAPIError) as raised:
            async with db_session.begin_nested():
                await db_session.execute(insert_key, {"me": account.user_id, "scope": scope})
        assert is_policy_violation(raised.value), (scope, raised.value)
    async with db_session.begin_nested():  # its own token's scope: allowed
        await db_session.execute(
            insert_key, {"me": account.user_id, "scope": f"POST /tasks token {reader['id']}"}
        )
    await leave_scope(db_session)

    await _enter_as_token(db_session, writer["token"])
    assert (await db_session.scalars(scopes)).all() == [f"POST /tasks token {writer['id']}"]
    await leave_scope(db_session)
    await enter_scope(db_session, account)
    assert (await db_session.scalars(scopes)).all() == ["POST /tasks"]
    with pytest.raises(DBAPIError) as raised:
        async with db_session.begin_nested():
            await db_session.execute(
                insert_key,
                {"me": account.user_id, "scope": f"POST /tasks token {writer['id']}"},
            )
    assert is_policy_violation(raised.value), raised.value


async def _workspace_of(client: AsyncClient, owner: Account, name: str) -> int:
    made = await client.post("/workspaces", json={"name": name}, headers=owner.headers)
    assert made.status_code == 201, made.text
    workspace_id: int = made.json()["id"]
    return workspace_id


async def test_sql_as_a_bound_token_neither_joins_nor_leaves_another_workspace(
    client: AsyncClient, db_session: AsyncSession, account: Account, member_account: Account
) -> None:
    """A token bound to alice's team, even with members:write: it cannot accept carol's
    invitation to her workspace, insert alice's membership there (even on an invitation
    accepted in this transaction), nor delete alice's membership of another workspace."""
    team = (await client.post("/workspaces", json={"name": "Team"})).json()["id"]
    invited_to = await _workspace_of(client, member_account, "Carol's")
    member_of = await _workspace_of(client, member_account, "Carol's other")
    await add_member(
        client, member_of, account.email, account.headers, "member", inviter=member_account.headers
    )
    invitation = await invite(
        client, invited_to, account.email, "viewer", inviter=member_account.headers
    )
    token = await make_access_token(client, account, ["members:write"], workspace_id=team)
    membership = insert(Membership).values(
        workspace_id=invited_to, user_id=account.user_id, role="viewer"
    )

    await _enter_as_token(db_session, token["token"])
    async with db_session.begin_nested():
        accepted = await db_session.execute(
            update(Invitation)
            .values(accepted_at=func.now())
            .execution_options(synchronize_session=False)
        )
    assert getattr(accepted, "rowcount", None) == 0
    with pytest.raises(DBAPIError) as raised:
        async with db_session.begin_nested():
            await db_session.execute(membership)
    assert is_policy_violation(raised.value), raised.value
    # Accepted in this transaction (as the invitee's login would), the membership is still
    # not the token's to insert.
    await leave_scope(db_session)
    await db_session.execute(
        update(Invitation)
        .where(Invitation.id == uuid.UUID(invitation["id"]))
        .values(accepted_at=func.now())
    )
    await _enter_as_token(db_session, token["token"])
    with pytest.raises(DBAPIError) as raised:
        async with db_session.begin_nested():
            await db_session.execute(membership)
    assert is_policy_violation(raised.value), raised.value
    # A DELETE without a WHERE reads no column (no SELECT policy applies): it removes the
    # memberships of the token's workspace only (its own among them, so the token goes).
    left = await db_session.execute(text("DELETE FROM memberships"))
    assert getattr(left, "rowcount", None) == 1
    await leave_scope(db_session)
    roles = await db_session.execute(
        select(Membership.workspace_id).where(Membership.user_id == account.user_id)
    )
    assert set(roles.scalars()) == {account.personal_workspace_id, member_of}


async def test_sql_as_a_token_touches_only_invitations_it_may_manage(
    client: AsyncClient, db_session: AsyncSession, account: Account, member_account: Account
) -> None:
    """A token is never the invitee: it neither sees, lists nor answers its user's
    invitations; with members:write it sees and revokes those of its workspace only."""
    team = (await client.post("/workspaces", json={"name": "Team"})).json()["id"]
    carols = await _workspace_of(client, member_account, "Carol's")
    to_alice = await invite(client, carols, account.email, "viewer", inviter=member_account.headers)
    to_carol = await invite(client, team, member_account.email, "viewer")
    reader = await make_access_token(client, account, ["tasks:read"])
    manager = await make_access_token(client, account, ["members:write"], workspace_id=team)
    seen = select(Invitation.id).order_by(Invitation.id)

    await _enter_as_token(db_session, reader["token"])
    assert (await db_session.scalars(seen)).all() == []
    mine = await db_session.execute(text("SELECT * FROM taskmanager_my_invitations()"))
    assert mine.all() == []
    assert await db_session.scalar(text("SELECT taskmanager_caller_verified_email()")) is None
    for column in ("declined_at", "accepted_at", "revoked_at"):
        async with db_session.begin_nested():
            result = await db_session.execute(text(f"UPDATE invitations SET {column} = now()"))
        assert getattr(result, "rowcount", None) == 0, column
    await leave_scope(db_session)

    await _enter_as_token(db_session, manager["token"])
    assert (await db_session.scalars(seen)).all() == [uuid.UUID(to_carol["id"])]
    async with db_session.begin_nested():
        declined = await db_session.execute(
            text("UPDATE invitations SET declined_at = now() WHERE id = :id"),
            {"id": to_alice["id"]},
        )
    assert getattr(declined, "rowcount", None) == 0
    async with db_session.begin_nested():
        revoked = await db_session.execute(
            text("UPDATE invitations SET revoked_at = now() WHERE id = :id"), {"id": to_carol["id"]}
        )
    assert getattr(revoked, "rowcount", None) == 1
    await leave_scope(db_session)
    # The login's caller, the invitee, still sees its own (open) invitation.
    await enter_scope(db_session, account)
    mine = await db_session.execute(text("SELECT id FROM taskmanager_my_invitations()"))
    assert [str(row.id) for row in mine] == [to_alice["id"]]
