"""Limits on password attempts (logins, and password changes that must name the current
password), on registrations, and on mails anyone can ask for (password resets, verification
links again): counted in PostgreSQL before any password is checked or
hashed, 429 with Retry-After. The policy, with its numbers, is in docs/security.md ("Password
attempts").

Each count is COMMITTED at once, before the password is checked: a 401, 409 or 422 after
it cannot roll the count back, and the row locks are held for one short transaction, not
for the 40 ms of hashing."""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from taskmanager.config import Settings
from taskmanager.repositories.login_limit_repository import (
    DAY_SECONDS,
    Counted,
    LoginLimitRepository,
    MailLimits,
    PasswordLimits,
    RegistrationLimits,
)
from taskmanager.repositories.user_repository import UserRepository
from taskmanager.security.caller_key import CallerKey, attempt_subject

# One customer's IPv6 allocation is a /64 at least (RFC 6177): its holder picks any of the
# 2^64 addresses in it at will, so counting per /128 would give them as many budgets.
IPV6_PREFIX = 64
# Longest key part a client "address" that is not an IP address (a test client's name)
# may take up: the longest key, "account-address:" + address + " " + a 320-character
# account, must fit the table's 400 characters (an IPv6 /64 takes 24 at most).
_OTHER_ADDRESS_LENGTH = 48


def client_network(host: str | None) -> str:
    """The client address an attempt is counted under: an IPv4 address as it is, an IPv6
    address as its /64 ("2001:db8::/64"), an IPv4-mapped IPv6 address as its IPv4."""
    if not host:
        return "unknown"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        # Never an IP address from a socket; keep the key free of spaces, which separate
        # the address from the account in the keys that hold both.
        return "".join(host.split())[:_OTHER_ADDRESS_LENGTH] or "unknown"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(address), IPV6_PREFIX), strict=False))
    return str(address)


@dataclass(frozen=True, slots=True)
class PasswordAttempt:
    """A password attempt, counted: the username as typed (PostgreSQL normalises it, the
    way the account lookup does), the client's network, and what counting it found."""

    username: str
    network: str
    counted: Counted

    @property
    def wait(self) -> int | None:
        """Seconds to wait (answer 429), or None: go ahead and check the password."""
        return self.counted.wait


def password_limits(settings: Settings) -> PasswordLimits:
    return PasswordLimits(
        per_account_and_address=settings.login_failures_per_account_and_address,
        per_address=settings.login_failures_per_address,
        per_account=settings.login_failures_per_account,
        per_account_per_day=settings.login_failures_per_account_per_day,
        window_seconds=settings.login_window_seconds,
        known_address_seconds=round(settings.login_known_address_days * DAY_SECONDS),
    )


def registration_limits(settings: Settings) -> RegistrationLimits:
    return RegistrationLimits(
        per_address=settings.registrations_per_address,
        window_seconds=settings.registration_window_seconds,
        total=settings.registrations_total,
        total_window_seconds=settings.registrations_total_window_seconds,
    )


def mail_limits(settings: Settings) -> MailLimits:
    return MailLimits(
        per_address=settings.mails_per_address,
        per_account=settings.mails_per_account,
        window_seconds=settings.mail_window_seconds,
    )


async def count_mail_request(
    session: AsyncSession, key: CallerKey, limits: MailLimits, network: str, username: str
) -> int | None:
    """Count a mail asked for from `network` to the account `username` names and COMMIT it
    at once (whatever follows, the count stands). Seconds to wait, or None (go ahead)."""
    counted = await _count_committed(
        session,
        key,
        lambda counts: counts.count_mail(username, network, limits),
        network,
        username,
    )
    return counted.wait


async def count_password_attempt(
    session: AsyncSession,
    key: CallerKey,
    limits: PasswordLimits,
    network: str,
    username: str,
) -> PasswordAttempt:
    """Count a password attempt from `network` at the account `username` names and COMMIT
    it at once, before the password is checked."""
    counted = await _count_committed(
        session,
        key,
        lambda counts: counts.count_password_attempt(username, network, limits),
        network,
        username,
    )
    return PasswordAttempt(username, network, counted)


async def remember_login(session: AsyncSession, attempt: PasswordAttempt) -> None:
    """The attempt logged in: see LoginLimitRepository.remember_login. In the request's
    transaction (a login that fails after this leaves the counts as they were)."""
    await LoginLimitRepository(session).remember_login(
        attempt.username, attempt.network, attempt.counted
    )


async def count_registration(
    session: AsyncSession, key: CallerKey, limits: RegistrationLimits, network: str
) -> int | None:
    """Count a registration from `network` and COMMIT it at once, before its password is
    hashed (a 409 has cost its hashing too, and the row every registration counts under is
    not held locked meanwhile). Seconds to wait, or None (go ahead)."""
    counted = await _count_committed(
        session, key, lambda counts: counts.count_registration(network, limits), network
    )
    return counted.wait


async def _count_committed(
    session: AsyncSession,
    key: CallerKey,
    count: Callable[[LoginLimitRepository], Awaitable[Counted]],
    network: str,
    username: str = "",
) -> Counted:
    """`count` in a transaction of its own, entered to count at this subject only (the
    flow enters its caller again after), committed whatever follows."""
    await UserRepository(session).enter(
        key.entry("login", subject=attempt_subject(network, username))
    )
    counted = await count(LoginLimitRepository(session))
    # One of the commits outside get_async_session: the count must stand whatever follows.
    await session.commit()
    return counted


async def purge_expired_counts(session: AsyncSession, settings: Settings) -> int:
    """Delete the counts whose windows have passed (`taskmanager db purge-logins`)."""
    return await LoginLimitRepository(session).purge_expired(
        password_limits(settings), registration_limits(settings), mail_limits(settings)
    )
