"""What our stack costs, against the limit: one command, ratios measured side by side.

    .venv/bin/python bench/run.py                 # both modes, embedded and TCP, ~10 minutes
    .venv/bin/python bench/run.py --tcp           # PostgreSQL over TCP with a password only
    .venv/bin/python bench/run.py --embedded      # the embedded server (Unix socket) only
    .venv/bin/python bench/run.py --only login    # POST /auth/token and argon2 alone
    .venv/bin/python bench/run.py --vs-floor      # the app (cached and not) against the floor
    .venv/bin/python bench/run.py --floor-table BEFORE.json AFTER.json  # their table, before/after
    .venv/bin/python bench/run.py --layers        # GET /tasks/{id} one layer at a time
    .venv/bin/python bench/run.py --scale 1000000  # the list at 1M tasks against 10k, seed time
    .venv/bin/python bench/run.py --naive         # why the naive route's p99 is seconds

The HTTP benchmark seeds the demo account's workspace, starts ONE uvicorn server with the
real app plus the in-app floors of bench_app.py and one with the separate floor
(floor_app.py: the app's statements on asyncpg, nothing else), logs in, and drives every
scenario with wrk,
every request carrying the access token, alternating the order over at least two rounds
so drift on a noisy machine hits every scenario alike. Each mode has its own PostgreSQL:
the embedded server (Unix socket, no password) or a throwaway server reached over TCP with
a SCRAM password (tests/support/clusters.py); in the TCP mode a second server runs the app with the
old pool defaults (10 + 10 overflow) for comparison. It prints markdown tables and writes
bench/results/latest.{md,json}. Only 127.0.0.1 is targeted and every run is bounded in time.

This module runs the HTTP benchmark's rounds and reads the command line; the rest lives
beside it: scenarios.py (what is driven, against which floor), harness.py (databases,
servers, wrk, the counters), figures.py (runs to medians and pool waits), reports.py (the
markdown tables) and scale.py (`--scale`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import secrets
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]
from figures import Measurement, Summary, run_figures, summarise, summarise_waits
from harness import (
    FLOOR_APP,
    MODES,
    RESULTS_DIR,
    PeakRSS,
    bench_database,
    bench_redis,
    bench_server,
    cache_counters,
    cached_env,
    connections_opened,
    cpu_seconds,
    ensure_wrk,
    floor_env,
    log_in,
    lua_script,
    parse_wrk,
    postgres_cpu_seconds,
    read_pool,
    reset_pool,
    restore_seeded_tasks,
    run_wrk,
    seed_database,
    seeded,
    server_env,
    server_logins,
    warm_cache,
)
from reports import floor_table, layers_markdown, main_tables, naive_markdown
from scenarios import (
    LAYERS,
    NAIVE,
    OLD_POOL,
    SCENARIOS,
    VS_FLOOR,
    Scenario,
    chosen_scenarios,
)

from scale import scale_benchmark


def run_mode(
    mode: str, args: argparse.Namespace, scenarios: list[Scenario], wrk: str
) -> dict[str, Any]:
    """Every scenario of one mode, in alternating rounds; the figures and the tables."""
    from taskmanager.config import Settings

    scenarios = [s for s in scenarios if mode == "tcp" or not s.tcp_only]
    settings = Settings()
    with bench_database(mode) as database:
        print(f"[{mode}] seeding {args.tasks:,} tasks ...", file=sys.stderr)
        secret = secrets.token_urlsafe(48)
        seed_rate = seed_database(database, secret, args.tasks, 20)
        ids = seeded(database.admin_url)
        env = server_env(database, secret, ids)
        if args.naive:
            env["BENCH_NAIVE"] = "1"
        if args.layers:
            env["BENCH_LAYERS"] = "1"
        with ExitStack() as stack:
            scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-")))
            redis = None
            if any(s.server == "cached" for s in scenarios):
                redis = stack.enter_context(bench_redis(scratch / "redis"))
            servers: dict[str, tuple[str, psutil.Process]] = {}
            for name in dict.fromkeys(["app", *(s.server for s in scenarios)]):  # app: log in
                if name == "floor":
                    server = bench_server(
                        database.app_url, args.workers, floor_env(env), app=FLOOR_APP
                    )
                elif name == "cached":
                    assert redis is not None
                    server = bench_server(
                        database.app_url, args.workers, cached_env(env, redis.url)
                    )
                else:
                    extra = {**env, **(OLD_POOL if name == "old-pool" else {})}
                    server = bench_server(database.app_url, args.workers, extra)
                servers[name] = stack.enter_context(server)
            rss = stack.enter_context(PeakRSS(servers["app"][1]))
            token = log_in(servers["app"][0])
            measurements: list[Measurement] = []
            # --naive: the pool's figures and the requests' own latencies, per run
            pool_runs: list[dict[str, Any]] = []
            pools: dict[str, dict[str, Any]] = {
                s.name: {
                    "waits_ms": [],
                    "joins": [],
                    "steals": 0,
                    "steals_by_releasing_client": 0,
                    "overlaps": 0,
                }
                for s in scenarios
            }
            scripts_dir = scratch / "scripts"
            scripts_dir.mkdir()

            def script(scenario: Scenario) -> Path:
                """The scenario's wrk script; for a cache scenario, the cache emptied and
                (every request a hit) warmed first, the ETag in If-None-Match if asked."""
                etag = None
                if scenario.cache is not None:
                    assert redis is not None
                    base = servers[scenario.server][0]
                    etag = warm_cache(base, scenario, token, ids.first_id, ids.last_id, redis.url)
                return lua_script(scenario, ids.first_id, ids.last_id, token, scripts_dir, etag)

            for scenario in scenarios:  # warm-up: caches, prepared statements, pools
                base = servers[scenario.server][0]
                reset_pool(base, scenario)
                connections = scenario.connections or args.connections
                run_wrk(wrk, base, script(scenario), connections, 1)
                read_pool(base, scenario)
            restore_seeded_tasks(database.admin_url, ids.last_id)
            for round_number in range(1, args.rounds + 1):
                order = scenarios if round_number % 2 else list(reversed(scenarios))
                for scenario in order:
                    base, process = servers[scenario.server]
                    connections = scenario.connections or args.connections
                    reset_pool(base, scenario)
                    wrk_script = script(scenario)
                    cached = scenario.server == "cached"
                    counters_before = cache_counters(base) if cached else {}
                    opened_before = connections_opened(base)
                    logins_before = server_logins(database)
                    server_before = cpu_seconds(process)
                    pg_before = postgres_cpu_seconds(database.postmaster_pid)
                    redis_before = redis_cpu_seconds(redis)
                    output = run_wrk(wrk, base, wrk_script, connections, args.duration)
                    server_cpu = cpu_seconds(process) - server_before
                    pg_cpu = postgres_cpu_seconds(database.postmaster_pid) - pg_before
                    redis_cpu = redis_cpu_seconds(redis) - redis_before
                    counters_after = cache_counters(base) if cached else {}
                    logins_after = server_logins(database)
                    opened = connections_opened(base) - opened_before
                    rps, p50, p99, requests, errors = parse_wrk(output)
                    pool = read_pool(base, scenario)
                    if pool is not None:
                        for key, total in pools[scenario.name].items():
                            pools[scenario.name][key] = total + pool[key]
                        figures = run_figures(pool, output, connections, requests, args.duration)
                        pool_runs.append(
                            {
                                "scenario": scenario.name,
                                "round": round_number,
                                **figures,
                                **summarise_waits(pool),
                            }
                        )
                    if scenario.method != "GET":
                        restore_seeded_tasks(database.admin_url, ids.last_id)
                    m = Measurement(
                        scenario.name,
                        round_number,
                        rps,
                        p50,
                        p99,
                        requests,
                        errors,
                        server_cpu_us=1e6 * server_cpu / max(requests, 1),
                        postgres_cpu_us=1e6 * pg_cpu / max(requests, 1),
                        new_connections=opened,
                        server_logins=None
                        if logins_before is None or logins_after is None
                        else logins_after - logins_before,
                        redis_cpu_us=1e6 * redis_cpu / max(requests, 1),
                        cache_hits=_counted(counters_before, counters_after, "hits", scenario),
                        cache_misses=_counted(counters_before, counters_after, "misses", scenario),
                        cache_errors=_counted(counters_before, counters_after, "errors", None),
                    )
                    measurements.append(m)
                    print(
                        f"[{mode}] round {round_number}  {scenario.name:<44} {rps:>8,.0f} req/s  "
                        f"p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  CPU/request: server "
                        f"{m.server_cpu_us:5.0f} us, PostgreSQL {m.postgres_cpu_us:5.0f} us  "
                        f"new connections {opened}"
                        + (f"  {errors} errors" if errors else "")
                        + (
                            f"  Redis {m.redis_cpu_us:4.0f} us, cache hits {m.cache_hits:,} "
                            f"misses {m.cache_misses:,} errors {m.cache_errors}"
                            if m.cache_hits is not None and m.cache_misses is not None
                            else ""
                        ),
                        file=sys.stderr,
                    )
    summaries = summarise(measurements, scenarios)
    meta = {
        "mode": mode,
        "peak_rss_mib": rss.peak / 2**20,
        "pool_size": settings.pool_size,
        "max_overflow": settings.max_overflow,
        "connections": args.connections,
        "seed": seed_rate,
    }
    result: dict[str, Any] = {
        "meta": meta,
        "summary": [asdict(s) for s in summaries],
        "measurements": [asdict(m) for m in measurements],
        "summaries": summaries,
    }
    if args.naive:
        pooled = {name: summarise_waits(pool) for name, pool in pools.items()}
        result |= {"pool_waits": pooled, "pool_runs": pool_runs}
    return result


def redis_cpu_seconds(redis: Any) -> float:
    """CPU time of the bench's Redis (0 without one)."""
    return 0.0 if redis is None else cpu_seconds(psutil.Process(redis.pid))


