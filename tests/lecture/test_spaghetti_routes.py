"""The lecture's 4.1 "spaghetti" routes, as it writes them, beside the repository routes.

Section 4.1 shows GET, PUT and DELETE /tasks/{id}, each with the same five lines of query,
extraction and "not found" check. They are mounted here on an app of their own, on the
test's rolled-back session, and asked the same questions as the service's routes (which
say WHAT and leave HOW to `TaskRepository`): the answers agree on what the lecture's routes
promise. What the refactoring bought is not different behaviour but one place for the query
(`TaskRepository.get_by_id_with_category`) instead of three.

The lecture's routes know no caller (Week 6 has no accounts): they run as the connecting
role, which row-level security does not restrict, and show anyone's task. The service's
routes ask for the caller in that one place, the repository's dependency, and filter by
their scope in the one query: the last test shows the difference.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio
from fastapi import Depends, FastAPI, HTTPException
from httpx import AsyncClient
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from taskmanager.database import get_async_session
from taskmanager.models import Task
from taskmanager.schemas import TaskResponse, TaskUpdate
from tests.support.accounts import Account
from tests.support.rolled_back import rolled_back_client

# ─────────────────────────────── the lecture's 4.1, line for line (the update logic filled in)

app = FastAPI()


@app.get("/tasks/{task_id}", response_model=TaskResponse)
async def get_task(task_id: int, session: AsyncSession = Depends(get_async_session)):
    stmt = select(Task).where(Task.id == task_id)
    result = await session.execute(stmt)
    task = result.scalar_one_or_none()
    if task is None:
        raise HTTPException(status_code=404, detail="Task not found")
    return task


@app.put("/tasks/{task_id}", response_model=TaskResponse)
async def update_task(
    task_id: int, body: TaskUpdate, session: AsyncSession = Depends(get_async_session)
):
    stmt = select(Task).where(Task.id == task_id)  # ← SAME query
    result = await session.execute(stmt)  # ← SAME execution
    task = result.scalar_one_or_none()  # ← SAME extraction
    if task is None:  # ← SAME check
        raise HTTPException(status_code=404, detail="Task not found")  # ← SAME error
    for key, value in body.model_dump(exclude_unset=True).items():
        setattr(task, key, value)
    task.version += 1
    await session.flush()
    return task


@app.delete("/tasks/{task_id}", status_code=204)
async def delete_task(task_id: int, session: AsyncSession = Depends(get_async_session)):
    stmt = select(Task).where(Task.id == task_id)  # ← SAME query AGAIN
    result = await session.execute(stmt)  # ← SAME execution AGAIN
    task = result.scalar_one_or_none()  # ← SAME extraction AGAIN
    if task is None:  # ← SAME check AGAIN
        raise HTTPException(status_code=404, detail="Task not found")
    await session.delete(task)


# ─────────────────────────────── the same questions to both


@pytest_asyncio.fixture
async def spaghetti(engine: AsyncEngine, db_session: AsyncSession) -> AsyncIterator[AsyncClient]:
    """The 4.1 app on the same rolled-back session as the `client` fixture's app."""
    try:
        async with rolled_back_client(app, engine, db_session) as http:
            yield http
    finally:
        app.dependency_overrides.clear()


OWN_FIELDS = tuple(TaskResponse.model_fields)


async def test_both_show_a_task_alike(client: AsyncClient, spaghetti: AsyncClient) -> None:
    created = (await client.post("/tasks", json={"title": "Walk the dog"})).json()

    ours = await client.get(f"/tasks/{created['id']}")
    theirs = await spaghetti.get(f"/tasks/{created['id']}")

    assert ours.status_code == theirs.status_code == 200
    assert {name: ours.json()[name] for name in OWN_FIELDS} == theirs.json()


async def test_both_answer_404_for_a_missing_task(
    client: AsyncClient, spaghetti: AsyncClient
) -> None:
    for method in ("GET", "PUT", "DELETE"):
        body = {"title": "x"} if method == "PUT" else None
        ours = await client.request(method, "/tasks/999999", json=body)
        theirs = await spaghetti.request(method, "/tasks/999999", json=body)
        assert ours.status_code == theirs.status_code == 404, method
        assert ours.json()["detail"] == theirs.json()["detail"] == "Task not found"


async def test_both_change_and_delete_alike(client: AsyncClient, spaghetti: AsyncClient) -> None:
    first = (await client.post("/tasks", json={"title": "Draft"})).json()
    second = (await client.post("/tasks", json={"title": "Draft"})).json()

    ours = await client.put(f"/tasks/{first['id']}", json={"title": "Final", "completed": True})
    theirs = await spaghetti.put(
        f"/tasks/{second['id']}", json={"title": "Final", "completed": True}
    )
    assert ours.status_code == theirs.status_code == 200
    for answer in (ours.json(), theirs.json()):
        assert (answer["title"], answer["completed"], answer["version"]) == ("Final", True, 2)

    assert (await client.delete(f"/tasks/{first['id']}")).status_code == 204
    assert (await spaghetti.delete(f"/tasks/{second['id']}")).status_code == 204
    for task_id in (first["id"], second["id"]):
        assert (await client.get(f"/tasks/{task_id}")).status_code == 404


async def test_only_the_service_routes_keep_to_the_callers_tasks(
    client: AsyncClient, spaghetti: AsyncClient, other_account: Account
) -> None:
    """Someone else's task: the lecture's routes (no caller, no scope) show it; the
    service's answer 404, as for a task that does not exist."""
    theirs = await client.post("/tasks", json={"title": "Not yours"}, headers=other_account.headers)
    assert theirs.status_code == 201, theirs.text

    ours = await client.get(f"/tasks/{theirs.json()['id']}")
    lectures = await spaghetti.get(f"/tasks/{theirs.json()['id']}")

    assert ours.status_code == 404
    assert ours.json()["detail"] == "Task not found"
    assert lectures.status_code == 200
    assert lectures.json()["title"] == "Not yours"
