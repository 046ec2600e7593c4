"""Route logic with a fake in-memory TaskRepository (lecture 6.1: "your project needs both").

These tests check what the ROUTES do: which repository method they call with what, and how
they turn the answers into HTTP (404, 201 + Location, X-Total-Count, problem responses).
No database is involved: the app is built with a database URL nothing listens on and its
lifespan never runs, so a route that reached for a real session would fail loudly. Nor is
the caller: the current-user dependency is reached only through the repository and
idempotency dependencies, which are replaced here, so no token is needed.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient
from sqlalchemy import exc as sa_exc
from sqlalchemy.util import greenlet_spawn

from taskmanager.cache.task_reads import TaskReads
from taskmanager.config import Settings
from taskmanager.dependencies import get_task_reader, get_task_reads, get_task_repository
from taskmanager.errors import raised_by_database_driver
from taskmanager.main import create_app
from taskmanager.models import Category, Task
from taskmanager.problems import DATABASE_UNAVAILABLE, FORBIDDEN, INTERNAL_ERROR
from taskmanager.repositories.task_queries.filters import TaskFilters
from taskmanager.repositories.task_queries.views import TaskView, task_view
from taskmanager.repositories.task_repository import TaskPage
from taskmanager.routes.idempotency import IdempotentRequest, get_idempotent_request
from taskmanager.security.roles import Role
from taskmanager.security.scope import Scope, mint_scope
from tests.support.problems import assert_problem

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
PERSONAL_WORKSPACE = 11  # where the fake puts a task when the body names no workspace


def make_category(category_id: int, name: str) -> Category:
    return Category(id=category_id, name=name)


def make_task(
    task_id: int,
    title: str,
    description: str | None = None,
    completed: bool = False,
    *,
    category: Category | None = None,
    workspace_id: int = PERSONAL_WORKSPACE,
) -> Task:
    """A task as the repository would return it (the project's own model, never saved)."""
    return Task(
        id=task_id,
        workspace_id=workspace_id,
        title=title,
        description=description,
        completed=completed,
        category_id=None if category is None else category.id,
        category=category,
        due_at=None,
        priority="low",
        completed_at=NOW if completed else None,
        created_at=NOW,
        updated_at=NOW,
        version=1,
        labels=[],
    )


def caller_scope(role: Role = Role.OWNER) -> Scope:
    """The caller the fake serves: `role` in the workspace PERSONAL_WORKSPACE."""
    return mint_scope(
        user_id=1,
        session_id=uuid.UUID(int=1),
        workspace_ids=(PERSONAL_WORKSPACE,),
        roles={PERSONAL_WORKSPACE: role},
        personal_workspace_id=PERSONAL_WORKSPACE,
        valid_until=int((NOW + timedelta(days=365 * 100)).timestamp()),
    )


@dataclass
class FakeTaskRepository:
    """The async methods the task routes call, over a dict, recording every call."""

    tasks: dict[int, Task] = field(default_factory=dict)
    # Whose repository it is: what the routes check the caller's role with.
    scope: Scope = field(default_factory=caller_scope)
    total: int | None = None  # what count() answers; None: len(tasks)
    calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = field(default_factory=list)
    fail_with: BaseException | None = None

    def _record(self, name: str, *args: Any, **kwargs: Any) -> None:
        self.calls.append((name, args, kwargs))
        if self.fail_with is not None:
            raise self.fail_with

    def called(self, name: str) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
        return [(args, kwargs) for called, args, kwargs in self.calls if called == name]

    async def get_by_id(self, task_id: int) -> Task | None:
        self._record("get_by_id", task_id)
        return self.tasks.get(task_id)

    async def get_by_id_with_category(
        self, task_id: int, *, for_update: bool = False
    ) -> Task | None:
        self._record("get_by_id_with_category", task_id, for_update=for_update)
        return self.tasks.get(task_id)

    async def get_view(self, task_id: int) -> TaskView | None:
        self._record("get_view", task_id)
        task = self.tasks.get(task_id)
        return None if task is None else task_view(task)

    async def get_page(
        self,
        filters: TaskFilters | None = None,
        *,
        limit: int = 50,
        offset: int = 0,
        sort: str = "newest",
        after: Any = None,
        counted: bool = True,
    ) -> TaskPage:
        self._record(
            "get_page", filters, limit=limit, offset=offset, sort=sort, after=after, counted=counted
        )
        ordered = sorted(self.tasks.values(), key=lambda t: t.id, reverse=True)
        total = len(self.tasks) if self.total is None else self.total
        items = [task_view(t) for t in ordered[offset : offset + limit]]
        return TaskPage(items=items, total=total if counted else None)

    async def create(
        self,
        title: str,
        description: str | None = None,
        category_id: int | None = None,
        completed: bool = False,
        workspace_id: int | None = None,
        due_at: datetime | None = None,
        priority: str = "low",
        label_ids: Sequence[int] = (),
    ) -> Task:
        self._record(
            "create",
            title=title,
            description=description,
            category_id=category_id,
            completed=completed,
            workspace_id=workspace_id,
            due_at=due_at,
            priority=priority,
            label_ids=list(label_ids),
        )
        task_id = max(self.tasks, default=0) + 1
        category = make_category(category_id, f"Category {category_id}") if category_id else None
        task = make_task(
            task_id,
            title,
            description,
            completed,
            category=category,
            workspace_id=PERSONAL_WORKSPACE if workspace_id is None else workspace_id,
        )
        self.tasks[task_id] = task
        return task

    async def update(self, task: Task, changes: Mapping[str, Any]) -> Task:
        self._record("update", task, dict(changes))
        for key, value in changes.items():
            if key == "category_id":
                task.category = make_category(value, f"Category {value}") if value else None
            else:
                setattr(task, key, value)
        return task

    async def delete(self, task: Task) -> None:
        self._record("delete", task)
        del self.tasks[task.id]


@pytest.fixture
def fake_app() -> FastAPI:
    # Port 9 (discard): if a route ever reached the database, it would fail, not pass.
    return create_app(Settings(database_url="postgresql+asyncpg://nobody@127.0.0.1:9/none"))


@pytest.fixture
def fake_repo() -> FakeTaskRepository:
    return FakeTaskRepository()


@pytest_asyncio.fixture
async def fake_client(
    fake_app: FastAPI, fake_repo: FakeTaskRepository
) -> AsyncIterator[AsyncClient]:
    for repository in (get_task_repository, get_task_reader):
        fake_app.dependency_overrides[repository] = lambda: fake_repo
    # The reads of GET /tasks and GET /tasks/{id} go through the cache's layer, here with
    # no cache: straight to the fake.
    fake_app.dependency_overrides[get_task_reads] = lambda: TaskReads.of(fake_repo)  # type: ignore[arg-type]
    # No Idempotency-Key in these requests: the idempotency store is never consulted.
    fake_app.dependency_overrides[get_idempotent_request] = lambda: IdempotentRequest(
        repository=None,  # type: ignore[arg-type]
        user_id=1,
        scope="POST /tasks",
        key=None,
        ttl=timedelta(hours=1),
    )
    try:
        transport = ASGITransport(app=fake_app)
        async with AsyncClient(transport=transport, base_url="http://test") as client:
            yield client
    finally:
        fake_app.dependency_overrides.clear()


# ─────────────────────────────── not found


async def test_get_maps_missing_task_to_404_problem(
    fake_client: AsyncClient, fake_repo: FakeTaskRepository
) -> None:
    response = await fake_client.get("/tasks/7")

    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["detail"] == "Task not found"
    assert fake_repo.called("get_view") == [((7,), {})]


async def test_get_returns_the_repository_task(
    fake_client: AsyncClient, fake_repo: FakeTaskRepository
) -> None:
    fake_repo.tasks[3] = make_task(3, "Read", "a book", True, category=make_category(9, "Home"))

    response = await fake_client.get("/tasks/3")

    assert response.status_code == 200
    assert response.json() == {
        "id": 3,
        "workspace_id": PERSONAL_WORKSPACE,
        "title": "Read",
        "description": "a book",
        "completed": True,
        "due_at": None,
        "priority": "low",
        "completed_at": "2024-05-01T12:00:00Z",
        "created_at": "2024-05-01T12:00:00Z",
        "updated_at": "2024-05-01T12:00:00Z",
        "version": 1,
        "category": {"id": 9, "name": "Home"},
        "labels": [],
    }
    # The version, then a digest of the category it shows.
    assert response.headers["etag"].startswith('"1-')


async def test_patch_on_missing_task_is_404_without_update(
    fake_client: AsyncClient, fake_repo: FakeTaskRepository
) -> None:
    response = await fake_client.patch("/tasks/7", json={"title": "x"})

    assert response.status_code == 404
    assert response.json()["detail"] == "Task not found"
    assert fake_repo.called("update") == []


async def test_delete_on_missing_task_is_404_without_delete(
    fake_client: AsyncClient, fake_repo: FakeTaskRepository
) -> None:
    response = await fake_client.delete("/tasks/7")

    assert response.status_code == 404
    # Locked as a change reads it; found by neither read (the second one tells a row the
    # caller may only see, 403, from one they cannot see, 404).
    assert fake_repo.called("get_by_id_with_category") == [
        ((7,), {"for_update": True}),
        ((7,), {"for_update": False}),
    ]
    assert fake_repo.called("delete") == []


@pytest.mark.parametrize("method", ["PATCH", "PUT", "DELETE"])
async def test_a_viewers_change_is_403_without_touching_the_task(
    fake_client: AsyncClient, fake_repo: FakeTaskRepository, method: str
) -> None:
    fake_repo.scope = caller_scope(Role.VIEWER)
    fake_repo.tasks[4] = make_task(4, "Read only")
    body = None if method == "DELETE" else {"title": "Mine now"}

    response = await fake_client.request(method, "/tasks/4", json=body)

    problem = assert_problem(response, 403, problem_type=FORBIDDEN)
    assert problem["detail"] == (
        "this needs the role member, admin or owner in this workspace; yours is viewer"
    )
    assert fake_repo.called("update") == []
    assert fake_repo.called("delete") == []


async def test_a_members_change_reaches_the_repository(
    fake_client: AsyncClient, fake_repo: FakeTaskRepository
) -> None:
    """The control: the same request by a member of the workspace."""
    fake_repo.scope = caller_scope(Role.MEMBER)
    fake_repo.tasks[4] = make_task(4, "Shared")

    response = await fake_client.patch("/tasks/4", json={"title": "Changed"})

    assert response.status_code == 200, response.text
    assert [args[1] for args, _ in fake_repo.called("update")] == [{"title": "Changed"}]


async def test_delete_passes_the_found_task_to_delete(
    fake_client: AsyncClient, fake_repo: FakeTaskRepository
) -> None:
    task = fake_repo.tasks[4] = make_task(4, "Doomed")

    response = await fake_client.delete("/tasks/4")

    assert response.status_code == 204
    assert response.content == b""
    assert fake_repo.called("delete") == [((task,), {})]


# ─────────────────────────────── create


async def test_post_passes_validated_fields_to_create(
    fake_client: AsyncClient, fake_repo: FakeTaskRepository
) -> None:
    response = await fake_client.post("/tasks", json={"title": "Buy milk", "category_id": 3})

    assert response.status_code == 201
    assert fake_repo.called("create") == [
        (
            (),
            {
                "title": "Buy milk",
                "description": None,
                "category_id": 3,
                "completed": False,
                "workspace_id": None,  # none named: the repository picks the personal one
                "due_at": None,
                "priority": "low",
                "label_ids": [],
            },
        )
    ]
    data = response.json()
    assert response.headers["location"] == f"http://test/tasks/{data['id']}"
    assert data["category"] == {"id": 3, "name": "Category 3"}
    assert data["workspace_id"] == PERSONAL_WORKSPACE


async def test_post_passes_every_field(
    fake_client: AsyncClient, fake_repo: FakeTaskRepository
) -> None:
    response = await fake_client.post(
        "/tasks",
        json={
            "title": "T",
            "description": "D",
            "completed": True,
            "category_id": None,
            "workspace_id": 5,
            "due_at": "2026-12-24T18:00:00+01:00",
            "priority": "urgent",
            "label_ids": [4, 2],
        },
    )

    assert fake_repo.called("create") == [
        (
            (),
            {
                "title": "T",
                "description": "D",
                "category_id": None,
                "completed": True,
                "workspace_id": 5,
                "due_at": datetime(2026, 12, 24, 17, 0, tzinfo=UTC),
                "priority": "urgent",
                "label_ids": [4, 2],
            },
        )
    ]
    assert response.json()["workspace_id"] == 5


@pytest.mark.parametrize(
    "body",
    [{"title": ""}, {"title": "x\u0000"}, {"title": "ok", "extra": 1}, {"title": None}, {}],
)
async def test_post_with_invalid_body_never_reaches_the_repository(
    fake_client: AsyncClient, fake_repo: FakeTaskRepository, body: dict[str, Any]
) -> None:
    response = await fake_client.post("/tasks", json=body)

    assert response.status_code == 422
    assert fake_repo.calls == []


# ─────────────────────────────── update


async def test_patch_passes_only_the_sent_fields(
    fake_client: AsyncClient, fake_repo: FakeTaskRepository
) -> None:
    task = fake_repo.tasks[1] = make_task(1, "Keep", "drop me", category=make_category(2, "W"))

    response = await fake_client.patch("/tasks/1", json={"description": None, "completed": True})

    assert response.status_code == 200
    assert fake_repo.called("update") == [((task, {"description": None, "completed": True}), {})]
    assert response.json()["title"] == "Keep"
    assert response.json()["description"] is None


async def test_patch_empty_body_passes_no_changes(
    fake_client: AsyncClient, fake_repo: FakeTaskRepository
) -> None:
    task = fake_repo.tasks[1] = make_task(1, "Keep")

    response = await fake_client.patch("/tasks/1", json={})

    assert response.status_code == 200
    assert fake_repo.called("update") == [((task, {}), {})]


async def test_put_behaves_as_patch(
    fake_client: AsyncClient, fake_repo: FakeTaskRepository
) -> None:
    task = fake_repo.tasks[1] = make_task(1, "Keep")

    response = await fake_client.put("/tasks/1", json={"category_id": 5})

    assert response.status_code == 200
    assert fake_repo.called("update") == [((task, {"category_id": 5}), {})]
    assert response.json()["category"] == {"id": 5, "name": "Category 5"}


# ─────────────────────────────── list


async def test_list_passes_filters_and_pagination_and_sets_total_from_the_page(
    fake_client: AsyncClient, fake_repo: FakeTaskRepository
) -> None:
    fake_repo.tasks[1] = make_task(1, "milk")
    fake_repo.total = 42  # the repository's count, not the page's length, is the total

    response = await fake_client.get(
        "/tasks",
        params={
            "completed": "true",
            "category_id": 2,
            "q": "milk",
            "workspace_id": 7,
            "limit": 5,
            "offset": 10,
        },
    )

    assert response.status_code == 200
    assert response.headers["x-total-count"] == "42"
    expected = TaskFilters(completed=True, category_id=2, q="milk", workspace_id=7)
    assert fake_repo.called("get_page") == [
        ((expected,), {"limit": 5, "offset": 10, "sort": "newest", "after": None, "counted": True})
    ]


async def test_list_defaults(fake_client: AsyncClient, fake_repo: FakeTaskRepository) -> None:
    for task_id in (1, 2, 3):
        fake_repo.tasks[task_id] = make_task(task_id, f"T{task_id}")

    response = await fake_client.get("/tasks")

    assert [t["id"] for t in response.json()] == [3, 2, 1]
    assert response.headers["x-total-count"] == "3"
    assert fake_repo.called("get_page") == [
        (
            (TaskFilters(),),
            {"limit": 50, "offset": 0, "sort": "newest", "after": None, "counted": True},
        )
    ]


async def test_count_false_asks_the_repository_not_to_count_and_sends_no_total(
    fake_client: AsyncClient, fake_repo: FakeTaskRepository
) -> None:
    fake_repo.tasks[1] = make_task(1, "milk")

    response = await fake_client.get("/tasks", params={"count": "false"})

    assert response.status_code == 200
    assert "x-total-count" not in response.headers
    assert [call[1]["counted"] for call in fake_repo.called("get_page")] == [False]


async def test_a_cursor_with_an_offset_is_422_without_reaching_the_repository(
    fake_client: AsyncClient, fake_repo: FakeTaskRepository
) -> None:
    response = await fake_client.get("/tasks", params={"cursor": "abc.def", "offset": 5})

    assert_problem(response, 422, field="query.cursor")
    assert fake_repo.called("get_page") == []


async def test_list_with_invalid_limit_never_reaches_the_repository(
    fake_client: AsyncClient, fake_repo: FakeTaskRepository
) -> None:
    response = await fake_client.get("/tasks", params={"limit": 101})

    assert response.status_code == 422
    assert fake_repo.calls == []


# ─────────────────────────────── failures below the route


async def test_repository_bug_is_500_problem_without_details(
    fake_client: AsyncClient, fake_repo: FakeTaskRepository
) -> None:
    fake_repo.fail_with = RuntimeError("secret internals: password=hunter2")

    response = await fake_client.get("/tasks/1", headers={"X-Request-ID": "bug-1"})

    assert response.status_code == 500
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.headers["x-request-id"] == "bug-1"
    body = response.json()
    assert body["status"] == 500
    assert "hunter2" not in response.text
    assert "secret" not in response.text


async def test_pool_timeout_is_503_with_retry_after(
    fake_client: AsyncClient, fake_repo: FakeTaskRepository
) -> None:
    fake_repo.fail_with = sa_exc.TimeoutError("QueuePool limit reached")

    response = await fake_client.get("/tasks")

    assert response.status_code == 503
    assert response.headers["content-type"].startswith("application/problem+json")
    assert int(response.headers["retry-after"]) >= 1
    assert "QueuePool" not in response.text


async def test_a_stray_os_error_is_a_logged_500_not_a_database_503(
    fake_client: AsyncClient, fake_repo: FakeTaskRepository, caplog: pytest.LogCaptureFixture
) -> None:
    """Only the database driver's OSErrors mean "database unavailable"; one raised by the
    service's own code (here: a file it could not read) is a bug like any other."""
    fake_repo.fail_with = FileNotFoundError("/etc/taskmanager/missing.conf")

    with caplog.at_level(logging.ERROR, logger="taskmanager.errors"):
        response = await fake_client.get("/tasks/1")

    body = assert_problem(response, 500, problem_type=INTERNAL_ERROR)
    assert "retry-after" not in response.headers
    assert "missing.conf" not in response.text
    assert "database" not in body["detail"]
    logged = [r for r in caplog.records if r.name == "taskmanager.errors"]
    assert logged, "the 500 was not logged"
    assert logged[0].exc_info is not None
    assert isinstance(logged[0].exc_info[1], FileNotFoundError)


async def test_an_os_error_from_the_driver_is_a_503(
    fake_client: AsyncClient, fake_repo: FakeTaskRepository
) -> None:
    """The same OSError class, raised inside asyncpg connecting to nothing: unavailable."""
    try:
        await asyncpg.connect("postgresql://nobody@127.0.0.1:9/none", timeout=2)
    except OSError as refused:
        fake_repo.fail_with = refused
    else:  # pragma: no cover - something listens on the discard port
        pytest.skip("127.0.0.1:9 accepted a connection")

    response = await fake_client.get("/tasks/1")

    assert_problem(response, 503, problem_type=DATABASE_UNAVAILABLE)
    assert int(response.headers["retry-after"]) >= 1


async def test_an_os_error_from_own_code_run_by_sqlalchemy_is_not_the_drivers() -> None:
    """Code of the service's own that SQLAlchemy calls back (run_sync runs it through
    greenlet_spawn) has SQLAlchemy frames around it; the error is still not the driver's."""

    def read_missing_file() -> str:
        return Path("/nonexistent/taskmanager.conf").read_text()

    with pytest.raises(FileNotFoundError) as raised:
        await greenlet_spawn(read_missing_file)

    assert any(
        str(entry.frame.f_globals.get("__name__", "")).startswith("sqlalchemy")
        for entry in raised.traceback
    )
    assert not raised_by_database_driver(raised.value)
