"""Mistake 4: sharing a session between requests (lecture, Common Mistakes; 3.1).

Two requests' work, run on ONE session (the mistake) or on a session each (the fix).
"""

from __future__ import annotations

import asyncio
import time
import warnings
from collections.abc import Sequence

from sqlalchemy.exc import InvalidRequestError
from sqlalchemy.ext.asyncio import AsyncSession

from taskmanager.database import create_session_factory
from taskmanager.demo.mistakes import harness
from taskmanager.demo.mistakes.harness import Demonstration, Observation, SessionFactory, slow_query
from taskmanager.models import Task


# The lecture's diagram, step by step, in an order two concurrent requests can take.
async def lecture_diagram(session_1: AsyncSession, session_2: AsyncSession, marker: str) -> None:
    session_1.add(Task(title=f"{marker} task A"))  # Request 1: add(task_A)
    session_2.add(Task(title=f"{marker} task B"))  # Request 2: add(task_B)
    await session_1.commit()  # Request 1: commit()
    await session_2.rollback()  # Request 2: rollback() (request 2 failed: undo its work)


# ❌ SHARED SESSION (never do this)
async def shared_session(async_session_factory: SessionFactory, marker: str) -> None:
    async with async_session_factory() as global_session:  # ← ONE session
        await lecture_diagram(global_session, global_session, marker)


# ✅ PER-REQUEST SESSION (correct)
async def session_per_request(async_session_factory: SessionFactory, marker: str) -> None:
    async with async_session_factory() as session_a, async_session_factory() as session_b:
        await lecture_diagram(session_a, session_b, marker)


# And two requests querying at the same moment (run on one session, then on two).
async def query_at_once(
    session_1: AsyncSession, session_2: AsyncSession
) -> Sequence[BaseException | None]:
    return await asyncio.gather(
        slow_query(session_1), slow_query(session_2), return_exceptions=True
    )


# ── Below: the machinery that runs the code above and says what it did ──────────────────────


def outcomes(results: Sequence[object]) -> str:
    return "; ".join(harness.describe(r) if isinstance(r, BaseException) else "ok" for r in results)


def errors(results: Sequence[object]) -> list[BaseException]:
    return [r for r in results if isinstance(r, BaseException)]


async def add_and_flush(session: AsyncSession, title: str) -> None:
    session.add(Task(title=title))
    await session.flush()


async def observe(database_url: str) -> Observation:
    marker = harness.new_marker()
    async with harness.fresh_engine(database_url, pool_size=4) as engine:
        async_session_factory = create_session_factory(engine)
        try:
            async with async_session_factory() as shared:
                # A new session has no connection yet: both queries try to open one.
                first = await query_at_once(shared, shared)
                # Now it holds one: the asyncpg adapter's lock queues one query behind the
                # other instead of failing (asyncpg alone would raise "another operation
                # is in progress"). No error, and no concurrency either.
                started = time.perf_counter()
                queued = await query_at_once(shared, shared)
                queued_s = round(time.perf_counter() - started, 2)
                await shared.rollback()
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    flushed = await asyncio.gather(
                        add_and_flush(shared, f"{marker} flush 1"),
                        add_and_flush(shared, f"{marker} flush 2"),
                        return_exceptions=True,
                    )
                await shared.rollback()
            await shared_session(async_session_factory, marker)
            leaked = await harness.committed_titles(engine, marker)
            await harness.delete_marked(engine, marker)

            async with async_session_factory() as one, async_session_factory() as two:
                started = time.perf_counter()
                separate = await query_at_once(one, two)
                separate_s = round(time.perf_counter() - started, 2)
            await session_per_request(async_session_factory, marker)
            kept = await harness.committed_titles(engine, marker)
        finally:
            await harness.delete_marked(engine, marker)

    facts: dict[str, harness.Fact] = {
        "concurrent queries, new session": outcomes(first),
        "concurrent queries, session holding a connection": outcomes(queued),
        "two 0.1 s queries on one session took (s)": queued_s,
        "concurrent add+flush": outcomes(flushed),
        "warnings": "; ".join(str(w.message).split(". ")[0] for w in caught) or None,
        "committed with one shared session": ", ".join(leaked) or "nothing",
        "two 0.1 s queries on two sessions took (s)": separate_s,
        "committed with a session each": ", ".join(kept) or "nothing",
    }
    failures = errors(first) + errors(flushed)
    held = (
        f"with a connection held: {outcomes(queued)}"
        if errors(queued)
        else "once the session holds a connection, concurrent queries queue silently "
        f"({queued_s} s for two 0.1 s queries)"
    )
    said = (
        f"two concurrent queries on one new session: {outcomes(errors(first)) or 'ok'}; "
        f"two concurrent add+flush: {outcomes(errors(flushed)) or 'ok'}; {held}. "
        "The lecture's diagram (A adds, B adds, A commits, B rolls back): committed → "
        f"{facts['committed with one shared session']}"
    )
    corrections = []
    if leaked == ["task A", "task B"]:
        said += " — A's commit committed B's task"
        corrections.append(
            '"Request 2: rollback() ← ROLLS BACK BOTH!": by then Request 1\'s commit had saved '
            "both tasks, so the rollback undid nothing: task B stays, although its request failed."
        )
    return Observation(
        summary=(
            f"{type(failures[0]).__name__ if failures else 'no error'}; "
            f"A's commit committed {' + '.join(leaked) or 'nothing'}"
        ),
        mistake_observed=said,
        mistake_failed_as_predicted=(
            bool(errors(first))
            and all(isinstance(e, InvalidRequestError) for e in failures)
            and leaked == ["task A", "task B"]
        ),
        fix_observed=(
            f"a session each: concurrent queries {'failed' if errors(separate) else 'both ran'} "
            f"({separate_s} s); the same diagram committed → "
            f"{facts['committed with a session each']} (B's rollback discarded only B)"
        ),
        fix_worked=not errors(separate) and kept == ["task A"],
        mistake_exception=harness.exception_name(failures[0]) if failures else None,
        corrections=corrections,
        facts=facts,
    )


DEMONSTRATION = Demonstration(
    4,
    "shared-session",
    "Sharing a session between requests",
    "Common Mistakes, Mistake 4; 3.1",
    '"Race conditions, data leaking between requests, chaos." Request 1: commit() "COMMITS '
    'BOTH!"; Request 2: rollback() "ROLLS BACK BOTH!"',
    "A session per request: Request 1's commit only commits task_A, Request 2's rollback only "
    "rolls back task_B.",
    observe,
)
