"""Task reads through the cache (lecture Week 10: check cache -> miss -> repository -> store).

Authorization comes first and never from a cached value: a request's caller is its access
token (verified by the dependency) plus its *caller facts*, the memberships and roles the
database answered when that login session last entered, kept in Redis until a change ends
them (taskmanager.cache.invalidation). A cached task is answered only to a caller whose
facts say they may read its workspace; a cached page or count only to the user it was made
for, while their workspaces are the ones it was made over. Everything else, and every miss,
goes to the repository on a transaction entered as the caller, under row-level security,
exactly as without a cache.

An entry is stored only if no write to its workspaces committed since before the database
was asked (the generations read with the lookup still hold; taskmanager.cache.scripts), so
a reader never stores what a writer already replaced. Concurrent misses of one task in one
process that saw the same generations share one database read (no stampede when a hot key
goes, and no reader is handed a read begun before a write it saw acknowledged); entries
expire at slightly different times (jitter). Personal access tokens read through the
database: each use is checked (and stamped) there.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import Response
from pydantic import TypeAdapter

from taskmanager.accounts.callers import CallerFacts, facts_of, scope_from_facts
from taskmanager.cache.client import CacheClient, new_token
from taskmanager.cache.metrics import CacheKind, record_error, record_hit, record_miss
from taskmanager.repositories.task_queries.views import TaskView, shown_digest
from taskmanager.repositories.task_repository import TaskRepository
from taskmanager.routes.preconditions import etag, none_match
from taskmanager.schemas import TaskWithCategoryResponse
from taskmanager.security.roles import Action
from taskmanager.security.scope import Scope

log = logging.getLogger(__name__)

# Cacheable answers are private to their caller, and a client must ask again (with
# If-None-Match) before using a copy it kept: it gets a 304 when nothing changed.
CACHE_CONTROL = "private, no-cache"

_TASK = TypeAdapter(TaskWithCategoryResponse)
_TASKS = TypeAdapter(list[TaskWithCategoryResponse])


@dataclass(frozen=True, slots=True)
class Answer:
    """A cacheable read's answer: its JSON body, its ETag and its other headers."""

    body: bytes
    etag: str
    headers: Mapping[str, str]

    def response(self, if_none_match: str | None) -> Response:
        """200 with the body, or 304 when If-None-Match names this ETag (RFC 9110 13.1.2:
        weak comparison, `*` matches any)."""
        headers = {**self.headers, "ETag": self.etag, "Cache-Control": CACHE_CONTROL}
        if if_none_match is not None and none_match(if_none_match, self.etag):
            return Response(status_code=304, headers=headers)
        return Response(self.body, media_type="application/json", headers=headers)


def task_answer(view: TaskView) -> Answer:
    """GET /tasks/{id}'s answer: the task as the response model shows it, ETag its version
    (and a digest of the category and labels it shows)."""
    body = _TASK.dump_json(_TASK.validate_python(view))
    return Answer(body, etag(view["version"], shown_digest(view)), {})


def page_answer(items: Sequence[TaskView], headers: Mapping[str, str]) -> Answer:
    """A list page's answer: ETag a digest of everything it shows (body and headers)."""
    body = _TASKS.dump_json(_TASKS.validate_python(items))
    digest = hashlib.sha256(body)
    for name in sorted(headers):
        digest.update(f"\n{name}: {headers[name]}".encode())
    return Answer(body, f'"{digest.hexdigest()[:32]}"', headers)


@dataclass(frozen=True, slots=True)
class Credentials:
    """A login session's verified access token: who, which login, until when."""

    user_id: int
    session_id: uuid.UUID
    valid_until: int


@dataclass(frozen=True, slots=True)
class _Entry:
    workspaces: str
    etag: str
    body: bytes
    headers: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class _Lookup:
    """One round trip's answer: the caller (when their facts are cached), the entries
    asked for, and what a store needs to check nothing changed meanwhile."""

    epoch: bytes
    user_generation: bytes
    facts: CallerFacts | None
    scope: Scope | None
    # The caller's workspaces' generations as the lookup read them (after a miss).
    generations: str | None
    entries: list[_Entry | None]


