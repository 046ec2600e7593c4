"""The key access tokens are signed with: from settings, or generated once and kept.

With TASKMANAGER_JWT_SECRET unset, `make run` still needs no configuration: a random key is
written beside the embedded database's data directory with mode 0600 and read by every
worker (and every later start), so tokens survive restarts and work on all workers.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import tempfile
from pathlib import Path

from taskmanager.config import MIN_SECRET_BYTES, Settings

log = logging.getLogger(__name__)


class SigningKeyError(RuntimeError):
    """The kept key cannot be used; the message says what to do."""


def secret_path(settings: Settings) -> Path:
    return settings.secret_file or settings.data_dir.parent / "jwt-secret"


def signing_key(settings: Settings) -> str:
    if settings.jwt_secret is not None:
        return settings.jwt_secret.get_secret_value()
    path = secret_path(settings)
    if not path.exists():
        _create(path)
    if path.stat().st_mode & 0o077:
        log.warning(
            "the signing key file %s can be read by other users of this machine; "
            "restrict it with: chmod 600 %s",
            path,
            path,
        )
    key = path.read_text(encoding="utf-8").strip()
    if len(key.encode()) < MIN_SECRET_BYTES:
        raise SigningKeyError(
            f"the signing key in {path} is shorter than {MIN_SECRET_BYTES} bytes: delete the "
            "file to have a new one generated (every issued token ends), or set "
            "TASKMANAGER_JWT_SECRET"
        )
    return key


def _create(path: Path) -> None:
    """Write a new key so that it appears complete or not at all: another worker starting
    at the same moment either links its own first (and both read that one) or finds ours."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=".jwt-secret-")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:  # mkstemp: mode 0600
            file.write(secrets.token_urlsafe(48) + "\n")
        with contextlib.suppress(FileExistsError):
            os.link(temporary, path)
    finally:
        os.unlink(temporary)
