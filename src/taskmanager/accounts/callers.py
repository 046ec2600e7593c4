"""Entering a transaction as a caller, and the `Scope` that comes out of it.

Every transaction that acts for someone starts with one statement (`UserRepository.enter`):
the database checks the service's proof, that the user is active and the login session
alive (or the personal access token valid), answers their memberships, and switches to the
caller role under row-level security. What it answered becomes the caller's `Scope`,
minted here and nowhere else: for a request, from a verified access token or a personal
access token (`taskmanager.dependencies.get_current_user`), or for an operator's command,
which has no token (`taskmanager db seed`, `db explain`).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from taskmanager.models import CalendarFeed
from taskmanager.repositories.calendar_feed_repository import CalendarFeedRepository
from taskmanager.repositories.user_repository import CallerRow, UserRepository
from taskmanager.security.access_tokens import TOKEN_SCOPES, TokenGrant, TokenScope
from taskmanager.security.caller_key import UNLOGGED_SUBJECT, CallerKey
from taskmanager.security.roles import ROLES, Role
from taskmanager.security.scope import Scope, mint_scope


async def enter_as_user(
    session: AsyncSession,
    key: CallerKey,
    user_id: int,
    session_id: uuid.UUID,
    valid_until: int,
    request_id: str | None = None,
) -> Scope | None:
    """Enter the transaction as the user of a login session, for as long as their access
    token lasts (`valid_until`), for the request `request_id`; their scope, or None when
    the database refuses (the login has ended: logged out, password changed, or account
    disabled)."""
    entry = key.entry("request", user_id, session_id, valid_until=valid_until)
    caller = await UserRepository(session).enter(entry, request_id)
    return None if caller is None else _scope(caller, session_id, valid_until)


@dataclass(frozen=True, slots=True)
class TokenCaller:
    """A transaction entered with a personal access token."""

    scope: Scope
    # Its last use was stamped over a minute ago (or never): this one should be.
    stamp_due: bool


async def enter_with_token(
    session: AsyncSession, key: CallerKey, token_hash: str, request_id: str | None = None
) -> TokenCaller | None:
    """Enter the transaction as the personal access token whose hash is `token_hash`: its
    user, narrowed to what the token allows. None when the database refuses (no such
    token: revoked, never made; expired; or its account disabled)."""
    entry = key.entry("token", subject=token_hash)
    caller = await UserRepository(session).enter(entry, request_id)
    if caller is None or caller.token is None:
        return None
    grant = TokenGrant(
        token_id=caller.token.token_id,
        scopes=frozenset(
            TokenScope(scope) for scope in caller.token.scopes if scope in TOKEN_SCOPES
        ),
        workspace_id=caller.token.workspace_id,
    )
    return TokenCaller(_scope(caller, grant.token_id, entry.valid_until, grant), caller.token.stale)


@dataclass(frozen=True, slots=True)
class FeedCaller:
    """A transaction entered with a calendar feed's secret."""

    scope: Scope
    feed: CalendarFeed
    # Its workspace's name; None for a feed of all its user's workspaces.
    workspace_name: str | None


async def enter_with_feed(
    session: AsyncSession, key: CallerKey, secret_hash: str, request_id: str | None = None
) -> FeedCaller | None:
    """Enter the transaction as the calendar feed whose secret's hash is `secret_hash`: its
    user, allowed to read tasks only (tasks:read; migration 0015 says the same in the
    database), in the feed's workspace if it is bound to one, else in every workspace of
    its user, as their memberships stand now. None when the database refuses (no such
    feed: never made, regenerated, gone with its workspace membership, revoked by a
    password reset; or its account disabled)."""
    entry = key.entry("calendar", subject=secret_hash)
    caller = await UserRepository(session).enter(entry, request_id)
    if caller is None:
        return None
    entered = await CalendarFeedRepository(session).entered()
    if entered is None:
        return None
    feed = entered.feed
    grant = TokenGrant(
        token_id=feed.id,
        scopes=frozenset({TokenScope.TASKS_READ}),
        workspace_id=feed.workspace_id,
    )
    scope = _scope(caller, feed.id, entry.valid_until, grant)
    return FeedCaller(scope, feed, entered.workspace_name)


def _scope(
    caller: CallerRow, session_id: uuid.UUID, valid_until: int, token: TokenGrant | None = None
) -> Scope:
    if caller.user_id is None:
        raise ValueError("a scope is a user's")
    return mint_scope(
        user_id=caller.user_id,
        session_id=session_id,
        workspace_ids=tuple(caller.workspace_ids),
        roles={
            workspace_id: Role(role)
            for workspace_id, role in caller.workspace_roles.items()
            if role in ROLES
        },
        personal_workspace_id=caller.personal_workspace_id,
        valid_until=valid_until,
        token=token,
    )


async def scope_of_account(
    session: AsyncSession, key: CallerKey, user_id: int, *, logged: bool = True
) -> Scope:
    """The scope of an account for an operator's command (`taskmanager db seed`), which has
    no token: the rest of the transaction runs as that user under row-level security.
    `logged=False`: its changes write no activity (made-up demo data, not anyone's work)."""
    entry = key.entry("operator", user_id, subject=None if logged else UNLOGGED_SUBJECT)
    caller = await UserRepository(session).enter(entry)
    if caller is None:
        raise LookupError(f"there is no account {user_id}")
    return _scope(caller, uuid.UUID(int=0), entry.valid_until)


async def account_id(session: AsyncSession, key: CallerKey, email: str) -> int | None:
    """The id of the account with `email` (any case), for an operator's command; the
    transaction is left entered as the operator, with no account."""
    users = UserRepository(session)
    await users.enter(key.entry("operator"))
    account = await users.password_hash_of(email, key)
    return None if account is None else account.user_id


@dataclass(frozen=True, slots=True)
class CallerFacts:
    """What the database answered about a login session's caller as it entered, as the
    cache keeps it (taskmanager.cache.task_reads): the workspaces ("3,7", ascending) and,
    as JSON, the role in each and the personal workspace."""

    workspaces: str
    roles: str


def facts_of(scope: Scope) -> CallerFacts:
    """The facts to keep for `scope` (a login session's, entered just now)."""
    ids = sorted(scope.workspace_ids)
    roles = {str(id_): str(scope.roles[id_]) for id_ in ids if id_ in scope.roles}
    return CallerFacts(
        ",".join(str(id_) for id_ in ids),
        json.dumps({"r": roles, "p": scope.personal_workspace_id}, separators=(",", ":")),
    )


def scope_from_facts(
    facts: CallerFacts, user_id: int, session_id: uuid.UUID, valid_until: int
) -> Scope:
    """The scope of a login session whose facts the cache kept: the same scope the
    database answered then, for the access token at hand. Only the cache's reads use it:
    nothing that writes, and no statement, runs on it (those enter the database)."""
    kept = json.loads(facts.roles)
    return mint_scope(
        user_id=user_id,
        session_id=session_id,
        workspace_ids=tuple(int(id_) for id_ in facts.workspaces.split(",") if id_),
        roles={int(id_): Role(role) for id_, role in kept["r"].items() if role in ROLES},
        personal_workspace_id=kept["p"],
        valid_until=valid_until,
    )