OpenRepository = Callable[[], Awaitable[TaskRepository]]
# A page as the route loads it: its tasks, its total (when counted), its other headers.
PageLoaded = tuple[Sequence[TaskView], int | None, dict[str, str]]
LoadPage = Callable[[TaskRepository, bool], Awaitable[PageLoaded]]


class TaskReads:
    """The reads of GET /tasks/{id} and GET /tasks for one request.

    `open_repository` enters the request's read-only transaction as the caller and gives
    the repository (a 401 when the database refuses the login); it is called only on a
    miss. `credentials` is None for a personal access token (no cache)."""

    def __init__(
        self,
        user_id: int,
        cache: CacheClient | None,
        credentials: Credentials | None,
        open_repository: OpenRepository,
    ) -> None:
        self.user_id = user_id
        self.cache = cache if credentials is not None else None
        self.credentials = credentials
        self.open_repository = open_repository

    @classmethod
    def of(cls, repository: TaskRepository) -> TaskReads:
        """Reads straight from `repository` (entered already), no cache: a personal access
        token's, or a test's that swaps the repository (lecture 6.1)."""

        async def entered() -> TaskRepository:
            return repository

        return cls(repository.scope.user_id, None, None, entered)

    async def one(self, task_id: int) -> Answer | None:
        """The task as its caller may see it, or None (not there, or not theirs)."""
        cache, credentials = self.cache, self.credentials
        if cache is None or credentials is None:
            view = await (await self.open_repository()).get_view(task_id)
            return None if view is None else task_answer(view)
        key = cache.key("task", task_id)
        lookup = await self._lookup(cache, credentials, [key])
        entry = lookup.entries[0] if lookup is not None else None
        if (
            lookup is not None
            and lookup.scope is not None
            and entry is not None
            and _may_read(lookup.scope, entry.workspaces)
        ):
            record_hit("task")
            return _entry_answer(entry)
        # Not cached, or not the caller's: the database answers (a task of another tenant
        # is then the same 404, in the same time, as one that does not exist).
        record_miss("task")
        if lookup is None or lookup.scope is None:
            repo = await self._repository(cache, credentials, lookup)
            view = await repo.get_view(task_id)
            return None if view is None else task_answer(view)
        return await _single_flight(
            cache,
            _flight(key, lookup),
            lookup.scope,
            lambda: self._task_from_database(cache, lookup, task_id),
        )

    async def _task_from_database(
        self, cache: CacheClient, lookup: _Lookup, task_id: int
    ) -> tuple[str, Answer] | None:
        repo = await self.open_repository()
        view = await repo.get_view(task_id)
        if view is None:
            return None
        answer = task_answer(view)
        workspace = str(view["workspace_id"])
        generation = _generation_of(lookup, repo.scope, workspace)
        if generation is not None:
            await _store(
                cache, cache.key("task", task_id), lookup.epoch, workspace, generation, answer
            )
        return workspace, answer

    async def page(
        self, *, url: str, filters_key: str, counted: bool, load: LoadPage, cacheable: bool = True
    ) -> Answer:
        """A list page (and its total when `counted`), from the cache or from `load`. Not
        `cacheable`: a page whose rows change with the clock alone (overdue), read anew."""
        cache, credentials = self.cache, self.credentials
        if cache is None or credentials is None or not cacheable:
            items, total, headers = await load(await self.open_repository(), counted)
            return page_answer(items, _with_total(headers, total))
        user = credentials.user_id
        page_key = cache.key("page", user, _digest(url))
        count_key = cache.key("count", user, _digest(filters_key))
        lookup = await self._lookup(
            cache, credentials, [page_key, count_key] if counted else [page_key]
        )
        cached_total: int | None = None
        if lookup is not None and lookup.facts is not None:
            page, *count = lookup.entries
            if page is not None and page.workspaces == lookup.facts.workspaces:
                record_hit("page")
                return _entry_answer(page)
            if count and count[0] is not None and count[0].workspaces == lookup.facts.workspaces:
                cached_total = _total_of(count[0])
            if cached_total is not None:
                record_hit("count")
            elif counted:
                record_miss("count")
        record_miss("page")
        repo = await self._repository(cache, credentials, lookup)
        count_now = counted and cached_total is None
        items, total, headers = await load(repo, count_now)
        answer = page_answer(items, _with_total(headers, total if count_now else cached_total))
        if lookup is not None and lookup.facts is not None and lookup.generations is not None:
            workspaces = lookup.facts.workspaces
            if facts_of(repo.scope).workspaces == workspaces:
                await _store(
                    cache, page_key, lookup.epoch, workspaces, lookup.generations, answer, "page"
                )
                if count_now and total is not None:
                    counted_answer = Answer(str(total).encode(), "", {})
                    await _store(
                        cache,
                        count_key,
                        lookup.epoch,
                        workspaces,
                        lookup.generations,
                        counted_answer,
                        "count",
                    )
        return answer

    async def _lookup(
        self, cache: CacheClient, credentials: Credentials, keys: list[str]
    ) -> _Lookup | None:
        user = credentials.user_id

        async def read(redis: Any) -> Any:
            return await cache.read_entries(
                keys=[
                    cache.epoch_key,
                    cache.user_prefix + str(user),
                    cache.key("caller", credentials.session_id),
                    *keys,
                ],
                args=[user, new_token(), cache.gen_prefix],
                client=redis,
            )

        answer = await cache.call("caller", read)
        if answer is None:
            return None
        try:
            return _lookup_of(answer, credentials)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            # Not what this release stores (another wrote it): the database answers.
            log.warning("cache: a lookup answered what it cannot read (%s)", type(exc).__name__)
            record_error("caller")
            return None

    async def _repository(
        self, cache: CacheClient, credentials: Credentials, lookup: _Lookup | None
    ) -> TaskRepository:
        """The repository on the database path; keeps the caller's facts the database just
        answered, when the lookup found none (and nothing changed them since)."""
        repo = await self.open_repository()
        if lookup is not None and lookup.facts is None:
            facts = facts_of(repo.scope)

            async def store(redis: Any) -> Any:
                return await cache.store_facts(
                    keys=[
                        cache.epoch_key,
                        cache.user_prefix + str(credentials.user_id),
                        cache.key("caller", credentials.session_id),
                    ],
                    args=[
                        lookup.epoch,
                        lookup.user_generation,
                        credentials.user_id,
                        facts.workspaces,
                        facts.roles,
                        _ttl(cache.caller_seconds),
                    ],
                    client=redis,
                )

            await cache.call("caller", store)
        return repo


