"""Bad input gets a 4xx problem naming the field, never a 5xx and never a stored row.

Bodies over the limit (by Content-Length or streamed), malformed JSON, text PostgreSQL
cannot store (NUL, lone surrogates), oversized strings, numbers far outside PostgreSQL's
`integer`, values of the wrong JSON type, negative or non-numeric paging, unknown fields,
wrong content types and methods. Each case is one row of docs/reliability.md.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio
from httpx import AsyncClient, Response
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from taskmanager.config import Settings
from taskmanager.main import create_app
from taskmanager.problems import PROBLEM_JSON
from tests.support.accounts import TEST_SECRET, Account
from tests.support.problems import assert_problem
from tests.support.rolled_back import rolled_back_client

pytestmark = pytest.mark.reliability

AREA = "Bad input"
DEFAULT_LIMIT = 1024 * 1024  # Settings.max_body_bytes
SMALL_LIMIT = 1000
JSON_HEADERS = {"Content-Type": "application/json"}


def answer(response: Response) -> str:
    """What the service answered, for the reliability table."""
    try:
        detail = response.json()["detail"]
    except (ValueError, KeyError, TypeError):
        return f"{response.status_code}: {response.text[:100]}"
    return f"{response.status_code} problem: {detail}"


def raw_json(text: str) -> bytes:
    """JSON text as bytes, sent as is: httpx's `json=` cannot encode a lone surrogate."""
    return text.encode()


@dataclass(frozen=True)
class BadRequest:
    case: str
    method: str
    url: str
    field: str
    json: Any = None
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    status: int = 422

    def send(self, client: AsyncClient) -> Any:
        if self.content is not None:
            return client.request(
                self.method, self.url, content=self.content, headers=self.headers or JSON_HEADERS
            )
        if self.json is not None:
            return client.request(self.method, self.url, json=self.json, headers=self.headers)
        return client.request(self.method, self.url, headers=self.headers)


