"""The commit after `yield`, with FastAPI's default dependency scope (lecture 3.2-3.3).

`get_async_session` is the lecture's: `yield session`, then `await session.commit()`. The
lecture's lifecycle diagram runs that commit before "RESPONSE SENT". Whether it does depends
on the scope the route declares. The INSERT below is accepted, and fails only at COMMIT.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from fastapi import APIRouter, Depends
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncSession

from taskmanager.database import create_session_factory
from taskmanager.demo.mistakes import harness
from taskmanager.demo.mistakes.harness import Demonstration, Observation
from taskmanager.demo.mistakes.lecture import get_async_session

router = APIRouter()


# ❌ Depends(get_async_session), FastAPI's default scope: the code after `yield` (the commit)
# runs only after the response has been sent.
@router.post("/default-scope/notes", status_code=201)
async def create_note(session: AsyncSession = Depends(get_async_session)) -> dict[str, int]:
    return await insert_note(session)


# ✅ scope="function" (FastAPI >= 0.121): the commit finishes before the response is sent.
@router.post("/function-scope/notes", status_code=201)
async def create_note_committed_first(
    session: AsyncSession = Depends(get_async_session, scope="function"),
) -> dict[str, int]:
    return await insert_note(session)


async def insert_note(session: AsyncSession) -> dict[str, int]:
    # parent_id -1 never exists, but the foreign key is DEFERRABLE INITIALLY DEFERRED: it is
    # checked at COMMIT, so the INSERT (and the whole route) succeeds.
    result = await session.execute(text("INSERT INTO notes (parent_id) VALUES (-1) RETURNING id"))
    return {"id": int(result.scalar_one())}


# ── Below: the machinery that runs the code above and says what it did ──────────────────────


async def call(
    engine: Any, path: str, commit_errors: list[BaseException], closed: asyncio.Event
) -> dict[str, Any]:
    """POST `path` over a real socket; what the client got, the commit's error, the rows."""
    commit_errors.clear()
    closed.clear()
    with harness.captured_logs("uvicorn.error") as logged:
        app = harness.app_serving(create_session_factory(engine), router)
        async with (
            harness.serving(app) as base_url,
            # trust_env=False: no HTTP(S)_PROXY between us and 127.0.0.1
            httpx.AsyncClient(trust_env=False) as client,
        ):
            response = await client.post(f"{base_url}{path}", timeout=15)
            # The code after `yield` may still be running: wait until the session is closed.
            await asyncio.wait_for(closed.wait(), timeout=15)
    async with engine.connect() as connection:
        rows = int((await connection.execute(text("SELECT count(*) FROM notes"))).scalar_one())
    return {
        "status": response.status_code,
        "body": response.text[:80],
        "rows": rows,
        "commit error": commit_errors[0] if commit_errors else None,
        "server logged": "; ".join(
            harness.describe(r.exc_info[1]) for r in logged if r.exc_info and r.exc_info[1]
        ),
    }


async def observe(database_url: str) -> Observation:
    # A scratch schema of this run, first on the search path: created here, dropped at the end.
    schema = f"taskmanager_mistakes_{harness.new_marker().rpartition('-')[2]}"
    options = {"server_settings": {"search_path": schema}}
    facts: dict[str, harness.Fact] = {}
    async with harness.fresh_engine(database_url, connect_args=options) as engine:
        commit_errors: list[BaseException] = []
        closed = asyncio.Event()  # the route's session gave its connection back

        @event.listens_for(engine.sync_engine, "handle_error")
        def database_error(context: Any) -> None:
            commit_errors.append(context.sqlalchemy_exception or context.original_exception)

        @event.listens_for(engine.sync_engine, "checkin")
        def connection_returned(*args: Any) -> None:
            closed.set()

        try:
            async with engine.begin() as connection:
                await connection.execute(text(f"CREATE SCHEMA {schema}"))
                await connection.execute(
                    text(
                        "CREATE TABLE notes (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
                        " parent_id int REFERENCES notes (id) DEFERRABLE INITIALLY DEFERRED)"
                    )
                )
            results = {}
            for scope in ("default", "function"):
                seen = results[scope] = await call(
                    engine, f"/{scope}-scope/notes", commit_errors, closed
                )
                facts[f"{scope} scope: status"] = seen["status"]
                facts[f"{scope} scope: rows in the table"] = seen["rows"]
                facts[f"{scope} scope: commit raised"] = harness.outcome(seen["commit error"])
                facts[f"{scope} scope: server logged"] = seen["server logged"] or None

            # What an in-process test client (httpx.ASGITransport) makes of the default scope.
            app = harness.app_serving(create_session_factory(engine), router)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://demo") as client:
                asgi, asgi_error = await harness.caught(client.post("/default-scope/notes"))
            facts["default scope over httpx.ASGITransport"] = (
                f"the client call raised {harness.exception_name(asgi_error)} instead of "
                "returning the 201 a real client gets"
                if asgi_error
                else f"status {asgi.status_code if asgi else '?'}"
            )
        finally:
            async with engine.begin() as connection:
                await connection.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))

    wrong, right = results["default"], results["function"]
    error = wrong["commit error"]
    return Observation(
        summary=(
            f"client got {wrong['status']}, "
            f"{type(error).__name__ + ' at commit' if error else 'no error'}, rows: {wrong['rows']}"
        ),
        mistake_observed=(
            f"over a real socket (uvicorn on 127.0.0.1) the client got {wrong['status']} "
            f"{wrong['body']}; the commit after `yield` then raised {harness.outcome(error)}; "
            f"rows in the table: {wrong['rows']}"
            + (
                " — the client was told 'created' for a row that does not exist"
                if wrong["status"] < 300 and error and not wrong["rows"]
                else ""
            )
        ),
        mistake_failed_as_predicted=wrong["status"] == 201 and wrong["rows"] == 0 and bool(error),
        fix_observed=(
            f'Depends(get_async_session, scope="function"): the client got {right["status"]} '
            f"{right['body']!r} and rows in the table: {right['rows']} — the failed commit "
            "became the response"
        ),
        fix_worked=right["status"] >= 400 and right["rows"] == 0,
        mistake_exception=harness.exception_name(error) if error else None,
        corrections=(
            [
                "The lifecycle diagram (commit, then RESPONSE SENT) holds only with "
                'scope="function": with the lecture\'s Depends(get_async_session) FastAPI sends '
                "the response first, so a commit that fails cannot change what the client was told."
            ]
            if wrong["status"] == 201 and error
            else []
        ),
        facts=facts,
    )


DEMONSTRATION = Demonstration(
    7,
    "commit-after-yield",
    "Commit after `yield` with FastAPI's default dependency scope",
    "3.2-3.3, the yield dependency's lifecycle",
    'get_async_session commits after `yield`: "No exception? → await session.commit()", '
    'then "RESPONSE SENT" — the lifecycle diagram puts the commit before the response.',
    'Depends(get_async_session, scope="function") (FastAPI >= 0.121), as '
    "taskmanager.database.SessionDep does: the commit finishes before the response is sent.",
    observe,
)