def _counted(
    before: dict[str, float], after: dict[str, float], what: str, scenario: Scenario | None
) -> int | None:
    """The cached server's hits or misses of the scenario's kind of entry (None: of every
    kind) during a run."""
    if not after:
        return None
    if scenario is None:
        keys = [key for key in after if key.startswith(f"{what}:")]
    else:
        keys = [f"{what}:{'page' if '?' in scenario.path else 'task'}"]
    return round(sum(after.get(key, 0) - before.get(key, 0) for key in keys))


def argon2_timings(samples: int) -> dict[str, dict[str, float]]:
    """One argon2id verification at a time, the service's parameters and pwdlib's defaults
    alternating: wall time and the process's CPU time (argon2 runs its lanes in threads)."""
    from pwdlib import PasswordHash
    from pwdlib.hashers.argon2 import Argon2Hasher

    from taskmanager.security import passwords

    hashers = {
        f"chosen: m={passwords.MEMORY_COST_KIB // 1024} MiB, t={passwords.TIME_COST}, "
        f"p={passwords.PARALLELISM} (taskmanager/security/passwords.py)": passwords.password_hash(),
    }
    default = Argon2Hasher()._hasher
    hashers[
        f"pwdlib's default: m={default.memory_cost // 1024} MiB, t={default.time_cost}, "
        f"p={default.parallelism}"
    ] = PasswordHash.recommended()
    password = "correct horse battery staple"
    stored = {name: hasher.hash(password) for name, hasher in hashers.items()}
    walls: dict[str, list[float]] = {name: [] for name in hashers}
    cpus: dict[str, list[float]] = {name: [] for name in hashers}
    for _ in range(samples):
        for name, hasher in hashers.items():
            usage = resource.getrusage(resource.RUSAGE_SELF)
            started = time.perf_counter()
            assert hasher.verify(password, stored[name])
            walls[name].append(time.perf_counter() - started)
            after = resource.getrusage(resource.RUSAGE_SELF)
            cpus[name].append(after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime)
    return {
        name: {
            "wall_ms": 1000 * statistics.median(walls[name]),
            "cpu_ms": 1000 * statistics.median(cpus[name]),
            "samples": samples,
        }
        for name in hashers
    }


