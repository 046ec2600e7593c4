"""docs/lecture-map.md cannot rot: every file, symbol, test, `make` target and `taskmanager`
command it names exists, and every section of the lecture has its row."""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import typer

from taskmanager.cli import app as cli_app

ROOT = Path(__file__).resolve().parents[2]
MAP = ROOT / "docs" / "lecture-map.md"
PACKAGE = ROOT / "src" / "taskmanager"

SECTIONS = (
    *(f"{part}.{n}" for part in range(1, 7) for n in range(1, 5)),
    *(f"Mistake {n}:" for n in range(1, 6)),
    "Quick Reference Card",
    "File Organization Reference",
    "The Week 6 project",
    "Week 7: Query optimization",
    "Week 9: Authentication",
    "Week 13-14: Capstone",
)
# A backticked path (a known file type, or a folder ending in /), maybe with ::symbol.
REFERENCE = re.compile(
    r"^(?P<path>[\w.-]+(?:/[\w.-]+)*(?:\.(?:py|md|png|toml|json|ini)|/))(?:::(?P<symbol>[\w.]+))?$"
)
CODE = re.compile(r"`([^`]+)`")
COMMAND = re.compile(r"(?:^|\s)taskmanager((?:\s+[a-z][\w-]*)+)")
MAKE = re.compile(r"(?:^|\s)make\s+([a-z][\w-]*)")


def _code_spans() -> list[str]:
    return CODE.findall(MAP.read_text(encoding="utf-8"))


def _references() -> list[tuple[str, str | None]]:
    found = []
    for span in _code_spans():
        match = REFERENCE.match(span.strip())
        if match:
            found.append((match["path"], match["symbol"]))
    return found


@cache
def _definitions(path: Path) -> dict[str, set[str]]:
    """Top-level names of a module -> the names defined in their bodies (for classes)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: dict[str, set[str]] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            names[node.name] = set()
        elif isinstance(node, ast.ClassDef):
            members = set()
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                    members.add(item.name)
                elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    members.add(item.target.id)
            names[node.name] = members
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    names[target.id] = set()
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names[node.target.id] = set()
    return names


def _defines(path: Path, symbol: str) -> bool:
    outer, _, member = symbol.partition(".")
    definitions = _definitions(path)
    return outer in definitions and (not member or member in definitions[outer])


def test_the_map_names_files_and_symbols() -> None:
    assert len(_references()) > 100  # the pattern still finds what the map names


@pytest.mark.parametrize(("path", "symbol"), sorted(set(_references()), key=str))
def test_every_named_file_and_symbol_exists(path: str, symbol: str | None) -> None:
    target = ROOT / path
    assert target.exists(), f"{path} does not exist"
    if symbol is not None:
        assert _defines(target, symbol), f"{path} defines no {symbol}"


def _command_words() -> list[list[str]]:
    commands = []
    for span in _code_spans():
        for match in COMMAND.finditer(span):
            commands.append(match[1].split())
    return commands


def test_every_named_command_exists() -> None:
    commands = _command_words()
    assert commands
    root = typer.main.get_command(cli_app)
    for words in commands:
        command: Any = root
        for word in words:
            subcommands = getattr(command, "commands", None)  # a group of commands
            assert subcommands is not None, f"taskmanager {' '.join(words)}"
            command = subcommands.get(word)
            assert command is not None, f"no command taskmanager {' '.join(words)}"


def test_every_named_make_target_exists() -> None:
    targets = {match[1] for span in _code_spans() for match in MAKE.finditer(span)}
    assert {"run", "test"} <= targets
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    for target in targets:
        assert re.search(rf"^{re.escape(target)}:", makefile, re.MULTILINE), target


def test_every_section_of_the_lecture_has_a_row() -> None:
    first_cells = [
        line.split("|")[1].strip()
        for line in MAP.read_text(encoding="utf-8").splitlines()
        if line.startswith("| ") and not line.startswith("| section") and "---" not in line
    ]
    for section in SECTIONS:
        assert any(cell.startswith(section) for cell in first_cells), section


# ─────────────────────────────── what some rows claim, checked


@pytest.mark.parametrize(
    ("module", "words"),
    [
        ("routes/__init__.py", "front desk"),
        ("database.py", "library card"),
        ("repositories/__init__.py", "catalog system"),
        ("schemas.py", "catalog cards"),
        ("models.py", "physical books"),
    ],
)
def test_the_library_analogy_is_in_the_docstrings(module: str, words: str) -> None:
    """1.4: each layer's module says, first thing, which part of the library it is."""
    docstring = ast.get_docstring(ast.parse((PACKAGE / module).read_text(encoding="utf-8")))
    assert docstring is not None
    assert words in docstring


def _imported_packages(path: Path) -> set[str]:
    """The top-level packages a module imports, anywhere in it (functions too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            found.add((node.module or "").split(".")[0])
    return found


def test_routes_never_import_sqlalchemy() -> None:
    """4.2: routes say WHAT; HOW (every query) lives in the repositories."""
    for path in sorted((PACKAGE / "routes").glob("*.py")):
        assert "sqlalchemy" not in _imported_packages(path), path.name


def test_routes_never_commit() -> None:
    """The session dependency owns the transaction: a route never ends it (a flow that must
    commit early says why, in taskmanager.accounts)."""
    for path in sorted((PACKAGE / "routes").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                assert node.func.attr not in {"commit", "rollback"}, path.name


@pytest.mark.parametrize("package", ["accounts", "security"])
def test_accounts_and_security_never_import_the_web_framework(package: str) -> None:
    """Below the routes, nothing speaks HTTP: the flows and the security they use take plain
    values and answer outcomes, which the routes turn into responses."""
    for path in sorted((PACKAGE / package).rglob("*.py")):
        web = {"fastapi", "starlette"} & _imported_packages(path)
        assert not web, f"{package}/{path.name} imports {web}"


def test_the_lecture_layout_is_in_the_package() -> None:
    """The File Organization Reference ("WHERE EVERYTHING LIVES"), inside src/taskmanager."""
    for name in (
        "main.py",
        "database.py",
        "models.py",
        "schemas.py",
        "dependencies.py",
        "repositories/__init__.py",
        "repositories/task_repository.py",
        "routes/__init__.py",
        "routes/tasks.py",
        "migrations/versions",
    ):
        assert (PACKAGE / name).exists(), name
    assert (ROOT / "tests" / "conftest.py").exists()