def _lookup_of(answer: Any, credentials: Credentials) -> _Lookup:
    """The lookup script's answer, read (ValueError and the like if it is malformed)."""
    epoch, user_generation, workspaces, roles, generations, *entries = answer
    facts = scope = None
    if workspaces is not None and roles is not None:
        facts = CallerFacts(workspaces.decode(), roles.decode())
        scope = scope_from_facts(
            facts, credentials.user_id, credentials.session_id, credentials.valid_until
        )
        record_hit("caller")
    else:
        record_miss("caller")
    return _Lookup(
        bytes(epoch),
        bytes(user_generation),
        facts,
        scope,
        None if generations is None else generations.decode(),
        [_entry(entry) for entry in entries],
    )


def _may_read(scope: Scope, workspaces: str) -> bool:
    return workspaces.isdigit() and scope.may(int(workspaces), Action.TASKS_READ)


def _generation_of(lookup: _Lookup, scope: Scope, workspace: str) -> str | None:
    """The generation the lookup read for `workspace`, if the database's answer about the
    caller is the one the lookup's facts held (else nothing is stored)."""
    if lookup.facts is None or lookup.generations is None:
        return None
    if facts_of(scope).workspaces != lookup.facts.workspaces:
        return None
    ids = lookup.facts.workspaces.split(",")
    generations = lookup.generations.split(",")
    if workspace not in ids or len(generations) != len(ids):
        return None
    return generations[ids.index(workspace)]


