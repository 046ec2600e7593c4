"""Logging set-up: every line carries the request id of the request that wrote it."""

from __future__ import annotations

import logging
import sys

from taskmanager.middleware import RequestIdLogFilter

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s [%(request_id)s] %(message)s"


def configure_logging(level: str) -> None:
    """Send taskmanager's and uvicorn's logs to stderr in one format, at `level`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(RequestIdLogFilter())
    for name in ("taskmanager", "uvicorn", "uvicorn.error", "sqlalchemy.engine"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler] if name in ("taskmanager", "uvicorn") else []
        logger.propagate = name not in ("taskmanager", "uvicorn")
    logging.getLogger("taskmanager").setLevel(level)
    logging.getLogger("uvicorn").setLevel(level)
    # uvicorn's own access log lacks the request id; ours (taskmanager.access) has it.
    logging.getLogger("uvicorn.access").disabled = True
