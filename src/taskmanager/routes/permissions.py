"""What the caller's role allows, checked the same way by every route that changes something.

A workspace the caller cannot see is 404, as an id that does not exist; one they see where
their role does not allow the change is 403, naming the roles that would
(`ActionNotAllowedError`, answered by errors.py). Both come from the caller's `Scope`, in
memory: the roles were read with the caller in the request's first statement.

A task, category or label reaches its workspace through its row: `row_for_change` reads the
row locked, as a change does. PostgreSQL lets only a role that may write lock (or change) a
row, so where the locked read finds nothing, a plain read tells a row the caller may only
see (403) from one they cannot see (404); that second statement is spent on refusals only.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from fastapi import HTTPException

from taskmanager.routes.preconditions import require_match
from taskmanager.security.roles import Action
from taskmanager.security.scope import Scope


class WorkspaceRow(Protocol):
    """A row of a workspace, versioned (its ETag)."""

    @property
    def workspace_id(self) -> int: ...

    @property
    def version(self) -> int: ...


Row = TypeVar("Row", bound=WorkspaceRow)


def require(user: Scope, workspace_id: int, action: Action, not_found: str) -> None:
    """404 saying `not_found` unless the caller belongs to `workspace_id`; 403 unless their
    role there allows `action`."""
    if not user.can_see(workspace_id):
        raise HTTPException(status_code=404, detail=not_found)
    user.require(workspace_id, action)


async def row_for_change(
    find: Callable[[bool], Awaitable[Row | None]],
    user: Scope,
    action: Action,
    not_found: str,
    if_match: str | None,
) -> Row:
    """The row `find(for_update)` finds, locked for this transaction, if the caller's role
    in its workspace allows `action` (else 403) and If-Match allows the change (else 412);
    404 saying `not_found` if the caller cannot see it."""
    row = await find(True)
    if row is None:
        seen = await find(False)
        if seen is not None:
            user.require(seen.workspace_id, action)
        raise HTTPException(status_code=404, detail=not_found)
    user.require(row.workspace_id, action)
    require_match(if_match, row.version)
    return row
