"""The two ways a message leaves: over SMTP, or, without an SMTP server (`make run`), as an
.eml file under the data directory, with one log line naming it so a developer can open
the link."""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Protocol

import aiosmtplib

log = logging.getLogger(__name__)


class MailTransport(Protocol):
    async def send(self, message: EmailMessage) -> None:
        """Deliver `message`, or raise (the outbox tries again later)."""


class SmtpTransport:
    """aiosmtplib, one connection per message (a few mails a minute need no pool)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        starttls: bool,
        username: str | None,
        password: str | None,
        timeout: float,
    ) -> None:
        self.host = host
        self.port = port
        self.starttls = starttls
        self.username = username
        self._password = password
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"SmtpTransport({self.host}:{self.port}, starttls={self.starttls})"

    async def send(self, message: EmailMessage) -> None:
        await aiosmtplib.send(
            message,
            hostname=self.host,
            port=self.port,
            start_tls=self.starttls,
            username=self.username,
            password=self._password,
            timeout=self.timeout,
        )


class FileTransport:
    """Each message as `<UTC time>-<random>.eml` in `directory` (made mode 0700; each file
    0600: a mailed link is a credential)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def __repr__(self) -> str:
        return f"FileTransport({self.directory})"

    async def send(self, message: EmailMessage) -> None:
        path = await asyncio.to_thread(self._write, message.as_bytes())
        log.info("mail %r written to %s (no SMTP server configured)", message["Subject"], path)

    def _write(self, data: bytes) -> Path:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        path = self.directory / f"{stamp}-{uuid.uuid4().hex[:8]}.eml"
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
        return path.resolve()
