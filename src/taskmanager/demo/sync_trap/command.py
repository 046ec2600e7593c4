"""`taskmanager demo sync-trap`: the lecture's sync trap (1.1) and its timeline (1.2), measured.

A real uvicorn server (its own process, on 127.0.0.1) serves the same task-list route three
ways: `async def` + sync Session (the trap), `def` + sync Session (FastAPI's threadpool) and
`async def` + AsyncSession. This process sends each a burst of concurrent requests, plus a
/ping while the burst is in flight, and shows what the event loop did: the lecture's
timeline diagram drawn from measured timestamps (terminal, timeline.png), the raw numbers
(results.json) and, with `--sweep`, where the next bottlenecks are (sweep.png, report.md).

Heavy imports (uvicorn, matplotlib, SQLAlchemy's drivers) happen inside functions so that
`taskmanager --help` stays fast.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from taskmanager.demo.sync_trap.measure import Burst, RunContext, SweepPoint
    from taskmanager.demo.sync_trap.report import VariantSummary
    from taskmanager.demo.sync_trap.server import DemoServer
    from taskmanager.postgres.deployment import DatabaseLogins
    from taskmanager.security.caller_key import CallerKey

DEFAULT_OUT = Path("sync-trap-out")
# With --sweep, one pool for every point: above anyio's 40 threadpool tokens (so the
# threadpool's own limit shows) and below the default sweep's top (so the pool's shows).
DEFAULT_SWEEP_POOL = 50
ANYIO_THREAD_TOKENS = 40  # anyio's default; the server reports the real value
SEED_TASKS = 20
SEED_CATEGORIES = 3
MAX_CONCURRENCY = 500
SETTLE_SECONDS = 0.1  # between bursts, so one burst's tail never overlaps the next


class SyncTrapError(RuntimeError):
    """The demonstration cannot run; the message says why and what to change."""


@dataclass(frozen=True, slots=True)
class SyncTrapOptions:
    concurrency: int = 10
    delay_ms: int = 50
    repeat: int = 3
    pool_size: int | None = None  # None: max(concurrency, 10), or 50 with a sweep
    max_overflow: int = 0
    out_dir: Path = DEFAULT_OUT
    sweep: tuple[int, ...] = ()


@dataclass(slots=True)
class SyncTrapOutcome:
    """What a run measured and where it wrote it."""

    results: dict[str, Any]
    files: dict[str, Path] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DatabaseFacts:
    tasks: int
    seeded: int
    max_connections: int
    available_connections: int


def parse_sweep(raw: str | None) -> tuple[int, ...]:
    """'1,10,50,100' -> (1, 10, 50, 100), sorted, without duplicates."""
    if raw is None or not raw.strip():
        return ()
    try:
        values = sorted({int(part) for part in raw.split(",") if part.strip()})
    except ValueError:
        raise typer.BadParameter(
            f"expected comma-separated integers, got {raw!r}", param_hint="--sweep"
        ) from None
    if not values or values[0] < 1 or values[-1] > MAX_CONCURRENCY:
        raise typer.BadParameter(
            f"each concurrency must be between 1 and {MAX_CONCURRENCY}", param_hint="--sweep"
        )
    return tuple(values)


def connections_needed(pool_total: int, max_concurrency: int) -> int:
    """Connections the demo server may hold: the async engine up to its pool (or the largest
    burst), the sync engine at most one per worker thread (the trap only ever uses one)."""
    return min(pool_total, max_concurrency) + min(pool_total, ANYIO_THREAD_TOKENS, max_concurrency)


def resolve_pool_size(options: SyncTrapOptions, available: int) -> tuple[int, str | None]:
    """The pool size to use, and a note when the default had to shrink to fit the server."""
    largest = max((options.concurrency, *options.sweep))
    if options.pool_size is not None:
        needed = connections_needed(options.pool_size + options.max_overflow, largest)
        if needed > available:
            raise SyncTrapError(
                f"--pool-size {options.pool_size} (+ max_overflow {options.max_overflow}) may "
                f"need {needed} PostgreSQL connections, but the server has {available} free "
                "(max_connections minus those in use); pass a smaller --pool-size"
            )
        return options.pool_size, None
    wanted = DEFAULT_SWEEP_POOL if options.sweep else max(options.concurrency, 10)
    fitting = (
        size
        for size in range(wanted, 0, -1)
        if connections_needed(size + options.max_overflow, largest) <= available
    )
    pool_size = next(fitting, 0)
    if not pool_size:
        raise SyncTrapError(
            f"PostgreSQL has only {available} free connections; the demo needs at least "
            f"{connections_needed(1 + options.max_overflow, largest)}"
        )
    if pool_size == wanted:
        return pool_size, None
    return pool_size, (
        f"pool_size {pool_size} instead of {wanted}: PostgreSQL has {available} free "
        "connections and the sync engine may hold up to one per worker thread too"
    )


async def _prepare_database(logins: DatabaseLogins, key: CallerKey) -> DatabaseFacts:
    """Seed a few tasks if there are none (so the list query returns rows) and count the
    connections the server can still accept."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy.pool import NullPool

    from taskmanager.seed import seed

    engine = create_async_engine(demo_url(logins), poolclass=NullPool)
    service = create_async_engine(logins.service, poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            tasks = int((await connection.execute(text("SELECT count(*) FROM tasks"))).scalar_one())
        seeded = (await seed(service, key, SEED_TASKS, SEED_CATEGORIES)).tasks if tasks == 0 else 0
        async with engine.connect() as connection:
            query = (
                "SELECT current_setting('max_connections')::int,"
                " current_setting('superuser_reserved_connections')::int,"
                " (SELECT rolsuper FROM pg_roles WHERE rolname = current_user),"
                " (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')"
            )
            max_connections, reserved, superuser, in_use = (
                await connection.execute(text(query))
            ).one()
    finally:
        await engine.dispose()
        await service.dispose()
    # Superusers may also use the reserved connections.
    # `in_use` counts this check's own connection, closed by now: one to spare.
    available = int(max_connections) - int(in_use) - (0 if superuser else int(reserved))
    return DatabaseFacts(tasks + seeded, seeded, int(max_connections), available)


def machine_info() -> dict[str, Any]:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 1
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
    }


