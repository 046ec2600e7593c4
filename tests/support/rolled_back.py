"""The app on the test's rolled-back session (lecture 6.3): every request of the client uses
the test's one session, so nothing it writes outlives the test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from ipaddress import ip_network

from fastapi import FastAPI, Request
from httpx import ASGITransport, AsyncClient
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from taskmanager.cache.invalidation import forget_changes, void_after_commit
from taskmanager.database import (
    SESSION_DEPENDENCIES,
    create_read_session_factory,
    create_session_factory,
)
from taskmanager.integrations.outbound import OutboundClient, OutboundPolicy
from taskmanager.integrations.subscribed_calendars import SubscribedCalendars
from taskmanager.main import feed_limits
from taskmanager.security.caller_key import CallerKey
from taskmanager.security.mail_tokens import MailTokenKey
from taskmanager.security.webhook_secrets import WebhookSecretKey
from tests.support.accounts import TEST_SECRET
from tests.support.row_level_security import LEAVE_REQUEST_SCOPE

# Outbound requests from tests reach servers the tests start on this machine.
LOCAL_POLICY = OutboundPolicy(allow_http=True, allowed_networks=(ip_network("127.0.0.1/32"),))
# ASGITransport's client address unless a test gives another.
DEFAULT_CLIENT_ADDRESS = "127.0.0.1"


def rolled_back_client(
    app: FastAPI,
    engine: AsyncEngine,
    db_session: AsyncSession,
    client_address: str = DEFAULT_CLIENT_ADDRESS,
) -> AsyncClient:
    """A client of `app`, connecting from `client_address`, whose session dependencies (the
    writing one and the reading one) both yield `db_session`, committing on success and
    rolling back on error exactly like the real ones; the caller clears
    `app.dependency_overrides` afterwards."""

    async def override_get_async_session(request: Request) -> AsyncIterator[AsyncSession]:
        db_session.expunge_all()  # each request starts with nothing loaded, as in production
        try:
            yield db_session
            await db_session.commit()  # releases the SAVEPOINT; the outer transaction stays
        except Exception:
            forget_changes(db_session)
            await db_session.rollback()  # back to the SAVEPOINT, as a real request would
            raise
        # As the real dependency: what the request changed leaves the cache (when the test
        # turned one on) before the response.
        await void_after_commit(request, db_session)

    real_commit = db_session.commit

    async def commit_ending_the_request_scope() -> None:
        # A real COMMIT ends the transaction's SET LOCAL ROLE and caller setting; releasing
        # the SAVEPOINT keeps them in the outer transaction, so end them first, inside the
        # SAVEPOINT (a later ROLLBACK TO SAVEPOINT must not bring them back). A route that
        # commits early (counting a password attempt) relies on it.
        await db_session.execute(LEAVE_REQUEST_SCOPE)
        await real_commit()

    db_session.commit = commit_ending_the_request_scope  # type: ignore[method-assign]
    for dependency in SESSION_DEPENDENCIES:
        app.dependency_overrides[dependency] = override_get_async_session
    # ASGITransport does not run the lifespan; give /health/ready an engine to ask.
    app.state.engine = engine
    app.state.signing_key = TEST_SECRET
    app.state.caller_key = CallerKey(TEST_SECRET)
    app.state.mail_token_key = MailTokenKey(TEST_SECRET)
    app.state.webhook_secret_key = WebhookSecretKey(TEST_SECRET)
    if getattr(app.state, "outbound", None) is None:  # one per app, as the lifespan's
        app.state.outbound = OutboundClient(LOCAL_POLICY)
    app.state.async_session_factory = create_session_factory(engine)
    app.state.read_session_factory = create_read_session_factory(engine)
    settings = getattr(app.state, "settings", None)  # None: not this project's app
    if settings is not None and getattr(app.state, "subscribed_calendars", None) is None:
        # What the lifespan builds, reaching the test servers on 127.0.0.1; its fetch
        # state is kept in memory only (the test's rows are not committed, so a row of
        # their own would not see them).
        app.state.subscribed_calendars = SubscribedCalendars(
            app.state.outbound, feed_limits(settings)
        )
    transport = ASGITransport(app=app, client=(client_address, 123))
    return AsyncClient(transport=transport, base_url="http://test")
