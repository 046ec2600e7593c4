"""Personal access tokens for scripts: make one (shown once), list them, revoke them.

Only a login session may do any of it: these operations name no token scope, so a
personal access token gets 403 (taskmanager.dependencies), and the database refuses a
token's caller too (migration 0013)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Request, Response, status

from taskmanager.bad_input import BadInputError
from taskmanager.database import ReadSessionDep, SessionDep
from taskmanager.dependencies import CurrentReaderDep, CurrentUserDep
from taskmanager.models import AccessToken
from taskmanager.openapi import problem_responses, response_headers
from taskmanager.problems import LIMIT_REACHED, ProblemError
from taskmanager.repositories.access_token_repository import AccessTokenRepository
from taskmanager.schemas import AccessTokenCreate, AccessTokenCreated, AccessTokenResponse
from taskmanager.security.access_tokens import TokenScope, new_access_token, with_implied

router = APIRouter(prefix="/users/me/tokens", tags=["tokens"])

TokenId = Annotated[uuid.UUID, Path(description="The access token's id.")]
NOT_FOUND = "Access token not found"


def _expiry(body: AccessTokenCreate) -> datetime | None:
    """When the token stops working (None: never); 422 naming the field for a moment
    past, or for both ways of saying it."""
    if body.expires_at is not None and body.expires_in_days is not None:
        raise BadInputError("body.expires_in_days", "give expires_at or expires_in_days, not both")
    if body.expires_in_days is not None:
        return datetime.now(UTC) + timedelta(days=body.expires_in_days)
    if body.expires_at is not None and body.expires_at <= datetime.now(UTC):
        raise BadInputError("body.expires_at", "must be in the future")
    return body.expires_at


@router.post(
    "",
    response_model=AccessTokenCreated,
    status_code=status.HTTP_201_CREATED,
    responses={
        201: {"headers": response_headers("Location")},
        **problem_responses(401, 403, 409, 413, 422, 503),
    },
)
async def create_token(
    body: AccessTokenCreate,
    user: CurrentUserDep,
    session: SessionDep,
    request: Request,
    response: Response,
) -> AccessTokenCreated:
    """Make a personal access token for a script: answered once, with its secret in
    `token`; only its hash is kept. In a workspace it may do what both its `scopes` and
    your role there allow, in `workspace_id` alone if you name one. Needs a login (a token
    cannot make tokens: 403). 409 when you have as many unexpired tokens as an account may."""
    expires_at = _expiry(body)
    if body.workspace_id is not None and not user.can_see(body.workspace_id):
        raise BadInputError("body.workspace_id", "you are not a member of a workspace with this id")
    tokens = AccessTokenRepository(session)
    cap = request.app.state.settings.max_access_tokens_per_user
    if await tokens.count_live(user.user_id) >= cap:
        raise ProblemError(
            LIMIT_REACHED.problem(
                f"you have {cap} access tokens that have not expired, as many as an account "
                "may: revoke one first (DELETE /users/me/tokens/{id})"
            )
        )
    issued = new_access_token()
    scopes = with_implied(TokenScope(scope) for scope in body.scopes)
    token = await tokens.create(
        user_id=user.user_id,
        name=body.name,
        token_hash=issued.token_hash,
        prefix=issued.prefix,
        scopes=sorted(scopes),
        workspace_id=body.workspace_id,
        expires_at=expires_at,
    )
    response.headers["Location"] = str(request.url_for("list_tokens"))
    shown = AccessTokenResponse.model_validate(token)
    return AccessTokenCreated(**shown.model_dump(), token=issued.token)


@router.get(
    "",
    response_model=list[AccessTokenResponse],
    responses=problem_responses(401, 403, 503),
)
async def list_tokens(user: CurrentReaderDep, session: ReadSessionDep) -> Sequence[AccessToken]:
    """Your personal access tokens, newest first, without their secrets (expired ones too,
    until you revoke them). Needs a login."""
    return await AccessTokenRepository(session).list_mine(user.user_id)


@router.delete(
    "/{token_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=problem_responses(401, 403, 404, 422, 503),
)
async def revoke_token(token_id: TokenId, user: CurrentUserDep, session: SessionDep) -> None:
    """Revoke one of your personal access tokens: its next request is 401. Needs a login."""
    if not await AccessTokenRepository(session).revoke(user.user_id, token_id):
        raise HTTPException(status_code=404, detail=NOT_FOUND)


@router.delete(
    "",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=problem_responses(401, 403, 503),
)
async def revoke_all_tokens(user: CurrentUserDep, session: SessionDep) -> None:
    """Revoke every personal access token of your account. Needs a login."""
    await AccessTokenRepository(session).revoke_all(user.user_id)
