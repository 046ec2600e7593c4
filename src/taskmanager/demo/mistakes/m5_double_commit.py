"""Mistake 5: committing inside the route AND the dependency (lecture, Common Mistakes; 3.3).

`get_async_session` is the lecture's (3.2): it commits after the route returns.
"""

from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import APIRouter, Depends
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from taskmanager.demo.mistakes import harness
from taskmanager.demo.mistakes.harness import Demonstration, Observation
from taskmanager.demo.mistakes.lecture import get_async_session
from taskmanager.models import Task
from taskmanager.schemas import TaskCreate

router = APIRouter()


# ❌ DOUBLE COMMIT (Mistake 5 as written)
@router.post("/mistake-5/tasks", status_code=201)
async def create_task(
    body: TaskCreate, session: AsyncSession = Depends(get_async_session)
) -> dict[str, int]:
    task = Task(title=body.title)
    session.add(task)
    await session.commit()  # ← Commits here
    return {"id": task.id}


# ❌ FRAGILE: Committing inside each route (3.3) — and the next line fails
@router.post("/fragile/tasks", status_code=201)
async def create_task_fragile(
    body: TaskCreate, session: AsyncSession = Depends(get_async_session)
) -> dict[str, int]:
    task = Task(title=body.title)
    session.add(task)
    await session.commit()  # What if the next line fails?
    await session.refresh(task)
    task.category_id = body.category_id  # the next line: a category that does not exist
    await session.flush()
    return {"id": task.id}


# ✅ CORRECT: Let the dependency handle commit
@router.post("/safe/tasks", status_code=201)
async def create_task_safe(
    body: TaskCreate, session: AsyncSession = Depends(get_async_session)
) -> dict[str, int]:
    task = Task(title=body.title)
    session.add(task)
    await session.flush()  # ← Sends SQL but doesn't commit
    await session.refresh(task)  # ← Gets generated fields
    task.category_id = body.category_id  # the same next line
    await session.flush()
    return {"id": task.id}


# ── Below: the machinery that runs the code above and says what it did ──────────────────────

MISSING_CATEGORY = 2_000_000_000  # no category has this id


@dataclass
class Posted:
    """One POST /tasks: what the client got, what it cost, whether its row stayed."""

    status: int
    commit_calls: int  # session.commit() calls that ended a session transaction
    commits_sent: int  # COMMITs that reached PostgreSQL
    error: str | None  # the exception the route raised, as the client was told
    row_kept: bool

    @property
    def commits(self) -> str:
        return f"{self.commit_calls}, {self.commits_sent}"

    def cost(self) -> str:
        return (
            f"commit() ended {self.commit_calls} transaction(s), {self.commits_sent} COMMIT(s) sent"
        )


async def observe(database_url: str) -> Observation:
    marker = harness.new_marker()
    counts = [0, 0]  # commit() calls, COMMITs sent

    class CountedSession(Session):
        """Sessions of this run only: their commits are counted."""

    @event.listens_for(CountedSession, "after_commit")
    def session_committed(session: Session) -> None:
        counts[0] += 1

    async with harness.fresh_engine(database_url) as engine:

        @event.listens_for(engine.sync_engine, "commit")
        def database_committed(connection: Any) -> None:
            counts[1] += 1

        factory = async_sessionmaker(
            bind=engine, expire_on_commit=False, sync_session_class=CountedSession
        )
        transport = httpx.ASGITransport(
            app=harness.app_serving(factory, router, errors_as_json=True),
            raise_app_exceptions=False,
        )

        async def post(path: str, category_id: int | None = None) -> Posted:
            title = f"{path} {'fails' if category_id else 'ok'}"
            counts[:] = [0, 0]
            async with httpx.AsyncClient(transport=transport, base_url="http://demo") as client:
                body = {"title": f"{marker} {title}", "category_id": category_id}
                response = await client.post(path, json=body)
            error = harness.json_body(response).get("exception")
            kept = title in await harness.committed_titles(engine, marker)
            return Posted(response.status_code, counts[0], counts[1], error, kept)

        try:
            bare = await post("/mistake-5/tasks")
            wrong = await post("/fragile/tasks")
            wrong_failing = await post("/fragile/tasks", MISSING_CATEGORY)
            right = await post("/safe/tasks")
            right_failing = await post("/safe/tasks", MISSING_CATEGORY)
        finally:
            await harness.delete_marked(engine, marker)

    corrections = []
    if bare.commits_sent == 1:
        corrections.append(
            '"Double commit: wastes a round-trip": not with Mistake 5\'s code as written (add, '
            "commit, return): the dependency's commit() has no transaction left to end and sends "
            "nothing. A 2nd COMMIT goes out only when the route uses the session after its "
            "commit (3.3's refresh()). What remains is the early commit itself."
        )
    return Observation(
        summary=(
            f"{wrong.commits_sent} COMMITs; failed request's row "
            f"{'kept' if wrong_failing.row_kept else 'gone'}"
        ),
        mistake_observed=(
            f"POST /tasks (add, commit, refresh, return; lecture 3.3) → {wrong.status}: "
            f"{wrong.cost()}, the 2nd closing a transaction that held only refresh()'s SELECT. "
            f"Mistake 5's code as written (add, commit, return): {bare.cost()}. When the next "
            f"line failed ({wrong_failing.error}) the client got {wrong_failing.status}, yet the "
            f"task row {'stayed committed' if wrong_failing.row_kept else 'is gone'}: the "
            "dependency's rollback came after the route's commit and had nothing left to undo"
        ),
        mistake_failed_as_predicted=(
            wrong.commits == "2, 2" and wrong_failing.status >= 400 and wrong_failing.row_kept
        ),
        fix_observed=(
            f"flush() in the route: POST /tasks → {right.status}, {right.cost()}; when the next "
            f"line failed → {right_failing.status}, and its row "
            f"{'stayed committed' if right_failing.row_kept else 'was rolled back'}"
        ),
        fix_worked=(
            right.status == 201
            and right.commits == "1, 1"
            and right_failing.status >= 400
            and not right_failing.row_kept
        ),
        mistake_exception=wrong_failing.error,
        corrections=corrections,
        facts={
            "route commits, no refresh: session commits, COMMITs sent": bare.commits,
            "route commits: session commits, COMMITs sent": wrong.commits,
            "route commits: later failure → status": wrong_failing.status,
            "route commits: row of the failed request committed": wrong_failing.row_kept,
            "route flushes: session commits, COMMITs sent": right.commits,
            "route flushes: later failure → status": right_failing.status,
            "route flushes: row of the failed request committed": right_failing.row_kept,
        },
    )


DEMONSTRATION = Demonstration(
    5,
    "double-commit",
    "Committing inside the route AND the dependency",
    "Common Mistakes, Mistake 5; 3.3",
    '"Double commit: wastes a round-trip, can mask errors"; "What if the next line fails? '
    '[…] commit already happened!"',
    "flush() (and refresh()) in the route; the dependency commits once, after the route "
    "succeeded, and rolls back on any error.",
    observe,
)
