"""One catalogue of problem types and one Problem model: every module that answers a problem
uses them, and the schema /openapi.json documents is the model the bodies are built from."""

from __future__ import annotations

import ast
from pathlib import Path

from httpx import AsyncClient

import taskmanager
from taskmanager.problems import CATALOGUE, PROBLEM_JSON, Problem, http_problem

PACKAGE = Path(taskmanager.__file__).parent


def _string_literals(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    ]


def test_problem_types_are_named_only_in_the_catalogue() -> None:
    """A problem type URI or a problem media type written anywhere else would be a second
    source for it."""
    found = [
        f"{path.relative_to(PACKAGE)}:{line}: {value!r}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "problems.py"
        for line, value in _string_literals(path)
        if value.startswith("/problems/") or value == PROBLEM_JSON
    ]
    assert found == []


def test_catalogue_types_are_distinct_and_well_formed() -> None:
    types = [problem.type for problem in CATALOGUE]
    assert len(set(types)) == len(types)
    for problem in CATALOGUE:
        assert problem.type.startswith("/problems/"), problem
        assert problem.title, problem
        assert 400 <= problem.status < 600, problem


def test_http_problems_use_the_rfc_9110_names() -> None:
    assert http_problem(404).title == "Not Found"
    assert http_problem(413).title == "Content Too Large"
    assert http_problem(422).title == "Unprocessable Content"
    assert http_problem(404).type == "about:blank"


async def test_openapi_documents_the_problem_model_itself(client: AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    schemas = document["components"]["schemas"]
    expected = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, definition in expected.pop("$defs", {}).items():
        assert schemas[name] == definition, name
    assert schemas["Problem"] == expected


def test_a_problem_body_leaves_out_errors_it_does_not_have() -> None:
    response = http_problem(404).problem("Task not found").response()

    assert response.media_type == PROBLEM_JSON
    assert response.status_code == 404
    assert response.body == (
        b'{"type":"about:blank","title":"Not Found","status":404,"detail":"Task not found"}'
    )
