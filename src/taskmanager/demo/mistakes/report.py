"""What `taskmanager demo mistakes` prints (a panel per demonstration, a summary) and writes
with --json."""

from __future__ import annotations

import json
from dataclasses import asdict
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from rich import box
from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from taskmanager.demo.mistakes.harness import Demonstration, Observation

Pairs = list[tuple[Demonstration, Observation]]
PACKAGES = ("sqlalchemy", "asyncpg", "fastapi", "starlette", "httpx", "uvicorn", "psycopg")
AS_PREDICTED = "as predicted: the mistake failed and the fix worked"


def verdict(observation: Observation) -> str:
    problems = [
        text
        for ok, text in (
            (observation.mistake_failed_as_predicted, "the mistake did not fail as predicted"),
            (observation.fix_worked, "the fix did not work"),
        )
        if not ok
    ]
    return "NOT as predicted: " + " and ".join(problems) if problems else AS_PREDICTED


def panel(demonstration: Demonstration, observation: Observation) -> Panel:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(ratio=1)
    mistake_style = "red" if observation.mistake_failed_as_predicted else "yellow"
    grid.add_row("What the lecture says", Text(demonstration.lecture_says))
    grid.add_row("What happened here", Text(observation.mistake_observed, style=mistake_style))
    grid.add_row("The fix", Text(demonstration.fix))
    fix_style = "green" if observation.fix_worked else "yellow"
    grid.add_row("What the fix did", Text(observation.fix_observed, style=fix_style))
    for number, correction in enumerate(observation.corrections, 1):
        label = "Not so today" if number == 1 else ""
        grid.add_row(label, Text(f"• {correction}", style="yellow"))
    grid.add_row(
        "Verdict",
        Text(verdict(observation), style="bold green" if observation.as_predicted else "bold red"),
    )
    grid.add_row("The code", Text(demonstration.code, style="dim"))
    return Panel(
        grid,
        title=f"[bold]{demonstration.number}. {demonstration.title}[/]  "
        f"[dim]({demonstration.source})",
        title_align="left",
        border_style="green" if observation.as_predicted else "red",
        box=box.ROUNDED,
    )


def summary(pairs: Pairs) -> Table:
    table = Table(
        title="Summary",
        title_justify="left",
        caption="Failed? the mistake failed as predicted.  Fixed? the fix worked.  "
        "Not so today: where the lecture's wording is out of date.",
        caption_justify="left",
    )
    table.add_column("#", justify="right")
    table.add_column("Mistake")
    table.add_column("Observed")
    for name in ("Failed?", "Fixed?", "Not so today"):
        table.add_column(name, justify="center")
    yes, no = "[green]yes[/]", "[red]no[/]"
    for demonstration, observation in pairs:
        table.add_row(
            str(demonstration.number),
            demonstration.title,
            observation.summary or observation.mistake_exception or "-",
            yes if observation.mistake_failed_as_predicted else no,
            yes if observation.fix_worked else no,
            str(len(observation.corrections) or "-"),
        )
    return table


def versions() -> dict[str, str]:
    found: dict[str, str] = {}
    for package in PACKAGES:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    return found


def print_report(console: Console, pairs: Pairs) -> None:
    shown = versions()
    console.print(
        "[bold]The lecture's Common Mistakes, run for real[/]  "
        + "  ".join(f"{name} {shown[name]}" for name in ("sqlalchemy", "asyncpg", "fastapi"))
    )
    for demonstration, observation in pairs:
        console.print(panel(demonstration, observation))
    console.print(summary(pairs))


def write_json(path: Path, pairs: Pairs) -> None:
    document = {
        "versions": versions(),
        "all_as_predicted": all(observation.as_predicted for _, observation in pairs),
        "observations": [
            {
                "number": demonstration.number,
                "name": demonstration.name,
                "title": demonstration.title,
                "code": demonstration.code,
                **asdict(observation),
                "as_predicted": observation.as_predicted,
                "verdict": verdict(observation),
            }
            for demonstration, observation in pairs
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
