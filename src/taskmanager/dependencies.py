"""Dependency factories: the lecture's chain, session -> repository -> current user -> route
(Week 9: "get_current_user will be another Depends() in the chain").

The current user: a request with a valid access token becomes a `Scope`. The token is
verified (signature, algorithm, audience, issuer, expiry), then one statement enters the
transaction as that caller (taskmanager.accounts.callers). Anything wrong is a 401 with
`WWW-Authenticate: Bearer` and a problem body. A personal access token (`tm_pat_...`) is
checked against the database instead (its checksum first), and may call an operation only
if the operation names the scope it needs (`token_scope`) and the token has it (else 403).

A repository per request wraps that request's one session and the caller's scope. Routes
that only read take a repository on a read-only transaction (`...ReaderDep`); routes that
change data take one on the request's transaction (`...RepositoryDep`).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import BackgroundTasks, Depends, Request
from fastapi.security import OAuth2PasswordBearer
from sqlalchemy.ext.asyncio import AsyncSession

from taskmanager.accounts.access_tokens import stamp_token_use
from taskmanager.accounts.agenda import Agenda
from taskmanager.accounts.callers import enter_as_user, enter_with_token
from taskmanager.cache.invalidation import note_writer
from taskmanager.cache.task_reads import Credentials, TaskReads
from taskmanager.database import ReadSessionDep, SessionDep
from taskmanager.integrations.subscribed_calendars import SubscribedCalendars
from taskmanager.observability.logs import current_request_id, user_id_var
from taskmanager.problems import ProblemError, unauthorized_problem
from taskmanager.repositories.activity_repository import ActivityRepository
from taskmanager.repositories.calendar_subscription_repository import (
    CalendarSubscriptionRepository,
)
from taskmanager.repositories.category_repository import CategoryRepository
from taskmanager.repositories.invitation_repository import InvitationRepository
from taskmanager.repositories.label_repository import LabelRepository
from taskmanager.repositories.task_repository import TaskRepository
from taskmanager.repositories.workspace_repository import MembershipLimits, WorkspaceRepository
from taskmanager.security.access_tokens import (
    TokenScope,
    access_token_hash,
    is_access_token,
    well_formed,
)
from taskmanager.security.roles import ActionNotAllowedError
from taskmanager.security.scope import Scope
from taskmanager.security.tokens import LEEWAY_SECONDS, InvalidAccessTokenError, read_access_token

# ─────────────────────────────────────────────
# The current user
# ─────────────────────────────────────────────

TOKEN_URL = "/auth/token"

# auto_error=False: a missing token is answered by unauthorized_error, as a problem.
oauth2_scheme = OAuth2PasswordBearer(
    tokenUrl=TOKEN_URL,
    auto_error=False,
    description="Log in with your email as the username (POST /auth/token). Scripts send "
    "a personal access token (`tm_pat_...`, POST /users/me/tokens) as the bearer token "
    "instead; each operation's `x-token-scope` names the scope it needs.",
)
BearerToken = Annotated[str | None, Depends(oauth2_scheme)]


SESSION_ENDED = "this login has ended (logged out, password changed, or account disabled)"


def unauthorized_error(detail: str, *, token_given: bool) -> ProblemError:
    """The 401 to raise (see problems.unauthorized_problem)."""
    problem, headers = unauthorized_problem(detail, token_given=token_given)
    return ProblemError(problem, headers=headers)


TOKEN_ENDED = "this access token was revoked, has expired, or its account is disabled"
LOGIN_NEEDED = "this needs a login session (POST /auth/token): a personal access token cannot do it"
# The OpenAPI extension naming the scope a personal access token needs for an operation.
TOKEN_SCOPE = "x-token-scope"


def token_scope(scope: TokenScope) -> dict[str, Any]:
    """An operation's `openapi_extra`: a personal access token with `scope` may call it.
    An operation without one is a login session's only (a token gets 403): nothing is
    open to tokens by omission. The document shows each operation's scope to clients."""
    return {TOKEN_SCOPE: str(scope)}


def _scope_needed(request: Request) -> TokenScope | None:
    """The scope the matched operation needs of a personal access token (token_scope)."""
    extra = getattr(request.scope.get("route"), "openapi_extra", None) or {}
    needed = extra.get(TOKEN_SCOPE)
    return None if needed is None else TokenScope(needed)


