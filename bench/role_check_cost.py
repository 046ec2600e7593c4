"""What the role check costs a write request: the same POST /tasks and PATCH /tasks/{id}
with the role-based write policies as shipped and with membership-only ones, side by side in
one run; and the route-level check in Python, timed alone.

    .venv/bin/python bench/role_check_cost.py                        # ~1.5 minutes
    .venv/bin/python bench/role_check_cost.py --rounds 5 --duration 5

One throwaway embedded PostgreSQL, seeded as bench/run.py seeds it (10,000 tasks in the
demo account's workspace), one uvicorn server with the real app (side_by_side.py). Each
round runs every scenario twice: once with migration 0010's policies as shipped (tasks,
categories, labels and task_labels are inserted, changed and deleted only where
`taskmanager_workspace_ids_allowing('tasks:write')` lists the workspace: memberships joined
to role_permissions, once per statement), and once with the owner having replaced the
expressions of those INSERT, UPDATE and DELETE policies with membership-only ones, what 0009
had (`workspace_id = ANY ((SELECT taskmanager_workspace_ids())::integer[])`); which goes
first alternates between rounds. The shipped expressions are read from pg_policies before
the first switch and put back after the last, so the bench measures whatever the head
migration left, not a copy of it.

The route-level check (routes/permissions.py, Scope.workspace_for_new_row) cannot be taken
out of the running app, and needs no database: it is a lookup in the caller's Scope, in
memory. It runs in both modes, and is timed here alone with timeit, in ns per call.

Printed per scenario (medians over the rounds): requests per second, the wall time per
request they imply (1e6 / req/s at wrk's concurrency, in µs), the server's and PostgreSQL's
CPU time per request, and the difference the role-based policies make in µs per request,
with the ratio (shipped / membership-only). Only 127.0.0.1; bounded in time (wrk -d).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import timeit
import uuid

from harness import Database, autocommit
from side_by_side import Comparison, add_arguments, run_side_by_side, table

from taskmanager.security.roles import Action, Role
from taskmanager.security.scope import Scope, mint_scope

# The tables and the membership-only expression as migration 0010 names them (its MINE is
# what 0009's policies said for every command).
_ROLES_MIGRATION = importlib.import_module("taskmanager.migrations.versions.0010_workspace_roles")
WORKSPACE_ROWS: tuple[str, ...] = _ROLES_MIGRATION.WORKSPACE_ROWS
MEMBERSHIP_ONLY = f"workspace_id {_ROLES_MIGRATION.MINE}"
ROLE_FUNCTION = "taskmanager_workspace_ids_allowing"

MODES = ("as shipped", "membership only")
_TABLES = ", ".join(f"'{table}'" for table in WORKSPACE_ROWS)
_WRITE_POLICIES = (
    f"FROM pg_policies WHERE schemaname = current_schema() AND tablename IN ({_TABLES}) "
    "AND cmd IN ('INSERT', 'UPDATE', 'DELETE')"
)
_READ_POLICIES = (
    "SELECT coalesce(json_agg(json_build_array(tablename, policyname, qual, with_check) "
    f"ORDER BY tablename, policyname), '[]') {_WRITE_POLICIES}"
)
_COUNT_ROLE_CHECKED = (
    f"SELECT count(*) {_WRITE_POLICIES} AND (coalesce(qual, '') LIKE '%{ROLE_FUNCTION}%' "
    f"OR coalesce(with_check, '') LIKE '%{ROLE_FUNCTION}%')"
)

# (table, policy) -> (USING, WITH CHECK) as the migrations left them, read once.
Policies = dict[tuple[str, str], tuple[str | None, str | None]]


class WritePolicies:
    """Puts the write policies of a workspace's rows as shipped or membership-only, as the
    tables' owner (ALTER POLICY changes the expressions; names and commands stay)."""

    def __init__(self) -> None:
        self.shipped: Policies | None = None

    def __call__(self, database: Database, mode: str) -> None:
        if self.shipped is None:
            self.shipped = self._read(database)
        statements = []
        for (relation, name), (using, check) in self.shipped.items():
            if mode == MODES[1]:
                using = MEMBERSHIP_ONLY if using is not None else None
                check = MEMBERSHIP_ONLY if check is not None else None
            clauses = (
                f"USING ({using})" if using else "",
                f"WITH CHECK ({check})" if check else "",
            )
            statements.append(
                f"ALTER POLICY {name} ON {relation} {' '.join(filter(None, clauses))}"
            )
        *_, (checked,) = autocommit(database.owner_url, *statements, _COUNT_ROLE_CHECKED)
        expected = len(self.shipped) if mode == MODES[0] else 0
        if checked != expected:
            sys.exit(f"{mode}: {checked} write policies call {ROLE_FUNCTION}, not {expected}")

    @staticmethod
    def _read(database: Database) -> Policies:
        ((rows,),) = autocommit(database.owner_url, _READ_POLICIES)
        rows = json.loads(rows) if isinstance(rows, str) else rows
        shipped = {(table, name): (using, check) for table, name, using, check in rows}
        # One INSERT, UPDATE and DELETE policy per table, each calling the role function:
        # else there is no role check to take away and the comparison would mean nothing.
        role_checked = [
            key for key, expressions in shipped.items()
            if any(ROLE_FUNCTION in (e or "") for e in expressions)
        ]  # fmt: skip
        if len(shipped) != 3 * len(WORKSPACE_ROWS) or len(role_checked) != len(shipped):
            sys.exit(f"the write policies are not 0010's role checks: {sorted(shipped)}")
        return shipped


