"""The command `taskmanager demo mistakes`: choose the demonstrations, run them one after
another against the database, report, and exit 0 only when every one behaved as predicted
(so a library upgrade that changes a behaviour shows up).

The demonstrations and rich are imported only when the command runs, to keep
`taskmanager --help` fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from taskmanager.demo.mistakes.harness import Demonstration, Observation


def all_demonstrations() -> list[Demonstration]:
    """Every demonstration: the DEMONSTRATION of each module m1_…, m2_…, in order."""
    import importlib
    import pkgutil

    from taskmanager.demo import mistakes

    found = [
        importlib.import_module(f"{mistakes.__name__}.{module.name}").DEMONSTRATION
        for module in pkgutil.iter_modules(mistakes.__path__)
        if module.name[0] == "m" and module.name[1].isdigit()
    ]
    return sorted(found, key=lambda demonstration: demonstration.number)


def select_demonstrations(only: list[str] | None) -> list[Demonstration]:
    """The demonstrations `only` names (numbers or names, comma-separated too), in order."""
    demonstrations = all_demonstrations()
    if not only:
        return demonstrations
    wanted = {part.strip().lower() for item in only for part in item.split(",") if part.strip()}
    known = {str(d.number): d for d in demonstrations} | {d.name: d for d in demonstrations}
    unknown = sorted(wanted - known.keys())
    if unknown:
        choices = ", ".join(f"{d.number} ({d.name})" for d in demonstrations)
        raise typer.BadParameter(
            f"unknown {', '.join(unknown)}; choose from {choices}", param_hint="--only"
        )
    chosen = {known[name].number for name in wanted}
    return [d for d in demonstrations if d.number in chosen]


def command(
    only: Annotated[
        list[str] | None,
        typer.Option(
            "--only",
            help="Run only these mistakes: numbers 1-7 or names (sync-driver, lazy-load, "
            "expire-on-commit, shared-session, double-commit, shared-session-http, "
            "commit-after-yield); repeat or comma-separate.",
        ),
    ] = None,
    json_path: Annotated[
        Path | None,
        typer.Option(
            "--json", help="Also write the observations to this JSON file.", dir_okay=False
        ),
    ] = None,
) -> None:
    """Run the lecture's Common Mistakes against the database, each next to its fix.

    Exit code 0 when every mistake failed as predicted and every fix worked.
    """
    import asyncio

    from rich.console import Console

    from taskmanager.config import load_settings
    from taskmanager.demo.mistakes.harness import run_demonstration
    from taskmanager.demo.mistakes.report import print_report, write_json
    from taskmanager.demo.sync_trap.command import demo_url
    from taskmanager.postgres.migrate import migrated

    demonstrations = select_demonstrations(only)

    async def observe_all(url: str) -> list[Observation]:
        # One after another: they must not overlap (some count commits).
        return [await run_demonstration(d, url) for d in demonstrations]

    console = Console()
    with migrated(load_settings()) as logins:
        url = demo_url(logins)
        with console.status("running the mistakes against the database…"):
            observations = asyncio.run(observe_all(url))
    pairs = list(zip(demonstrations, observations, strict=True))
    print_report(console, pairs)
    if json_path is not None:
        write_json(json_path, pairs)
        console.print(f"observations written to {json_path}")
    unexpected = [d.number for d, o in pairs if not o.as_predicted]
    if unexpected:
        console.print(
            "[bold red]Not as predicted:[/] "
            + ", ".join(map(str, unexpected))
            + " (a library upgrade may have changed the behaviour; see the panels above)"
        )
        raise typer.Exit(1)
