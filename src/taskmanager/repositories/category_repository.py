"""CategoryRepository: how categories are found, stored and renamed. Flushes, never commits."""

from __future__ import annotations

from collections.abc import Sequence

from taskmanager.models import Category
from taskmanager.repositories.workspace_owned import WorkspaceOwnedRepository


class CategoryRepository(WorkspaceOwnedRepository[Category]):
    """Encapsulates all database operations for Categories, within the caller's Scope.
    Deleting a category leaves its tasks uncategorised (PostgreSQL sets their category_id
    to NULL)."""

    model = Category

    async def create(self, name: str, workspace_id: int | None = None) -> Category:
        """Create a category in `workspace_id` (default: the caller's personal workspace); a
        name taken there in any case fails the unique index at flush."""
        return await self._add(workspace_id, name=name)

    async def rename(self, category: Category, name: str) -> Category:
        """Rename; a name taken by another category (any case) fails the unique index."""
        return await self.update(category, {"name": name})

    async def ensure_names(self, names: Sequence[str], workspace_id: int) -> list[int]:
        """Create the categories in `names` that do not exist yet (any case) in
        `workspace_id`, one of the caller's; return the ids of all of them. For seeding."""
        return await self._ensure_named([{"name": name} for name in names], workspace_id)