HUGE = 10**30
BAD_REQUESTS = [
    # Not JSON, or not JSON we can parse
    BadRequest("Invalid JSON (cut off)", "POST", "/tasks", "body", content=b'{"title": "x"'),
    BadRequest("A body that is not UTF-8", "POST", "/tasks", "body", content=b'{"title": "\xff"}'),
    BadRequest(
        "JSON nested 100,000 levels deep",
        "POST",
        "/tasks",
        "body",
        content=b"[" * 100_000 + b"]" * 100_000,
    ),
    BadRequest(
        "An integer literal of 5,000 digits",
        "POST",
        "/tasks",
        "body",
        content=b'{"title": "x", "category_id": ' + b"9" * 5000 + b"}",
    ),
    BadRequest("An empty body", "POST", "/tasks", "body", content=b""),
    BadRequest("The JSON `null` as the body", "POST", "/tasks", "body", content=b"null"),
    BadRequest("A JSON array as the body", "POST", "/categories", "body", content=b'["x"]'),
    BadRequest(
        "JSON sent as text/plain",
        "POST",
        "/tasks",
        "body",
        content=b'{"title": "x"}',
        headers={"Content-Type": "text/plain"},
    ),
    BadRequest(
        "A form-encoded body",
        "POST",
        "/categories",
        "body",
        content=b"name=Errands",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    ),
    # Text PostgreSQL cannot store
    BadRequest("NUL in a task title", "POST", "/tasks", "body.title", json={"title": "a\x00b"}),
    BadRequest(
        "NUL in a task description",
        "POST",
        "/tasks",
        "body.description",
        json={"title": "x", "description": "a\x00b"},
    ),
    BadRequest(
        "NUL in a new title (PATCH)", "PATCH", "/tasks/1", "body.title", json={"title": "\x00"}
    ),
    BadRequest(
        "NUL in a category name", "POST", "/categories", "body.name", json={"name": "a\x00b"}
    ),
    BadRequest("NUL in the search text q", "GET", "/tasks?q=a%00b", "query.q"),
    BadRequest(
        "A lone surrogate (\\ud800) in a task title",
        "POST",
        "/tasks",
        "body.title",
        content=raw_json('{"title": "a\\ud800b"}'),
    ),
    BadRequest(
        "A lone surrogate (\\udfff) in a task description",
        "POST",
        "/tasks",
        "body.description",
        content=raw_json('{"title": "x", "description": "\\udfff"}'),
    ),
    BadRequest(
        "A lone surrogate in a category name",
        "POST",
        "/categories",
        "body.name",
        content=raw_json('{"name": "\\ud800"}'),
    ),
    # Too long, too big, too small
    BadRequest(
        "A 10,000-character task title",
        "POST",
        "/tasks",
        "body.title",
        json={"title": "x" * 10_000},
    ),
    BadRequest(
        "A 10,000-character category name",
        "POST",
        "/categories",
        "body.name",
        json={"name": "x" * 10_000},
    ),
    BadRequest(
        "A 10,001-character description",
        "POST",
        "/tasks",
        "body.description",
        json={"title": "x", "description": "x" * 10_001},
    ),
    BadRequest(
        "category_id 10^30 in a body",
        "POST",
        "/tasks",
        "body.category_id",
        json={"title": "x", "category_id": HUGE},
    ),
    BadRequest("Task id 2^63 in the path", "GET", f"/tasks/{2**63}", "path.task_id"),
    BadRequest(
        "Category id 2^63 in the path (PATCH)",
        "PATCH",
        f"/categories/{2**63}",
        "path.category_id",
        json={"name": "x"},
    ),
    BadRequest("limit=10^20", "GET", f"/tasks?limit={10**20}", "query.limit"),
    BadRequest("offset=10^20", "GET", f"/tasks?offset={10**20}", "query.offset"),
    BadRequest(
        "category_id=10^30 in the query", "GET", f"/tasks?category_id={HUGE}", "query.category_id"
    ),
    BadRequest("limit=-1", "GET", "/tasks?limit=-1", "query.limit"),
    BadRequest("limit=0", "GET", "/tasks?limit=0", "query.limit"),
    BadRequest("offset=-1", "GET", "/tasks?offset=-1", "query.offset"),
    BadRequest("A negative task id", "DELETE", "/tasks/-1", "path.task_id"),
    # Not a value of the documented type
    BadRequest("A task id that is not a number", "GET", "/tasks/abc", "path.task_id"),
    BadRequest("A category id with a fraction", "GET", "/categories/1.5", "path.category_id"),
    BadRequest("completed=maybe", "GET", "/tasks?completed=maybe", "query.completed"),
    BadRequest("limit=abc", "GET", "/tasks?limit=abc", "query.limit"),
    BadRequest(
        "completed given as the number 0",
        "POST",
        "/tasks",
        "body.completed",
        json={"title": "x", "completed": 0},
    ),
    BadRequest(
        'category_id given as the string "3"',
        "PATCH",
        "/tasks/1",
        "body.category_id",
        json={"category_id": "3"},
    ),
    BadRequest("A title that is a number", "POST", "/tasks", "body.title", json={"title": 123}),
    BadRequest(
        "title set to null (PATCH)", "PATCH", "/tasks/1", "body.title", content=b'{"title": null}'
    ),
    BadRequest("A blank title", "POST", "/tasks", "body.title", json={"title": " \t "}),
    BadRequest("A missing title", "POST", "/tasks", "body.title", json={"completed": True}),
    BadRequest(
        "An unknown body field",
        "POST",
        "/tasks",
        "body.priority",
        json={"title": "x", "priority": 1},
    ),
]


@pytest.mark.parametrize("bad", BAD_REQUESTS, ids=[bad.case for bad in BAD_REQUESTS])
async def test_bad_input_is_a_problem_naming_the_field(
    client: AsyncClient, reliability: Any, bad: BadRequest
) -> None:
    response = await bad.send(client)
    reliability.record(AREA, f"{bad.case} ({bad.method} {bad.url[:40]})", answer(response))
    assert_problem(response, bad.status, field=bad.field)
    # Nothing was stored on the way.
    assert (await client.get("/tasks")).headers["X-Total-Count"] == "0"
    assert (await client.get("/categories")).json() == []


# ─────────────────────────────────────────────
# Body size
# ─────────────────────────────────────────────


@pytest_asyncio.fixture
async def small_limit_client(
    database_url: str, engine: AsyncEngine, db_session: AsyncSession, account: Account
) -> AsyncIterator[AsyncClient]:
    """Like conftest's `client` (logged in as `account`), on an app refusing bodies over
    SMALL_LIMIT bytes."""
    app = create_app(
        Settings(database_url=database_url, max_body_bytes=SMALL_LIMIT, jwt_secret=TEST_SECRET)
    )
    async with rolled_back_client(app, engine, db_session) as http:
        http.headers.update(account.headers)
        yield http


def task_body(size: int) -> bytes:
    """A JSON task of exactly `size` bytes (its description is the padding)."""
    empty = b'{"title": "x", "description": ""}'
    body = empty[:-2] + b"d" * (size - len(empty)) + empty[-2:]
    assert len(body) == size
    json.loads(body)
    return body


class Chunks:
    """A streamed (chunked) request body; counts how many chunks the server pulled."""

    def __init__(self, body: bytes, chunk_size: int) -> None:
        self.chunks = [body[i : i + chunk_size] for i in range(0, len(body), chunk_size)]
        self.sent = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            self.sent += 1
            yield chunk


