"""`taskmanager demo mistakes` (placeholder)."""

from __future__ import annotations

import typer


def command() -> None:
    """Run the lecture's common mistakes."""
    raise typer.Exit(1)
