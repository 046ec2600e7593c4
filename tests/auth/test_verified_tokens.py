"""Access tokens verified once are remembered (taskmanager.security.tokens._VERIFIED): what
may change for a remembered token, the clock, is checked at every use; what never passed
verification, or passed it under another key, is never served from there."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta
from types import SimpleNamespace

import pytest

from taskmanager.security import tokens
from taskmanager.security.tokens import (
    LEEWAY_SECONDS,
    InvalidAccessTokenError,
    issue_access_token,
    read_access_token,
)

SECRET = "a-signing-key-for-these-tests-only-0123456789abcdef"
OTHER_SECRET = "another-signing-key-for-these-tests-only-0123456789"


@pytest.fixture(autouse=True)
def empty_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tokens, "_VERIFIED", {})


def _token(minutes: float = 15) -> str:
    return issue_access_token(SECRET, 7, uuid.uuid4(), timedelta(minutes=minutes))


def test_a_verified_token_is_remembered_with_its_claims() -> None:
    token = _token()
    first = read_access_token(SECRET, token)
    assert {(SECRET, token): first} == tokens._VERIFIED
    assert read_access_token(SECRET, token) == first
    assert first.user_id == 7


def test_a_remembered_token_that_expires_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    token = _token()
    claims = read_access_token(SECRET, token)
    later = claims.expires_at + LEEWAY_SECONDS
    monkeypatch.setattr(tokens, "time", SimpleNamespace(time=lambda: later))
    with pytest.raises(InvalidAccessTokenError, match="expired"):
        read_access_token(SECRET, token)
    assert tokens._VERIFIED == {}
    # Just before that moment it was still good (PyJWT's own boundary).
    monkeypatch.setattr(tokens, "time", SimpleNamespace(time=lambda: later - 0.5))
    assert read_access_token(SECRET, token) == claims


def test_a_token_that_fails_verification_is_never_remembered() -> None:
    token = _token()
    tampered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    for _ in range(2):
        with pytest.raises(InvalidAccessTokenError):
            read_access_token(SECRET, tampered)
    expired = issue_access_token(SECRET, 7, uuid.uuid4(), timedelta(minutes=-1))
    with pytest.raises(InvalidAccessTokenError, match="expired"):
        read_access_token(SECRET, expired)
    assert tokens._VERIFIED == {}


def test_a_token_remembered_under_one_key_is_checked_again_under_another() -> None:
    token = _token()
    read_access_token(SECRET, token)
    with pytest.raises(InvalidAccessTokenError):
        read_access_token(OTHER_SECRET, token)


def test_the_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tokens, "VERIFIED_TOKENS_KEPT", 2)
    first, second, third = _token(), _token(), _token()
    for token in (first, second, third):
        read_access_token(SECRET, token)
    assert list(tokens._VERIFIED) == [(SECRET, second), (SECRET, third)]
    assert read_access_token(SECRET, first).user_id == 7  # verified again, remembered again


def test_remembering_saves_the_verification() -> None:
    """Measured in one run, with a wide margin: the remembered path must not cost more."""
    token = _token()
    read_access_token(SECRET, token)
    started = time.perf_counter()
    for _ in range(200):
        read_access_token(SECRET, token)
    remembered = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(200):
        tokens._verify_access_token(SECRET, token)
    verified = time.perf_counter() - started
    assert remembered * 5 < verified