def _scope() -> Scope:
    """A caller as the app mints one: three workspaces, three roles."""
    return mint_scope(
        user_id=1,
        session_id=uuid.uuid4(),
        workspace_ids=(1, 2, 3),
        roles={1: Role.OWNER, 2: Role.MEMBER, 3: Role.VIEWER},
        personal_workspace_id=1,
        valid_until=2**31 - 1,
    )


# What each write route asks its Scope, granted (statement, where the app calls it).
PYTHON_CHECKS = (
    ("scope.may(2, Action.TASKS_WRITE)", "Scope.may"),
    ("scope.require(2, Action.TASKS_WRITE)", "Scope.require: PATCH (row_for_change)"),
    ("scope.workspace_for_new_row(None)", "Scope.workspace_for_new_row: POST"),
)


def python_check_ns(repeat: int = 5) -> list[tuple[str, str, float]]:
    """ns per call of each check: the fastest of `repeat` timeit runs (timeit's advice: the
    others are the machine's noise, not the code's)."""
    names = {"scope": _scope(), "Action": Action}
    timed = []
    for statement, where in PYTHON_CHECKS:
        timer = timeit.Timer(statement, globals=names)
        number, _ = timer.autorange()
        best = min(timer.repeat(repeat=repeat, number=number)) / number
        timed.append((statement, where, best * 1e9))
    return timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args()
    python = python_check_ns()
    comparison = Comparison(MODES, WritePolicies())
    runs = run_side_by_side(comparison, args)
    print(
        "\n".join(
            [
                f"role check cost: wrk -t1 -c{args.connections} -d{args.duration}s x "
                f"{args.rounds} rounds, medians; embedded PostgreSQL, one uvicorn worker; "
                "with = the write policies as shipped (the role's tasks:write), without = "
                "membership-only write policies (0009's)",
                "",
                *table(runs, comparison),
                "",
                "The route-level check in Python (in both modes), timeit, fastest of 5:",
                "",
                "| call | where | ns per call |",
                "|---|---|---:|",
                *(f"| `{stmt}` | {where} | {ns:,.0f} |" for stmt, where, ns in python),
            ]
        )
    )


if __name__ == "__main__":
    main()
