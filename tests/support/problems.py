"""One way to check an error answer: an RFC 9457 problem, valid against the Problem model
that /openapi.json documents, with the status, type and field the test expects."""

from __future__ import annotations

from typing import Any

import httpx

from taskmanager.problems import PROBLEM_JSON, Problem, ProblemType


def assert_problem(
    response: httpx.Response,
    status: int | None = None,
    *,
    problem_type: str | ProblemType | None = None,
    field: str | None = None,
) -> dict[str, Any]:
    """Assert `response` is a problem (any 4xx/5xx when `status` is None) and return its body.

    `problem_type` must equal the body's `type` (a catalogue entry: its type, title and
    status); `field` must be named in `detail` and, when the body lists `errors`, among
    their fields.
    """
    if status is None:
        assert 400 <= response.status_code < 600, (response.status_code, response.text)
    else:
        assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_JSON, response.headers
    body: dict[str, Any] = response.json()
    Problem.model_validate(body)  # the body matches the schema /openapi.json documents
    assert body["status"] == response.status_code, body
    assert isinstance(body["title"], str), body
    assert body["title"], body
    assert isinstance(body["detail"], str), body
    assert body["detail"], body
    if isinstance(problem_type, ProblemType):
        assert (body["type"], body["title"], body["status"]) == (
            problem_type.type,
            problem_type.title,
            problem_type.status,
        ), body
    elif problem_type is not None:
        assert body["type"] == problem_type, body
    if field is not None:
        assert field in body["detail"], body
        if body.get("errors") is not None:
            assert field in [error["field"] for error in body["errors"]], body
    return body


def assert_names_field(body: dict[str, Any], field: str) -> None:
    """The problem lists `field` among its `errors` and names it in `detail`."""
    assert body.get("errors"), body
    assert field in [error["field"] for error in body["errors"]], body
    assert field in body["detail"], body


def assert_validation_problem(response: httpx.Response, field: str) -> dict[str, Any]:
    """A 422 problem whose `errors` and `detail` both name `field`."""
    body = assert_problem(response, 422)
    assert_names_field(body, field)
    return body
