"""A real SMTP server in the test process (aiosmtpd, in a thread of its own), what arrived
at it, and the links and tokens in those mails."""

from __future__ import annotations

import asyncio
import email
import email.policy
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from aiosmtpd.controller import Controller

from tests.support.processes import free_port

LINK = re.compile(r"https?://\S+?token=[A-Za-z0-9_-]+")


@dataclass
class Arrived:
    """One message as the server received it."""

    recipients: list[str]
    message: EmailMessage

    @property
    def subject(self) -> str:
        return str(self.message["Subject"])

    def part(self, content_type: str) -> str:
        """The body of the part of this type (text/plain, text/html)."""
        for part in self.message.walk():
            if part.get_content_type() == content_type:
                return str(part.get_content())  # type: ignore[attr-defined]
        raise AssertionError(f"no {content_type} part in {self.message}")

    @property
    def link(self) -> str:
        """The one link with a token in the plain-text part."""
        links = set(LINK.findall(self.part("text/plain")))
        assert len(links) == 1, links
        return links.pop()

    @property
    def token(self) -> str:
        (token,) = parse_qs(urlsplit(self.link).query)["token"]
        return token


@dataclass
class SmtpServer:
    """What arrived, and how the next conversations go: `refuse` answers that many DATA
    commands with a temporary failure (451) before accepting again."""

    port: int
    arrived: list[Arrived] = field(default_factory=list)
    refuse: int = 0
    refused: int = 0
    delay: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def to(self, address: str) -> list[Arrived]:
        with self._lock:
            return [mail for mail in self.arrived if address in mail.recipients]

    async def wait_for(self, address: str, count: int = 1, within: float = 15.0) -> list[Arrived]:
        """The mails to `address`, once at least `count` arrived (else AssertionError)."""
        deadline = time.monotonic() + within
        while len(found := self.to(address)) < count:
            assert time.monotonic() < deadline, f"{len(found)} mails to {address}, not {count}"
            await asyncio.sleep(0.05)
        return found

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        if self.delay:
            await asyncio.sleep(self.delay)
        with self._lock:
            if self.refused < self.refuse:
                self.refused += 1
                return "451 4.3.0 try again later"
            message = email.message_from_bytes(envelope.content, policy=email.policy.default)
            assert isinstance(message, EmailMessage)
            self.arrived.append(Arrived(list(envelope.rcpt_tos), message))
        return "250 OK"


@contextmanager
def smtp_server() -> Iterator[SmtpServer]:
    """An SMTP server on 127.0.0.1 (no TLS, no login), stopped afterwards."""
    server = SmtpServer(port=free_port())
    controller = Controller(server, hostname="127.0.0.1", port=server.port)
    controller.start()
    try:
        yield server
    finally:
        controller.stop()


def smtp_settings(server: SmtpServer) -> dict[str, Any]:
    """Settings that send the app's mail to `server`, and retry soon."""
    return {
        "smtp_host": "127.0.0.1",
        "smtp_port": server.port,
        "smtp_starttls": False,
        "smtp_timeout": 5.0,
        "public_base_url": "https://tasks.example",
        "outbox_poll_seconds": 0.2,
        "outbox_retry_seconds": 0.2,
    }


def eml_token(directory: Path, to: str, subject: str, within: float = 15.0) -> str:
    """The token of the link in the newest mail to `to` with `subject` that a server without
    SMTP wrote as an .eml file into `directory` (waiting for it to appear)."""
    deadline = time.monotonic() + within
    while True:
        found = []
        for path in sorted(directory.glob("*.eml")):
            message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
            if message["To"] == to and message["Subject"] == subject:
                found.append(message)
        if found:
            body = found[-1].get_body(("plain",))
            assert body is not None
            (link,) = set(LINK.findall(body.get_content()))  # type: ignore[attr-defined]
            (token,) = parse_qs(urlsplit(link).query)["token"]
            return token
        assert time.monotonic() < deadline, f"no mail {subject!r} to {to} in {directory}"
        time.sleep(0.05)
