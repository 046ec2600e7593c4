"""Idempotency-Key on POST: a retry with the same key and body gets the original response
and creates nothing; the same key with another body is a 422 problem.

Keys live in PostgreSQL (see IdempotencyRepository), claimed in the request's own
transaction, so the promise holds across workers and restarts and a stored response always
describes a row that was really committed.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import Depends, Header, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from taskmanager.bad_input import BadInputError
from taskmanager.database import SessionDep
from taskmanager.dependencies import CurrentUserDep
from taskmanager.models import IDEMPOTENCY_KEY_MAX_LENGTH
from taskmanager.problems import IDEMPOTENCY_KEY_REUSED, ProblemError
from taskmanager.repositories.idempotency_repository import IdempotencyRepository
from taskmanager.routes.preconditions import Versioned, set_etag

REPLAYED_HEADER = "Idempotent-Replayed"
# Printable ASCII without spaces: safe to store, log and echo.
_VALID_KEY = re.compile(rf"^[\x21-\x7e]{{1,{IDEMPOTENCY_KEY_MAX_LENGTH}}}$")

IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description="Any unique string (e.g. a UUID): a retry with the same key and body "
        "returns the original response instead of creating a second resource.",
        # Documented only: get_idempotent_request checks it, with a message of its own.
        json_schema_extra={"pattern": "^[!-~]+$", "maxLength": IDEMPOTENCY_KEY_MAX_LENGTH},
    ),
]


@dataclass
class IdempotentRequest:
    """One POST's view of its Idempotency-Key (or of its absence)."""

    repository: IdempotencyRepository
    user_id: int
    scope: str
    key: str | None
    ttl: timedelta

    async def replay(self, body: BaseModel) -> JSONResponse | None:
        """The stored response if this key was already used with this body; None if the
        request should go ahead (no key, or the key is now claimed by this request)."""
        if self.key is None:
            return None
        request_hash = hashlib.sha256(body.model_dump_json().encode()).hexdigest()
        expires_at = datetime.now(UTC) + self.ttl
        earlier = await self.repository.claim(
            self.user_id, self.scope, self.key, request_hash, expires_at
        )
        if earlier is None:
            return None
        if earlier.request_hash != request_hash or earlier.status_code is None:
            raise ProblemError(
                IDEMPOTENCY_KEY_REUSED.about_field(
                    "header.Idempotency-Key",
                    "this key was already used with a different request body; use a new key "
                    "for a new request",
                )
            )
        headers = {**(earlier.response_headers or {}), REPLAYED_HEADER: "true"}
        return JSONResponse(earlier.response_body, status_code=earlier.status_code, headers=headers)

    async def remember(
        self,
        status_code: int,
        response_model: type[BaseModel],
        content: Any,
        response: Response,
    ) -> None:
        """Store this request's response (`content` as `response_model`, with the Location
        and ETag headers) for retries; no-op without a key."""
        if self.key is None:
            return
        body = response_model.model_validate(content).model_dump(mode="json")
        headers = {
            name: value
            for name in ("Location", "ETag")
            if (value := response.headers.get(name)) is not None
        }
        await self.repository.remember(
            self.user_id, self.scope, self.key, status_code, body, headers
        )

    async def created(
        self,
        response: Response,
        response_model: type[BaseModel],
        row: Versioned,
        location: str,
        shows: str | None = None,
    ) -> None:
        """Answer 201 with `row`, new at `location`: its URL in Location, its version (and
        `shows`: preconditions.etag) in ETag, and the whole answer remembered for retries
        (the headers first: they are part of it)."""
        response.headers["Location"] = location
        set_etag(response, row.version, shows)
        await self.remember(201, response_model, row, response)


async def get_idempotent_request(
    request: Request,
    session: SessionDep,
    user: CurrentUserDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> IdempotentRequest:
    if idempotency_key is not None and not _VALID_KEY.match(idempotency_key):
        raise BadInputError(
            "header.Idempotency-Key",
            f"must be 1 to {IDEMPOTENCY_KEY_MAX_LENGTH} printable ASCII characters without spaces",
        )
    route = request.scope.get("route")
    path = getattr(route, "path", request.url.path)
    scope = f"{request.method} {path}"
    if user.token is not None:
        # A personal access token's keys are its own: it never replays what its user's
        # login (or another token) made, which it may not be allowed to see. The database
        # holds it to this suffix (migration 0013's idempotency_keys_of_the_caller).
        scope = f"{scope} token {user.token.token_id}"
    return IdempotentRequest(
        repository=IdempotencyRepository(session),
        user_id=user.user_id,  # keys are per user: one never replays another's response
        scope=scope,
        key=idempotency_key,
        ttl=timedelta(hours=request.app.state.settings.idempotency_ttl_hours),
    )


IdempotencyDep = Annotated[IdempotentRequest, Depends(get_idempotent_request)]
