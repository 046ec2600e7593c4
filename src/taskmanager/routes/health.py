"""Liveness (no database) and readiness (`SELECT 1` with a short timeout)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from taskmanager.database import check_database
from taskmanager.openapi import problem_responses
from taskmanager.problems import DATABASE_UNAVAILABLE, ProblemError
from taskmanager.schemas import HealthResponse

router = APIRouter(prefix="/health", tags=["health"])


@router.get("/live", response_model=HealthResponse)
async def live() -> HealthResponse:
    """The process is up and its event loop answers."""
    return HealthResponse(status="ok")


@router.get("/ready", response_model=HealthResponse, responses=problem_responses(503))
async def ready(request: Request) -> HealthResponse:
    """The database answers `SELECT 1` within the configured ready timeout."""
    state = request.app.state
    try:
        await check_database(state.engine, state.settings.ready_timeout)
    except Exception as exc:
        raise ProblemError(
            DATABASE_UNAVAILABLE.problem(
                f"the database did not answer SELECT 1 within {state.settings.ready_timeout} s "
                f"({exc.__class__.__name__})"
            ),
            headers={"Retry-After": "5"},
        ) from exc
    return HealthResponse(status="ok")
