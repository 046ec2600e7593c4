"""Limits on password attempts (logins, and password changes that must name the current
password) and on registrations: counted in PostgreSQL before any password is checked or
hashed, 429 with Retry-After. The policy, with its numbers, is in docs/security.md ("Password
attempts").

Each count is COMMITTED at once, before the password is checked: a 401, 409 or 422 after
it cannot roll the count back, and the row locks are held for one short transaction, not
for the 40 ms of hashing."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import AsyncSession

from taskmanager.config import Settings
from taskmanager.problems import TOO_MANY_LOGIN_ATTEMPTS, TOO_MANY_REGISTRATIONS
from taskmanager.repositories.login_limit_repository import (
    DAY_SECONDS,
    Counted,
    LoginLimitRepository,
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


def request_network(request: Request) -> str:
    """The network of the client that sent `request` (see client_network)."""
    return client_network(request.client.host if request.client else None)


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


async def count_password_attempt(
    session: AsyncSession, request: Request, username: str
) -> PasswordAttempt:
    """Count a password attempt at the account `username` names and COMMIT it at once,
    before the password is checked."""
    network = request_network(request)
    # In a transaction of its own, entered to count at this subject only (the route
    # enters its caller again).
    key: CallerKey = request.app.state.caller_key
    await UserRepository(session).enter(
        key.entry("login", subject=attempt_subject(network, username))
    )
    counted = await LoginLimitRepository(session).count_password_attempt(
        username, network, password_limits(request.app.state.settings)
    )
    # One of the commits outside get_async_session: the count must stand whatever follows.
    await session.commit()
    return PasswordAttempt(username, network, counted)


async def remember_login(session: AsyncSession, attempt: PasswordAttempt) -> None:
    """The attempt logged in: see LoginLimitRepository.remember_login. In the request's
    transaction (a login that fails after this leaves the counts as they were)."""
    await LoginLimitRepository(session).remember_login(
        attempt.username, attempt.network, attempt.counted
    )


async def count_registration(session: AsyncSession, request: Request) -> int | None:
    """Count a registration and COMMIT it at once, before its password is hashed. Seconds
    to wait, or None (go ahead)."""
    # In a transaction of its own, entered to count at this network only (registration
    # enters again after).
    key: CallerKey = request.app.state.caller_key
    network = request_network(request)
    await UserRepository(session).enter(key.entry("login", subject=attempt_subject(network)))
    counted = await LoginLimitRepository(session).count_registration(
        network, registration_limits(request.app.state.settings)
    )
    # Committed whatever follows (a 409 has cost its hashing too), and the row every
    # registration counts under is not held locked while the password is hashed.
    await session.commit()
    return counted.wait


async def purge_expired_counts(session: AsyncSession, settings: Settings) -> int:
    """Delete the counts whose windows have passed (`taskmanager db purge-logins`)."""
    return await LoginLimitRepository(session).purge_expired(
        password_limits(settings), registration_limits(settings)
    )


def too_many_attempts(wait: int) -> JSONResponse:
    problem = TOO_MANY_LOGIN_ATTEMPTS.problem(
        f"too many password attempts; try again in {wait} seconds"
    )
    return problem.response({"Retry-After": str(wait)})


def too_many_registrations(wait: int) -> JSONResponse:
    problem = TOO_MANY_REGISTRATIONS.problem(f"too many registrations; try again in {wait} seconds")
    return problem.response({"Retry-After": str(wait)})
