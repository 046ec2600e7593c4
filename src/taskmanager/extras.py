"""Which of the package's optional extras are installed.

An extra's requirements are read from the package's own metadata (pyproject.toml's
`[project.optional-dependencies]`, as installed), so a check can never drift from what
`pip install 'taskmanager[EXTRA]'` installs.
"""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import PackageNotFoundError, requires, version
from pathlib import Path

DISTRIBUTION = "taskmanager"

_NAME = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
_EXTRA_MARKER = re.compile(r"""\bextra\s*==\s*["']([^"']+)["']""")
# src/taskmanager/extras.py -> the checkout's pyproject.toml, for a tree that is not installed.
_PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def extra_requirements(extra: str) -> list[str] | None:
    """The distribution names `extra` requires, or None when that cannot be known (neither
    installed metadata nor the checkout's pyproject.toml is there).

    Only the `extra == ...` part of a marker is read: an extra's requirements carry no
    other markers here.
    """
    try:
        declared = requires(DISTRIBUTION)
    except PackageNotFoundError:
        return _from_pyproject(extra)
    names = []
    for requirement in declared or []:
        _, _, marker = requirement.partition(";")
        if extra in _EXTRA_MARKER.findall(marker):
            names.append(_distribution_name(requirement))
    return names


def missing_requirements(extra: str) -> list[str]:
    """The distributions of `extra` that are not installed (empty when unknown)."""
    missing = []
    for name in extra_requirements(extra) or []:
        try:
            version(name)
        except PackageNotFoundError:
            missing.append(name)
    return missing


def _from_pyproject(extra: str) -> list[str] | None:
    try:
        project = tomllib.loads(_PYPROJECT.read_text(encoding="utf-8")).get("project", {})
    except (OSError, tomllib.TOMLDecodeError):
        return None
    if project.get("name") != DISTRIBUTION:
        return None
    requirements = project.get("optional-dependencies", {}).get(extra, [])
    return [_distribution_name(requirement) for requirement in requirements]


def _distribution_name(requirement: str) -> str:
    match = _NAME.match(requirement)
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return match.group(1)
