"""WebhookSender: one webhook request, signed as Standard Webhooks says, sent with the
shared OutboundClient (SSRF checks at every connection, one deadline, a bounded answer,
no redirects followed), and what came of it.

Headers: `webhook-id` (the message id: the same on every retry and on a replay, so a
receiver can drop what it has seen), `webhook-timestamp` (seconds, this attempt's),
`webhook-signature` (`v1,<base64 HMAC-SHA256 of "id.timestamp.body">` per secret that
signs now, space-separated: two during a rotation's overlap).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from taskmanager.integrations.outbound import OutboundClient, OutboundError, UnsafeDestination
from taskmanager.security.webhook_secrets import signature_header

# The longest excerpt of an answer the delivery log keeps (characters).
EXCERPT_CHARACTERS = 1000
# How much of an answer is read at all: enough for the excerpt, nothing a receiver can
# make us hold in memory.
MAX_ANSWER_BYTES = 4096
# What the delivery log never stores of a receiver's answer or an error's text: control
# characters (NUL above all: PostgreSQL's text refuses it, and the record of the attempt
# would fail with it) but tab and line breaks, and lone surrogates (not encodable in
# UTF-8). A receiver chooses these bytes; the log keeps what is left of them.
_UNPRINTABLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
# The longest error text kept (characters).
ERROR_CHARACTERS = 1000


def printable(text: str | None, limit: int) -> str | None:
    """`text` as the delivery log may keep it: no control characters (but tab, CR, LF),
    no lone surrogates, at most `limit` characters."""
    if text is None:
        return None
    return _UNPRINTABLE.sub("", text)[:limit]


@dataclass(frozen=True, slots=True)
class WebhookMessage:
    """What one request carries: where to, the message id, the body, the secrets (raw
    bytes) that sign it now."""

    url: str
    message_id: str
    payload: Mapping[str, Any]
    secrets: Sequence[bytes]


@dataclass(frozen=True, slots=True)
class SendResult:
    """What became of one attempt."""

    status_code: int | None  # None: no answer at all
    latency_ms: int
    excerpt: str | None
    error: str | None

    def __post_init__(self) -> None:
        # Whoever makes a result (a receiver's answer, an exception's text), the log
        # gets only what PostgreSQL stores.
        object.__setattr__(self, "excerpt", printable(self.excerpt, EXCERPT_CHARACTERS))
        object.__setattr__(self, "error", printable(self.error, ERROR_CHARACTERS))

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300

    @property
    def gone(self) -> bool:
        """410 Gone: the receiver asks us to stop (Standard Webhooks: disable the endpoint)."""
        return self.status_code == 410


def body_of(payload: Mapping[str, Any]) -> bytes:
    """The request body: compact JSON (what is signed is exactly what is sent)."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


class WebhookSender:
    """Sends webhook requests; one per process, sharing the process's OutboundClient."""

    def __init__(
        self,
        client: OutboundClient,
        timeout: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.timeout = timeout
        self.clock = clock

    def headers(self, message: WebhookMessage, body: bytes) -> dict[str, str]:
        timestamp = int(self.clock())
        return {
            "content-type": "application/json",
            "webhook-id": message.message_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature_header(
                message.secrets, message.message_id, timestamp, body
            ),
        }

    async def send(self, message: WebhookMessage) -> SendResult:
        body = body_of(message.payload)
        started = time.perf_counter()
        try:
            answer = await self.client.request(
                "POST",
                message.url,
                headers=self.headers(message, body),
                content=body,
                timeout=self.timeout,
                max_bytes=MAX_ANSWER_BYTES,
            )
        except UnsafeDestination as error:
            return self._failed(started, f"refused destination: {error}")
        except OutboundError as error:
            return self._failed(started, f"{type(error).__name__}: {error}")
        excerpt = answer.body.decode("utf-8", errors="replace")
        error_text = None
        if not 200 <= answer.status_code < 300:
            error_text = f"the endpoint answered {answer.status_code}"
            if 300 <= answer.status_code < 400:
                error_text += " (redirects are not followed)"
        return SendResult(answer.status_code, round(answer.elapsed_ms), excerpt, error_text)

    @staticmethod
    def _failed(started: float, error: str) -> SendResult:
        return SendResult(None, round((time.perf_counter() - started) * 1000), None, error)
