"""The outbox and its worker, on this module's own database (real commits) and a real SMTP
server: a mail is recorded with the change that causes it and sent after commit; a
rolled-back change sends nothing; a row a crash left is sent by the next worker; two
workers never send one row twice; a failing server is retried with a growing wait, and
given up on after the last attempt. No app runs here: the tests drive the workers."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from taskmanager.outbox.worker import RetryPolicy
from taskmanager.security.mail_tokens import mail_token_hash
from tests.mail.conftest import BASE_URL, Outbox
from tests.support.live_app import observer_engine


async def rows(url: str, sql: str, **params: Any) -> list[Any]:
    """What PostgreSQL holds, as the superuser (past every policy)."""
    async with observer_engine(url) as engine:
        return await _rows(engine, sql, **params)


async def _rows(engine: AsyncEngine, sql: str, **params: Any) -> list[Any]:
    async with engine.connect() as connection:
        return list((await connection.execute(text(sql), params)).all())


def outbox_of(address: str) -> str:
    return (
        "SELECT id, kind, payload, attempts, sent_at, last_error, next_attempt_at, now() AS now "
        f"FROM outbox WHERE payload->>'to' = '{address}' ORDER BY id"
    )


async def test_a_committed_registration_is_mailed_after_commit_with_both_parts(
    outbox: Outbox, own_database_url: str
) -> None:
    await outbox.register("first@example.com")
    (row,) = await rows(own_database_url, outbox_of("first@example.com"))
    assert (row.kind, row.attempts, row.sent_at) == ("mail.verify_email", 0, None)

    assert await outbox.worker().drain() == 1

    (mail,) = await outbox.smtp.wait_for("first@example.com")
    assert mail.message.get_content_type() == "multipart/alternative"
    assert mail.link.startswith(f"{BASE_URL}/verify-email?token=")
    assert mail.link in mail.part("text/plain")
    assert f'href="{mail.link}"' in mail.part("text/html")
    assert mail.subject == "Confirm your email address"
    (sent,) = await rows(own_database_url, outbox_of("first@example.com"))
    assert (sent.attempts, sent.last_error) == (1, None)
    assert sent.sent_at is not None
    # No secret at rest: the outbox holds the token row's id, the token table its hash.
    assert mail.token not in json.dumps(sent.payload)
    (stored,) = await rows(
        own_database_url,
        "SELECT * FROM account_tokens WHERE id = CAST(:id AS uuid)",
        id=sent.payload["token_id"],
    )
    assert stored.token_hash == mail_token_hash(mail.token)
    assert mail.token not in str(tuple(stored))
    # Sent once: a second look finds nothing to do.
    assert await outbox.worker().drain() == 0
    assert len(outbox.smtp.to("first@example.com")) == 1


async def test_a_rolled_back_change_sends_nothing(outbox: Outbox, own_database_url: str) -> None:
    await outbox.register("rolled.back@example.com", commit=False)

    await outbox.worker().drain()

    assert await rows(own_database_url, outbox_of("rolled.back@example.com")) == []
    assert (
        await rows(own_database_url, "SELECT id FROM users WHERE email = 'rolled.back@example.com'")
        == []
    )
    await asyncio.sleep(0.2)
    assert outbox.smtp.to("rolled.back@example.com") == []


async def test_a_row_left_by_a_crash_is_sent_by_a_worker_started_later(
    outbox: Outbox, own_database_url: str
) -> None:
    """Committed while no worker ran (the process died right after the commit): the next
    worker to start sends it, from its own first look."""
    await outbox.register("crashed@example.com")
    await asyncio.sleep(0.3)
    assert outbox.smtp.to("crashed@example.com") == []  # nobody sent it

    later = outbox.worker()
    later.start()
    try:
        (mail,) = await outbox.smtp.wait_for("crashed@example.com")
    finally:
        await later.stop()
    assert mail.link.startswith(f"{BASE_URL}/verify-email?token=")
    (row,) = await rows(own_database_url, outbox_of("crashed@example.com"))
    assert row.sent_at is not None


async def test_a_claimed_row_whose_worker_died_is_sent_once_its_lease_ends(
    outbox: Outbox, own_database_url: str
) -> None:
    await outbox.register("lease@example.com")
    dead = outbox.worker(lease_seconds=0.5)
    assert [item.kind for item in await dead._claim()] == ["mail.verify_email"]  # then dies
    assert await outbox.worker().drain() == 0  # leased: nobody else takes it meanwhile

    await asyncio.sleep(0.6)

    assert await outbox.worker().drain() == 1
    await outbox.smtp.wait_for("lease@example.com")
    (row,) = await rows(own_database_url, outbox_of("lease@example.com"))
    assert row.attempts == 2  # the dead worker's claim counted


async def test_two_workers_draining_at_once_send_each_row_once(
    outbox: Outbox, own_database_url: str
) -> None:
    addresses = [f"many{n}@example.com" for n in range(30)]
    async with observer_engine(own_database_url) as engine, engine.begin() as connection:
        for address in addresses:
            await connection.execute(
                text("INSERT INTO outbox (kind, payload) VALUES ('mail.password_reset', :p)"),
                {
                    "p": json.dumps(
                        {"to": address, "token_id": str(uuid.uuid4()), "valid_minutes": 30}
                    )
                },
            )
    outbox.smtp.delay = 0.01  # each conversation takes a moment: the two overlap

    sent = await asyncio.gather(outbox.worker().drain(), outbox.worker().drain())

    assert sum(sent) == len(addresses)
    for address in addresses:
        assert len(outbox.smtp.to(address)) == 1, address
    states = await rows(
        own_database_url,
        "SELECT attempts, sent_at IS NOT NULL AS sent FROM outbox "
        "WHERE payload->>'to' LIKE 'many%@example.com'",
    )
    assert {(state.attempts, state.sent) for state in states} == {(1, True)}


async def test_a_failing_server_is_retried_with_a_growing_wait(
    outbox: Outbox, own_database_url: str
) -> None:
    await outbox.register("flaky@example.com")
    outbox.smtp.refuse = 2
    worker = outbox.worker(first_retry_seconds=0.4)

    assert await worker.drain() == 0
    (first,) = await rows(own_database_url, outbox_of("flaky@example.com"))
    assert (first.attempts, first.sent_at) == (1, None)
    assert first.last_error == "SMTPDataError: (451, '4.3.0 try again later')"
    assert _seconds(first.next_attempt_at - first.now) == about(0.4)
    assert await worker.drain() == 0  # not due yet: nothing is tried

    await asyncio.sleep(0.45)
    assert await worker.drain() == 0
    (second,) = await rows(own_database_url, outbox_of("flaky@example.com"))
    assert second.attempts == 2
    assert _seconds(second.next_attempt_at - second.now) == about(0.8)  # doubled

    await asyncio.sleep(0.85)
    assert await worker.drain() == 1
    (third,) = await rows(own_database_url, outbox_of("flaky@example.com"))
    assert (third.attempts, third.last_error) == (3, None)
    assert third.sent_at is not None
    assert len(outbox.smtp.to("flaky@example.com")) == 1


async def test_a_row_that_fails_every_attempt_is_given_up(
    outbox: Outbox, own_database_url: str
) -> None:
    await outbox.register("hopeless@example.com")
    outbox.smtp.refuse = 100
    worker = outbox.worker(first_retry_seconds=0.05, max_retry_seconds=0.05, max_attempts=3)

    for _ in range(6):
        await worker.drain()
        await asyncio.sleep(0.08)

    (row,) = await rows(own_database_url, outbox_of("hopeless@example.com"))
    assert (row.attempts, row.sent_at) == (3, None)
    assert "451" in row.last_error
    assert outbox.smtp.refused == 3


def test_the_wait_doubles_up_to_its_cap() -> None:
    policy = RetryPolicy(
        poll_seconds=5, first_retry_seconds=30, max_retry_seconds=3600, max_attempts=10,
        lease_seconds=90,
    )  # fmt: skip
    assert [policy.retry_in(n) for n in (1, 2, 3, 4, 8, 9)] == [30, 60, 120, 240, 3600, 3600]


def _seconds(delta: timedelta) -> float:
    return delta.total_seconds()


def about(seconds: float) -> Any:
    """Within 0.15 s: the row's next_attempt_at and now() were read a statement apart."""
    return pytest.approx(seconds, abs=0.15)
