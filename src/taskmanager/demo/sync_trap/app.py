"""The sync trap (lecture 1.1): the same task list served three ways, side by side.

`taskmanager demo sync-trap` runs this app in a uvicorn process of its own and times bursts
of concurrent requests against each route. `SELECT pg_sleep` stands in for a slow query (so
the effect does not depend on the data); every route answers with its own timestamps.
"""

import threading
import time
from typing import Any

from fastapi import APIRouter, Query
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlalchemy.orm import joinedload, sessionmaker

from taskmanager.models import Task

# Bound at start-up (wiring.py) to engines with the same pool: psycopg (sync) and asyncpg.
SessionLocal = sessionmaker(expire_on_commit=False)
async_session_factory = async_sessionmaker(expire_on_commit=False)
# The list endpoint's query (TaskRepository.get_all's): newest first, with their categories.
stmt = (
    select(Task)
    .options(joinedload(Task.category))
    .order_by(Task.created_at.desc(), Task.id.desc())
    .limit(50)
)
SLOW_QUERY = text("SELECT pg_sleep(:seconds)")
DELAY_MS = Query(default=50, ge=0, le=10_000, description="pg_sleep before the list query")
router = APIRouter()


@router.get("/tasks/trap")
async def get_tasks_trap(delay_ms: int = DELAY_MS) -> dict[str, Any]:
    """Looks reasonable. Feels familiar. Is BROKEN."""
    return get_tasks_sync(delay_ms)  # ← SYNC call inside ASYNC route: the event loop waits


@router.get("/tasks/threadpool")
def get_tasks_threadpool(delay_ms: int = DELAY_MS) -> dict[str, Any]:
    return get_tasks_sync(delay_ms)  # a `def` route: FastAPI runs it in a worker thread


@router.get("/tasks/async")
async def get_tasks_async(delay_ms: int = DELAY_MS) -> dict[str, Any]:
    clock = Clock()
    async with async_session_factory() as session:
        await session.connection()  # a pooled connection first: waiting for one shows apart
        clock.connected()
        await session.execute(SLOW_QUERY, {"seconds": delay_ms / 1000})
        tasks = (await session.scalars(stmt)).all()  # every await hands the event loop back
    return clock.stop(rows=len(tasks))


def get_tasks_sync(delay_ms: int) -> dict[str, Any]:
    """What both sync routes run, line for line: only WHERE it runs differs."""
    clock = Clock()
    with SessionLocal() as session:
        session.connection()
        clock.connected()
        session.execute(SLOW_QUERY, {"seconds": delay_ms / 1000})
        tasks = session.scalars(stmt).all()  # blocks this thread until PostgreSQL answers
    return clock.stop(rows=len(tasks))


# ── Below: what every route reports ─────────────────────────────────────────────────────────


class Clock:
    """A route's own readings, on time.monotonic (CLOCK_MONOTONIC: the load driver, another
    process on this machine, reads the same clock)."""

    def __init__(self) -> None:
        self.started = self.connected_at = time.monotonic()

    def connected(self) -> None:
        self.connected_at = time.monotonic()

    def stop(self, rows: int) -> dict[str, Any]:
        return {
            "started": self.started,
            "connected": self.connected_at,
            "finished": time.monotonic(),
            "rows": rows,
            "thread": threading.current_thread().name,
        }
