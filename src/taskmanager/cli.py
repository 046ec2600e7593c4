"""The `taskmanager` command: serve the API, migrate and seed the database.

With DATABASE_URL unset every command uses the embedded PostgreSQL under the data
directory, starting it if needed (and stopping it afterwards if it started it).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from taskmanager import __version__
from taskmanager.config import Settings, get_settings, load_settings
from taskmanager.extras import missing_requirements
from taskmanager.postgres.logins import (
    DatabaseUnreachableError,
    OwnerLoginMissingError,
    database_logins,
    database_url,
)

if TYPE_CHECKING:
    from taskmanager.postgres.logins import DatabaseLogins
    from taskmanager.security.caller_key import CallerKey

console = Console(stderr=True, soft_wrap=True)

# Where the data lives, said by every help that starts or changes something.
DATABASE_HELP = (
    "The database: DATABASE_URL, the service's login (unset: an embedded PostgreSQL in "
    ".taskmanager/pgdata, started and stopped as needed); OWNER_DATABASE_URL, the login that owns "
    "the tables and migrates them (with DATABASE_URL; the embedded server has both)."
)

app = typer.Typer(
    name="taskmanager",
    help="An async Task Manager REST API on FastAPI, SQLAlchemy 2 and PostgreSQL.\n\n"
    + DATABASE_HELP,
    no_args_is_help=True,
    add_completion=False,
)
db_app = typer.Typer(help="Migrate, inspect and seed the database.", no_args_is_help=True)
users_app = typer.Typer(help="Manage accounts.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(users_app, name="users")

DEMO_EXTRA_NEEDED = "taskmanager demo needs the demo extra: pip install 'taskmanager[demo]'"


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


@app.command(
    short_help="Migrate the database to head, then serve the API.",
    help="Migrate the database to head (as OWNER_DATABASE_URL, when it is set or the "
    "server is the embedded one), then serve the API on HOST:PORT (Ctrl-C or SIGTERM stops "
    "it cleanly).\n\n" + DATABASE_HELP,
)
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=0, max=65535)] = 8000,
    workers: Annotated[int, typer.Option(help="Worker processes.", min=1)] = 1,
    reload: Annotated[bool, typer.Option(help="Restart on code changes (development).")] = False,
) -> None:
    # Before anything imports prometheus_client (taskmanager.observability.metrics does, and
    # the app imports that): the workers write their metrics into this private, empty
    # directory and /metrics adds them up. It is removed when serve stops.
    metrics_dir = tempfile.mkdtemp(prefix="taskmanager-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        from taskmanager.observability.logs import configure_logging

        settings = load_settings()
        configure_logging(settings.log_level, settings.log_format)
        # SIGTERM (systemd, Docker, Kubernetes) must stop as cleanly as Ctrl-C. uvicorn drains
        # requests on either, then re-raises the signal to the handler it found: Python's
        # default one for SIGTERM kills the process there, before `database_url()` stops the
        # embedded PostgreSQL. As KeyboardInterrupt, uvicorn.run returns and that cleanup runs.
        previous_sigterm = signal.signal(signal.SIGTERM, _terminate_like_ctrl_c)
        try:
            _serve(settings, host, port, workers, reload)
        finally:
            signal.signal(signal.SIGTERM, previous_sigterm)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)


def _terminate_like_ctrl_c(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _caller_key(settings: Settings) -> CallerKey:
    """The caller key of the signing key; a bad signing key is one line and exit code 2."""
    from taskmanager.security.caller_key import CallerKey
    from taskmanager.security.signing_key import SigningKeyError, signing_key

    try:
        return CallerKey(signing_key(settings))
    except (SigningKeyError, OSError) as exc:
        console.print(f"[red]Configuration error (signing key): {exc}[/red]", highlight=False)
        raise typer.Exit(2) from None


def _check_port_free(host: str, port: int) -> None:
    """Stop with one line, exit code 1, when `host:port` cannot be listened on: before the
    database is started and migrated, not after (uvicorn would only log it, then stop)."""
    import errno
    import socket

    if port == 0:  # any free port
        return
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        console.print(f"[red]cannot listen on {host}: {exc.strerror}[/red]", highlight=False)
        raise typer.Exit(1) from None
    for family, kind, protocol, _, address in addresses:
        with socket.socket(family, kind, protocol) as probe:
            # As uvicorn binds: a port whose old connections linger (TIME_WAIT) is free.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    message = (
                        f"port {port} on {host} is in use (another server is listening "
                        f"there): pick another with `make run PORT={port + 1}` or "
                        f"`taskmanager serve --port {port + 1}`"
                    )
                else:
                    message = f"cannot listen on {host} port {port}: {exc.strerror}"
                console.print(f"[red]{message}[/red]", highlight=False)
                raise typer.Exit(1) from None


def _serve(settings: Settings, host: str, port: int, workers: int, reload: bool) -> None:
    import uvicorn

    from taskmanager.postgres.deployment import check_service
    from taskmanager.postgres.migrate import upgrade_deployment

    _check_port_free(host, port)
    # Once here, before any worker: a generated key is written once and then read by
    # every worker, and a bad one stops start-up with one line instead of a traceback
    # per worker.
    key = _caller_key(settings)
    with database_logins(settings) as logins:
        if logins.owner is not None:  # the embedded server, or OWNER_DATABASE_URL given
            upgrade_deployment(logins, key)
        # Never serve through a login that could step around the policies.
        check_service(logins.service, key)
        # Workers (and the reloader's child) read their settings from the environment:
        # hand them the service's URL so they share this database instead of starting
        # one, and nothing of the owner's: serving needs none of it.
        os.environ["DATABASE_URL"] = logins.service
        for name in ("OWNER_DATABASE_URL", "TASKMANAGER_OWNER_DATABASE_URL"):
            os.environ.pop(name, None)
        get_settings.cache_clear()  # the in-process worker must read it too
        database = (
            "embedded, " + str(settings.data_dir)
            if settings.uses_embedded_database
            else "DATABASE_URL"
        )
        if settings.log_format == "json":  # every line of the output is a JSON object
            logging.getLogger("taskmanager.cli").info(
                "taskmanager on http://%s:%s (docs: /docs), database: %s", host, port, database
            )
        else:
            console.print(
                f"[bold green]taskmanager[/] on http://{host}:{port}  "
                f"(docs: http://{host}:{port}/docs)  database: {database}"
            )
        uvicorn.run(
            "taskmanager.main:create_app",
            factory=True,
            host=host,
            port=port,
            workers=None if reload else workers,
            reload=reload,
            access_log=False,  # taskmanager.access logs each request with its request id
            log_config=None,
            loop="uvloop",
            http="httptools",
            timeout_graceful_shutdown=10,
        )


@db_app.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
) -> None:
    """Migrate the database up to REVISION (default: head), as the owner of the tables
    (OWNER_DATABASE_URL; the embedded server's owner when DATABASE_URL is unset); at head,
    also install the caller key and check the service's login (DATABASE_URL)."""
    from taskmanager.postgres.deployment import check_service
    from taskmanager.postgres.migrate import heads, preflight, prepare, upgrade

    settings = load_settings()
    key = _caller_key(settings)
    with owner_logins(settings) as logins:
        assert logins.owner is not None
        preflight(logins)
        upgrade(logins.owner, revision)
        if revision in ("head", *heads()):
            prepare(logins, key)
            caller = check_service(logins.service, key)
            console.print(
                f"database upgraded to {revision}; requests run as the caller role {caller}",
                highlight=False,
            )
            return
    console.print(f"database upgraded to {revision}")


@db_app.command("downgrade")
def db_downgrade(
    revision: Annotated[str, typer.Argument(help="Target revision, e.g. -1 or base.")],
) -> None:
    """Migrate the database down to REVISION, as the owner of the tables."""
    from taskmanager.postgres.migrate import downgrade

    with owner_logins(load_settings()) as logins:
        assert logins.owner is not None
        downgrade(logins.owner, revision)
    console.print(f"database downgraded to {revision}")


@db_app.command("current")
def db_current() -> None:
    """Print the revision the database is at."""
    from taskmanager.postgres.migrate import current, heads

    with database_logins(load_settings()) as logins:
        revision = current(logins.owner or logins.service)
    head = heads()
    state = "at head" if revision in head else f"head is {', '.join(head)}"
    typer.echo(f"{revision or 'empty (no migrations applied)'} ({state})")


@db_app.command("seed")
def db_seed(
    tasks: Annotated[int, typer.Option(help="How many tasks to add.", min=0)] = 1000,
    categories: Annotated[int, typer.Option(help="How many categories to ensure.", min=0)] = 10,
    seed_value: Annotated[int, typer.Option("--seed", help="Random seed (repeatable data).")] = 42,
    fresh: Annotated[
        bool,
        typer.Option(
            "--fresh",
            help="Delete the demo account's tasks first (its categories and labels stay); "
            "other accounts are not touched.",
        ),
    ] = False,
) -> None:
    """Add TASKS tasks spread over CATEGORIES categories to the demo account's personal
    workspace (bulk insert, with progress). Each run adds to the tasks already there;
    --fresh starts from none."""
    from taskmanager.database import create_engine
    from taskmanager.postgres.migrate import migrated
    from taskmanager.seed import DEMO_PASSWORD, SeedResult, seed

    settings = load_settings()
    key = _caller_key(settings)
    with migrated(settings) as logins:
        assert logins.owner is not None
        engine = create_engine(settings, logins.service)
        owner = create_engine(settings, logins.owner)
        progress = Progress(
            TextColumn("[bold]seeding tasks"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        )
        started = time.perf_counter()
        with progress:
            bar = progress.add_task("tasks", total=tasks)

            async def run() -> SeedResult:
                try:
                    return await seed(
                        engine,
                        key,
                        tasks,
                        categories,
                        seed_value=seed_value,
                        on_progress=lambda n: progress.advance(bar, n),
                        owner_engine=owner,
                        fresh=fresh,
                    )
                finally:
                    await engine.dispose()
                    await owner.dispose()

            result = asyncio.run(run())
        elapsed = time.perf_counter() - started
    rate = result.tasks / elapsed if elapsed > 0 else float("inf")
    console.print(
        f"seeded {result.tasks:,} tasks over {result.categories} categories "
        f"(with up to 3 of {result.labels} labels each) in {elapsed:.1f}s "
        f"({rate:,.0f} tasks/s), in the personal workspace of {result.email}"
    )
    if fresh:
        console.print(
            f"deleted the demo account's {result.deleted:,} tasks first (--fresh); "
            f"its workspace now holds {result.total:,} tasks",
            highlight=False,
        )
    else:
        console.print(
            f"its workspace now holds {result.total:,} tasks: each db seed adds to the tasks "
            "already there (--fresh deletes the demo account's tasks first)",
            highlight=False,
        )
    password = DEMO_PASSWORD if result.account_created else f"{DEMO_PASSWORD} (unless changed)"
    console.print(
        f"log in as {result.email} with the password {password}:\n"
        "  in the docs at /docs: Authorize, username = the email\n"
        f"  curl -s -X POST http://127.0.0.1:8000/auth/token -d username={result.email} "
        f"-d password={DEMO_PASSWORD}",
        highlight=False,
    )


@db_app.command("explain")
def db_explain(
    email: Annotated[
        str, typer.Option(help="Explain the lists as this account sees them (under RLS).")
    ] = "demo@example.com",
    analyze: Annotated[
        bool,
        typer.Option(
            help="Run each query (read-only, rolled back): actual rows read and milliseconds. "
            "--no-analyze: PostgreSQL's estimates only (rows before LIMIT)."
        ),
    ] = True,
    pairs: Annotated[bool, typer.Option(help="Every two filters together as well.")] = False,
    deep: Annotated[
        bool, typer.Option(help="Pages deep in the list too (10,000 rows in).")
    ] = False,
    sort: Annotated[
        list[str] | None, typer.Option(help="Only this sort order (repeatable).")
    ] = None,
) -> None:
    """Print the plan PostgreSQL chooses for each list query (GET /tasks with each sort
    order and filter) on the current data: which index it reads tasks through, how many
    rows, and its cost. The lecture's Week 7, made visible."""
    from rich.table import Table

    from taskmanager.database import create_engine
    from taskmanager.explain import PAGES, NoSuchAccountError, Plan, explain_list_queries
    from taskmanager.repositories.task_queries.sorts import SORTS

    unknown = sorted(set(sort or ()) - set(SORTS))
    if unknown:
        known = ", ".join(SORTS)
        console.print(f"[red]no sort order {', '.join(unknown)}; there are: {known}[/red]")
        raise typer.Exit(2)
    settings = load_settings()
    key = _caller_key(settings)
    table = Table(title="GET /tasks: the plan of each list query (tasks are read through ...)")
    rows = "rows read" if analyze else "rows (est.)"
    for column in ("query", "page read by", rows, "count read by", "cost"):
        table.add_column(column, justify="right" if column in (rows, "cost") else "left")
    if analyze:
        table.add_column("ms", justify="right")

    def shown(plan: Plan, part: str) -> str:
        reads = plan.part(part)
        return "; ".join(f"{r.node}" + (f" on {r.index}" if r.index else "") for r in reads)

    def add(plan: Plan) -> None:
        row = [
            plan.query.label,
            shown(plan, "page"),
            f"{plan.rows_read('page'):,.0f}",
            shown(plan, "count") or "(not counted)",
            f"{plan.cost:,.0f}",
        ]
        if analyze:
            row.append(f"{plan.milliseconds or 0:.1f}")
        table.add_row(*row, style="red" if plan.sequential else None)

    with database_url(settings) as url:

        async def run() -> list[Plan]:
            engine = create_engine(settings, url)
            try:
                return await explain_list_queries(
                    engine,
                    key,
                    email,
                    analyze=analyze,
                    pairs=pairs,
                    pages=PAGES if deep else ("first",),
                    sorts=sort,
                    on_plan=add,
                )
            finally:
                await engine.dispose()

        try:
            plans = asyncio.run(run())
        except NoSuchAccountError:
            console.print(
                f"[red]no account {email}: `taskmanager db seed` makes the demo account "
                "and its tasks, or pass --email[/red]"
            )
            raise typer.Exit(1) from None
    # Wide enough for index names even when printed to a file or a pipe (80 columns there).
    Console(width=max(console.width, 160)).print(table)
    sequential = sum(plan.sequential for plan in plans)
    console.print(
        f"{len(plans)} plans; {sequential} read tasks sequentially (red)"
        + (", estimated rows" if not analyze else ", actual rows"),
        highlight=False,
    )


@users_app.command("create")
def users_create(
    email: Annotated[str, typer.Argument(help="The account's email (the login name).")],
    display_name: Annotated[
        str | None, typer.Option("--name", help="Display name (default: the email's local part).")
    ] = None,
) -> None:
    """Create an account with its personal workspace. The email is checked first (valid,
    not taken); then the password is prompted for (twice), never echoed, never logged,
    never taken from the command line. The first account made this way also owns the tasks
    and categories from before accounts existed."""
    from pydantic import TypeAdapter, ValidationError

    from taskmanager.accounts.callers import account_id
    from taskmanager.accounts.registration import register_account
    from taskmanager.database import create_engine, create_session_factory
    from taskmanager.schemas import DisplayName, Email, RegisterRequest

    def refuse(exc: ValidationError, field: str | None = None) -> NoReturn:
        for error in exc.errors(include_input=False):
            where = ".".join(str(part) for part in error["loc"]) or field
            console.print(f"[red]{where}: {error['msg']}[/red]", highlight=False)
        raise typer.Exit(2)

    # Before the password is asked for: an email that cannot be an account's.
    try:
        TypeAdapter(Email).validate_python(email)
    except ValidationError as exc:
        refuse(exc, "email")
    if display_name is not None:
        try:
            TypeAdapter(DisplayName).validate_python(display_name)
        except ValidationError as exc:
            refuse(exc, "display_name")
    settings = load_settings()
    key = _caller_key(settings)
    with database_url(settings) as url:

        async def taken() -> bool:
            engine = create_engine(settings, url)
            try:
                async with create_session_factory(engine)() as session, session.begin():
                    return await account_id(session, key, email) is not None
            finally:
                await engine.dispose()

        if asyncio.run(taken()):
            _account_exists(email)
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
        try:
            account = TypeAdapter(RegisterRequest).validate_python(
                {"email": email, "password": password, "display_name": display_name}
            )
        except ValidationError as exc:
            refuse(exc)

        async def run() -> int | None:
            from sqlalchemy.exc import IntegrityError

            engine = create_engine(settings, url)
            try:
                async with create_session_factory(engine)() as session, session.begin():
                    user = await register_account(
                        session,
                        key,
                        account.email,
                        account.password,
                        account.display_name,
                        claim_unowned=True,
                    )
                    return user.id
            except IntegrityError:  # made meanwhile, by someone else
                return None
            finally:
                await engine.dispose()

        user_id = asyncio.run(run())
    if user_id is None:
        _account_exists(account.email)
    console.print(f"created account {user_id} for {account.email}", highlight=False)


def _account_exists(email: str) -> NoReturn:
    console.print(f"[red]an account with the email {email} exists already[/red]")
    raise typer.Exit(1)


@db_app.command("purge-keys")
def db_purge_keys() -> None:
    """Delete expired Idempotency-Keys (expired ones are also reused in place)."""
    from taskmanager.database import create_engine, create_session_factory
    from taskmanager.repositories.idempotency_repository import IdempotencyRepository
    from taskmanager.repositories.user_repository import UserRepository

    settings = load_settings()
    key = _caller_key(settings)
    with database_url(settings) as url:

        async def run() -> int:
            engine = create_engine(settings, url)
            try:
                async with create_session_factory(engine)() as session, session.begin():
                    await UserRepository(session).enter(key.entry("maintenance"))
                    return await IdempotencyRepository(session).purge_expired()
            finally:
                await engine.dispose()

        purged = asyncio.run(run())
    console.print(f"purged {purged} expired idempotency keys")


@db_app.command("purge-logins")
def db_purge_logins(
    kept_days: Annotated[
        float, typer.Option(help="Keep ended sessions this many days (for auditing).", min=0)
    ] = 7.0,
) -> None:
    """Delete ended login sessions (logged out, revoked or expired, with their refresh
    tokens) and the password-attempt counts of windows that have passed."""
    from datetime import timedelta

    from taskmanager.accounts.login_limits import purge_expired_counts
    from taskmanager.database import create_engine, create_session_factory
    from taskmanager.repositories.auth_session_repository import AuthSessionRepository
    from taskmanager.repositories.user_repository import UserRepository

    settings = load_settings()
    key = _caller_key(settings)
    with database_url(settings) as url:

        async def run() -> tuple[int, int]:
            engine = create_engine(settings, url)
            try:
                async with create_session_factory(engine)() as session, session.begin():
                    await UserRepository(session).enter(key.entry("maintenance"))
                    sessions = await AuthSessionRepository(session).purge_ended(
                        timedelta(days=kept_days)
                    )
                    windows = await purge_expired_counts(session, settings)
                    return sessions, windows
            finally:
                await engine.dispose()

        sessions, windows = asyncio.run(run())
    console.print(
        f"purged {sessions} ended login sessions and {windows} past password-attempt counts"
    )


@contextmanager
def owner_logins(settings: Settings) -> Iterator[DatabaseLogins]:
    """database_logins, for a command that must run as the owner of the tables."""
    with database_logins(settings) as logins:
        if logins.owner is None:
            raise OwnerLoginMissingError(
                "this command runs as the owner of the tables: set OWNER_DATABASE_URL to the "
                "owner's login (DATABASE_URL is the service's, which owns nothing)"
            )
        yield logins


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
