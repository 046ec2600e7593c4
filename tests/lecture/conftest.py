"""The lecture's Part 6 repository tests call `TaskRepository(db_session)`: here their
`db_session` enters the test account's scope first, which tests.support.accounts'
`TaskRepository` reads (Week 9: every repository takes the caller's scope)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _repository_tests_enter_scope(request: pytest.FixtureRequest) -> None:
    if "db_session" in request.fixturenames and "client" not in request.fixturenames:
        request.getfixturevalue("scope")
