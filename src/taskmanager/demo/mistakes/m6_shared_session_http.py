"""A session shared by two concurrent HTTP requests: the lecture's Mistake 4 code, served.

Requests A and B each add a task; B fails after A has committed (`turn` makes that
interleaving happen on every run: under load it happens by chance).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import APIRouter, Depends, FastAPI, HTTPException
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession

from taskmanager.database import create_session_factory
from taskmanager.demo.mistakes import harness
from taskmanager.demo.mistakes.harness import Demonstration, Observation, slow_query
from taskmanager.demo.mistakes.lecture import get_async_session
from taskmanager.models import Task


def app_with_global_session(async_session_factory: harness.SessionFactory, turn: Turn) -> FastAPI:
    # ❌ NEVER: Global session
    session = async_session_factory()  # Created once at startup
    router = APIRouter()

    @router.get("/tasks")
    async def get_tasks() -> None:
        await slow_query(session)  # ALL requests share this!

    @router.post("/tasks", status_code=201)
    async def create_task(body: NewTask) -> dict[str, str]:
        session.add(Task(title=body.title))  # ALL requests share this!
        await turn.take(body)  # B fails here, after A's commit
        await session.commit()
        return {"title": body.title}

    app = harness.app_serving(async_session_factory, router, errors_as_json=True)
    app.state.global_session = session  # closed by the demonstration afterwards
    return app


def app_with_session_per_request(
    async_session_factory: harness.SessionFactory, turn: Turn
) -> FastAPI:
    # ✅ CORRECT: Session per request via Depends
    router = APIRouter()

    @router.get("/tasks")
    async def get_tasks(session: AsyncSession = Depends(get_async_session)) -> None:
        await slow_query(session)  # This request's own session

    @router.post("/tasks", status_code=201)
    async def create_task(
        body: NewTask, session: AsyncSession = Depends(get_async_session)
    ) -> dict[str, str]:
        session.add(Task(title=body.title))
        await turn.take(body)  # B fails here, after A's commit
        return {"title": body.title}  # the dependency commits (for B: rolls back)

    return harness.app_serving(async_session_factory, router, errors_as_json=True)


# ── Below: the machinery that runs the code above and says what it did ──────────────────────


class NewTask(BaseModel):
    title: str
    fail: bool = False  # request B: the route fails after adding its task


@dataclass
class Turn:
    """B adds its task, then A adds and commits, then B fails."""

    b_added: asyncio.Event = field(default_factory=asyncio.Event)
    a_answered: asyncio.Event = field(default_factory=asyncio.Event)

    async def take(self, body: NewTask) -> None:
        if not body.fail:  # request A
            await self.b_added.wait()
            return
        self.b_added.set()
        await self.a_answered.wait()
        raise HTTPException(422, "rejected: nothing saved")


@dataclass
class Outcome:
    reads: list[int]  # the statuses of two concurrent GET /tasks
    read_error: dict[str, Any] | None
    a: int
    b: int
    committed: list[str]

    def describe_reads(self) -> str:
        error = self.read_error
        said = ", ".join(map(str, self.reads))
        return said + (f" ({error.get('exception')}: {error.get('message')})" if error else "")


async def run(database_url: str, marker: str, build: Any) -> Outcome:
    # A new engine each time: the first query must open a connection, as at startup.
    async with harness.fresh_engine(database_url, pool_size=4) as engine:
        turn = Turn()
        app = build(create_session_factory(engine), turn)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        try:
            async with (
                httpx.AsyncClient(transport=transport, base_url="http://demo") as client,
                asyncio.timeout(15),
            ):
                reads = await asyncio.gather(client.get("/tasks"), client.get("/tasks"))
                request_b = asyncio.create_task(
                    client.post("/tasks", json={"title": f"{marker} B", "fail": True})
                )
                try:
                    response_a = await client.post("/tasks", json={"title": f"{marker} A"})
                finally:
                    turn.a_answered.set()
                response_b = await request_b
        finally:
            if getattr(app.state, "global_session", None) is not None:
                await app.state.global_session.close()
            committed = await harness.committed_titles(engine, marker)
            await harness.delete_marked(engine, marker)
    failed = [harness.json_body(r) for r in reads if r.status_code != 200]
    return Outcome(
        [r.status_code for r in reads],
        failed[0] if failed else None,
        response_a.status_code,
        response_b.status_code,
        committed,
    )


async def observe(database_url: str) -> Observation:
    marker = harness.new_marker()
    wrong = await run(database_url, marker, app_with_global_session)
    right = await run(database_url, marker, app_with_session_per_request)
    facts: dict[str, harness.Fact] = {}
    for variant, seen in (("global session", wrong), ("session per request", right)):
        facts[f"{variant}: two concurrent GET /tasks"] = ", ".join(map(str, seen.reads))
        if seen.read_error:
            facts[f"{variant}: error"] = (
                f"{seen.read_error.get('exception')}: {seen.read_error.get('message')}"
            )
        facts[f"{variant}: POST A, POST B (fails)"] = f"{seen.a}, {seen.b}"
        facts[f"{variant}: committed"] = ", ".join(seen.committed) or "nothing"
    error = wrong.read_error
    return Observation(
        summary=(
            f"GETs {'/'.join(map(str, wrong.reads))}; B got {wrong.b} yet committed: "
            f"{' + '.join(wrong.committed) or 'nothing'}"
        ),
        mistake_observed=(
            f"two concurrent GET /tasks → {wrong.describe_reads()}. POST A → {wrong.a}, "
            f"POST B → {wrong.b} (B is told its task was not saved); committed: "
            f"{', '.join(wrong.committed) or 'nothing'}"
            + (" — A's commit saved B's task" if "B" in wrong.committed else "")
        ),
        mistake_failed_as_predicted=(
            error is not None
            and error.get("exception") == "sqlalchemy.exc.InvalidRequestError"
            and wrong.b == 422
            and wrong.committed == ["A", "B"]
        ),
        fix_observed=(
            f"session per request: GET /tasks → {right.describe_reads()}; POST A → {right.a}, "
            f"POST B → {right.b}; committed: {', '.join(right.committed) or 'nothing'}"
        ),
        fix_worked=(
            right.reads == [200, 200]
            and (right.a, right.b) == (201, 422)
            and right.committed == ["A"]
        ),
        mistake_exception=error.get("exception") if error else None,
        facts=facts,
    )


DEMONSTRATION = Demonstration(
    6,
    "shared-session-http",
    "A session shared across two concurrent requests",
    "Common Mistakes, Mistake 4; 3.1 — over HTTP",
    '"NEVER: Global session" — "session = async_session_factory()  # Created once at startup"; '
    '"Race conditions, data leaking between requests, chaos."',
    "session: AsyncSession = Depends(get_async_session): each request its own session.",
    observe,
)
