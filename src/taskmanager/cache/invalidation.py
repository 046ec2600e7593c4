"""What a committed change makes stale in the cache, and voiding it before the response.

A request that writes voids, after its commit and before its response is sent (the session
dependency awaits it: the writer's next read, and everyone's, sees the change):

- the cached tasks, pages and counts of every workspace where its caller may change tasks:
  row-level security lets a request write nowhere else, so no write can be missed, whatever
  the route (a new generation for each: taskmanager.cache.client.CacheClient.bump);
- the caller facts of every user whose login sessions or memberships it changed. Those
  changes are few and each is made by one repository method, which notes the users here
  (`note_callers_changed`): logging out, logging out everywhere, a password changed or
  reset, joining, leaving or being removed from a workspace, a role changed, a workspace
  made or deleted (tests/cache/test_caller_facts.py makes each of these changes and then
  holds every valid cached fact against the database).

A change that does not go through a request (`taskmanager db seed`, SQL typed by an
operator) voids the whole cache: `taskmanager cache flush`.
"""

from __future__ import annotations

from fastapi import Request
from sqlalchemy.ext.asyncio import AsyncSession

from taskmanager.cache.client import CacheClient
from taskmanager.cache.metrics import record_invalidation
from taskmanager.security.roles import Action
from taskmanager.security.scope import Scope

# Keys of `session.info`: the request's caller, and the users whose facts changed.
WRITER = "cache_writer"
CHANGED_CALLERS = "cache_changed_callers"


def note_writer(session: AsyncSession, scope: Scope) -> None:
    """The caller a write session acts for (the current-user dependency notes it)."""
    session.info[WRITER] = scope


def note_callers_changed(session: AsyncSession, *user_ids: int) -> None:
    """Called by a repository that changed these users' login sessions or memberships in
    `session`'s transaction: their cached caller facts go once it commits."""
    session.info.setdefault(CHANGED_CALLERS, set()).update(user_ids)


def forget_changes(session: AsyncSession) -> None:
    """The transaction rolled back: nothing it noted happened."""
    session.info.pop(WRITER, None)
    session.info.pop(CHANGED_CALLERS, None)


async def void_after_commit(request: Request, session: AsyncSession) -> None:
    """After the request's commit: void what it made stale (see the module's docstring)."""
    writer: Scope | None = session.info.pop(WRITER, None)
    users: set[int] = session.info.pop(CHANGED_CALLERS, set())
    cache: CacheClient | None = getattr(request.app.state, "cache", None)
    if cache is None:
        return
    workspaces = (
        set()
        if writer is None
        else {id_ for id_ in writer.workspace_ids if writer.may(id_, Action.TASKS_WRITE)}
    )
    if workspaces or users:
        await cache.bump(workspaces, users)
        if workspaces:
            record_invalidation("task")
        if users:
            record_invalidation("caller")
