"""`taskmanager demo sync-trap` (placeholder)."""

from __future__ import annotations

import typer


def command() -> None:
    """Measure the sync trap."""
    raise typer.Exit(1)