async def _measure(
    server: DemoServer,
    options: SyncTrapOptions,
    console: Console,
) -> tuple[dict[str, Any], dict[str, list[Burst]], list[SweepPoint]]:
    """The server's /info, each variant's bursts (one a repeat), and the sweep's points."""
    import asyncio

    from taskmanager.demo.sync_trap import measure
    from taskmanager.demo.sync_trap.measure import VARIANTS, SweepPoint

    await server.wait_ready()
    get = measure.client(server.host, server.port)
    info = (await get(measure.INFO_PATH, 5.0)).body
    delay = options.delay_ms

    async def one_of_each(label: str, index: int, concurrency: int, sweep: bool) -> list[Burst]:
        # Alternate the order so no variant always runs first (or right after the trap).
        order = VARIANTS if index % 2 == 0 else VARIANTS[::-1]
        bursts = {}
        for position, variant in enumerate(order):
            with console.status(f"{label}: {variant.name}"):
                if sweep:  # each sweep point is warmed up at its own concurrency
                    await measure.warm_up(get, variant, concurrency, delay)
                    await asyncio.sleep(SETTLE_SECONDS)
                burst = await measure.burst(get, variant, concurrency, delay)
            burst.repeat, burst.position = None if sweep else index, position
            bursts[variant.name] = burst
            console.print(
                f"[grey50]{label} {variant.name:>10}: slowest {burst.slowest_ms:7.0f} ms, "
                f"/ping {burst.ping_ms:7.1f} ms[/]"
            )
            await asyncio.sleep(SETTLE_SECONDS)
        return [bursts[variant.name] for variant in VARIANTS]

    with console.status("warming up: pools, worker threads, statement cache"):
        for variant in VARIANTS:
            await measure.warm_up(get, variant, options.concurrency, delay)
    repeats = [
        await one_of_each(f"repeat {i + 1}/{options.repeat}", i, options.concurrency, False)
        for i in range(options.repeat)
    ]
    points = [
        SweepPoint(c, {b.variant: b for b in await one_of_each(f"sweep {c:>4}", i, c, True)})
        for i, c in enumerate(options.sweep)
    ]
    runs = {variant.name: [bursts[v] for bursts in repeats] for v, variant in enumerate(VARIANTS)}
    return info, runs, points


def estimated_seconds(options: SyncTrapOptions) -> float:
    """Roughly how long measuring takes: the trap's requests run one after another; every
    other burst (and warm-up) takes a few DB calls plus the pauses between bursts."""
    delay = options.delay_ms / 1000
    trap = delay * (options.concurrency * options.repeat + sum(options.sweep))
    bursts = 3 * (options.repeat + len(options.sweep))  # three variants
    return trap + bursts * (4 * delay + 2 * SETTLE_SECONDS)


