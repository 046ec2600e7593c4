"""(placeholder until the plumbing lands) The cache's counters."""

from __future__ import annotations


def record_hit(kind: str) -> None:
    pass


def record_miss(kind: str) -> None:
    pass


def record_error(kind: str) -> None:
    pass


def record_invalidation(kind: str) -> None:
    pass
