"""CategoryRepository: how categories are found, stored and renamed. Flushes, never commits."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from taskmanager.models import Category


class CategoryRepository:
    """Encapsulates all database operations for Categories."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get_by_id(self, category_id: int) -> Category | None:
        result = await self.session.execute(select(Category).where(Category.id == category_id))
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
        category.name = name
        await self.session.flush()
        return category

    async def delete(self, category: Category) -> None:
        """Delete a category; PostgreSQL sets its tasks' category_id to NULL."""
        await self.session.delete(category)
        await self.session.flush()
