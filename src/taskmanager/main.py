"""The FastAPI application: create_app() and its lifespan.

The lifespan builds the engine when the app starts and disposes of it when it stops.
With DATABASE_URL unset (running `uvicorn taskmanager.main:app` directly) it also starts
the embedded PostgreSQL and migrates it; `taskmanager serve` does that once, before
starting its workers, and hands them DATABASE_URL. Either way the service's login is
checked before the first request (taskmanager.postgres.deployment): a login that could step around
the row-level policies stops start-up.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import ExitStack, asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.routing import BaseRoute

from taskmanager import __version__
from taskmanager.accounts.agenda import database_persist
from taskmanager.cache.client import CALLER_SECONDS, CacheClient
from taskmanager.cache.namespace import cache_namespace, redis_target, shown_redis_url
from taskmanager.config import Settings, get_settings
from taskmanager.database import (
    create_engine,
    create_read_session_factory,
    create_session_factory,
)
from taskmanager.errors import install_error_handlers
from taskmanager.garbage_collection import tune_garbage_collection
from taskmanager.integrations.outbound import OutboundClient, OutboundPolicy
from taskmanager.integrations.subscribed_calendars import FeedLimits, SubscribedCalendars
from taskmanager.middleware import BodySizeLimitMiddleware, RequestContextMiddleware
from taskmanager.observability.logs import configure_logging, log_slow_statements
from taskmanager.observability.metrics import (
    check_mode,
    forget_pool,
    install_metrics_route,
    instrument_pool,
)
from taskmanager.openapi import build_openapi, install_docs, operation_id
from taskmanager.outbox.workers import BackgroundWorkers
from taskmanager.postgres.deployment import check_service_login_when_reachable
from taskmanager.postgres.logins import database_logins
from taskmanager.routes import (
    access_tokens,
    activity,
    auth,
    calendar_feeds,
    calendars,
    categories,
    health,
    invitations,
    labels,
    tasks,
    users,
    webhooks,
    workspaces,
)
from taskmanager.security.caller_key import CallerKey
from taskmanager.security.mail_tokens import MailTokenKey
from taskmanager.security.passwords import prepare_decoy_hash
from taskmanager.security.signing_key import signing_key
from taskmanager.security.webhook_secrets import WebhookSecretKey

log = logging.getLogger(__name__)

DESCRIPTION = """
A task manager on PostgreSQL: accounts, workspaces, tasks, categories, health checks.

Register (`POST /auth/register`; the mailed link verifies your address), then press
**Authorize** and log in with your email and password. Every task and category belongs to a
workspace; you see those of the workspaces you belong to, and an id that is not yours is 404.

Every error is `application/problem+json` (RFC 9457). Every response carries
`X-Request-ID`. Writes are committed before the response is sent.
"""


def cache_client(settings: Settings) -> CacheClient | None:
    """The cache's client, or None: the service runs uncached (taskmanager.cache)."""
    target = redis_target(settings)
    if target.url is None:
        log.info("cache: off: %s", target.reason)
        return None
    log.info("cache: Redis at %s", shown_redis_url(target.url))
    return CacheClient.connect(
        target.url,
        cache_namespace(settings),
        timeout_ms=settings.cache_timeout_ms,
        ttl_seconds=settings.cache_ttl_seconds,
        caller_seconds=CALLER_SECONDS,
    )


def feed_limits(settings: Settings) -> FeedLimits:
    """What fetching a subscribed calendar may take, from the settings."""
    return FeedLimits(
        fetch_timeout_seconds=settings.calendar_fetch_timeout_seconds,
        max_bytes=settings.calendar_max_bytes,
        refresh_seconds=settings.calendar_refresh_seconds,
        concurrency=settings.calendar_concurrency,
        failures_before_skip=settings.calendar_failures_before_skip,
        skip_seconds=settings.calendar_skip_seconds,
        skip_max_seconds=settings.calendar_skip_max_seconds,
        max_events=settings.calendar_max_events,
        max_recurrence_steps=settings.calendar_max_recurrence_steps,
        manual_refresh_seconds=settings.calendar_manual_refresh_seconds,
        agenda_budget_seconds=settings.calendar_agenda_budget_seconds,
    )


