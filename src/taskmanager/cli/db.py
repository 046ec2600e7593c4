"""`taskmanager db ...`: migrate, inspect, seed and tidy the database."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from taskmanager.cli.cache import void_cache_after
from taskmanager.cli.shared import caller_key, console, in_one_transaction
from taskmanager.config import load_settings
from taskmanager.postgres.logins import database_logins, database_url, owner_url_of

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

db_app = typer.Typer(help="Migrate, inspect and seed the database.", no_args_is_help=True)


@db_app.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
) -> None:
    """Migrate the database up to REVISION (default: head), as the owner of the tables
    (OWNER_DATABASE_URL; the embedded server's owner when DATABASE_URL is unset); at head,
    also install the caller key and check the service's login (DATABASE_URL)."""
    from taskmanager.postgres.deployment import check_service
    from taskmanager.postgres.migrate import reaches_head, upgrade_deployment

    settings = load_settings()
    key = caller_key(settings)
    with database_logins(settings) as logins:
        upgrade_deployment(logins, key, revision)
        void_cache_after(settings, "db upgrade")  # migrations may change what it shows
        if reaches_head(revision):
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

    settings = load_settings()
    with database_logins(settings) as logins:
        downgrade(owner_url_of(logins), revision)
    void_cache_after(settings, "db downgrade")
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
    key = caller_key(settings)
    with migrated(settings) as logins:
        engine = create_engine(settings, logins.service)
        owner = create_engine(settings, owner_url_of(logins))
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
    void_cache_after(settings, "db seed")
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
    key = caller_key(settings)
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


@db_app.command("purge-keys")
def db_purge_keys() -> None:
    """Delete expired Idempotency-Keys (expired ones are also reused in place)."""
    from taskmanager.repositories.idempotency_repository import IdempotencyRepository
    from taskmanager.repositories.user_repository import UserRepository

    settings = load_settings()
    key = caller_key(settings)
    with database_url(settings) as url:

        async def purge(session: AsyncSession) -> int:
            await UserRepository(session).enter(key.entry("maintenance"))
            return await IdempotencyRepository(session).purge_expired()

        purged = in_one_transaction(settings, url, purge)
    console.print(f"purged {purged} expired idempotency keys")


@db_app.command("purge-activity")
def db_purge_activity(
    kept_days: Annotated[
        int | None,
        typer.Option(
            help="Keep this many days of activity (default: TASKMANAGER_ACTIVITY_RETENTION_DAYS).",
            min=1,
        ),
    ] = None,
) -> None:
    """Delete activity log rows older than the retention (the only way rows leave it)."""
    from taskmanager.repositories.activity_repository import purge_activity
    from taskmanager.repositories.user_repository import UserRepository

    settings = load_settings()
    key = caller_key(settings)
    days = settings.activity_retention_days if kept_days is None else kept_days
    with database_url(settings) as url:

        async def purge(session: AsyncSession) -> int:
            await UserRepository(session).enter(key.entry("maintenance"))
            return await purge_activity(session, days)

        purged = in_one_transaction(settings, url, purge)
    console.print(f"purged {purged} activity rows older than {days} days")


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
    from taskmanager.repositories.auth_session_repository import AuthSessionRepository
    from taskmanager.repositories.user_repository import UserRepository

    settings = load_settings()
    key = caller_key(settings)
    with database_url(settings) as url:

        async def purge(session: AsyncSession) -> tuple[int, int]:
            await UserRepository(session).enter(key.entry("maintenance"))
            sessions = await AuthSessionRepository(session).purge_ended(timedelta(days=kept_days))
            return sessions, await purge_expired_counts(session, settings)

        sessions, windows = in_one_transaction(settings, url, purge)
    console.print(
        f"purged {sessions} ended login sessions and {windows} past password-attempt counts"
    )


@db_app.command("purge-mail-tokens")
def db_purge_mail_tokens(
    invitation_days: Annotated[
        int | None,
        typer.Option(
            help="Keep closed or expired invitations this many days (default: "
            "TASKMANAGER_INVITATION_RETENTION_DAYS).",
            min=1,
        ),
    ] = None,
) -> None:
    """Delete mailed account tokens (address verification, password reset) spent or
    expired more than a day ago, and invitations accepted, declined, revoked or expired
    longer ago than the retention (the activity log keeps their history)."""
    from taskmanager.repositories.account_token_repository import AccountTokenRepository
    from taskmanager.repositories.invitation_repository import InvitationRepository
    from taskmanager.repositories.user_repository import UserRepository

    settings = load_settings()
    key = caller_key(settings)
    days = settings.invitation_retention_days if invitation_days is None else invitation_days
    with database_url(settings) as url:

        async def purge(session: AsyncSession) -> tuple[int, int]:
            await UserRepository(session).enter(key.entry("maintenance"))
            tokens = await AccountTokenRepository(session).purge_spent()
            return tokens, await InvitationRepository(session).purge_closed(days)

        tokens, invitations = in_one_transaction(settings, url, purge)
    console.print(
        f"purged {tokens} account tokens spent or expired more than a day ago and "
        f"{invitations} invitations closed or expired more than {days} days ago",
        highlight=False,
    )
