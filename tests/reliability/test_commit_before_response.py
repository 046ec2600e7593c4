"""The commit finishes BEFORE the response is sent: a failed commit is an error response.

The rolled-back test fixture cannot show this (a SAVEPOINT never checks deferred
constraints and never really commits), so this runs the real `taskmanager serve` as a
subprocess on a real socket, against its own database holding a constraint that only
fires at COMMIT: a DEFERRABLE INITIALLY DEFERRED constraint trigger rejecting the title
"fail at commit". The INSERT and the flush succeed; only the COMMIT fails.

The second half shows that this test can fail: the very same route served with the
session dependency in FastAPI's default scope answers 201 for a row that never existed,
because the code after `yield` (the commit) runs after the response went out.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import timedelta
from typing import Annotated

import httpx
import pytest
import pytest_asyncio
import uvicorn
from fastapi import BackgroundTasks, Depends, FastAPI, Request, Response, status
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

from taskmanager.config import Settings
from taskmanager.database import get_async_session
from taskmanager.dependencies import BearerToken, get_current_user
from taskmanager.main import create_app
from taskmanager.models import Task
from taskmanager.repositories.idempotency_repository import IdempotencyRepository
from taskmanager.repositories.task_repository import TaskRepository
from taskmanager.routes import tasks as task_routes
from taskmanager.routes.idempotency import IdempotentRequest
from taskmanager.schemas import TaskCreate, TaskWithCategoryResponse
from taskmanager.security.scope import Scope
from tests.support.accounts import TEST_SECRET, ServedLogin, login, register_over_http
from tests.support.databases import owner_url, superuser_url
from tests.support.problems import assert_problem
from tests.support.processes import ServeProcess, clean_env, free_port, serve

pytestmark = pytest.mark.server

FAILING_TITLE = "fail at commit"

# A constraint checked only at COMMIT. Plain CHECK constraints fire at INSERT (inside the
# route, where any scope reports them); this one lets the INSERT and the flush through.
DEFERRED_CONSTRAINT = [
    """
    CREATE OR REPLACE FUNCTION reject_fail_at_commit() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        IF NEW.title = 'fail at commit' THEN
            RAISE EXCEPTION 'title % is rejected at commit', NEW.title
                USING ERRCODE = 'check_violation';
        END IF;
        IF NEW.title LIKE 'slow commit%' THEN
            PERFORM pg_sleep(0.5);
        END IF;
        RETURN NEW;
    END
    $$
    """,
    "DROP TRIGGER IF EXISTS reject_fail_at_commit ON tasks",
    """
    CREATE CONSTRAINT TRIGGER reject_fail_at_commit
    AFTER INSERT OR UPDATE ON tasks
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION reject_fail_at_commit()
    """,
]


@pytest.fixture(scope="module")
def probe_url(make_database: Callable[[str], str]) -> str:
    """A migrated database of its own, with the deferred constraint installed."""
    url = make_database("commit_probe")

    async def install() -> None:
        engine = create_async_engine(owner_url(url))
        try:
            async with engine.begin() as connection:
                for statement in DEFERRED_CONSTRAINT:
                    await connection.execute(text(statement))
        finally:
            await engine.dispose()

    asyncio.run(install())
    return url


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def probe_engine(probe_url: str) -> AsyncIterator[AsyncEngine]:
    """Our own connections to the probe database: the test's view, not the server's."""
    engine = create_async_engine(superuser_url(probe_url), pool_size=2)
    yield engine
    await engine.dispose()


@pytest.fixture(scope="module")
def server(probe_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """`python -m taskmanager serve` on a free port of 127.0.0.1, stopped by PID afterwards."""
    env = clean_env(
        DATABASE_URL=probe_url,
        TASKMANAGER_LOG_LEVEL="WARNING",
        TASKMANAGER_JWT_SECRET=TEST_SECRET,
    )
    with serve(env, tmp_path_factory.mktemp("serve-cwd")) as process:
        yield process


@pytest.fixture(scope="module")
def writer(server: ServeProcess) -> ServedLogin:
    """The account the requests below are made as, registered over HTTP on the server."""
    return register_over_http(server.base_url, "writer@example.com")


async def count_titled(engine: AsyncEngine, title: str) -> int:
    async with engine.connect() as connection:
        result = await connection.execute(
            text("SELECT count(*) FROM tasks WHERE title = :title"), {"title": title}
        )
        return int(result.scalar_one())


async def title_of(engine: AsyncEngine, task_id: int) -> str | None:
    async with engine.connect() as connection:
        result = await connection.execute(
            text("SELECT title FROM tasks WHERE id = :id"), {"id": task_id}
        )
        return result.scalar_one_or_none()


async def test_the_constraint_fires_only_at_commit(
    probe_engine: AsyncEngine, writer: ServedLogin
) -> None:
    """The probe itself: INSERT and flush succeed, COMMIT fails. Otherwise the tests below
    would be testing an ordinary constraint, which any scope reports correctly."""
    async with AsyncSession(probe_engine) as session:
        session.add(Task(title=FAILING_TITLE, workspace_id=writer.personal_workspace_id))
        await session.flush()  # the INSERT ran: no error yet
        with pytest.raises(IntegrityError, match="rejected at commit"):
            await session.commit()
    assert await count_titled(probe_engine, FAILING_TITLE) == 0


async def test_failed_commit_is_an_error_response(
    server: ServeProcess, writer: ServedLogin, probe_engine: AsyncEngine
) -> None:
    async with httpx.AsyncClient(
        base_url=server.base_url, timeout=10, headers=writer.headers
    ) as client:
        response = await client.post("/tasks", json={"title": FAILING_TITLE})
    assert response.status_code != status.HTTP_201_CREATED
    assert_problem(response)
    assert await count_titled(probe_engine, FAILING_TITLE) == 0


async def test_successful_write_is_visible_when_the_response_arrives(
    server: ServeProcess, writer: ServedLogin, probe_engine: AsyncEngine
) -> None:
    """201 means committed: another connection sees the row the moment the response is in.

    The deferred trigger makes the COMMIT of a "slow commit" title take 0.5 s, so a
    server that committed after responding would lose this race every time.
    """
    async with httpx.AsyncClient(
        base_url=server.base_url, timeout=10, headers=writer.headers
    ) as client:
        for i in range(2):
            title = f"slow commit #{i}"
            response = await client.post("/tasks", json={"title": title})
            assert response.status_code == status.HTTP_201_CREATED, response.text
            assert await title_of(probe_engine, response.json()["id"]) == title


async def test_failed_update_commit_is_an_error_and_changes_nothing(
    server: ServeProcess, writer: ServedLogin, probe_engine: AsyncEngine
) -> None:
    async with httpx.AsyncClient(
        base_url=server.base_url, timeout=10, headers=writer.headers
    ) as client:
        created = await client.post("/tasks", json={"title": "keep this title"})
        assert created.status_code == status.HTTP_201_CREATED, created.text
        task_id = created.json()["id"]

        response = await client.patch(f"/tasks/{task_id}", json={"title": FAILING_TITLE})
        assert_problem(response)

        assert (await client.get(f"/tasks/{task_id}")).json()["title"] == "keep this title"
    assert await title_of(probe_engine, task_id) == "keep this title"


async def test_server_survives_a_failed_commit(server: ServeProcess, writer: ServedLogin) -> None:
    """The failed commit returned its connection to the pool in a usable state."""
    async with httpx.AsyncClient(
        base_url=server.base_url, timeout=10, headers=writer.headers
    ) as client:
        for _ in range(3):
            assert_problem(await client.post("/tasks", json={"title": FAILING_TITLE}))
        assert (await client.get("/health/ready")).status_code == 200
        response = await client.post("/tasks", json={"title": "after the failures"})
        assert response.status_code == status.HTTP_201_CREATED


# ───────────────────────── the same route with FastAPI's default dependency scope ──────

# The mistake: no scope="function", so the commit after `yield` runs after the response.
DefaultScopeSessionDep = Annotated[AsyncSession, Depends(get_async_session)]


async def default_scope_caller(
    request: Request,
    session: DefaultScopeSessionDep,
    token: BearerToken,
    background: BackgroundTasks,
) -> Scope:
    """The app's own current-user dependency, in the default-scope session's transaction
    (so the insert runs as the caller under row-level security, as the real route's does)."""
    return await get_current_user(request, session, token, background)


def app_with_a_default_scope_route(settings: Settings) -> FastAPI:
    """The real application plus POST /default-scope/tasks: the real create_task route,
    whose session comes from the default-scope dependency. Everything else is identical,
    so any difference between the two routes is the scope."""
    app = create_app(settings)

    @app.post(
        "/default-scope/tasks",
        response_model=TaskWithCategoryResponse,
        status_code=status.HTTP_201_CREATED,
    )
    async def create_task_default_scope(
        body: TaskCreate,
        session: DefaultScopeSessionDep,
        user: Annotated[Scope, Depends(default_scope_caller)],
        request: Request,
        response: Response,
    ) -> Task:
        no_idempotency_key = IdempotentRequest(
            IdempotencyRepository(session),
            user.user_id,
            "POST /default-scope/tasks",
            None,
            timedelta(hours=1),
        )
        created = await task_routes.create_task(
            body, TaskRepository(session, user), no_idempotency_key, request, response
        )
        assert isinstance(created, Task)
        return created

    return app


@pytest.fixture(scope="module")
def default_scope_server(probe_url: str) -> Iterator[str]:
    """That app under uvicorn in a background thread on another free port of 127.0.0.1."""
    # gc_threshold=0: this server shares the test process; its collector is left alone.
    settings = Settings(
        database_url=probe_url, log_level="WARNING", gc_threshold=0, jwt_secret=TEST_SECRET
    )
    app = app_with_a_default_scope_route(settings)
    config = uvicorn.Config(
        app, host="127.0.0.1", port=free_port(), log_level="critical", lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="default-scope-uvicorn", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 15
        while not server.started:
            assert thread.is_alive(), "the default-scope server failed to start"
            assert time.monotonic() < deadline, "the default-scope server did not start"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{config.port}"
    finally:
        server.should_exit = True
        thread.join(15)
        assert not thread.is_alive(), "the default-scope server did not stop"


async def test_default_scope_answers_201_for_a_row_that_never_existed(
    default_scope_server: str, writer: ServedLogin, probe_engine: AsyncEngine
) -> None:
    """Why SessionDep says scope="function": without it the client is told "created"."""
    async with httpx.AsyncClient(base_url=default_scope_server, timeout=10) as client:
        # Logged in on this server (the same database and key as `serve`'s).
        client.headers.update(await login(client, writer.email))
        # Control: the app's own route, in the same process, reports the failed commit.
        assert_problem(await client.post("/tasks", json={"title": FAILING_TITLE}))

        response = await client.post("/default-scope/tasks", json={"title": FAILING_TITLE})
        assert response.status_code == status.HTTP_201_CREATED, response.text
        task_id = response.json()["id"]  # an id was handed out: the INSERT did run
        assert response.headers["location"].endswith(f"/tasks/{task_id}")

        # The commit fails after the response went out; the "created" task is not there.
        await asyncio.sleep(0.5)
        assert await title_of(probe_engine, task_id) is None
        assert (await client.get(f"/tasks/{task_id}")).status_code == 404

        # It does commit good rows, but only after answering: a client reading right
        # after "201 Created" does not find its row yet.
        ok = await client.post("/default-scope/tasks", json={"title": "slow commit, default"})
        assert ok.status_code == status.HTTP_201_CREATED
        assert await title_of(probe_engine, ok.json()["id"]) is None
        deadline = time.monotonic() + 5
        while await title_of(probe_engine, ok.json()["id"]) is None:
            assert time.monotonic() < deadline, "the default-scope commit never happened"
            await asyncio.sleep(0.05)