def subscribed_calendars(
    settings: Settings,
    outbound: OutboundClient,
    cache: CacheClient | None,
    session_factory: async_sessionmaker[AsyncSession],
    key: CallerKey,
) -> SubscribedCalendars:
    """The feeds of subscribed calendars: fetched with the process's outbound client,
    kept in the cache when there is one and in their subscriptions' rows."""
    return SubscribedCalendars(
        outbound,
        feed_limits(settings),
        cache=cache,
        persist=database_persist(session_factory, key),
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the application. Nothing connects to the database until the app starts."""
    settings = settings or get_settings()
    check_mode()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Here, so every worker process gets it.
        configure_logging(settings.log_level, settings.log_format)
        with ExitStack() as stack:
            # Starting the embedded server and migrating it block (subprocesses, their own
            # event loop): keep them off this loop.
            # No connection check: an app whose database is down still starts, answers 503
            # and reports it on /health/ready until the database is back.
            logins = await asyncio.to_thread(
                stack.enter_context, database_logins(settings, check=False)
            )
            app.state.signing_key = await asyncio.to_thread(signing_key, settings)
            app.state.caller_key = key = CallerKey(app.state.signing_key)
            # The key of mailed links' tokens: the routes that mail them and the outbox
            # worker that writes them into the mails derive them alike.
            app.state.mail_token_key = MailTokenKey(app.state.signing_key)
            # The key webhook signing secrets are derived with (routes show a secret once,
            # the delivery worker derives it again for each send).
            app.state.webhook_secret_key = WebhookSecretKey(app.state.signing_key)
            # The decoy hash an unknown email is checked against, made now rather than by
            # the first such login (on the event loop, and twice as slow as the others).
            await asyncio.to_thread(prepare_decoy_hash)
            if settings.uses_embedded_database:
                # Imported here: a server given DATABASE_URL (every `serve` worker) never
                # migrates, so it need not import Alembic.
                from taskmanager.postgres.migrate import upgrade_deployment

                await asyncio.to_thread(upgrade_deployment, logins, key)
            engine = create_engine(settings, logins.service)
            await check_service_login_when_reachable(engine, key)
            instrument_pool(engine, settings.pool_size)
            stack.callback(forget_pool, engine, settings.pool_size)
            log_slow_statements(engine, settings.slow_statement_ms)
            app.state.engine = engine
            app.state.async_session_factory = create_session_factory(engine)
            app.state.read_session_factory = create_read_session_factory(engine)
            app.state.cache = cache_client(settings)
            if app.state.cache is not None:
                # A worker that died between a commit and its invalidation left entries
                # stale; a new epoch voids them (and any of a release before this one).
                await app.state.cache.flush()
            # One client for every request to an outside address (webhooks, calendars):
            # its pool keeps their connections open between requests.
            app.state.outbound = OutboundClient(
                OutboundPolicy.from_settings(settings), user_agent=f"taskmanager/{__version__}"
            )
            app.state.subscribed_calendars = subscribed_calendars(
                settings,
                app.state.outbound,
                app.state.cache,
                app.state.async_session_factory,
                key,
            )
            workers = BackgroundWorkers.build(
                settings,
                app.state.async_session_factory,
                key,
                app.state.mail_token_key,
                app.state.webhook_secret_key,
                app.state.outbound,
                app.state.subscribed_calendars,
            )
            app.state.outbox_wake = workers.outbox.wake
            tune_garbage_collection(settings.gc_threshold)  # last: everything above stays
            if settings.in_process_worker:
                workers.start(engine, pgbouncer=settings.pgbouncer)
            try:
                yield
            finally:
                await workers.stop()
                await app.state.subscribed_calendars.aclose()
                await app.state.outbound.aclose()
                if app.state.cache is not None:
                    await app.state.cache.close()
                await engine.dispose()
                await asyncio.to_thread(stack.close)

    app = FastAPI(
        title="taskmanager",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        generate_unique_id_function=operation_id,
    )
    app.state.settings = settings
    app.state.cache = None  # until the lifespan connects one
    # Added last = outermost: even a 413 carries X-Request-ID and gets an access log line.
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    if settings.cors_origins:  # none by default: browsers may call only from the same origin
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=[
                "Authorization",
                "Content-Type",
                "If-Match",
                "Idempotency-Key",
                "X-Request-ID",
            ],
            expose_headers=[
                "ETag",
                "Location",
                "X-Total-Count",
                "Link",
                "X-Request-ID",
                "Retry-After",
                "Idempotent-Replayed",
            ],
        )
    app.add_middleware(RequestContextMiddleware)
    install_error_handlers(app)
    documented = _include_routers(app)
    webhooks.document_events(app)
    token = settings.metrics_token
    install_metrics_route(app, token.get_secret_value() if token else None)
    install_docs(app)
    app.openapi = lambda: build_openapi(app, documented(app.routes))  # type: ignore[method-assign]
    return app


# The routers in the order the API document lists their operations ...
ROUTERS = (
    auth.router,
    users.router,
    access_tokens.router,
    workspaces.router,
    invitations.workspace_router,
    invitations.router,
    webhooks.router,
    tasks.router,
    categories.router,
    labels.router,
    activity.router,
    calendar_feeds.router,
    calendars.router,
    calendars.agenda_router,
    health.router,
)
# ... and the ones a request is matched against first: FastAPI tries the routes in order, at
# about 1.5 µs each, and GET /tasks/{id} came 38th (~50 µs of CPU per request). Their paths
# overlap no other router's, so the order changes no answer.
MATCHED_FIRST = (tasks.router,)


def _include_routers(app: FastAPI) -> Callable[[list[BaseRoute]], list[BaseRoute]]:
    """Include ROUTERS, MATCHED_FIRST first; returns what puts the app's routes back in
    the documented order (for the OpenAPI document)."""
    start = len(app.routes)
    spans: dict[int, tuple[int, int]] = {}
    for router in (*MATCHED_FIRST, *(r for r in ROUTERS if r not in MATCHED_FIRST)):
        before = len(app.routes)
        app.include_router(router)
        spans[id(router)] = (before, len(app.routes))
    end = len(app.routes)

    def documented(routes: list[BaseRoute]) -> list[BaseRoute]:
        ordered = [route for r in ROUTERS for route in routes[slice(*spans[id(r)])]]
        return [*routes[:start], *ordered, *routes[end:]]

    return documented


app = create_app()
