"""Accounts and tokens: register, verify an address, log in (the OAuth2 password flow),
refresh, log out, reset a forgotten password.

The flows themselves are taskmanager.accounts' (registration, sessions); here their
outcomes become responses. Failures that must be remembered (a failed login counted, a
reused refresh token's session revoked) are answered by returning the 401 rather than
raising it: the request's transaction then commits what was recorded, instead of rolling
it back."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Form, Request, Response, status
from fastapi.responses import JSONResponse

from taskmanager.accounts import account_mail, sessions
from taskmanager.accounts.login_limits import (
    client_network,
    count_registration,
    registration_limits,
)
from taskmanager.accounts.registration import mail_lifetimes, register_by_mail
from taskmanager.accounts.sessions import Opened, Refused, TooManyAttempts
from taskmanager.bad_input import BadInputError
from taskmanager.database import SessionDep
from taskmanager.dependencies import SESSION_ENDED, TOKEN_URL, CurrentUserDep, unauthorized_error
from taskmanager.observability.logs import current_request_id
from taskmanager.observability.metrics import count_login_failure
from taskmanager.openapi import problem_responses, token_problem_responses
from taskmanager.problems import (
    CONFLICT,
    TOO_MANY_LOGIN_ATTEMPTS,
    TOO_MANY_MAILS,
    TOO_MANY_REGISTRATIONS,
    ProblemError,
    ProblemType,
    TokenProblem,
    unauthorized_problem,
)
from taskmanager.repositories.access_token_repository import AccessTokenRepository
from taskmanager.repositories.auth_session_repository import AuthSessionRepository
from taskmanager.repositories.user_repository import UserRepository
from taskmanager.schemas import (
    Accepted,
    LoginForm,
    LogoutAllRequest,
    PasswordResetConfirm,
    PasswordResetRequest,
    RefreshRequest,
    RegisterRequest,
    TokenResponse,
    VerifyEmailRequest,
)
from taskmanager.security.tokens import issue_access_token

router = APIRouter(prefix="/auth", tags=["auth"])

BAD_CREDENTIALS = "the email or the password is wrong"
TOO_MANY_PASSWORD_ATTEMPTS = "too many password attempts"


def request_network(request: Request) -> str:
    """The network of the client that sent `request`, as attempts are counted under it
    (see taskmanager.accounts.login_limits.client_network)."""
    return client_network(request.client.host if request.client else None)


def retry_later(problem_type: ProblemType, detail: str, wait: int) -> JSONResponse:
    """A 429 of `problem_type`: `detail`, and how long to wait (also in Retry-After)."""
    problem = problem_type.problem(f"{detail}; try again in {wait} seconds")
    return problem.response({"Retry-After": str(wait)})


def _tokens(request: Request, opened: Opened) -> TokenResponse:
    settings = request.app.state.settings
    lifetime = timedelta(minutes=settings.access_token_minutes)
    access = issue_access_token(
        request.app.state.signing_key, opened.user_id, opened.session_id, lifetime
    )
    return TokenResponse(
        access_token=access,
        expires_in=int(lifetime.total_seconds()),
        refresh_token=opened.refresh_token,
    )


def _unauthorized(detail: str) -> JSONResponse:
    problem, headers = unauthorized_problem(detail, token_given=False)
    return problem.response(headers)


REGISTRATION_ACCEPTED = (
    "check your mail: a new account gets a link that verifies its address; an address that "
    "has an account already gets a mail to its owner instead"
)
RESET_ACCEPTED = (
    "if an account has this address, a link to choose a new password is on its way; it "
    "works once, for a limited time"
)
TOKEN_NOT_VALID = "is not valid: unknown, used already, or expired (ask for a new link)"
TOO_MANY_MAIL_REQUESTS = "too many mails asked for"


@router.post(
    "/register",
    response_model=Accepted,
    status_code=status.HTTP_202_ACCEPTED,
    responses=problem_responses(413, 422, 429, 503),
)
async def register(
    body: RegisterRequest, session: SessionDep, request: Request
) -> Accepted | JSONResponse:
    """Open an account with its personal workspace, and mail a link that verifies its
    address (POST the link's token to /auth/verify-email). Until verified, the account logs
    in and works in its own workspaces.

    The answer is the same 202 whether or not the address (in any case) has an account
    already: in that case no account is made, and its owner gets a mail saying someone
    tried, with a link to reset the password. Too many registrations from one address, or
    from everywhere, are 429 with `Retry-After`."""
    settings = request.app.state.settings
    wait = await count_registration(
        session,
        request.app.state.caller_key,
        registration_limits(settings),
        request_network(request),
    )
    if wait is not None:
        return retry_later(TOO_MANY_REGISTRATIONS, "too many registrations", wait)
    await register_by_mail(
        session,
        request.app.state.caller_key,
        request.app.state.mail_token_key,
        mail_lifetimes(settings),
        body.email,
        body.password,
        body.display_name,
        request_id=current_request_id(),
    )
    return Accepted(detail=REGISTRATION_ACCEPTED)


@router.post(
    "/verify-email",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=problem_responses(413, 422, 503),
)
async def verify_email(body: VerifyEmailRequest, session: SessionDep, request: Request) -> None:
    """Verify an address with the token of the mailed link (no login needed: the token
    proves the mailbox). Each token works once; an unknown, used or expired one is 422
    naming `body.token`."""
    if not await account_mail.verify_email(session, request.app.state.caller_key, body.token):
        raise BadInputError("body.token", TOKEN_NOT_VALID)


@router.post(
    "/verify-email/resend",
    response_model=Accepted,
    status_code=status.HTTP_202_ACCEPTED,
    responses=problem_responses(401, 409, 429, 503),
)
async def resend_verification(
    user: CurrentUserDep, session: SessionDep, request: Request
) -> Accepted | JSONResponse:
    """Mail a new verification link to your address. An address verified already is 409;
    too many mails asked for (per account and per client address) are 429 with
    `Retry-After`."""
    me = await UserRepository(session).get_caller(user.user_id)
    outcome = await account_mail.resend_verification(
        session,
        request.app.state.caller_key,
        request.app.state.mail_token_key,
        request.app.state.settings,
        request_network(request),
        user,
        me,
    )
    if isinstance(outcome, TooManyAttempts):
        return retry_later(TOO_MANY_MAILS, TOO_MANY_MAIL_REQUESTS, outcome.wait)
    if outcome is Refused.LOGIN_ENDED:
        raise unauthorized_error(SESSION_ENDED, token_given=True)
    if outcome is account_mail.ALREADY_VERIFIED:
        raise ProblemError(CONFLICT.problem("your address is verified already"))
    return Accepted(detail="a new link is on its way to your address")


@router.post(
    "/password-reset",
    response_model=Accepted,
    status_code=status.HTTP_202_ACCEPTED,
    responses=problem_responses(413, 422, 429, 503),
)
async def request_password_reset(
    body: PasswordResetRequest, session: SessionDep, request: Request
) -> Accepted | JSONResponse:
    """Ask for a link to choose a new password, mailed to `email` if an account has that
    address. The answer is the same 202 either way. Too many requests for one address, or
    from one client address, are 429 with `Retry-After`."""
    outcome = await account_mail.request_password_reset(
        session,
        request.app.state.caller_key,
        request.app.state.mail_token_key,
        request.app.state.settings,
        request_network(request),
        body.email,
    )
    if isinstance(outcome, TooManyAttempts):
        return retry_later(TOO_MANY_MAILS, TOO_MANY_MAIL_REQUESTS, outcome.wait)
    return Accepted(detail=RESET_ACCEPTED)


@router.post(
    "/password-reset/confirm",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=problem_responses(413, 422, 503),
)
async def confirm_password_reset(
    body: PasswordResetConfirm, session: SessionDep, request: Request
) -> None:
    """Set a new password with the token of the mailed link. Every login session of the
    account ends (its access and refresh tokens stop working); log in again. Each token
    works once; an unknown, used or expired one is 422 naming `body.token`."""
    reset = await account_mail.reset_password(
        session, request.app.state.caller_key, body.token, body.new_password
    )
    if not reset:
        raise BadInputError("body.token", TOKEN_NOT_VALID)


# At TOKEN_URL, where the OAuth2 scheme sends clients to log in (/docs' Authorize dialog).
@router.post(
    TOKEN_URL.removeprefix(router.prefix),
    response_model=TokenResponse,
    responses=token_problem_responses(401, 413, 422, 429, 503),
)
async def login(
    form: Annotated[LoginForm, Form()],
    session: SessionDep,
    request: Request,
) -> TokenResponse | JSONResponse:
    """Log in with the OAuth2 password flow: `username` is your email. Answers an access
    token (a JWT, short-lived) and a refresh token (single use).

    A wrong email and a wrong password get the same 401 after the same work. Too many
    attempts at one account, or from one address, are 429 with `Retry-After`; failures
    from elsewhere do not hold back an address the account logged in from lately."""
    outcome = await sessions.log_in(
        session,
        request.app.state.caller_key,
        request.app.state.settings,
        request_network(request),
        form.username,
        form.password,
    )
    if isinstance(outcome, TooManyAttempts):
        count_login_failure("too_many_attempts")
        return retry_later(TOO_MANY_LOGIN_ATTEMPTS, TOO_MANY_PASSWORD_ATTEMPTS, outcome.wait)
    if isinstance(outcome, Refused):
        count_login_failure("bad_credentials")
        problem, headers = unauthorized_problem(BAD_CREDENTIALS, token_given=False)
        # Also in OAuth 2's words (RFC 6749 5.2), which OAuth 2 clients show their user.
        return TokenProblem.of(problem, "invalid_grant").response(headers)
    return _tokens(request, outcome)


@router.post(
    "/refresh",
    response_model=TokenResponse,
    responses={**problem_responses(401, 413, 422, 503)},
)
async def refresh(
    body: RefreshRequest, session: SessionDep, request: Request
) -> TokenResponse | JSONResponse:
    """Trade a refresh token for a new access token and a new refresh token. Each refresh
    token works once: presenting a spent one ends its whole login session."""
    outcome = await sessions.refresh(session, request.app.state.caller_key, body.refresh_token)
    if outcome is Refused.REFRESH_TOKEN_REUSED:
        return _unauthorized(
            "this refresh token was already used; its login session has been ended"
        )
    if isinstance(outcome, Refused):
        return _unauthorized("the refresh token is not valid")
    return _tokens(request, outcome)


@router.post(
    "/logout",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=problem_responses(401, 403, 503),
)
async def logout(user: CurrentUserDep, session: SessionDep) -> None:
    """End this login session: its access and refresh tokens stop working at once."""
    await AuthSessionRepository(session).revoke(user.user_id, user.session_id, "logout")


# POST /auth/logout-all without a body: the defaults.
_NO_OPTIONS = LogoutAllRequest()


@router.post(
    "/logout-all",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=problem_responses(401, 403, 413, 422, 503),
)
async def logout_all(
    user: CurrentUserDep, session: SessionDep, body: LogoutAllRequest = _NO_OPTIONS
) -> None:
    """End every login session of this account, this one included. Personal access tokens
    keep working (they are for scripts) unless `include_access_tokens` is true."""
    await AuthSessionRepository(session).revoke_all(user.user_id, "logout_all")
    if body.include_access_tokens:
        await AccessTokenRepository(session).revoke_all(user.user_id)
