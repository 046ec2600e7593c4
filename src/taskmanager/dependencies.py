"""Dependency factories: a repository per request, wrapping that request's one session and
the caller's scope (lecture Week 9: session -> repository -> current user -> route).

Routes that only read take a repository on a read-only transaction (`...ReaderDep`); routes
that change data take one on the request's transaction (`...RepositoryDep`).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from taskmanager.auth import CurrentReaderDep, CurrentUserDep
from taskmanager.database import ReadSessionDep, SessionDep
from taskmanager.repositories.category_repository import CategoryRepository
from taskmanager.repositories.label_repository import LabelRepository
from taskmanager.repositories.task_repository import TaskRepository
from taskmanager.repositories.workspace_repository import MembershipLimits, WorkspaceRepository


async def get_task_repository(session: SessionDep, user: CurrentUserDep) -> TaskRepository:
    return TaskRepository(session, user)


async def get_task_reader(session: ReadSessionDep, user: CurrentReaderDep) -> TaskRepository:
    return TaskRepository(session, user)


async def get_category_repository(session: SessionDep, user: CurrentUserDep) -> CategoryRepository:
    return CategoryRepository(session, user)


async def get_category_reader(
    session: ReadSessionDep, user: CurrentReaderDep
) -> CategoryRepository:
    return CategoryRepository(session, user)


async def get_label_repository(session: SessionDep, user: CurrentUserDep) -> LabelRepository:
    return LabelRepository(session, user)


async def get_label_reader(session: ReadSessionDep, user: CurrentReaderDep) -> LabelRepository:
    return LabelRepository(session, user)


# The workspace repository takes the scope per call (creating a workspace changes it), but
# its dependency still needs the current user: that is what switches the transaction to the
# request role, so a route cannot reach workspaces outside row-level security.
async def get_workspace_repository(
    session: SessionDep, user: CurrentUserDep
) -> WorkspaceRepository:
    return WorkspaceRepository(session)


async def get_workspace_reader(
    session: ReadSessionDep, user: CurrentReaderDep
) -> WorkspaceRepository:
    return WorkspaceRepository(session)


def get_membership_limits(request: Request) -> MembershipLimits:
    """The caps on new memberships, from the app's settings."""
    settings = request.app.state.settings
    return MembershipLimits(
        workspaces_per_user=settings.max_workspaces_per_user,
        members_per_workspace=settings.max_members_per_workspace,
    )


TaskRepositoryDep = Annotated[TaskRepository, Depends(get_task_repository)]
TaskReaderDep = Annotated[TaskRepository, Depends(get_task_reader)]
CategoryRepositoryDep = Annotated[CategoryRepository, Depends(get_category_repository)]
CategoryReaderDep = Annotated[CategoryRepository, Depends(get_category_reader)]
LabelRepositoryDep = Annotated[LabelRepository, Depends(get_label_repository)]
LabelReaderDep = Annotated[LabelRepository, Depends(get_label_reader)]
WorkspaceRepositoryDep = Annotated[WorkspaceRepository, Depends(get_workspace_repository)]
WorkspaceReaderDep = Annotated[WorkspaceRepository, Depends(get_workspace_reader)]
MembershipLimitsDep = Annotated[MembershipLimits, Depends(get_membership_limits)]
