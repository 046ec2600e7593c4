"""The two resources with a version, for tests that treat tasks and categories alike."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest


@dataclass(frozen=True)
class Kind:
    """A resource with a version: where it lives and which text field a change edits."""

    name: str
    path: str
    table: str
    field: str

    def body(self, value: str) -> dict[str, Any]:
        return {self.field: value}


TASKS = Kind("task", "/tasks", "tasks", "title")
CATEGORIES = Kind("category", "/categories", "categories", "name")
KINDS = pytest.mark.parametrize("kind", [TASKS, CATEGORIES], ids=["task", "category"])
