"""CategoryRepository: how categories are found, stored and renamed. Flushes, never commits."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from taskmanager.models import Category


class CategoryRepository:
    """Encapsulates all database operations for Categories."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get_by_id(self, category_id: int, *, for_update: bool = False) -> Category | None:
        """Fetch a category; `for_update=True` locks its row until the transaction ends."""
        stmt = select(Category).where(Category.id == category_id)
        if for_update:
            stmt = stmt.with_for_update()
        result = await self.session.execute(stmt)
        return result.scalar_one_or_none()

    async def get_all(self) -> list[Category]:
        """All categories by name, case-insensitively."""
        stmt = select(Category).order_by(func.lower(Category.name), Category.id)
        result = await self.session.execute(stmt)
        return list(result.scalars().all())

    async def create(self, name: str) -> Category:
        """Create a category; a name taken in any case fails the unique index at flush."""
        category = Category(name=name)
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

    async def ensure_names(self, names: Sequence[str]) -> list[int]:
        """Create the categories in `names` that do not exist yet (any case); return the
        ids of all of them. For seeding."""
        if names:
            stmt = (
                insert(Category)
                .values([{"name": name} for name in names])
                .on_conflict_do_nothing(index_elements=[text("lower(name)")])
            )
            await self.session.execute(stmt)
        lowered = [name.lower() for name in names]
        result = await self.session.execute(
            select(Category.id).where(func.lower(Category.name).in_(lowered)).order_by(Category.id)
        )
        return list(result.scalars().all())
