"""`taskmanager demo ...`: the demonstrations, as subcommands."""

from __future__ import annotations

import typer

from taskmanager.demo.mistakes import command as mistakes
from taskmanager.demo.sync_trap import command as sync_trap

demo_app = typer.Typer(
    help="See the lecture's claims happen: the sync trap and the common mistakes.",
    no_args_is_help=True,
)
demo_app.command("sync-trap")(sync_trap.command)
demo_app.command("mistakes")(mistakes.command)
