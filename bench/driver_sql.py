"""The app's own first statement of a transaction, as asyncpg takes it ($1 ... $7), for the
bench's floors and layers and scope_step.py, which talk to the driver themselves."""

from __future__ import annotations

from taskmanager.repositories.user_repository import _ENTER

# taskmanager_enter's arguments and the request's id, in the order the placeholders number
# them.
ENTER_PARAMETERS = (
    "user_id",
    "session_id",
    "purpose",
    "valid_until",
    "proof",
    "subject",
    "request_id",
)


def _positional(sql: str) -> str:
    for position, name in enumerate(ENTER_PARAMETERS, start=1):
        sql = sql.replace(f":{name}", f"${position}")
    return sql


ENTER_SQL = _positional(_ENTER.text)