def render_saved(path: Path) -> int:
    """Print the tables of a saved main run (bench/results/latest.json) again."""
    saved = json.loads(path.read_text())
    results = {
        mode: {**r, "summaries": [Summary(**s) for s in r["summary"]]}
        for mode, r in saved["modes"].items()
    }
    print(main_tables(saved["meta"], results, saved["argon2"]))
    return 0


def http_benchmark(args: argparse.Namespace) -> int:
    if args.layers:
        scenarios = LAYERS
    elif args.vs_floor:
        scenarios = VS_FLOOR
    else:
        scenarios = chosen_scenarios(args.only, NAIVE if args.naive else SCENARIOS)
    if not scenarios:
        names = ", ".join(s.name for s in (NAIVE if args.naive else SCENARIOS))
        print(f"--only matched no scenario; the scenarios are: {names}", file=sys.stderr)
        return 2
    if args.tcp:
        modes: tuple[str, ...] = ("tcp",)
    elif args.embedded or args.naive or args.layers:
        modes = ("embedded",)
    else:
        modes = MODES
    wrk = ensure_wrk()
    results = {mode: run_mode(mode, args, scenarios, wrk) for mode in modes}
    argon2 = (
        argon2_timings(args.argon2_samples)
        if not (args.naive or args.layers) and any(s.form for s in scenarios)
        else None
    )
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": (
            f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
        ),
        "command": " ".join(["bench/run.py", *sys.argv[1:]]),
        "connections": args.connections,
        "duration": args.duration,
        "rounds": args.rounds,
        "workers": args.workers,
        "tasks": args.tasks,
        "modes": list(modes),
    }
    if args.naive:
        r = results["embedded"]
        table = naive_markdown(
            r["summaries"], r["pool_runs"], r["pool_waits"], scenarios, {**meta, **r["meta"]}
        )
    elif args.layers:
        mode = modes[0]
        table = layers_markdown(results[mode]["summaries"], {**meta, "mode": mode})
    else:
        table = main_tables(meta, results, argon2)
    print(table)
    if args.only:
        print("(--only: bench/results/ left as it was)", file=sys.stderr)
        return 0
    name = (
        "naive"
        if args.naive
        else "layers"
        if args.layers
        else "vs-floor"
        if args.vs_floor
        else "latest"
    )
    if len(modes) == 1 and not args.naive:
        name += f"-{modes[0]}"
    RESULTS_DIR.mkdir(exist_ok=True)
    (RESULTS_DIR / f"{name}.md").write_text(table)
    payload: dict[str, Any] = {"meta": meta, "argon2": argon2, "modes": {}}
    for mode, r in results.items():
        payload["modes"][mode] = {k: v for k, v in r.items() if k != "summaries"}
    (RESULTS_DIR / f"{name}.json").write_text(json.dumps(payload, indent=2))
    print(f"wrote {RESULTS_DIR / name}.md and {name}.json", file=sys.stderr)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=2, help="rounds (order alternates)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers")
    parser.add_argument("--tasks", type=int, default=10_000, help="seeded tasks")
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--tcp",
        action="store_true",
        help="only against a local PostgreSQL over TCP with a password (default: both modes)",
    )
    where.add_argument(
        "--embedded", action="store_true", help="only against the embedded PostgreSQL"
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="TEXT",
        help="only scenarios whose name contains TEXT (repeatable), with their baselines; "
        "prints the table without writing bench/results/",
    )
    parser.add_argument(
        "--layers",
        action="store_true",
        help="GET /tasks/{id} built up one layer at a time: what each layer costs "
        "(embedded unless --tcp; writes bench/results/layers-<mode>.md)",
    )
    parser.add_argument(
        "--naive",
        action="store_true",
        help="why the lecture's naive route has a multi-second p99: the route beside "
        "variants that each change one thing, with the pool's figures "
        "(embedded; writes bench/results/naive.md)",
    )
    parser.add_argument(
        "--vs-floor",
        action="store_true",
        help="only the app's four scenarios (GET one, the list, POST, PATCH), the cache's "
        "(cached GET one, 304, cached list, misses against no cache) and their separate "
        "floors, both modes unless --tcp or --embedded (writes bench/results/vs-floor.md "
        "and .json)",
    )
    parser.add_argument(
        "--floor-table",
        type=Path,
        nargs="+",
        metavar="JSON",
        help="print the table of the app against its separate floor from saved runs "
        "(bench/results/vs-floor.json or latest.json): one run, or before and after; run "
        "nothing",
    )
    parser.add_argument("--argon2-samples", type=int, default=20)
    parser.add_argument(
        "--render",
        type=Path,
        metavar="JSON",
        help="print the tables of a saved run (bench/results/latest.json) again, run nothing",
    )
    parser.add_argument(
        "--scale",
        type=int,
        metavar="TASKS",
        help="seed TASKS tasks (and 10,000 beside them) and measure the list at both "
        "scales, with the plans (writes bench/results/scale.md)",
    )
    parser.add_argument("--scale-samples", type=int, default=100, help="requests per scenario")
    args = parser.parse_args()
    if args.render:
        return render_saved(args.render)
    if args.floor_table:
        if len(args.floor_table) > 2:
            parser.error("--floor-table takes one run, or two: before and after")
        runs = [(path, json.loads(path.read_text())) for path in args.floor_table]
        print(floor_table(runs))
        return 0
    if args.rounds < 2 and not args.scale:
        parser.error("--rounds must be at least 2 (the order alternates between rounds)")
    if args.vs_floor and (args.layers or args.naive or args.only):
        parser.error("--vs-floor chooses its own scenarios")
    if args.naive and (args.layers or args.scale or args.workers != 1 or args.tcp):
        parser.error("--naive runs its own scenarios in one worker (the pools are per process)")
    return scale_benchmark(args) if args.scale else http_benchmark(args)


if __name__ == "__main__":
    raise SystemExit(main())
