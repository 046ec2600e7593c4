"""`taskmanager demo mistakes`: the lecture's Common Mistakes, run against the database.

Each mistake runs for real next to its fix, and the panel shows what actually happened (the
real exception, or the wrong result). Exit code 0 when every demonstration behaved as the
lecture predicts, 1 otherwise, so a library upgrade that changes the behaviour shows up.

The demonstrations themselves live in `mistake_demos` (imported only when the command runs,
to keep `taskmanager --help` fast).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from taskmanager.demo.mistake_demos import Demonstration, Observation


def select_demonstrations(only: list[str] | None) -> list[Demonstration]:
    """The demonstrations `only` names (numbers or names, comma-separated too), in order."""
    from taskmanager.demo.mistake_demos import DEMONSTRATIONS

    if not only:
        return list(DEMONSTRATIONS)
    wanted = {part.strip().lower() for item in only for part in item.split(",") if part.strip()}
    known = {str(d.number): d for d in DEMONSTRATIONS} | {d.name: d for d in DEMONSTRATIONS}
    unknown = sorted(wanted - known.keys())
    if unknown:
        choices = ", ".join(f"{d.number} ({d.name})" for d in DEMONSTRATIONS)
        raise typer.BadParameter(
            f"unknown {', '.join(unknown)}; choose from {choices}", param_hint="--only"
        )
    chosen = {known[name].number for name in wanted}
    return [d for d in DEMONSTRATIONS if d.number in chosen]


async def observe(demonstrations: list[Demonstration], database_url: str) -> list[Observation]:
    """Run the demonstrations one after another (they must not overlap: some count commits)."""
    from taskmanager.demo.mistake_demos import run_demonstration

    return [await run_demonstration(d, database_url) for d in demonstrations]


def _panel(demonstration: Demonstration, observation: Observation) -> object:
    from rich import box
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(ratio=1)
    mistake_style = "red" if observation.mistake_failed_as_predicted else "yellow"
    fix_style = "green" if observation.fix_worked else "yellow"
    grid.add_row("What the lecture says", Text(demonstration.lecture_says))
    grid.add_row("What happened here", Text(observation.mistake_observed, style=mistake_style))
    grid.add_row("The fix", Text(demonstration.fix))
    grid.add_row("What the fix did", Text(observation.fix_observed, style=fix_style))
    problems = [
        text
        for ok, text in (
            (observation.mistake_failed_as_predicted, "the mistake did not fail as predicted"),
            (observation.fix_worked, "the fix did not work"),
        )
        if not ok
    ]
    verdict = (
        Text("NOT as the lecture predicts: " + " and ".join(problems), style="bold red")
        if problems
        else Text("as the lecture predicts", style="bold green")
    )
    grid.add_row("Verdict", verdict)
    return Panel(
        grid,
        title=(
            f"[bold]{demonstration.number}. {demonstration.title}[/]  [dim]({demonstration.source})"
        ),
        title_align="left",
        border_style="green" if observation.as_predicted else "red",
        box=box.ROUNDED,
    )


def _summary(pairs: list[tuple[Demonstration, Observation]]) -> object:
    from rich.table import Table

    table = Table(
        title="Summary",
        title_justify="left",
        caption="Failed? the mistake failed as the lecture predicts.  Fixed? the fix worked.",
        caption_justify="left",
    )
    table.add_column("#", justify="right")
    table.add_column("Mistake")
    table.add_column("Observed")
    table.add_column("Failed?", justify="center")
    table.add_column("Fixed?", justify="center")
    for demonstration, observation in pairs:
        observed = observation.summary or observation.mistake_exception or "-"
        table.add_row(
            str(demonstration.number),
            demonstration.title,
            observed,
            "[green]yes[/]" if observation.mistake_failed_as_predicted else "[red]no[/]",
            "[green]yes[/]" if observation.fix_worked else "[red]no[/]",
        )
    return table


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, str] = {}
    for package in ("sqlalchemy", "asyncpg", "fastapi", "starlette", "httpx", "uvicorn", "psycopg"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    return found


def write_json(path: Path, pairs: list[tuple[Demonstration, Observation]]) -> None:
    from dataclasses import asdict

    document = {
        "versions": _versions(),
        "all_as_predicted": all(observation.as_predicted for _, observation in pairs),
        "observations": [
            {
                "number": demonstration.number,
                "title": demonstration.title,
                **asdict(observation),
                "as_predicted": observation.as_predicted,
            }
            for demonstration, observation in pairs
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def report(console: Console, pairs: list[tuple[Demonstration, Observation]]) -> None:
    versions = _versions()
    console.print(
        "[bold]The lecture's Common Mistakes, run for real[/]  "
        + "  ".join(f"{name} {versions[name]}" for name in ("sqlalchemy", "asyncpg", "fastapi"))
    )
    for demonstration, observation in pairs:
        console.print(_panel(demonstration, observation))
    console.print(_summary(pairs))


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

    Exit code 0 when every mistake failed as the lecture predicts and every fix worked.
    """
    import asyncio

    from rich.console import Console

    from taskmanager.config import load_settings
    from taskmanager.migrate import upgrade
    from taskmanager.postgres import database_url

    demonstrations = select_demonstrations(only)
    settings = load_settings()
    console = Console()
    with database_url(settings) as url:
        upgrade(url)
        with console.status("running the mistakes against the database…"):
            observations = asyncio.run(observe(demonstrations, url))
    pairs = list(zip(demonstrations, observations, strict=True))
    report(console, pairs)
    if json_path is not None:
        write_json(json_path, pairs)
        console.print(f"observations written to {json_path}")
    unexpected = [d.number for d, o in pairs if not o.as_predicted]
    if unexpected:
        console.print(
            "[bold red]Not as the lecture predicts:[/] "
            + ", ".join(map(str, unexpected))
            + " (a library upgrade may have changed the behaviour; see the panels above)"
        )
        raise typer.Exit(1)
