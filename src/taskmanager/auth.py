"""Who is calling: the current user dependency (lecture Week 9: session -> repository ->
current user -> route).

A request with a valid access token becomes a `Scope`: the token is verified (signature,
algorithm, audience, issuer, expiry), then one statement enters the transaction as that
caller: the database checks the service's proof, that the user is active and the login
session alive, answers their memberships, and switches to the caller role under
row-level security. Anything wrong is a 401 with `WWW-Authenticate: Bearer` and a problem
body.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import OAuth2PasswordBearer
from sqlalchemy.ext.asyncio import AsyncSession

from taskmanager.database import ReadSessionDep, SessionDep
from taskmanager.middleware import user_id_var
from taskmanager.problems import ProblemError, unauthorized_problem
from taskmanager.repositories.user_repository import CallerRow, UserRepository
from taskmanager.security.caller_key import CallerKey
from taskmanager.security.scope import Scope, mint_scope
from taskmanager.security.tokens import LEEWAY_SECONDS, InvalidAccessTokenError, read_access_token

TOKEN_URL = "/auth/token"

# auto_error=False: a missing token is answered by _unauthorized, as a problem.
oauth2_scheme = OAuth2PasswordBearer(
    tokenUrl=TOKEN_URL,
    auto_error=False,
    description="Log in with your email as the username (POST /auth/token).",
)
BearerToken = Annotated[str | None, Depends(oauth2_scheme)]


SESSION_ENDED = "this login has ended (logged out, password changed, or account disabled)"


def unauthorized_error(detail: str, *, token_given: bool) -> ProblemError:
    """The 401 to raise (see problems.unauthorized_problem)."""
    problem, headers = unauthorized_problem(detail, token_given=token_given)
    return ProblemError(problem, headers=headers)


async def _scope_of(request: Request, session: AsyncSession, token: str | None) -> Scope:
    if not token:
        raise unauthorized_error("this request needs an access token", token_given=False)
    try:
        claims = read_access_token(request.app.state.signing_key, token)
    except InvalidAccessTokenError as exc:
        raise unauthorized_error(str(exc), token_given=True) from None
    # The database accepts the proof as long as the token (and its leeway) lasts.
    valid_until = claims.expires_at + LEEWAY_SECONDS
    caller = await _enter(request, session, claims.user_id, claims.session_id, valid_until)
    user_id_var.set(claims.user_id)  # the request's log lines name the caller from here on
    return _scope(caller, claims.session_id, valid_until)


async def _enter(
    request: Request,
    session: AsyncSession,
    user_id: int,
    session_id: uuid.UUID,
    valid_until: int,
) -> CallerRow:
    key: CallerKey = request.app.state.caller_key
    entry = key.entry("request", user_id, session_id, valid_until=valid_until)
    caller = await UserRepository(session).enter(entry)
    if caller is None:
        raise unauthorized_error(SESSION_ENDED, token_given=True)
    return caller


async def enter_again(request: Request, session: AsyncSession, user: Scope) -> None:
    """Enter the caller of `user` again, in a transaction begun after the request's first
    one ended (a route that committed early); 401 if their login ended meanwhile."""
    await _enter(request, session, user.user_id, user.session_id, user.valid_until)


def _scope(caller: CallerRow, session_id: uuid.UUID, valid_until: int) -> Scope:
    if caller.user_id is None:
        raise ValueError("a scope is a user's")
    return mint_scope(
        user_id=caller.user_id,
        session_id=session_id,
        workspace_ids=tuple(caller.workspace_ids),
        owned_workspace_ids=frozenset(caller.owned_workspace_ids),
        personal_workspace_id=caller.personal_workspace_id,
        valid_until=valid_until,
    )


async def get_current_user(request: Request, session: SessionDep, token: BearerToken) -> Scope:
    """The caller, in the request's transaction (for routes that change data)."""
    return await _scope_of(request, session, token)


async def get_current_reader(
    request: Request, session: ReadSessionDep, token: BearerToken
) -> Scope:
    """The caller, in the request's read-only transaction (for routes that only read)."""
    return await _scope_of(request, session, token)


async def scope_of_account(session: AsyncSession, key: CallerKey, user_id: int) -> Scope:
    """The scope of an account for an operator's command (`taskmanager db seed`), which has
    no token: the rest of the transaction runs as that user under row-level security."""
    entry = key.entry("operator", user_id)
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


CurrentUserDep = Annotated[Scope, Depends(get_current_user)]
CurrentReaderDep = Annotated[Scope, Depends(get_current_reader)]
