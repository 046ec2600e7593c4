"""What the activity log costs a write request: the same POST /tasks and PATCH /tasks/{id}
with the log's trigger and without it, side by side in one run.

    .venv/bin/python bench/activity_cost.py                        # ~1.5 minutes
    .venv/bin/python bench/activity_cost.py --rounds 5 --duration 5

One throwaway embedded PostgreSQL, seeded as bench/run.py seeds it (10,000 tasks in the
demo account's workspace), one uvicorn server with the real app (side_by_side.py). Each
round runs every scenario twice: once with migration 0011's trigger enabled on every logged
table (each write also inserts its activity row: the diff as jsonb, the sealed caller
checked, five index entries), and once with the owner having disabled it (`ALTER TABLE ...
DISABLE TRIGGER taskmanager_activity`); which goes first alternates between rounds, so drift
on a noisy machine hits both alike. After each run the tasks and activity rows it added are
deleted and the tables vacuumed (bench/run.py does the same for its write scenarios).

Printed per scenario (medians over the rounds): requests per second, the wall time per
request they imply (1e6 / req/s at wrk's concurrency: the server's capacity, in µs), the
server's and PostgreSQL's CPU time per request, and the difference the trigger makes in
µs per request, with the ratio (with / without). Only 127.0.0.1; bounded in time (wrk -d).
"""

from __future__ import annotations

import argparse

from harness import Database, autocommit
from side_by_side import Comparison, add_arguments, run_side_by_side, table

MODES = ("with the log", "without")
LOGGED_TABLES = ("workspaces", "memberships", "tasks", "categories", "labels", "task_labels")


def set_trigger(database: Database, mode: str) -> None:
    """Enable (or disable) the log's trigger on every logged table, as the tables' owner."""
    verb = "ENABLE" if mode == MODES[0] else "DISABLE"
    autocommit(
        database.owner_url,
        *(f"ALTER TABLE {table} {verb} TRIGGER taskmanager_activity" for table in LOGGED_TABLES),
    )


def logged_rows(database: Database) -> int:
    (logged,) = autocommit(database.admin_url, "SELECT count(*) FROM activity")
    return int(logged[0])


COMPARISON = Comparison(MODES, set_trigger, count=logged_rows, count_name="activity rows/req")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args()
    runs = run_side_by_side(COMPARISON, args)
    print(
        "\n".join(
            [
                f"activity log cost: wrk -t1 -c{args.connections} -d{args.duration}s x "
                f"{args.rounds} rounds, medians; embedded PostgreSQL, one uvicorn worker",
                "",
                *table(runs, COMPARISON),
            ]
        )
    )


if __name__ == "__main__":
    main()
