"""Settings: one typed object read from the environment and `.env`.

`DATABASE_URL` unset means "use the embedded PostgreSQL under `TASKMANAGER_DATA_DIR`".
A URL for a synchronous driver or another database stops start-up with one clear
message (the lecture's Mistake 1, caught before the first query instead of after).
"""

from __future__ import annotations

import ipaddress
import re
import sys
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

ASYNC_DRIVER = "postgresql+asyncpg"

# Spellings that mean "PostgreSQL, driver not chosen": we choose asyncpg for the user.
_DRIVERLESS_SCHEMES = {"postgresql", "postgres", "pgsql"}
_SYNC_POSTGRES_DRIVERS = {"psycopg2", "psycopg2cffi", "pg8000", "pygresql", "pypostgresql"}


# HS256 keys shorter than the hash output weaken it (RFC 7518 3.2 asks for at least 256 bits).
MIN_SECRET_BYTES = 32


class DatabaseURLError(ValueError):
    """DATABASE_URL (or OWNER_DATABASE_URL) names something this service cannot use; the
    message says what to write."""


def normalize_database_url(raw: str, setting: str = "DATABASE_URL") -> str:
    """Return `raw` as a `postgresql+asyncpg://` URL, or raise DatabaseURLError saying why not
    (naming `setting`, the setting `raw` came from).

    `postgresql://` and `postgres://` are switched to asyncpg; libpq's `sslmode` query
    parameter becomes asyncpg's `ssl`.
    """
    try:
        url: URL = make_url(raw.strip())
    except ArgumentError:
        raise DatabaseURLError(
            f"{setting} {raw!r} is not a database URL; "
            "write postgresql+asyncpg://USER:PASSWORD@HOST:PORT/DBNAME"
        ) from None
    if "@" in (url.host or ""):
        # `user:p@ss@host`: the URL ends the password at its first "@", so the rest of the
        # password reads as part of the host. Echoing the host would show that secret.
        raise DatabaseURLError(
            f'{setting} has an "@" in its host, so its password probably contains "@": '
            "write each @ in the password as %40 (percent-encoded)"
        )
    backend, _, driver = url.drivername.partition("+")
    if backend in _DRIVERLESS_SCHEMES and driver in ("", "asyncpg"):
        url = url.set(drivername=ASYNC_DRIVER)
    elif backend in _DRIVERLESS_SCHEMES and driver in _SYNC_POSTGRES_DRIVERS:
        raise DatabaseURLError(
            f"{setting} uses the synchronous driver {driver!r}, which would block the event "
            f"loop; write {url.set(drivername=ASYNC_DRIVER).render_as_string(hide_password=True)} "
            "instead (or plain postgresql://, which is switched to asyncpg)"
        )
    elif backend in _DRIVERLESS_SCHEMES and driver == "psycopg":
        # psycopg 3 has an async mode, but this service is built and tested on asyncpg only.
        suggestion = url.set(drivername=ASYNC_DRIVER).render_as_string(hide_password=True)
        raise DatabaseURLError(
            f"{setting} uses the driver 'psycopg'; this service talks to PostgreSQL through "
            f"asyncpg: write {suggestion} instead (or plain postgresql://, which is switched "
            "to asyncpg)"
        )
    elif backend in _DRIVERLESS_SCHEMES:
        raise DatabaseURLError(
            f"{setting} uses the driver {driver!r}; this service talks to PostgreSQL "
            "only through asyncpg: write postgresql+asyncpg://USER:PASSWORD@HOST:PORT/DBNAME"
        )
    else:
        raise DatabaseURLError(
            f"{setting} points at {backend!r}, but this service needs PostgreSQL: write "
            "postgresql+asyncpg://USER:PASSWORD@HOST:PORT/DBNAME, or unset DATABASE_URL to "
            "use the embedded PostgreSQL"
        )
    if "sslmode" in url.query:
        query = dict(url.query)
        sslmode = query.pop("sslmode")
        query["ssl"] = sslmode
        url = url.set(query=query)
    return url.render_as_string(hide_password=False)


REDIS_OFF = "off"
_REDIS_SCHEMES = ("redis", "rediss", "unix")
# No glob characters (the cache's commands match keys by prefix) and nothing to quote.
_CACHE_PREFIX = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")


