"""The app with its own session dependencies on the test database (not the rolled-back
session of the `client` fixture), set up as its lifespan would: for tests about the
sessions themselves. Whatever such a request writes is committed, so these tests only read,
or fail before anything is written."""

from __future__ import annotations

from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from taskmanager.config import Settings
from taskmanager.database import create_read_session_factory, create_session_factory
from taskmanager.main import create_app
from taskmanager.security.caller_key import CallerKey
from taskmanager.security.mail_tokens import MailTokenKey
from tests.support.accounts import TEST_SECRET


def app_with_real_sessions(settings: Settings, engine: AsyncEngine) -> FastAPI:
    app = create_app(settings)
    app.state.engine = engine
    app.state.signing_key = TEST_SECRET
    app.state.caller_key = CallerKey(TEST_SECRET)
    app.state.mail_token_key = MailTokenKey(TEST_SECRET)
    app.state.async_session_factory = create_session_factory(engine)
    app.state.read_session_factory = create_read_session_factory(engine)
    return app