def demo_url(logins: DatabaseLogins) -> str:
    """The login the lecture's own code runs as: the embedded server's superuser (row-level
    security does not restrict it, and the lecture has no accounts), else the owner's."""
    url = logins.superuser or logins.owner
    if url is None:
        raise SyncTrapError("the demonstration needs OWNER_DATABASE_URL with DATABASE_URL")
    return url


def run_sync_trap(
    options: SyncTrapOptions,
    logins: DatabaseLogins,
    key: CallerKey,
    *,
    console: Console | None = None,
    database_label: str = "DATABASE_URL",
) -> SyncTrapOutcome:
    """Migrate and seed the database of `logins`, start the demo server, measure the
    three variants, print the report and write results.json, timeline.png, report.md (and
    sweep.png with a sweep) into `options.out_dir`. The server is stopped on every path."""
    import asyncio

    from rich.console import Console

    from taskmanager.demo.sync_trap import report
    from taskmanager.demo.sync_trap.measure import TIMES, VARIANTS, DemoHTTPError, RunContext
    from taskmanager.demo.sync_trap.server import demo_server
    from taskmanager.postgres.migrate import upgrade_deployment

    console = console or Console()
    if not 1 <= options.concurrency <= MAX_CONCURRENCY:
        raise SyncTrapError(f"--concurrency must be between 1 and {MAX_CONCURRENCY}")
    if options.repeat < 1:
        raise SyncTrapError("--repeat must be at least 1")

    upgrade_deployment(logins, key)
    facts = asyncio.run(_prepare_database(logins, key))
    if facts.seeded:
        console.print(f"seeded {facts.seeded} tasks so the list query returns rows")
    pool_size, pool_note = resolve_pool_size(options, facts.available_connections)
    if pool_note:
        console.print(f"[yellow]note:[/] {pool_note}")
    console.print(
        f"[bold]sync trap[/]: {options.concurrency} concurrent requests {TIMES} "
        f"{options.delay_ms} ms DB call, {options.repeat} repeat(s)"
        + (f", sweep {','.join(map(str, options.sweep))}" if options.sweep else "")
        + f"; pool {pool_size + options.max_overflow} connections per engine (pool_size "
        f"{pool_size} + max_overflow {options.max_overflow}); about "
        f"{estimated_seconds(options):.0f} s"
    )
    # A request may wait for a connection for as long as the whole burst takes.
    pool_timeout = 30.0 + max((options.concurrency, *options.sweep)) * options.delay_ms / 1000
    with demo_server(
        demo_url(logins),
        pool_size=pool_size,
        max_overflow=options.max_overflow,
        pool_timeout=pool_timeout,
    ) as server:
        try:
            info, runs, points = asyncio.run(_measure(server, options, console))
        except DemoHTTPError as exc:
            if server.process.poll() is None:
                raise
            raise SyncTrapError(
                f"{exc}\nthe demo server exited with code {server.process.returncode}; "
                f"its output ends with:\n{server.output_tail()}"
            ) from exc

    machine = machine_info()
    context = RunContext(
        concurrency=options.concurrency,
        delay_ms=options.delay_ms,
        repeat=options.repeat,
        pool_size=pool_size,
        max_overflow=options.max_overflow,
        thread_tokens=int(info.get("thread_tokens", ANYIO_THREAD_TOKENS)),
        cpu_count=int(machine["cpus_usable"]),
        event_loop=str(info.get("event_loop", "?")),
    )
    summaries = [report.summarize(variant.name, runs[variant.name]) for variant in VARIANTS]

    console.print()
    report.print_timelines(console, summaries)
    console.print()
    report.print_summary(console, summaries, context)
    for line in report.explain_run(summaries, context):
        console.print(f"• {line}", highlight=False)
    if points:
        console.print()
        report.print_sweep(console, points, context)
        for line in report.explain_sweep(points, context):
            console.print(f"• {line}", highlight=False)

    results: dict[str, Any] = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "parameters": {
            "concurrency": options.concurrency,
            "delay_ms": options.delay_ms,
            "repeat": options.repeat,
            "pool_size": pool_size,
            "max_overflow": options.max_overflow,
            "pool_total": context.pool_total,
            "pool_timeout_s": pool_timeout,
            "sweep": list(options.sweep),
            "variant_orders": [
                [b.variant for b in sorted(bursts, key=lambda b: b.position or 0)]
                for bursts in zip(*runs.values(), strict=True)
            ],
            "ping_sent_after_ms": options.delay_ms / 4,
            "warm_up": "per variant before measuring: one burst (the trap: one request)",
        },
        "clock": "time.monotonic() in both processes (CLOCK_MONOTONIC); ms since burst start",
        "machine": machine,
        "database": {
            "where": database_label,
            "tasks": facts.tasks,
            "seeded_now": facts.seeded,
            "max_connections": facts.max_connections,
        },
        "server": info,
        **report.results_dict(summaries, runs, points, context),
    }
    files = write_files(options.out_dir, results, summaries, points, context, database_label)
    console.print()
    console.print("wrote " + ", ".join(str(path) for path in files.values()))
    return SyncTrapOutcome(results, files)


