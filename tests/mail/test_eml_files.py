"""Without an SMTP server (`make run`'s default), each mail is an .eml file under the mail
directory, and one log line names it; the worker is woken by the commit that recorded the
mail, not by its next look (set here to a minute away)."""

from __future__ import annotations

import asyncio
import email
import email.policy
import logging
from pathlib import Path

import pytest

from taskmanager.config import Settings
from taskmanager.mail.sender import transport_for
from taskmanager.mail.transports import FileTransport, SmtpTransport
from tests.support.accounts import PASSWORD
from tests.support.live_app import live_client
from tests.support.mail import LINK


def test_without_an_smtp_host_mail_goes_to_files_beside_the_data(tmp_path: Path) -> None:
    default = Settings(data_dir=tmp_path / "pgdata", mail_dir=None, smtp_host=None)
    transport = transport_for(default)
    assert isinstance(transport, FileTransport)
    assert transport.directory == tmp_path / "mail"
    smtp = transport_for(default.model_copy(update={"smtp_host": "mail.example"}))
    assert isinstance(smtp, SmtpTransport)
    assert (smtp.host, smtp.port, smtp.starttls) == ("mail.example", 587, True)


async def test_a_mail_is_an_eml_file_named_in_a_log_line(
    own_database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    mail_dir = tmp_path / "mail"
    transports = logging.getLogger("taskmanager.mail.transports")
    transports.addHandler(caplog.handler)  # the app's logging does not propagate to the root
    try:
        async with live_client(
            own_database_url,
            smtp_host=None,
            mail_dir=mail_dir,
            log_level="INFO",
            outbox_poll_seconds=60,  # only the wake-up after commit can send it in time
        ) as http:
            response = await http.post(
                "/auth/register", json={"email": "files@example.com", "password": PASSWORD}
            )
            assert response.status_code == 202, response.text
            for _ in range(100):
                if files := sorted(mail_dir.glob("*.eml")):
                    break
                await asyncio.sleep(0.05)
    finally:
        transports.removeHandler(caplog.handler)

    (path,) = files
    assert path.stat().st_mode & 0o777 == 0o600
    message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert message["To"] == "files@example.com"
    assert message.get_content_type() == "multipart/alternative"
    text = message.get_body(("plain",))
    assert text is not None
    (link,) = LINK.findall(text.get_content())
    assert link.startswith("http://127.0.0.1:8000/verify-email?token=")
    lines = [record.getMessage() for record in caplog.records if str(path) in record.getMessage()]
    assert lines == [
        f"mail 'Confirm your email address' written to {path} (no SMTP server configured)"
    ]