async def test_body_over_a_small_limit_is_413_by_content_length(
    small_limit_client: AsyncClient, reliability: Any
) -> None:
    response = await small_limit_client.post(
        "/tasks", content=task_body(SMALL_LIMIT + 1), headers=JSON_HEADERS
    )
    reliability.record(
        AREA,
        f"A {SMALL_LIMIT + 1:,}-byte body with max_body_bytes={SMALL_LIMIT:,} (Content-Length)",
        answer(response),
    )
    body = assert_problem(response, 413, field="body")
    assert f"{SMALL_LIMIT:,} bytes" in body["detail"]
    assert body["title"] == "Content Too Large"
    assert "x-request-id" in response.headers
    assert (await small_limit_client.get("/tasks")).headers["X-Total-Count"] == "0"


async def test_streamed_body_over_a_small_limit_is_413_before_it_is_all_read(
    small_limit_client: AsyncClient, reliability: Any
) -> None:
    stream = Chunks(task_body(10 * SMALL_LIMIT), chunk_size=SMALL_LIMIT // 2)
    response = await small_limit_client.post("/tasks", content=stream, headers=JSON_HEADERS)
    reliability.record(
        AREA,
        f"A streamed {10 * SMALL_LIMIT:,}-byte body without Content-Length "
        f"(chunked) with max_body_bytes={SMALL_LIMIT:,}",
        f"{answer(response)}; read {stream.sent} of {len(stream.chunks)} chunks",
    )
    assert "content-length" not in response.request.headers
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert_problem(response, 413, field="body")
    # Refused as soon as the limit was passed: the rest was never read.
    assert stream.sent == 3 < len(stream.chunks)
    assert (await small_limit_client.get("/tasks")).headers["X-Total-Count"] == "0"


async def test_body_at_a_small_limit_is_read(
    small_limit_client: AsyncClient, reliability: Any
) -> None:
    response = await small_limit_client.post(
        "/tasks", content=task_body(SMALL_LIMIT), headers=JSON_HEADERS
    )
    reliability.record(
        AREA,
        f"A {SMALL_LIMIT:,}-byte body with max_body_bytes={SMALL_LIMIT:,} (exactly the limit)",
        f"{response.status_code}: accepted and stored",
    )
    assert response.status_code == 201, response.text
    assert len(response.json()["description"]) > SMALL_LIMIT - 50


@pytest.mark.parametrize("streamed", [False, True], ids=["content-length", "chunked"])
async def test_body_one_byte_over_the_default_1_mib_limit_is_413(
    client: AsyncClient, reliability: Any, streamed: bool
) -> None:
    body = task_body(DEFAULT_LIMIT + 1)
    content = Chunks(body, chunk_size=64 * 1024) if streamed else body
    response = await client.post("/tasks", content=content, headers=JSON_HEADERS)
    reliability.record(
        AREA,
        "A body of 1 MiB + 1 byte, default limit, "
        + ("streamed (chunked)" if streamed else "with Content-Length"),
        answer(response),
    )
    body_problem = assert_problem(response, 413, field="body")
    assert f"{DEFAULT_LIMIT:,} bytes" in body_problem["detail"]


async def test_body_of_exactly_1_mib_is_read(client: AsyncClient, reliability: Any) -> None:
    response = await client.post("/tasks", content=task_body(DEFAULT_LIMIT), headers=JSON_HEADERS)
    reliability.record(
        AREA,
        "A body of exactly 1 MiB (the default limit): read, then validated",
        answer(response),
    )
    # Not 413: the body was read and parsed; its 1 MiB description is too long to store.
    assert_problem(response, 422, field="body.description")


# ─────────────────────────────────────────────
# Methods
# ─────────────────────────────────────────────


@pytest.mark.parametrize(
    ("method", "url", "allow"),
    [
        ("DELETE", "/tasks", "GET, POST"),
        ("POST", "/tasks/1", "DELETE, GET, PATCH, PUT"),
        ("PUT", "/categories/1", "DELETE, GET, PATCH"),
        ("OPTIONS", "/categories", "GET, POST"),
    ],
)
async def test_unsupported_method_is_405_listing_every_allowed_method(
    client: AsyncClient, reliability: Any, method: str, url: str, allow: str
) -> None:
    response = await client.request(method, url)
    reliability.record(
        AREA,
        f"{method} {url}, a method the path does not serve",
        f"{response.status_code}, Allow: {response.headers.get('allow')}",
    )
    assert response.status_code == 405
    assert response.headers["content-type"] == PROBLEM_JSON
    # Every method of the path, not only those of the first route matching it.
    assert response.headers["allow"] == allow