async def _scope_of(
    request: Request, session: AsyncSession, token: str | None, background: BackgroundTasks
) -> Scope:
    if not token:
        raise unauthorized_error("this request needs an access token", token_given=False)
    if is_access_token(token):
        return await _scope_of_access_token(request, session, token, background)
    return await _enter_login(request, session, _credentials_of(request, token))


def _credentials_of(request: Request, token: str) -> Credentials:
    """A login session's access token, verified (else 401)."""
    try:
        claims = read_access_token(request.app.state.signing_key, token)
    except InvalidAccessTokenError as exc:
        raise unauthorized_error(str(exc), token_given=True) from None
    user_id_var.set(claims.user_id)  # the request's log lines name the caller from here on
    # The database accepts the proof as long as the token (and its leeway) lasts.
    return Credentials(claims.user_id, claims.session_id, claims.expires_at + LEEWAY_SECONDS)


async def _enter_login(request: Request, session: AsyncSession, credentials: Credentials) -> Scope:
    """Enter the transaction as a login session's caller (401 when the database refuses)."""
    user = await enter_as_user(
        session,
        request.app.state.caller_key,
        credentials.user_id,
        credentials.session_id,
        credentials.valid_until,
        current_request_id(),
    )
    if user is None:
        raise unauthorized_error(SESSION_ENDED, token_given=True)
    return user


async def _scope_of_access_token(
    request: Request, session: AsyncSession, token: str, background: BackgroundTasks
) -> Scope:
    """A personal access token's caller: 401 for a malformed one (its checksum, checked
    before any database round trip) or one the database refuses; 403 when the operation
    needs a scope the token lacks, or a login session."""
    if not well_formed(token):
        raise unauthorized_error("the access token is not valid", token_given=True)
    token_hash = access_token_hash(token)
    entered = await enter_with_token(
        session, request.app.state.caller_key, token_hash, current_request_id()
    )
    if entered is None:
        raise unauthorized_error(TOKEN_ENDED, token_given=True)
    user_id_var.set(entered.scope.user_id)
    needed = _scope_needed(request)
    if needed is None:
        raise ActionNotAllowedError(LOGIN_NEEDED)
    if not entered.scope.allows(needed):
        raise ActionNotAllowedError.for_scopes([needed])
    if entered.stamp_due:
        # After the response, in a short transaction of its own: a request that only reads
        # stays read-only, and a use is stamped even when the request's own work fails.
        background.add_task(
            stamp_token_use,
            request.app.state.async_session_factory,
            request.app.state.caller_key,
            token_hash,
        )
    return entered.scope


async def get_current_user(
    request: Request, session: SessionDep, token: BearerToken, background: BackgroundTasks
) -> Scope:
    """The caller, in the request's transaction (for routes that change data)."""
    scope = await _scope_of(request, session, token, background)
    note_writer(session, scope)
    return scope


async def get_current_reader(
    request: Request, session: ReadSessionDep, token: BearerToken, background: BackgroundTasks
) -> Scope:
    """The caller, in the request's read-only transaction (for routes that only read)."""
    return await _scope_of(request, session, token, background)


async def get_task_reads(
    request: Request, session: ReadSessionDep, token: BearerToken, background: BackgroundTasks
) -> TaskReads:
    """Task reads through the cache (taskmanager.cache.task_reads): the access token is
    verified here; the transaction is entered as the caller only on a miss. A personal
    access token enters at once and reads through the database."""
    if not token or is_access_token(token):
        return TaskReads.of(
            TaskRepository(session, await _scope_of(request, session, token, background))
        )
    credentials = _credentials_of(request, token)
    opened: list[TaskRepository] = []

    async def open_repository() -> TaskRepository:
        if not opened:
            opened.append(
                TaskRepository(session, await _enter_login(request, session, credentials))
            )
        return opened[0]

    return TaskReads(credentials.user_id, request.app.state.cache, credentials, open_repository)


CurrentUserDep = Annotated[Scope, Depends(get_current_user)]
CurrentReaderDep = Annotated[Scope, Depends(get_current_reader)]

# ─────────────────────────────────────────────
# Repositories
# ─────────────────────────────────────────────


async def get_task_repository(session: SessionDep, user: CurrentUserDep) -> TaskRepository:
    return TaskRepository(session, user)


async def get_task_reader(session: ReadSessionDep, user: CurrentReaderDep) -> TaskRepository:
    return TaskRepository(session, user)


async def get_category_repository(session: SessionDep, user: CurrentUserDep) -> CategoryRepository:
    return CategoryRepository(session, user)


