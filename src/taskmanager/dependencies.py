"""Dependency factories: a repository per request, wrapping that request's one session.

Routes that only read take a repository on an AsyncReadSession (`...ReaderDep`); routes
that change data take one on the request's transaction (`...RepositoryDep`).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from taskmanager.database import ReadSessionDep, SessionDep
from taskmanager.repositories.category_repository import CategoryRepository
from taskmanager.repositories.task_repository import TaskRepository


async def get_task_repository(session: SessionDep) -> TaskRepository:
    return TaskRepository(session)


async def get_task_reader(session: ReadSessionDep) -> TaskRepository:
    return TaskRepository(session)


async def get_category_repository(session: SessionDep) -> CategoryRepository:
    return CategoryRepository(session)


async def get_category_reader(session: ReadSessionDep) -> CategoryRepository:
    return CategoryRepository(session)


TaskRepositoryDep = Annotated[TaskRepository, Depends(get_task_repository)]
TaskReaderDep = Annotated[TaskRepository, Depends(get_task_reader)]
CategoryRepositoryDep = Annotated[CategoryRepository, Depends(get_category_repository)]
CategoryReaderDep = Annotated[CategoryRepository, Depends(get_category_reader)]
