"""Dependency factories: a repository per request, wrapping that request's one session."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from taskmanager.database import SessionDep
from taskmanager.repositories.category_repository import CategoryRepository
from taskmanager.repositories.task_repository import TaskRepository


async def get_task_repository(session: SessionDep) -> TaskRepository:
    return TaskRepository(session)


async def get_category_repository(session: SessionDep) -> CategoryRepository:
    return CategoryRepository(session)


TaskRepositoryDep = Annotated[TaskRepository, Depends(get_task_repository)]
CategoryRepositoryDep = Annotated[CategoryRepository, Depends(get_category_repository)]
