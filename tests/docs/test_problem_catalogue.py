"""The problem types docs/api.md lists are the catalogue's, and the catalogue holds exactly the
types the code can answer with: each is named by some module that answers problems."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import taskmanager
import taskmanager.problems as problems
from taskmanager.problems import CATALOGUE, ProblemType
from tests.support.markdown import DOCS

PACKAGE = Path(taskmanager.__file__).parent
PAGE = DOCS / "api.md"
ROW = re.compile(r"^\| `(?P<type>[^`]+)` \| (?P<title>[^|]+?) \| (?P<status>[^|]+?) \|")


def _documented() -> dict[str, tuple[str, str]]:
    """type -> (title, status) of each row of the table under "The problem types"."""
    text = PAGE.read_text(encoding="utf-8")
    section = text.split("### The problem types", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        match = ROW.match(line)
        if match:
            assert match["type"] not in rows, f"{match['type']} listed twice"
            rows[match["type"]] = (match["title"], match["status"])
    return rows


def _names_used_from_problems() -> set[str]:
    """The names every other module imports from the problems module."""
    names = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == Path(problems.__file__):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module == problems.__name__:
                names.update(alias.name for alias in node.names)
    return names


def _types_named_in(function_name: str) -> set[str]:
    """The catalogue's types a function of the problems module answers with."""
    tree = ast.parse(Path(problems.__file__).read_text(encoding="utf-8"))
    function = next(
        node
        for node in tree.body
        if isinstance(node, ast.FunctionDef) and node.name == function_name
    )
    found = set()
    for node in ast.walk(function):
        if isinstance(node, ast.Name) and isinstance(getattr(problems, node.id, None), ProblemType):
            found.add(getattr(problems, node.id).type)
        if isinstance(node, ast.Constant) and node.value == "about:blank":
            found.add("about:blank")
    return found


def test_the_table_is_the_catalogue() -> None:
    documented = _documented()
    expected = {problem.type: (problem.title, str(problem.status)) for problem in CATALOGUE}
    listed = {type_: row for type_, row in documented.items() if type_ != "about:blank"}
    assert listed == expected
    assert "about:blank" in documented


def test_the_catalogue_is_what_the_code_can_answer() -> None:
    """Every catalogue entry is raised somewhere (directly, or through a helper of the problems
    module such as unauthorized_problem); no module writes a type of its own
    (tests/api/test_problems.py), so nothing else can be answered."""
    answered = set()
    for name in _names_used_from_problems():
        value = getattr(problems, name)
        if isinstance(value, ProblemType):
            answered.add(value.type)
        elif callable(value) and not isinstance(value, type):
            answered |= _types_named_in(name)
    assert answered == {problem.type for problem in CATALOGUE} | {"about:blank"}
