"""The `taskmanager` command: serve the API, migrate and seed the database.

With DATABASE_URL unset every command uses the embedded PostgreSQL under the data
directory, starting it if needed (and stopping it afterwards if it started it).

One module a command group: serve.py, db.py, users.py, cache.py; shared.py holds what they share.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from taskmanager import __version__
from taskmanager.cli.cache import cache_app
from taskmanager.cli.db import db_app
from taskmanager.cli.serve import SERVE_HELP, SERVE_SHORT_HELP, serve
from taskmanager.cli.shared import DATABASE_HELP
from taskmanager.cli.users import users_app
from taskmanager.cli.worker import WORKER_HELP, worker
from taskmanager.extras import missing_requirements
from taskmanager.postgres.logins import DatabaseUnreachableError, OwnerLoginMissingError

app = typer.Typer(
    name="taskmanager",
    help="An async Task Manager REST API on FastAPI, SQLAlchemy 2 and PostgreSQL.\n\n"
    + DATABASE_HELP,
    no_args_is_help=True,
    add_completion=False,
)
app.command(short_help=SERVE_SHORT_HELP, help=SERVE_HELP)(serve)
app.command(
    short_help="Send mail and webhooks, refresh calendars, until stopped.", help=WORKER_HELP
)(worker)
app.add_typer(db_app, name="db")
app.add_typer(users_app, name="users")
app.add_typer(cache_app, name="cache")

DEMO_EXTRA_NEEDED = (
    "taskmanager demo needs the demo extra: `make install-demo` in a checkout, "
    "or pip install 'taskmanager[demo]'"
)


def _register_demo() -> None:
    """`demo ...` when the demo extra is installed; else one line saying how to install it.

    The demonstrations import what only the extra brings (psycopg, matplotlib, httpx), so
    they are not even imported without it: a plain install never shows an ImportError.
    """
    missing = missing_requirements("demo")
    if not missing:
        from taskmanager.demo.cli import demo_app

        app.add_typer(demo_app, name="demo")
        return

    @app.command(
        "demo",
        help="See the lecture's claims happen (needs the demo extra).",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
        add_help_option=False,
    )
    def demo_unavailable() -> None:
        print(f"{DEMO_EXTRA_NEEDED} (missing: {', '.join(missing)})", file=sys.stderr)
        raise typer.Exit(1)


_register_demo()


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"taskmanager {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version_callback, is_eager=True, help="Show the version."
        ),
    ] = False,
) -> None:
    """Serve the API (`serve`) or work on its database (`db ...`)."""


def main() -> None:
    from sqlalchemy.exc import DBAPIError

    from taskmanager.postgres.deployment import DeploymentError
    from taskmanager.postgres.migrate import MigrationError

    try:
        app()
    except (
        DatabaseUnreachableError,
        OwnerLoginMissingError,
        DeploymentError,
        MigrationError,
    ) as exc:
        # Said in one line, without the driver's traceback: it names the server, the
        # database, the user, the cause and what to check.
        print(exc, file=sys.stderr)
        raise SystemExit(1) from None
    except DBAPIError as exc:
        # A statement PostgreSQL refused, in its own words.
        print(f"the database refused: {_first_line(exc.orig)}", file=sys.stderr)
        raise SystemExit(1) from None


def _first_line(error: BaseException | None) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


if __name__ == "__main__":
    main()
