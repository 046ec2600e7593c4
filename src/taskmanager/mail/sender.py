"""MailSender: the outbox worker's handler of `mail.*` rows. It renders the mail the row's
kind names from its payload, with the token derived again from the token row's id (the
outbox never held it), and hands the message to the transport."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any
from urllib.parse import urlencode

from taskmanager.config import Settings
from taskmanager.mail.templates import (
    INVITATION,
    PASSWORD_RESET,
    REGISTRATION_ATTEMPT,
    VERIFY_EMAIL,
    WEBHOOK_DISABLED,
    Mail,
    MailTemplate,
)
from taskmanager.mail.transports import FileTransport, MailTransport, SmtpTransport
from taskmanager.security.mail_tokens import MailTokenKey

# Each mail kind: its template, the path of the link (on public_base_url) its token goes
# to, and the payload's other values the template names. The outbox kind is "mail." + this
# kind (migration 0012's taskmanager_record_mail, 0014's invitation functions).
_KINDS: Mapping[str, tuple[MailTemplate, str, tuple[str, ...]]] = {
    "verify_email": (VERIFY_EMAIL, "/verify-email", ()),
    "password_reset": (PASSWORD_RESET, "/reset-password", ()),
    "registration_attempt": (REGISTRATION_ATTEMPT, "/reset-password", ()),
    "invitation": (INVITATION, "/accept-invitation", ("workspace", "inviter", "role")),
}
# Notices: mails without a token, each with its template and the payload's values it
# names (`link` is made from `workspace_id` and `endpoint_id`: the endpoint in the API).
_NOTICES: Mapping[str, tuple[MailTemplate, tuple[str, ...]]] = {
    "webhook_disabled": (WEBHOOK_DISABLED, ("workspace", "url", "reason")),
}
MAIL_PREFIX = "mail."


class UnknownMailKindError(ValueError):
    """An outbox row of a mail kind this version does not know."""


def transport_for(settings: Settings) -> MailTransport:
    """SMTP when a host is configured, else .eml files under the mail directory."""
    if settings.smtp_host is None:
        return FileTransport(settings.mail_directory)
    password = settings.smtp_password.get_secret_value() if settings.smtp_password else None
    return SmtpTransport(
        settings.smtp_host,
        settings.smtp_port,
        starttls=settings.smtp_starttls,
        username=settings.smtp_username,
        password=password,
        timeout=settings.smtp_timeout,
    )


def _valid_for(minutes: int) -> str:
    if minutes > 2 * 1440:  # an invitation's week, or what is left of it
        days = minutes / 1440
        return f"{int(days)} days" if minutes % 1440 == 0 else f"about {round(days)} days"
    if minutes % 60 == 0 and minutes >= 120:
        return f"{minutes // 60} hours"
    return "1 minute" if minutes == 1 else f"{minutes} minutes"


class MailSender:
    """Renders and sends the mail of one outbox row (`kind` without "mail.")."""

    def __init__(
        self, transport: MailTransport, tokens: MailTokenKey, sender: str, base_url: str
    ) -> None:
        self.transport = transport
        self.tokens = tokens
        self.sender = sender
        self.base_url = base_url.rstrip("/")

    def render(self, kind: str, payload: Mapping[str, Any]) -> Mail:
        if kind in _NOTICES:
            notice, names = _NOTICES[kind]
            link = (
                f"{self.base_url}/workspaces/{payload['workspace_id']}/webhooks/"
                f"{payload['endpoint_id']}"
            )
            return notice.render(
                str(payload["to"]),
                name=str(payload.get("name") or payload["to"]),
                link=link,
                **{field: str(payload.get(field) or "") for field in names},
            )
        if kind not in _KINDS:
            raise UnknownMailKindError(f"no mail of the kind {kind!r}")
        template, path, fields = _KINDS[kind]
        token = self.tokens.token(uuid.UUID(str(payload["token_id"])))
        link = f"{self.base_url}{path}?{urlencode({'token': token})}"
        return template.render(
            str(payload["to"]),
            name=str(payload.get("name") or payload["to"]),
            link=link,
            valid_for=_valid_for(int(payload.get("valid_minutes", 0))),
            **{field: str(payload.get(field) or "someone") for field in fields},
        )

    def message(self, mail: Mail) -> EmailMessage:
        """`mail` as a multipart/alternative message: plain text first, HTML preferred."""
        message = EmailMessage()
        message["From"] = self.sender
        message["To"] = mail.to
        message["Subject"] = mail.subject
        message["Date"] = formatdate(usegmt=True)
        message["Message-ID"] = make_msgid(domain=_domain(self.sender))
        message.set_content(mail.text)
        message.add_alternative(mail.html, subtype="html")
        return message

    async def send(self, kind: str, payload: Mapping[str, Any]) -> None:
        await self.transport.send(self.message(self.render(kind, payload)))


def _domain(address: str) -> str:
    """The domain of the From address, for Message-IDs ("localhost" if it has none)."""
    return address.rpartition("@")[2].strip(" >") or "localhost"