def check_redis_url(raw: str) -> str | None:
    """`raw` as TASKMANAGER_REDIS_URL means it: None when blank, `off`, or a Redis URL;
    anything else raises ValueError naming the setting and what to write."""
    value = raw.strip()
    if not value:
        return None
    if value.lower() == REDIS_OFF:
        return REDIS_OFF
    scheme, separator, rest = value.partition("://")
    if not separator or scheme.lower() not in _REDIS_SCHEMES or not rest.strip("/"):
        shown = value if "@" not in value else value.rpartition("@")[2]  # no password
        raise ValueError(
            f"TASKMANAGER_REDIS_URL {shown!r} is not a Redis URL: write "
            "redis://HOST:PORT/DB, rediss://HOST:PORT/DB (TLS), unix:///PATH/TO/redis.sock, "
            "or off (no cache)"
        )
    return value


# What development (the embedded database) may reach beside the public internet: a webhook
# receiver or a calendar server on this machine.
DEVELOPMENT_NETWORKS = ("127.0.0.1/32", "::1/128")


class Settings(BaseSettings):
    """Everything the service can be told, with the defaults `make run` uses."""

    model_config = SettingsConfigDict(
        env_prefix="TASKMANAGER_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
    )

    database_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("DATABASE_URL", "TASKMANAGER_DATABASE_URL"),
        description="PostgreSQL URL; unset means the embedded server under data_dir.",
    )
    owner_database_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("OWNER_DATABASE_URL", "TASKMANAGER_OWNER_DATABASE_URL"),
        description="The login that owns the tables, for migrations (`taskmanager db "
        "upgrade`; `serve` migrates with it when set). DATABASE_URL is then the service's "
        "own login, which owns nothing. Ignored without DATABASE_URL (the embedded server "
        "makes both).",
    )
    data_dir: Path = Field(
        default=Path(".taskmanager/pgdata"),
        description="Where the embedded PostgreSQL keeps its files (kept across restarts).",
    )
    # A fixed pool: overflow connections are closed as soon as they are returned while the
    # pool is full, so under a steady load above pool_size they are opened and closed again
    # and again (each with a full login: a SCRAM handshake over TCP). Measured in bench/.
    pool_size: int = Field(default=20, ge=1, le=1000)
    max_overflow: int = Field(default=0, ge=0, le=1000)
    pool_timeout: float = Field(default=10.0, gt=0, description="Seconds to wait for a connection.")
    # An offset page is found by reading and skipping every row before it: at a million
    # tasks a page 500,000 rows deep held its connection for seconds. Deeper pages are
    # read by cursor, which costs the same at any depth.
    max_offset: int = Field(
        default=10_000,
        ge=0,
        description="The largest `offset` GET /tasks accepts; deeper is 422 (use the cursor "
        "of the Link header).",
    )
    statement_timeout_ms: int = Field(
        default=15_000, ge=0, description="PostgreSQL statement_timeout; 0 disables it."
    )
    connect_timeout: float = Field(default=5.0, gt=0, description="Seconds to open a connection.")
    ready_timeout: float = Field(default=2.0, gt=0, description="Seconds /health/ready may take.")
    max_body_bytes: int = Field(
        default=1024 * 1024, ge=1, description="Larger request bodies are refused with 413."
    )
    idempotency_ttl_hours: float = Field(
        default=24.0, gt=0, description="How long an Idempotency-Key is remembered."
    )
    pgbouncer: bool = Field(
        default=False,
        description="DATABASE_URL points at PgBouncer in transaction pooling mode: no "
        "prepared-statement caching, no per-connection startup settings.",
    )
    gc_threshold: int = Field(
        default=10_000,
        ge=0,
        description="Python's gen-0 garbage collection threshold for the server process, "
        "with start-up objects frozen; 0 leaves Python's collector untouched.",
    )
    jwt_secret: SecretStr | None = Field(
        default=None,
        description="The key access tokens are signed with (at least 32 bytes); unset means "
        "a random one generated once and kept in secret_file.",
    )
    secret_file: Path | None = Field(
        default=None,
        description="Where the generated signing key is kept (mode 0600); unset means "
        "`jwt-secret` beside data_dir.",
    )
    access_token_minutes: float = Field(default=15.0, gt=0, le=24 * 60)
    session_days: float = Field(
        default=30.0, gt=0, description="A login's refresh tokens work this long at most."
    )
    # Password attempts (logins, and password changes naming the current password), each
    # counted before the password is checked; the policy is in docs/security.md.
    login_failures_per_account_and_address: int = Field(
        default=5,
        ge=1,
        description="Password attempts at one account from one client address per window.",
    )
    login_failures_per_address: int = Field(
        default=50,
        ge=1,
        description="Password attempts from one client address (an IPv6 /64) per window, at "
        "any accounts.",
    )
    login_failures_per_account: int = Field(
        default=10,
        ge=1,
        description="Password attempts at one account per window from all the addresses it "
        "has not logged in from lately, together (a botnet's guesses).",
    )
    login_failures_per_account_per_day: int = Field(
        default=100,
        ge=1,
        description="The same, per 24 hours: bounds a slow, long guessing campaign.",
    )
    login_window_seconds: int = Field(default=900, ge=1)
    login_known_address_days: float = Field(
        default=30.0,
        ge=0,
        description="After a successful login, attempts at that account from that address "
        "are exempt from the two account-wide limits for this long; 0 turns it off.",
    )
    # Registration hashes a password (argon2: tens of ms of CPU), so a flood of it slows
    # every other request; counted before hashing.
    registrations_per_address: int = Field(
        default=10, ge=1, description="Registrations from one client address per window."
    )
    registration_window_seconds: int = Field(default=3600, ge=1)
    # A short window: a fixed window lets its whole allowance come in one burst, and 10
    # hashings at once are under half a second of CPU (60 at once held a login up for 3 s).
    registrations_total: int = Field(
        default=10,
        ge=1,
        description="Registrations from all clients together per registrations_total_window.",
    )
    registrations_total_window_seconds: int = Field(default=10, ge=1)
    # Anyone may add an account to a workspace they own, so without a cap one person could
    # put another in tens of thousands: every request of that account then carries them all
    # (its scope, each row-level policy's array). 100 is far more than a person works in;
    # 500 keeps a workspace's member list, which GET /workspaces/{id} answers whole, small.
    max_workspaces_per_user: int = Field(
        default=100,
        ge=1,
        description="Workspaces an account may belong to (its personal one included); "
        "creating or joining one more is 409.",
    )
    max_members_per_workspace: int = Field(
        default=500, ge=1, description="Members a workspace may have; adding one more is 409."
    )
    # Invitations (taskmanager.accounts.invitations).
    invitation_days: float = Field(
        default=7.0, gt=0, le=30, description="How long a mailed invitation can be accepted."
    )
    invitation_max_sends: int = Field(
        default=3,
        ge=1,
        le=20,
        description="How many times an invitation may be mailed in all (the first mail "
        "included); resending one more is 409.",
    )
    invitation_resend_minutes: float = Field(
        default=10.0,
        ge=0,
        le=24 * 60,
        description="How long after its last mail an invitation may be mailed again; "
        "sooner is 429 with Retry-After.",
    )
    max_pending_invitations_per_workspace: int = Field(
        default=100,
        ge=1,
        description="Open, unexpired invitations a workspace may have; inviting one more is 409.",
    )
    invitation_retention_days: int = Field(
        default=30,
        ge=1,
        description="How long an invitation is kept once accepted, declined, revoked or "
        "expired (its answer stays precise until then): `taskmanager db purge-mail-tokens` "
        "deletes older ones.",
    )
    activity_retention_days: int = Field(
        default=365,
        ge=1,
        description="How long the activity log keeps a change: `taskmanager db "
        "purge-activity` deletes older ones.",
    )
    # Mail (taskmanager.mail): links point at public_base_url; sent over SMTP when smtp_host
    # is set, else written as .eml files under mail_dir for a developer to open.
    public_base_url: str = Field(
        default="http://127.0.0.1:8000",
        description="The service's address as its users reach it: mailed links start with it.",
    )
    mail_from: str = Field(
        default="taskmanager <taskmanager@localhost>",
        description="The From of every mail the service sends.",
    )
    smtp_host: str | None = Field(
        default=None,
        description="The SMTP server mail is sent through; unset means every mail is "
        "written as an .eml file under mail_dir instead.",
    )
    smtp_port: int = Field(default=587, ge=1, le=65535)
    smtp_starttls: bool = Field(
        default=True, description="Upgrade the SMTP connection with STARTTLS (required)."
    )
    smtp_username: str | None = Field(default=None, description="SMTP login, if any.")
    smtp_password: SecretStr | None = Field(default=None, description="SMTP password, if any.")
    smtp_timeout: float = Field(
        default=30.0, gt=0, le=600, description="Seconds one SMTP conversation may take."
    )
    mail_dir: Path | None = Field(
        default=None,
        description="Where mail is written without smtp_host; unset means `mail` beside data_dir.",
    )
    email_verification_hours: float = Field(
        default=48.0, gt=0, le=720, description="How long a mailed verification link works."
    )
    password_reset_minutes: float = Field(
        default=30.0, ge=1, le=24 * 60, description="How long a mailed password-reset link works."
    )
    # Mails anyone can have sent (a password reset for any address) or an account can ask
    # for again (a verification link): counted like password attempts, before any work.
    mails_per_account: int = Field(
        default=5,
        ge=1,
        description="Password-reset and verification mails to one account per mail window.",
    )
    mails_per_address: int = Field(
        default=20,
        ge=1,
        description="Password-reset requests and verification resends from one client "
        "address per mail window.",
    )
    mail_window_seconds: int = Field(default=3600, ge=1)
    # The outbox worker (taskmanager.outbox): woken after a commit that recorded a row,
    # and polling for rows left by a crash or another process.
    outbox_poll_seconds: float = Field(
        default=5.0, gt=0, le=3600, description="Seconds between looks at the outbox."
    )
    outbox_retry_seconds: float = Field(
        default=30.0, gt=0, description="Wait before the first retry; doubled for each next."
    )
    outbox_retry_max_seconds: float = Field(
        default=3600.0, gt=0, description="The longest wait between two attempts."
    )
    outbox_max_attempts: int = Field(
        default=10, ge=1, le=1000, description="Attempts at one outbox row before giving up."
    )
    # Webhooks out (taskmanager.outbox.webhooks): sent by the delivery worker after commit.
    in_process_worker: bool = Field(
        default=True,
        description="`serve` (and the app) runs the outbox and webhook workers in-process; "
        "false when `taskmanager worker` processes do it.",
    )
    webhook_retry_schedule: list[float] = Field(
        default_factory=lambda: [0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0],
        min_length=1,
        max_length=50,
        description="Seconds to wait before each attempt at a webhook delivery (the first "
        "usually 0), Standard Webhooks' schedule by default; its length is the number of "
        "attempts.",
    )
    webhook_retry_jitter: float = Field(
        default=0.1, ge=0, lt=1, description="Each wait is spread randomly by this fraction."
    )
    webhook_timeout_seconds: float = Field(
        default=10.0, gt=0, le=120, description="Seconds one webhook request may take in all."
    )
    webhook_poll_seconds: float = Field(
        default=5.0, gt=0, le=3600, description="Seconds between looks for due deliveries."
    )
    webhook_disable_after_days: float = Field(
        default=5.0,
        gt=0,
        description="An endpoint every delivery to which failed for this long is disabled "
        "and its workspace's owners and admins are mailed.",
    )
    webhook_concurrency_per_host: int = Field(
        default=10,
        ge=1,
        le=100,
        description="Webhook requests one worker has in flight at once to one host.",
    )
    webhook_rotation_overlap_hours: float = Field(
        default=24.0,
        ge=0,
        le=48,
        description="After a secret rotation, the old secret signs too for this long (at most "
        "48 hours, as PostgreSQL bounds it).",
    )
    max_webhooks_per_workspace: int = Field(
        default=20, ge=1, description="Webhook endpoints a workspace may have; one more is 409."
    )
    max_access_tokens_per_user: int = Field(
        default=50,
        ge=1,
        description="Personal access tokens an account may have that have not expired; "
        "making one more is 409.",
    )
    # Calendar feeds (GET /calendar/{secret}.ics; taskmanager.feeds).
    max_calendar_feeds_per_user: int = Field(
        default=20, ge=1, description="Calendar feeds an account may have; one more is 409."
    )
    calendar_feed_past_days: int = Field(
        default=90,
        ge=0,
        le=3650,
        description="A feed shows the tasks due at most this many days ago, and every later one.",
    )
    calendar_feed_max_tasks: int = Field(
        default=1000,
        ge=1,
        le=20_000,
        description="The most tasks one feed shows (the soonest due first).",
    )
    calendar_feed_refresh_minutes: int = Field(
        default=60,
        ge=5,
        le=24 * 60,
        description="How often a feed asks calendar apps to fetch it again "
        "(REFRESH-INTERVAL, X-PUBLISHED-TTL, Cache-Control max-age).",
    )
    calendar_alarm_minutes: int = Field(
        default=60,
        ge=0,
        le=7 * 24 * 60,
        description="The alarm of an open task, this many minutes before it is due; 0: none.",
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description='Origins browsers may call the API from, e.g. ["https://app.example"]; '
        "none by default.",
    )
    sql_echo: bool = False
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="`json`: one JSON object per log line (request id, user id, route, "
        "status, duration); `text`: one readable line.",
    )
    slow_statement_ms: float = Field(
        default=500.0,
        ge=0,
        description="SQL statements slower than this are logged (the statement, never its "
        "parameters) with the request id that ran them; 0 disables it.",
    )
    metrics_token: SecretStr | None = Field(
        default=None,
        description="Unset: no /metrics (404). Set: /metrics answers to "
        "`Authorization: Bearer <this token>` only.",
    )

    # Requests to addresses users give (webhooks, calendars): taskmanager.integrations.outbound.
    # Unset: development's defaults with the embedded database (`make run`: a receiver or an
    # .ics server on this machine is reachable over plain http), a deployment's without.
    outbound_allow_http: bool | None = Field(
        default=None,
        description="Allow plain http:// URLs for webhooks and calendars. Unset: allowed "
        "with the embedded database (development), https:// only with DATABASE_URL.",
    )
    outbound_allowed_networks: list[str] | None = Field(
        default=None,
        description="Networks webhooks and calendars may reach although they are not public, "
        'e.g. ["127.0.0.1/32"]. Unset: this machine\'s loopback addresses with the embedded '
        "database (development), none with DATABASE_URL.",
    )

    # The cache (taskmanager.cache): optional, never a single point of failure.
    redis_url: str | None = Field(
        default=None,
        description="Unset: automatic (the embedded default starts a local Redis when "
        "redis-server is installed; with DATABASE_URL set, no cache). `off`: no cache. "
        "Else a redis://, rediss:// or unix:// URL.",
    )
    # Redis answers in well under a millisecond; what makes an answer late is a busy event
    # loop (a full load of requests), which must not pass for Redis failing.
    cache_timeout_ms: int = Field(
        default=250,
        ge=1,
        le=5000,
        description="Milliseconds any one cache command may take; slower counts as a miss.",
    )
    cache_ttl_seconds: int = Field(
        default=300, ge=1, le=86_400, description="The longest any cached entry lives."
    )
    cache_prefix: str | None = Field(
        default=None,
        description="The namespace of every cache key; unset means one derived from the "
        "database (host, port, name), so deployments sharing a Redis never share keys.",
    )

    # Subscribed calendars (taskmanager.integrations.subscribed_calendars) and GET /agenda.
    calendar_fetch_timeout_seconds: float = Field(
        default=10.0, gt=0, le=120, description="Seconds one fetch of a calendar feed may take."
    )
    calendar_max_bytes: int = Field(
        default=2_000_000,
        ge=1_000,
        le=50_000_000,
        description="The largest calendar body read; a larger one is a failed fetch.",
    )
    calendar_refresh_seconds: int = Field(
        default=900,
        ge=1,
        le=86_400,
        description="How old a feed's copy may be before it is fetched again (by the "
        "background refresher, or by an agenda that finds it so).",
    )
    calendar_refresh_poll_seconds: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        description="Seconds between the background refresher's looks for feeds due.",
    )
    calendar_agenda_budget_seconds: float = Field(
        default=1.5,
        gt=0,
        le=30,
        description="The longest an agenda waits for feeds; a later one is served stale.",
    )
    calendar_concurrency: int = Field(
        default=8, ge=1, le=100, description="Feeds fetched at once by one process."
    )
    calendar_failures_before_skip: int = Field(
        default=3, ge=1, le=100, description="Failed fetches in a row that open the breaker."
    )
    calendar_skip_seconds: float = Field(
        default=60.0, gt=0, description="The first skip of a failing feed; doubled each time."
    )
    calendar_skip_max_seconds: float = Field(
        default=3600.0, gt=0, description="The longest a failing feed is skipped."
    )
    calendar_max_events: int = Field(
        default=2000, ge=1, le=100_000, description="Occurrences kept of one feed."
    )
    calendar_max_recurrence_steps: int = Field(
        default=100_000,
        ge=1000,
        le=10_000_000,
        description="Steps one recurring series of a subscribed calendar may take to expand "
        "(from its DTSTART to two years ahead); a series past it is skipped and the feed "
        "marked truncated.",
    )
    calendar_manual_refresh_seconds: float = Field(
        default=30.0,
        ge=0,
        le=3600,
        description="The least time between two manual refreshes of one calendar "
        "(per process); a sooner one is 429 with Retry-After.",
    )
    max_calendars_per_workspace: int = Field(
        default=20, ge=1, le=1000, description="Calendar subscriptions one workspace may have."
    )

    @field_validator("database_url", "owner_database_url", mode="before")
    @classmethod
    def _normalize_database_url(cls, value: object, info: ValidationInfo) -> object:
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        if isinstance(value, str):
            owner = info.field_name == "owner_database_url"
            return normalize_database_url(value, "OWNER_DATABASE_URL" if owner else "DATABASE_URL")
        return value

    @field_validator("redis_url", mode="before")
    @classmethod
    def _a_redis_url(cls, value: object) -> object:
        if value is None or not isinstance(value, str):
            return value
        return check_redis_url(value)

    @field_validator("cache_prefix", mode="before")
    @classmethod
    def _a_cache_prefix(cls, value: object) -> object:
        if value is None or not isinstance(value, str):
            return value
        prefix = value.strip().rstrip(":")
        if not prefix:
            return None
        if not _CACHE_PREFIX.fullmatch(prefix):
            raise ValueError(
                f"TASKMANAGER_CACHE_PREFIX {value!r} must be 1 to 64 letters, digits and "
                "the characters . _ - : (e.g. tm-production)"
            )
        return prefix

    @field_validator("outbound_allowed_networks")
    @classmethod
    def _networks(cls, value: list[str] | None) -> list[str] | None:
        for network in value or ():
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ValueError(
                    f"{network!r} is not a network; write e.g. 127.0.0.1/32 or 10.0.0.0/8"
                ) from None
        return value

    @field_validator("jwt_secret")
    @classmethod
    def _long_enough_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().encode()) < MIN_SECRET_BYTES:
            raise ValueError(
                f"TASKMANAGER_JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes; generate "
                "one with: python -c 'import secrets; print(secrets.token_urlsafe(48))'"
            )
        return value

    @field_validator("public_base_url")
    @classmethod
    def _a_web_address(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("metrics_token", "smtp_host", "smtp_password", mode="before")
    @classmethod
    def _blank_token_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _log_level_and_format_case(cls, value: object, info: ValidationInfo) -> object:
        if not isinstance(value, str):
            return value
        return value.upper() if info.field_name == "log_level" else value.lower()

    @property
    def uses_embedded_database(self) -> bool:
        return self.database_url is None

    @property
    def outbound_http_allowed(self) -> bool:
        """Whether webhooks and calendars may use plain http:// (see outbound_allow_http)."""
        if self.outbound_allow_http is None:
            return self.uses_embedded_database
        return self.outbound_allow_http

    @property
    def outbound_networks(self) -> list[str]:
        """The non-public networks webhooks and calendars may reach (see
        outbound_allowed_networks)."""
        if self.outbound_allowed_networks is None:
            return list(DEVELOPMENT_NETWORKS) if self.uses_embedded_database else []
        return self.outbound_allowed_networks

    @property
    def mail_directory(self) -> Path:
        """Where mail goes without an SMTP server (beside the embedded server's data)."""
        return self.mail_dir or self.data_dir.parent / "mail"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()


def load_settings() -> Settings:
    """The settings for a command: on invalid settings, one line per error on stderr and
    exit code 2 instead of a traceback."""
    try:
        return get_settings()
    except ValidationError as exc:
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"]) or "settings"
            message = str(error["msg"]).removeprefix("Value error, ")
            print(f"Configuration error ({field}): {message}", file=sys.stderr)
        raise SystemExit(2) from None
