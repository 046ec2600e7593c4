"""docs/configuration.md lists every setting the service reads, with its default: the table
and `taskmanager.config.Settings` cannot drift apart."""

from __future__ import annotations

import json
import re
from typing import Any

from taskmanager.config import Settings
from tests.support.markdown import DOCS

PAGE = DOCS / "configuration.md"
ROW = re.compile(r"^\| `(?P<name>[A-Z][A-Z0-9_]*)` \| (?P<default>[^|]*?) \|", re.MULTILINE)


def _variables() -> dict[str, Any]:
    """The environment variable of each setting -> its default."""
    found = {}
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        choices = getattr(alias, "choices", None)
        variable = str(choices[0]) if choices else f"TASKMANAGER_{name.upper()}"
        found[variable] = field.get_default(call_default_factory=True)
    return found


def _documented() -> dict[str, str]:
    return {match["name"]: match["default"] for match in ROW.finditer(PAGE.read_text("utf-8"))}


def _same(written: str, default: Any) -> bool:
    if isinstance(default, bool):
        return written == str(default).lower()
    if isinstance(default, int | float):
        return float(written) == default
    if isinstance(default, list):
        return bool(json.loads(written) == default)
    return bool(written == str(default))


def test_every_setting_is_in_the_table_and_nothing_else() -> None:
    assert set(_documented()) == set(_variables())


def test_each_written_default_is_the_default() -> None:
    """Where the table gives a literal (`20`, `false`, `[]`), it is the setting's default;
    an unset one is described in words ("unset → embedded server")."""
    variables = _variables()
    literals = 0
    for name, cell in _documented().items():
        literal = re.fullmatch(r"`([^`]*)`", cell.strip())
        if literal is None:
            assert variables[name] is None, f"{name}: say its default, {variables[name]!r}"
            continue
        literals += 1
        assert _same(literal[1], variables[name]), f"{name}: {cell} != {variables[name]!r}"
    assert literals >= 25
