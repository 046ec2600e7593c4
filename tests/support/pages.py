"""Walking a list of tasks page by page, and the two ways a page can be found."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from httpx import AsyncClient

from taskmanager.repositories.task_repository import TaskRepository


@dataclass(frozen=True)
class Walk:
    """Every page of a list, first to last: the first page's X-Total-Count and the ids
    each page showed."""

    total: int
    pages: list[list[int]]

    @property
    def ids(self) -> list[int]:
        return [task_id for page in self.pages for task_id in page]


async def walk_pages(client: AsyncClient, url: str) -> Walk:
    """GET `url`, then follow Link rel="next" to the end."""
    total, pages = -1, []
    next_url: str | None = url
    while next_url is not None:
        response = await client.get(next_url)
        assert response.status_code == 200, response.text
        if not pages:  # the first page counts
            total = int(response.headers["x-total-count"])
        pages.append([task["id"] for task in response.json()])
        next_url = response.links.get("next", {}).get("url")
    return Walk(total, pages)


async def walk_both_ways(
    client: AsyncClient, monkeypatch: pytest.MonkeyPatch, url: str
) -> tuple[Walk, Walk]:
    """The walk of `url` with a search or label filter found by the matches' ids, and with it
    found by walking the order's index (TaskRepository._search_way / _labels_way decide
    by the data; here each way is made to be chosen)."""
    walks = []
    for walking in (False, True):

        async def decided(*_: object, walking: bool = walking) -> bool:
            return walking

        monkeypatch.setattr(TaskRepository, "_walk_finds_the_page_sooner", decided)
        walks.append(await walk_pages(client, url))
    return walks[0], walks[1]