async def get_category_reader(
    session: ReadSessionDep, user: CurrentReaderDep
) -> CategoryRepository:
    return CategoryRepository(session, user)


async def get_label_repository(session: SessionDep, user: CurrentUserDep) -> LabelRepository:
    return LabelRepository(session, user)


async def get_label_reader(session: ReadSessionDep, user: CurrentReaderDep) -> LabelRepository:
    return LabelRepository(session, user)


# The workspace repository takes the scope per call (creating a workspace changes it), but
# its dependency still needs the current user: that is what switches the transaction to the
# request role, so a route cannot reach workspaces outside row-level security.
async def get_workspace_repository(
    session: SessionDep, user: CurrentUserDep
) -> WorkspaceRepository:
    return WorkspaceRepository(session)


async def get_workspace_reader(
    session: ReadSessionDep, user: CurrentReaderDep
) -> WorkspaceRepository:
    return WorkspaceRepository(session)


async def get_activity_reader(
    session: ReadSessionDep, user: CurrentReaderDep
) -> ActivityRepository:
    """The activity log is read only: the database writes it (migration 0011)."""
    return ActivityRepository(session, user)


# As the workspace repository: the scope per call, the current user for the caller role.
async def get_invitation_repository(
    session: SessionDep, user: CurrentUserDep
) -> InvitationRepository:
    return InvitationRepository(session)


async def get_invitation_reader(
    session: ReadSessionDep, user: CurrentReaderDep
) -> InvitationRepository:
    return InvitationRepository(session)


def get_membership_limits(request: Request) -> MembershipLimits:
    """The caps on new memberships, from the app's settings."""
    settings = request.app.state.settings
    return MembershipLimits(
        workspaces_per_user=settings.max_workspaces_per_user,
        members_per_workspace=settings.max_members_per_workspace,
    )


def get_subscribed_calendars(request: Request) -> SubscribedCalendars:
    """The process's feeds of subscribed calendars (built in the lifespan)."""
    feeds: SubscribedCalendars = request.app.state.subscribed_calendars
    return feeds


SubscribedCalendarsDep = Annotated[SubscribedCalendars, Depends(get_subscribed_calendars)]


async def get_calendar_repository(
    session: SessionDep, user: CurrentUserDep
) -> CalendarSubscriptionRepository:
    return CalendarSubscriptionRepository(session, user)


async def get_calendar_reader(
    session: ReadSessionDep, user: CurrentReaderDep
) -> CalendarSubscriptionRepository:
    return CalendarSubscriptionRepository(session, user)


async def get_agenda(
    session: ReadSessionDep, user: CurrentReaderDep, feeds: SubscribedCalendarsDep
) -> Agenda:
    """The caller's agenda: their due tasks and their workspaces' subscriptions, read in
    the request's read-only transaction, and the feeds."""
    return Agenda(
        TaskRepository(session, user),
        CalendarSubscriptionRepository(session, user),
        feeds,
    )


TaskRepositoryDep = Annotated[TaskRepository, Depends(get_task_repository)]
TaskReaderDep = Annotated[TaskRepository, Depends(get_task_reader)]
TaskReadsDep = Annotated[TaskReads, Depends(get_task_reads)]
CategoryRepositoryDep = Annotated[CategoryRepository, Depends(get_category_repository)]
CategoryReaderDep = Annotated[CategoryRepository, Depends(get_category_reader)]
LabelRepositoryDep = Annotated[LabelRepository, Depends(get_label_repository)]
LabelReaderDep = Annotated[LabelRepository, Depends(get_label_reader)]
WorkspaceRepositoryDep = Annotated[WorkspaceRepository, Depends(get_workspace_repository)]
WorkspaceReaderDep = Annotated[WorkspaceRepository, Depends(get_workspace_reader)]
MembershipLimitsDep = Annotated[MembershipLimits, Depends(get_membership_limits)]
InvitationRepositoryDep = Annotated[InvitationRepository, Depends(get_invitation_repository)]
InvitationReaderDep = Annotated[InvitationRepository, Depends(get_invitation_reader)]
ActivityReaderDep = Annotated[ActivityRepository, Depends(get_activity_reader)]
CalendarRepositoryDep = Annotated[CalendarSubscriptionRepository, Depends(get_calendar_repository)]
CalendarReaderDep = Annotated[CalendarSubscriptionRepository, Depends(get_calendar_reader)]
AgendaDep = Annotated[Agenda, Depends(get_agenda)]
