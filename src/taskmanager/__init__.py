"""taskmanager: an async Task Manager REST API on FastAPI, SQLAlchemy 2 and PostgreSQL."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("taskmanager")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"