def write_files(
    out: Path,
    results: dict[str, Any],
    summaries: list[VariantSummary],
    points: list[SweepPoint],
    context: RunContext,
    database_label: str,
) -> dict[str, Path]:
    """results.json, timeline.png, report.md and, with a sweep, sweep.png, in `out`."""
    from taskmanager.demo.sync_trap.plot import write_sweep_png, write_timeline_png
    from taskmanager.demo.sync_trap.report import report_markdown

    out.mkdir(parents=True, exist_ok=True)
    names = ["results.json", "timeline.png", "report.md"] + (["sweep.png"] if points else [])
    files = {name: out / name for name in names}
    write_timeline_png(files["timeline.png"], [s.shown for s in summaries], context)
    if points:
        write_sweep_png(files["sweep.png"], points, context)
    files["results.json"].write_text(json.dumps(results, indent=2) + "\n")
    files["report.md"].write_text(
        report_markdown(summaries, points, context, database=database_label, files=sorted(files))
    )
    return files


def command(
    concurrency: Annotated[
        int, typer.Option(min=1, max=MAX_CONCURRENCY, help="Requests sent at once per burst.")
    ] = 10,
    delay_ms: Annotated[
        int, typer.Option(min=0, max=10_000, help="pg_sleep of each request, in ms.")
    ] = 50,
    repeat: Annotated[
        int, typer.Option(min=1, max=50, help="Bursts per variant (order alternates).")
    ] = 3,
    pool_size: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=500,
            help="pool_size of both engines (default: max(concurrency, 10); 50 with --sweep).",
            show_default=False,
        ),
    ] = None,
    max_overflow: Annotated[
        int, typer.Option(min=0, max=500, help="max_overflow of both engines.")
    ] = 0,
    out: Annotated[
        Path, typer.Option("--out", file_okay=False, help="Directory for the results.")
    ] = DEFAULT_OUT,
    sweep: Annotated[
        str | None,
        typer.Option(
            help="Also run one burst per concurrency in this list, e.g. 1,10,50,100 (sweep.png)."
        ),
    ] = None,
) -> None:
    """Measure the sync trap: the same route as async def + sync Session, def + sync Session
    and async def + AsyncSession, under concurrent load, on a real server."""
    from rich.console import Console

    from taskmanager.config import load_settings
    from taskmanager.demo.sync_trap.measure import DemoHTTPError
    from taskmanager.demo.sync_trap.server import DemoServerError
    from taskmanager.postgres.logins import database_logins
    from taskmanager.security.caller_key import CallerKey
    from taskmanager.security.signing_key import signing_key

    options = SyncTrapOptions(
        concurrency=concurrency,
        delay_ms=delay_ms,
        repeat=repeat,
        pool_size=pool_size,
        max_overflow=max_overflow,
        out_dir=out,
        sweep=parse_sweep(sweep),
    )
    errors = Console(stderr=True)
    settings = load_settings()
    label = (
        f"embedded PostgreSQL ({settings.data_dir})"
        if settings.uses_embedded_database
        else "DATABASE_URL"
    )
    try:
        key = CallerKey(signing_key(settings))
        with database_logins(settings) as logins:
            run_sync_trap(options, logins, key, console=Console(), database_label=label)
    except (SyncTrapError, DemoServerError, DemoHTTPError) as exc:
        errors.print(f"[bold red]sync-trap failed:[/] {exc}", highlight=False)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        errors.print("interrupted; the demo server was stopped")
        raise typer.Exit(130) from None
