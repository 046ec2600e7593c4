"""No import cycles in the package: each module's imports form a graph without loops.

A cycle works only as long as nobody reorders an import (then it is an ImportError about a
partially initialised module), so none is allowed. Read with the standard library only:
`ast` over every module of src/taskmanager, imports inside functions included (they run
sooner or later), those under `if TYPE_CHECKING:` left out (they never run).

An edge goes to the module an import names: `from taskmanager.x import y` is an edge to
the submodule `taskmanager.x.y` when there is one, else to `taskmanager.x`. The parent
packages Python initialises on the way are not edges of their own: their `__init__`
modules' imports are.
"""

from __future__ import annotations

import ast
import textwrap
from collections.abc import Iterator
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[2] / "src" / "taskmanager"
PACKAGE = "taskmanager"

Graph = dict[str, set[str]]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE_ROOT.rglob("*.py"))}


def is_type_checking(test: ast.expr) -> bool:
    """`TYPE_CHECKING` or `typing.TYPE_CHECKING` (any alias of the module)."""
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement, at any depth, except the bodies of `if TYPE_CHECKING:`."""
    yield from _imports_in(ast.iter_child_nodes(tree))


def _imports_in(nodes: Iterator[ast.AST] | list[ast.stmt]) -> Iterator[ast.Import | ast.ImportFrom]:
    for node in nodes:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If) and is_type_checking(node.test):
            yield from _imports_in(node.orelse)  # the `else:` of TYPE_CHECKING does run
        else:
            yield from _imports_in(ast.iter_child_nodes(node))


def absolute(module: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute module a (possibly relative) `from ... import` starts from."""
    if node.level == 0:
        return node.module or ""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def known(name: str, names: dict[str, Path]) -> str | None:
    """`name`, or the closest package of it that is one of the package's modules."""
    while name and name not in names:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> Graph:
    names = modules()
    graph: Graph = {name: set() for name in names}
    for module, path in names.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in imports(tree):
            targets: list[str | None] = []
            if isinstance(node, ast.Import):
                targets = [known(alias.name, names) for alias in node.names]
            else:
                source = absolute(module, path, node)
                for alias in node.names:
                    submodule = f"{source}.{alias.name}"
                    targets.append(submodule if submodule in names else known(source, names))
            graph[module].update(
                target
                for target in targets
                if target is not None and target != module and target.startswith(PACKAGE)
            )
    return graph


def cycles(graph: Graph) -> list[list[str]]:
    """One cycle (as a path that returns to its start) per strongly connected component
    with more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    components.append(component)
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return [cycle_in(graph, component) for component in components if len(component) > 1]


def cycle_in(graph: Graph, component: set[str]) -> list[str]:
    """A shortest path from the component's first module back to itself, inside it."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node] & component):
                if child == start:
                    return [*paths[node], start]
                if child not in paths:
                    paths[child] = [*paths[node], child]
                    following.append(child)
        frontier = following
    raise AssertionError(f"no cycle in the component {sorted(component)}")


def test_what_counts_as_an_import() -> None:
    tree = ast.parse(
        textwrap.dedent(
            """
            import typing
            from typing import TYPE_CHECKING
            if TYPE_CHECKING:
                import hidden
            else:
                import fallback
            if typing.TYPE_CHECKING:
                import hidden_too
            def later():
                import inside_a_function
            class Lazy:
                def method(self):
                    from . import sibling
            """
        )
    )
    found = {alias.name for node in imports(tree) for alias in node.names}
    assert found == {"typing", "TYPE_CHECKING", "fallback", "inside_a_function", "sibling"}


def test_relative_imports_resolve() -> None:
    (node,) = ast.parse("from ..config import Settings").body
    assert isinstance(node, ast.ImportFrom)
    path = PACKAGE_ROOT / "routes" / "tasks.py"
    assert absolute("taskmanager.routes.tasks", path, node) == "taskmanager.config"


def test_the_graph_sees_the_package() -> None:
    graph = import_graph()
    assert {"taskmanager.cli", "taskmanager.demo.cli", "taskmanager.postgres.logins"} <= set(graph)
    # Imported inside functions only.
    assert {"taskmanager.postgres.migrate", "taskmanager.demo.cli"} <= graph["taskmanager.cli"]
    # `from taskmanager.repositories.task_repository import ...`: the submodule itself.
    assert "taskmanager.repositories.task_repository" in graph["taskmanager.repositories"]


def test_no_import_cycles() -> None:
    found = cycles(import_graph())
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in found)


def test_a_cycle_is_found_and_listed() -> None:
    graph: Graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"d"}}
    assert cycles(graph) == [["a", "b", "c", "a"]]
