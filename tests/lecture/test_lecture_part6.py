"""The lecture's own Part 6 examples (6.4), adapted only in import paths.

They run against the real test PostgreSQL through the conftest's rolled-back session.
"""

import pytest
from httpx import AsyncClient
from sqlalchemy.ext.asyncio import AsyncSession

from tests.support.accounts import TaskRepository

# ─────────────────────────────── tests/test_tasks.py


@pytest.mark.asyncio
async def test_create_task(client: AsyncClient):
    """POST /tasks should create and return a task."""
    response = await client.post(
        "/tasks",
        json={"title": "Buy milk", "description": "2% milk"},
    )
    assert response.status_code == 201

    data = response.json()
    assert data["title"] == "Buy milk"
    assert data["description"] == "2% milk"
    assert data["completed"] is False
    assert "id" in data  # DB generated
    assert "created_at" in data  # DB generated


@pytest.mark.asyncio
async def test_create_task_validation(client: AsyncClient):
    """POST /tasks with invalid data should return 422."""
    response = await client.post(
        "/tasks",
        json={"title": ""},  # min_length=1 violated
    )
    assert response.status_code == 422


@pytest.mark.asyncio
async def test_get_task_not_found(client: AsyncClient):
    """GET /tasks/999 should return 404."""
    response = await client.get("/tasks/999")
    assert response.status_code == 404


@pytest.mark.asyncio
async def test_list_tasks_empty(client: AsyncClient):
    """GET /tasks on empty DB should return empty list."""
    response = await client.get("/tasks")
    assert response.status_code == 200
    assert response.json() == []  # Clean DB — rollback ensures this


@pytest.mark.asyncio
async def test_create_and_retrieve(client: AsyncClient):
    """Full cycle: create a task, then fetch it by ID."""
    # Create
    create_response = await client.post(
        "/tasks",
        json={"title": "Walk the dog"},
    )
    task_id = create_response.json()["id"]

    # Retrieve
    get_response = await client.get(f"/tasks/{task_id}")
    assert get_response.status_code == 200
    assert get_response.json()["title"] == "Walk the dog"


# ─────────────────────────────── tests/test_repositories.py


@pytest.mark.asyncio
async def test_repo_create(db_session: AsyncSession):
    """Test repository create without HTTP layer."""
    repo = TaskRepository(db_session)
    task = await repo.create(title="Test task")

    assert task.id is not None
    assert task.title == "Test task"
    assert task.completed is False


@pytest.mark.asyncio
async def test_repo_get_by_id(db_session: AsyncSession):
    """Test repository get_by_id."""
    repo = TaskRepository(db_session)
    created = await repo.create(title="Find me")

    found = await repo.get_by_id(created.id)
    assert found is not None
    assert found.title == "Find me"


@pytest.mark.asyncio
async def test_repo_get_by_id_not_found(db_session: AsyncSession):
    """Test repository get_by_id returns None for missing ID."""
    repo = TaskRepository(db_session)
    result = await repo.get_by_id(9999)
    assert result is None
