"""Repositories: every query lives here (the catalog system)."""

from taskmanager.repositories.category_repository import CategoryRepository
from taskmanager.repositories.task_queries.filters import TaskFilters
from taskmanager.repositories.task_repository import TaskRepository

__all__ = ["CategoryRepository", "TaskFilters", "TaskRepository"]
