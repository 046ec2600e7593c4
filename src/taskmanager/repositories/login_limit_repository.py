"""LoginLimitRepository: attempts counted in PostgreSQL, per key, in fixed windows.

Kept in the database so that every worker and every machine counts the same attempts. An
attempt is counted, atomically, BEFORE the password is checked (or hashed): requests sent at
the same moment each get their own number, so no burst slips past a limit while the first
ones are still hashing.

Every attempt is counted in one statement, under tiers of keys from narrow to wide: the
client address and the account at that address first, counted always; then the account
from everywhere, and all registrations together, counted only when the narrower keys let
the attempt through. A client hammering past its own limit is refused by that limit alone,
and cannot use up the budget everybody else shares. Keys are taken in one order (tier by
tier, each in a fixed order), so two statements never wait for each other in a cycle.

The account in a key is `left(lower(username), 320)`, computed by PostgreSQL: the function
the login's lookup and the unique index on `lower(email)` use, so every spelling that finds
an account counts in that account's keys (Python's `str.lower` differs: 'İ' -> 'i̇' there,
'i' here)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import Row, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import TextClause

from taskmanager.models import EMAIL_MAX_LENGTH

# The keys' prefixes (the table's `key` column): what is counted under each.
ADDRESS = "address:"  # password attempts from one client address, at any account
ACCOUNT_AT_ADDRESS = "account-address:"  # ... at one account from one address
ACCOUNT = "account:"  # ... at one account from addresses it has not logged in from lately
ACCOUNT_DAY = "account-day:"  # the same, per 24 hours
KNOWN_ADDRESS = "known-address:"  # the last successful login of an account from an address
REGISTRATION_ADDRESS = "registration-address:"  # registrations from one client address
REGISTRATIONS = "registrations:all"  # registrations from everywhere
MAIL_ADDRESS = "mail-address:"  # mails asked for from one client address (password resets...)
MAIL_ACCOUNT = "mail-account:"  # ... to one account (resets, verification resends)

DAY_SECONDS = 24 * 60 * 60


@dataclass(frozen=True, slots=True)
class PasswordLimits:
    """Password attempts allowed per window, per key; see docs/security.md for the policy."""

    per_account_and_address: int
    per_address: int
    per_account: int
    per_account_per_day: int
    window_seconds: int
    known_address_seconds: int


@dataclass(frozen=True, slots=True)
class RegistrationLimits:
    """Registrations allowed per client address, and from all clients together."""

    per_address: int
    window_seconds: int
    total: int
    total_window_seconds: int


@dataclass(frozen=True, slots=True)
class MailLimits:
    """Mails anyone may have sent to an account (a password reset) or an account may ask
    for again (a verification link), per client address and per account."""

    per_address: int
    per_account: int
    window_seconds: int


def _span(seconds: str) -> str:
    return f"make_interval(secs => CAST(:{seconds} AS integer))"


def _upsert(name: str, source: str, condition: str = "TRUE") -> str:
    """A CTE `name` that counts one attempt under each key of the CTE `source` (key,
    allowed, span) when `condition` holds; a key whose window has passed starts a new one."""
    expired = "f.window_started_at + s.span <= now()"
    return f"""
    {name} AS (
        INSERT INTO login_failures AS f (key, failures, window_started_at)
        SELECT key, 1, now() FROM {source} WHERE {condition}
        ON CONFLICT (key) DO UPDATE SET (failures, window_started_at) = (
            SELECT CASE WHEN {expired} THEN 1 ELSE f.failures + 1 END,
                   CASE WHEN {expired} THEN now() ELSE f.window_started_at END
            FROM {source} s WHERE s.key = f.key
        )
        RETURNING f.key, f.failures, f.window_started_at
    )"""


@dataclass(frozen=True, slots=True)
class _Tier:
    """Keys an attempt is counted under together: a SELECT of (key, allowed, span), and
    when they count it at all (besides the tiers before them having let it through)."""

    keys: str
    condition: str = "TRUE"


def _counting_statement(prelude: str, *tiers: _Tier) -> TextClause:
    """Count the attempt under the first tier's keys; under each further tier's keys only
    if the tier before it counted the attempt and let it through (no key of it over its
    limit). Answers `wait`, the seconds until every key that is over its limit has a new
    window (NULL: none is), and `tiers`, how many tiers counted the attempt."""
    parts = []
    for number, tier in enumerate(tiers):
        condition = tier.condition
        if number:
            before = f"counted_{number - 1}"
            condition = (
                f"EXISTS (SELECT FROM {before}) AND NOT EXISTS (SELECT FROM {before} c "
                f"JOIN limits_{number - 1} l USING (key) WHERE c.failures > l.allowed) "
                f"AND {condition}"
            )
        parts.append(f"limits_{number} (key, allowed, span) AS ({tier.keys})")
        parts.append(_upsert(f"counted_{number}", f"limits_{number}", condition))
    limits = " UNION ALL ".join(f"SELECT * FROM limits_{n}" for n in range(len(tiers)))
    counted = " UNION ALL ".join(f"SELECT * FROM counted_{n}" for n in range(len(tiers)))
    reached = " + ".join(
        f"CAST(EXISTS (SELECT FROM counted_{n}) AS integer)" for n in range(len(tiers))
    )
    return text(
        f"""
        WITH {prelude} {", ".join(parts)},
        limits AS ({limits}),
        counted AS ({counted})
        SELECT max(extract(epoch FROM c.window_started_at + l.span - now())) AS wait,
               {reached} AS tiers
        FROM counted c JOIN limits l USING (key)
        WHERE c.failures > l.allowed
        """
    )


# The account :username names, as PostgreSQL's lookup sees it (the module's docstring).
_ACCOUNT_OF_USERNAME = f"left(lower(CAST(:username AS text)), {EMAIL_MAX_LENGTH})"

# The account and the client's network, once.
_ATTEMPT = f"""
    attempt AS (
        SELECT CAST(:network AS text) AS network,
               {_ACCOUNT_OF_USERNAME} AS account
    ),"""
_AT_ADDRESS = "a.network || ' ' || a.account"

_COUNT_PASSWORD_ATTEMPT = _counting_statement(
    _ATTEMPT,
    _Tier(
        f"""
        SELECT '{ADDRESS}' || a.network, CAST(:per_address AS integer), {_span("window")}
        FROM attempt a
        UNION ALL
        SELECT '{ACCOUNT_AT_ADDRESS}' || {_AT_ADDRESS},
               CAST(:per_account_and_address AS integer), {_span("window")}
        FROM attempt a"""
    ),
    _Tier(
        f"""
        SELECT '{ACCOUNT}' || a.account, CAST(:per_account AS integer), {_span("window")}
        FROM attempt a""",
        # The account's owner, at an address they logged in from lately, is not held back
        # by the guesses others make from elsewhere.
        f"""NOT EXISTS (
            SELECT FROM login_failures k
            JOIN attempt a ON k.key = '{KNOWN_ADDRESS}' || {_AT_ADDRESS}
            WHERE k.window_started_at + {_span("known_address_seconds")} > now())""",
    ),
    # Guesses the 15-minute limit refused are not counted per day: a burst must not turn
    # the short refusal into a day-long one.
    _Tier(
        f"""
        SELECT '{ACCOUNT_DAY}' || a.account, CAST(:per_account_per_day AS integer),
               interval '{DAY_SECONDS} seconds'
        FROM attempt a"""
    ),
)

_COUNT_REGISTRATION = _counting_statement(
    "",
    _Tier(
        f"""
        SELECT '{REGISTRATION_ADDRESS}' || CAST(:network AS text),
               CAST(:per_address AS integer), {_span("window")}"""
    ),
    _Tier(f"SELECT '{REGISTRATIONS}', CAST(:total AS integer), {_span('total_window')}"),
)

# A mail asked for: counted under the client's address, and under the account only when
# the address is within its limit (one client cannot use up an account's budget alone).
_COUNT_MAIL = _counting_statement(
    _ATTEMPT,
    _Tier(
        f"""
        SELECT '{MAIL_ADDRESS}' || a.network, CAST(:per_address AS integer), {_span("window")}
        FROM attempt a"""
    ),
    _Tier(
        f"""
        SELECT '{MAIL_ACCOUNT}' || a.account, CAST(:per_account AS integer), {_span("window")}
        FROM attempt a"""
    ),
)

# A successful login, in the order the counting statement takes the same keys.
_UNCHARGE_ADDRESS = text(
    f"""
    UPDATE login_failures SET failures = failures - 1
    WHERE key = '{ADDRESS}' || CAST(:network AS text) AND failures > 0
    """
)
_FORGIVE_ACCOUNT_AT_ADDRESS = text(
    f"""
    DELETE FROM login_failures
    WHERE key = '{ACCOUNT_AT_ADDRESS}' || CAST(:network AS text) || ' '
                || {_ACCOUNT_OF_USERNAME}
    """
)
_UNCHARGE_ACCOUNT = text(
    f"""
    UPDATE login_failures SET failures = failures - 1
    WHERE key = CAST(:prefix AS text) || {_ACCOUNT_OF_USERNAME}
      AND failures > 0
    """
)
_REMEMBER_ADDRESS = text(
    f"""
    INSERT INTO login_failures (key, failures, window_started_at)
    VALUES ('{KNOWN_ADDRESS}' || CAST(:network AS text) || ' '
            || {_ACCOUNT_OF_USERNAME}, 0, now())
    ON CONFLICT (key) DO UPDATE SET window_started_at = now()
    """
)

# How long each kind of key matters: past it, the row is only garbage. Keys of a prefix not
# listed (older versions' `email:`) live as long as a login window.
_PURGE = text(
    f"""
    DELETE FROM login_failures
    WHERE window_started_at + make_interval(secs => CASE
        WHEN starts_with(key, '{ACCOUNT_DAY}') THEN {DAY_SECONDS}
        WHEN starts_with(key, '{KNOWN_ADDRESS}') THEN CAST(:known_address_seconds AS integer)
        WHEN starts_with(key, '{REGISTRATION_ADDRESS}') THEN CAST(:registration_window AS integer)
        WHEN key = '{REGISTRATIONS}' THEN CAST(:registrations_total_window AS integer)
        WHEN starts_with(key, '{MAIL_ADDRESS}') OR starts_with(key, '{MAIL_ACCOUNT}')
            THEN CAST(:mail_window AS integer)
        ELSE CAST(:window AS integer)
    END) <= now()
    """
)


@dataclass(frozen=True, slots=True)
class Counted:
    """What counting one attempt found."""

    wait: int | None  # seconds to wait if a key is now over its limit, else None: go ahead
    tiers: int  # how many tiers of keys counted it (see _counting_statement)


def _counted(row: Row[Any]) -> Counted:
    wait: Decimal | None = row.wait
    return Counted(None if wait is None else max(1, math.ceil(wait)), int(row.tiers))


class LoginLimitRepository:
    """Encapsulates all database operations for attempt counts."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def count_password_attempt(
        self, username: str, network: str, limits: PasswordLimits
    ) -> Counted:
        """Count one password attempt at the account `username` names (whether or not it
        exists) from the client network `network`."""
        result = await self.session.execute(
            _COUNT_PASSWORD_ATTEMPT,
            {
                "username": username,
                "network": network,
                "per_address": limits.per_address,
                "per_account_and_address": limits.per_account_and_address,
                "per_account": limits.per_account,
                "per_account_per_day": limits.per_account_per_day,
                "window": limits.window_seconds,
                "known_address_seconds": limits.known_address_seconds,
            },
        )
        return _counted(result.one())

    async def remember_login(self, username: str, network: str, counted: Counted) -> None:
        """The attempt `counted` logged in: it is not charged to the keys that counted it,
        the account's failures from this address are forgiven, and the address is
        remembered as the account's. The account-wide counts of others' guesses stay: an
        owner logging in often must not hand them a fresh budget each time."""
        parameters = {"username": username, "network": network}
        await self.session.execute(_UNCHARGE_ADDRESS, parameters)
        await self.session.execute(_FORGIVE_ACCOUNT_AT_ADDRESS, parameters)
        # The account-wide keys are the password statement's second and third tiers.
        for prefix in (ACCOUNT, ACCOUNT_DAY)[: counted.tiers - 1]:
            await self.session.execute(_UNCHARGE_ACCOUNT, {"prefix": prefix, **parameters})
        await self.session.execute(_REMEMBER_ADDRESS, parameters)

    async def count_registration(self, network: str, limits: RegistrationLimits) -> Counted:
        """Count one registration from the client network `network`."""
        result = await self.session.execute(
            _COUNT_REGISTRATION,
            {
                "network": network,
                "per_address": limits.per_address,
                "window": limits.window_seconds,
                "total": limits.total,
                "total_window": limits.total_window_seconds,
            },
        )
        return _counted(result.one())

    async def count_mail(self, username: str, network: str, limits: MailLimits) -> Counted:
        """Count one mail asked for, to the account `username` names (whether or not it
        exists), from the client network `network`."""
        result = await self.session.execute(
            _COUNT_MAIL,
            {
                "username": username,
                "network": network,
                "per_address": limits.per_address,
                "per_account": limits.per_account,
                "window": limits.window_seconds,
            },
        )
        return _counted(result.one())

    async def purge_expired(
        self, password: PasswordLimits, registration: RegistrationLimits, mail: MailLimits
    ) -> int:
        """Delete the counts whose windows have passed, and addresses remembered too long
        ago. Returns how many rows went."""
        result = await self.session.execute(
            _PURGE,
            {
                "known_address_seconds": password.known_address_seconds,
                "registration_window": registration.window_seconds,
                "registrations_total_window": registration.total_window_seconds,
                "mail_window": mail.window_seconds,
                "window": password.window_seconds,
            },
        )
        return int(getattr(result, "rowcount", 0) or 0)
