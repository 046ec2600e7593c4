"""Repositories: every query lives here (the catalog system)."""

from taskmanager.repositories.category_repository import CategoryRepository
from taskmanager.repositories.task_repository import TaskFilters, TaskRepository

__all__ = ["CategoryRepository", "TaskFilters", "TaskRepository"]
