"""The server process's garbage collector: start-up objects frozen, a higher threshold.

These tests change interpreter-wide state, so each one restores it.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from taskmanager.config import Settings
from taskmanager.garbage_collection import tune_garbage_collection
from taskmanager.main import create_app
from tests.support.accounts import TEST_SECRET


@pytest.fixture
def restored_gc() -> Iterator[tuple[int, int, int]]:
    """Python's collector as it was before the test, put back afterwards."""
    before = gc.get_threshold()
    assert gc.get_freeze_count() == 0, "something else froze objects in this process"
    yield before
    gc.unfreeze()
    gc.set_threshold(*before)


def test_tuning_freezes_start_up_objects_and_raises_the_threshold(
    restored_gc: tuple[int, int, int],
) -> None:
    start_up_object = [["built at start-up"]]  # a container the collector tracks
    tune_garbage_collection(5_000)
    assert gc.get_threshold() == (5_000, *restored_gc[1:])
    assert gc.get_freeze_count() > 1_000  # the imported libraries, at least
    assert gc.is_tracked(start_up_object)
    assert not any(o is start_up_object for o in gc.get_objects())  # frozen: never walked


def test_zero_keeps_pythons_defaults(restored_gc: tuple[int, int, int]) -> None:
    tune_garbage_collection(0)
    assert gc.get_threshold() == restored_gc
    assert gc.get_freeze_count() == 0


async def test_the_app_tunes_its_process_when_it_starts(
    restored_gc: tuple[int, int, int], database_url: str
) -> None:
    # The test key: with none set, the lifespan would write one into the working directory.
    settings = Settings(
        database_url=database_url, gc_threshold=7_000, log_level="WARNING", jwt_secret=TEST_SECRET
    )
    app = create_app(settings)
    assert gc.get_threshold() == restored_gc  # building the app changes nothing
    async with app.router.lifespan_context(app):
        assert gc.get_threshold()[0] == 7_000
        assert gc.get_freeze_count() > 0
        engine = app.state.engine
        assert not any(o is engine for o in gc.get_objects())  # built before the freeze
