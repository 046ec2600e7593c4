"""CategoryRepository: how categories are found, stored and renamed. Flushes, never commits."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Text, func, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from taskmanager.models import Category
from taskmanager.repositories.array_parameters import any_of, in_scope
from taskmanager.security.scope import Scope


class CategoryRepository:
    """Encapsulates all database operations for Categories, within the caller's Scope."""

    def __init__(self, session: AsyncSession, scope: Scope) -> None:
        self.session = session
        self.scope = scope

    async def get_by_id(self, category_id: int, *, for_update: bool = False) -> Category | None:
        """Fetch a category; `for_update=True` locks its row until the transaction ends."""
        stmt = select(Category).where(
            Category.id == category_id, in_scope(Category.workspace_id, self.scope)
        )
        if for_update:
            stmt = stmt.with_for_update()
        result = await self.session.execute(stmt)
        return result.scalar_one_or_none()

    async def get_all(self, workspace_id: int | None = None) -> list[Category]:
        """The caller's categories (of one workspace, if given) by name, ignoring case."""
        stmt = (
            select(Category)
            .where(in_scope(Category.workspace_id, self.scope))
            .order_by(func.lower(Category.name), Category.id)
        )
        if workspace_id is not None:
            stmt = stmt.where(Category.workspace_id == workspace_id)
        result = await self.session.execute(stmt)
        return list(result.scalars().all())

    async def create(self, name: str, workspace_id: int | None = None) -> Category:
        """Create a category in `workspace_id` (default: the caller's personal workspace); a
        name taken there in any case fails the unique index at flush."""
        category = Category(name=name, workspace_id=self.scope.workspace_for_new_row(workspace_id))
        self.session.add(category)
        await self.session.flush()
        return category

    async def rename(self, category: Category, name: str) -> Category:
        """Rename; a name taken by another category (any case) fails the unique index."""
        category.name = name
        if self.session.is_modified(category):
            category.version += 1  # a new state, a new ETag
        await self.session.flush()
        return category

    async def delete(self, category: Category) -> None:
        """Delete a category; PostgreSQL sets its tasks' category_id to NULL."""
        await self.session.delete(category)
        await self.session.flush()

    async def ensure_names(self, names: Sequence[str], workspace_id: int) -> list[int]:
        """Create the categories in `names` that do not exist yet (any case) in
        `workspace_id`, one of the caller's; return the ids of all of them. For seeding."""
        workspace_id = self.scope.workspace_for_new_row(workspace_id)
        if names:
            stmt = (
                insert(Category)
                .values([{"name": name, "workspace_id": workspace_id} for name in names])
                .on_conflict_do_nothing(index_elements=[Category.workspace_id, text("lower(name)")])
            )
            await self.session.execute(stmt)
        lowered = [name.lower() for name in names]
        result = await self.session.execute(
            select(Category.id)
            .where(
                Category.workspace_id == workspace_id,
                any_of(func.lower(Category.name), lowered, Text),
            )
            .order_by(Category.id)
        )
        return list(result.scalars().all())