def _entry(raw: Any) -> _Entry | None:
    """An entry as the lookup answered it; None (a miss) for anything malformed."""
    if raw is None:
        return None
    try:
        workspaces, etag, body, headers = raw
        return _Entry(workspaces.decode(), etag.decode(), bytes(body), json.loads(headers))
    except (TypeError, ValueError, AttributeError):
        return None


def _total_of(entry: _Entry) -> int | None:
    """The total a count entry holds; None (a miss) if it holds no count."""
    return int(entry.body) if entry.body.isdigit() else None


def _entry_answer(entry: _Entry) -> Answer:
    return Answer(entry.body, entry.etag, entry.headers)


def _with_total(headers: dict[str, str], total: int | None) -> dict[str, str]:
    return headers if total is None else {"X-Total-Count": str(total), **headers}


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _ttl(seconds: int) -> int:
    """`seconds`, less up to a tenth at random: entries stored together do not all expire
    together."""
    return max(1, seconds - random.randint(0, seconds // 10))


async def _store(
    cache: CacheClient,
    key: str,
    epoch: bytes,
    workspaces: str,
    generations: str,
    answer: Answer,
    kind: CacheKind = "task",
) -> None:
    async def store(redis: Any) -> Any:
        return await cache.store_entry(
            keys=[cache.epoch_key, key],
            args=[
                epoch,
                _ttl(cache.ttl_seconds),
                workspaces,
                generations,
                answer.etag,
                answer.body,
                json.dumps(dict(answer.headers)),
                cache.gen_prefix,
            ],
            client=redis,
        )

    await cache.call(kind, store)


def _flight(key: str, lookup: _Lookup) -> str:
    """Which misses of `key` may share one database read: those whose lookups saw the same
    epoch and generations. A read begun before a write was acknowledged saw the generation
    that write's commit replaced, so it is never handed to a reader who started after the
    acknowledgement (the writer's own next read included): that reader reads anew."""
    workspaces = lookup.facts.workspaces if lookup.facts is not None else ""
    return f"{key}|{lookup.epoch.decode()}|{workspaces}|{lookup.generations}"


# Misses of one task in flight in this process: the first asks the database, the others
# that saw the same generations (`_flight`) wait for its answer.
_in_flight: dict[str, asyncio.Future[tuple[str, Answer] | None]] = {}


async def _single_flight(
    cache: CacheClient,
    key: str,
    scope: Scope,
    load: Callable[[], Awaitable[tuple[str, Answer] | None]],
) -> Answer | None:
    """`load`'s answer for `key`, shared by the concurrent misses of this process. A
    waiter gets the shared task only if its own facts let it read the task's workspace;
    when the first found nothing (perhaps not visible to *it*), each asks for itself."""
    waiting = _in_flight.get(key)
    if waiting is not None:
        try:
            shared = await asyncio.shield(waiting)
        except asyncio.CancelledError:
            if not waiting.cancelled():
                raise  # this request itself was cancelled
            shared = None  # the first was: ask for ourselves
        except Exception:
            shared = None
        if shared is not None:
            workspace, answer = shared
            return answer if _may_read(scope, workspace) else None
    future: asyncio.Future[tuple[str, Answer] | None] = asyncio.get_running_loop().create_future()
    if waiting is None:
        _in_flight[key] = future
    try:
        found = await load()
    except Exception as exc:
        future.set_exception(exc)
        future.exception()  # retrieved: the waiters ask for themselves
        raise
    except BaseException:
        future.cancel()
        raise
    else:
        future.set_result(found)
    finally:
        if _in_flight.get(key) is future:
            del _in_flight[key]
    return None if found is None else found[1]
