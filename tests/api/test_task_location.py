"""The Location of a new task (routes/tasks.task_url) is what `request.url_for` would give,
built without searching the app's routes for the name."""

from __future__ import annotations

import pytest
from starlette.requests import Request

from taskmanager.main import create_app
from taskmanager.routes.tasks import task_url


@pytest.mark.parametrize(
    ("scheme", "host", "root_path"),
    [("http", "localhost:8000", ""), ("https", "tasks.example", "/api"), ("http", "h", "/a/b")],
)
def test_task_url_is_url_for(scheme: str, host: str, root_path: str) -> None:
    app = create_app()
    request = Request(
        {
            "type": "http",
            "method": "POST",
            "scheme": scheme,
            "path": f"{root_path}/tasks",
            "root_path": root_path,
            "query_string": b"",
            "headers": [(b"host", host.encode())],
            "server": ("127.0.0.1", 8000),
            "app": app,
            "router": app.router,
        }
    )
    for task_id in (1, 42, 2_147_483_647):
        assert task_url(request, task_id) == str(request.url_for("get_task", task_id=task_id))
