"""Where the server's CPU goes, layer by layer: GET one, the list, POST and PATCH.

    .venv/bin/python bench/layers_cpu.py                       # 2,000 requests of each
    .venv/bin/python bench/layers_cpu.py --before /tmp/before/src   # and an earlier version
    .venv/bin/python bench/layers_cpu.py --only "GET /tasks/{id}" --detail 40

It seeds a throwaway database (bench/harness.py: embedded, or --tcp), starts ONE uvicorn
server (uvloop, httptools, as bench/run.py does) with the real app (with --before, a second
one running an earlier src/, measured right after it, endpoint by endpoint), and drives
each endpoint from this process with one access token, `--concurrency` requests at a time.
Per endpoint, on the server: a warm-up; N requests with nothing attached, whose process
CPU is the cost per request, and N more while a sampler runs in the server, in alternating
chunks (--chunks; with --before the two servers take turns too).

The sampler (SIGALRM every --interval-us of wall time) charges the CPU the thread used since
the previous sample to the layer of the frame running at the sample; idle time costs no CPU
and charges nothing, and the handler's own CPU is left out. A frame's layer is decided by
its whole stack, not only its module: everything under `enter_as_user` is the scope step
(its SQLAlchemy and asyncpg included), everything under FastAPI's `serialize_response` the
response model, and so on (LAYERS, _MARKERS). Frames of the standard library and of
libraries without a layer of their own (pydantic, anyio, greenlet) belong to whoever called
them; SQLAlchemy's greenlets are followed back to the coroutine that spawned them.

What a Python-level sampler cannot see: time in C with no Python frame of its own. uvloop's
loop shows as its caller (`Runner.run`: the "no Python frame" row); asyncpg's protocol reading
a reply, and uvloop waking the task that awaited it, are charged to the first Python frame
that runs afterwards: the statement's own (scope step, SQLAlchemy) or the ASGI server's.
So the rows are where the CPU went as the code in each layer sees it, including the C it
calls; the totals are exact. The shares are scaled to the unprofiled CPU (the sampled run
costs ~10-30 % more); "±" is one standard error from the number of samples. Sampling is
statistical but the method is fixed: the same run twice moves a row by about its ±, while
the machine's load moves the totals (compare versions in one run: --before).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import signal
import sys
import sysconfig
import time
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from pathlib import Path
from types import CodeType, FrameType
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

# ─────────────────────────────────────────────
# Layers
# ─────────────────────────────────────────────

ASGI = "ASGI server + middleware"
ROUTING = "routing + dependency resolution (FastAPI)"
REQUEST = "request parsing + validation (body, path, query)"
TOKEN = "token check (PyJWT, bearer scheme)"
SCOPE = "scope step (enter statement, its SQLAlchemy + asyncpg)"
SA_STATEMENTS = "SQLAlchemy: the other statements (compile, cache, execute, ORM, rows)"
SA_SESSION = "SQLAlchemy: session, transaction, pool (commit, close)"
DRIVER = "asyncpg driver (Python side, other statements)"
RESPONSE = "response model validation + JSON"
LOGGING = "logging"
METRICS = "metrics"
APP = "the app's own code (routes, repositories, dependencies)"
LOOP = "no Python frame: uvloop, httptools, asyncpg protocol"
OTHER = "other (stdlib without a caller above)"
LAYERS = (
    ASGI, ROUTING, REQUEST, TOKEN, SCOPE, SA_STATEMENTS, SA_SESSION, DRIVER, RESPONSE,
    LOGGING, METRICS, APP, LOOP, OTHER,
)  # fmt: skip

# Libraries (the first name under site-packages) that are a layer wherever they run. The
# others (pydantic, anyio, greenlet, ...) and the standard library are neutral: their time is
# their caller's.
_LIBRARIES = {
    "uvicorn": ASGI,
    "httptools": ASGI,
    "h11": ASGI,
    "uvloop": ASGI,
    "sqlalchemy": SA_STATEMENTS,
    "asyncpg": DRIVER,
    "jwt": TOKEN,
    "prometheus_client": METRICS,
    "opentelemetry": ROUTING,
}
_STARLETTE = {
    "routing": ROUTING,
    "requests": ROUTING,
    "middleware": ASGI,
    "responses": ASGI,
    "_exception_handler": ASGI,
    "applications": ASGI,
    "exceptions": ASGI,
}
_FASTAPI = {
    "routing": ROUTING,
    "dependencies": ROUTING,
    "params": ROUTING,
    "telemetry": ROUTING,
    "applications": ASGI,
    "middleware": ASGI,
    "security": TOKEN,
}
_TASKMANAGER = {
    "middleware": ASGI,
    "observability/logs": LOGGING,
    "observability/metrics": METRICS,
    "security/tokens": TOKEN,
}

# Functions whose callees all belong to one layer, strongest first: a frame under several
# takes the strongest (the scope step's own session begin is the scope step's).
_MARKERS: dict[tuple[str, str], tuple[int, str]] = {
    ("taskmanager/accounts/callers.py", "enter_as_user"): (5, SCOPE),
    ("taskmanager/accounts/callers.py", "enter_with_token"): (5, SCOPE),
    ("taskmanager/security/tokens.py", "read_access_token"): (4, TOKEN),
    ("fastapi/security/oauth2.py", "OAuth2PasswordBearer.__call__"): (4, TOKEN),
    ("fastapi/routing.py", "serialize_response"): (3, RESPONSE),
    ("starlette/responses.py", "Response.__init__"): (3, RESPONSE),
    ("starlette/responses.py", "JSONResponse.render"): (3, RESPONSE),
    ("fastapi/dependencies/utils.py", "request_params_to_args"): (2, REQUEST),
    ("fastapi/dependencies/utils.py", "request_body_to_args"): (2, REQUEST),
    ("starlette/requests.py", "Request.body"): (2, REQUEST),
    ("starlette/requests.py", "Request.json"): (2, REQUEST),
    ("sqlalchemy/ext/asyncio/session.py", "AsyncSession.commit"): (1, SA_SESSION),
    ("sqlalchemy/ext/asyncio/session.py", "AsyncSession.rollback"): (1, SA_SESSION),
    ("sqlalchemy/ext/asyncio/session.py", "AsyncSession.close"): (1, SA_SESSION),
    ("sqlalchemy/ext/asyncio/session.py", "AsyncSession.__aexit__"): (1, SA_SESSION),
    ("sqlalchemy/ext/asyncio/session.py", "AsyncSession.__init__"): (1, SA_SESSION),
    ("sqlalchemy/ext/asyncio/session.py", "async_sessionmaker.__call__"): (1, SA_SESSION),
}
_STDLIB = sysconfig.get_paths()["stdlib"]
_LOGGING = os.path.join(_STDLIB, "logging") + os.sep
# The innermost Python frame while the event loop runs C code (uvloop between callbacks;
# asyncpg's protocol reading replies; uvloop handles the sampler's signal there too).
_LOOP_FRAMES = frozenset({"Runner.run", "BaseEventLoop.run_until_complete", "run"})
_CODECS = "setup_asyncpg_json"  # the JSON decoders SQLAlchemy gives asyncpg
State = tuple[int, str, str | None]  # marker strength, marker layer, module layer


def _module_layer(filename: str) -> str | None:
    """The layer a code object's file is, or None for a neutral one."""
    if filename.startswith(_LOGGING):
        return LOGGING
    _, found, rest = filename.partition("/site-packages/")
    if found:
        package, _, module = rest.partition("/")
        if package == "starlette":
            return _STARLETTE.get(module.partition("/")[0].removesuffix(".py"))
        if package == "fastapi":
            return _FASTAPI.get(module.partition("/")[0].removesuffix(".py"))
        if package == "sqlalchemy" and module.startswith("pool/"):
            return SA_SESSION
        return _LIBRARIES.get(package.removesuffix(".py"))
    _, found, module = filename.rpartition("/taskmanager/")
    if found and not filename.startswith(_STDLIB):
        return _TASKMANAGER.get(module.removesuffix(".py"), APP)
    return None


def _marker(code: CodeType) -> tuple[int, str] | None:
    filename = code.co_filename
    for (suffix, qualname), marker in _MARKERS.items():
        if code.co_qualname == qualname and filename.endswith(suffix):
            return marker
    return None


def _layer(state: State) -> str:
    strength, marked, module = state
    if module in (LOGGING, METRICS):
        return module
    if strength >= 2:
        return marked
    if module == SA_STATEMENTS and strength == 1:
        return SA_SESSION
    return module or OTHER


class LayerSampler:
    """Every `interval` seconds of wall time (SIGALRM), the CPU this thread spent since the
    previous sample is charged to the layer of the frame running now; the handler's own
    CPU is left out. Idle time costs no CPU, so it charges nothing."""

    def __init__(self, interval: float) -> None:
        import greenlet

        self._getcurrent = greenlet.getcurrent
        self._codes: dict[CodeType, tuple[tuple[int, str] | None, str | None]] = {}
        self.interval = interval
        self.ns: dict[str, int] = dict.fromkeys(LAYERS, 0)
        self.samples: dict[str, int] = dict.fromkeys(LAYERS, 0)
        # (layer, innermost function) -> ns: what `--detail` lists
        self.functions: dict[tuple[str, str], int] = {}
        self._last = 0
        self._busy = False

    def _code(self, code: CodeType) -> tuple[tuple[int, str] | None, str | None]:
        found = self._codes.get(code)
        if found is None:
            found = self._codes[code] = (_marker(code), _module_layer(code.co_filename))
        return found

    def layer(self, frame: FrameType | None) -> str:
        """The layer of `frame`: the innermost frame with a module layer decides it, unless
        a marker above it says otherwise. SQLAlchemy runs its sync code in a greenlet:
        past the bottom of a greenlet's stack, the walk goes on in the greenlet that
        started it (the coroutine awaiting greenlet_spawn)."""
        if frame is None or frame.f_code.co_qualname in _LOOP_FRAMES:
            return LOOP
        if _CODECS in frame.f_code.co_qualname:
            return DRIVER  # a column's decoder, called by asyncpg's protocol as rows arrive
        strength, marked, module = 0, OTHER, None
        current: FrameType | None = frame
        greenlet = self._getcurrent()
        while True:
            while current is not None:
                marker, layer = self._code(current.f_code)
                if module is None and layer is not None:
                    module = layer
                if marker is not None and marker[0] > strength:
                    strength, marked = marker
                current = current.f_back
            greenlet = greenlet.parent
            if greenlet is None:
                break
            current = greenlet.gr_frame
        return _layer((strength, marked, module))

    def _sample(self, signum: int, frame: FrameType | None) -> None:
        if self._busy:  # a signal during the handler: the next sample charges this time
            return
        self._busy = True
        now = time.thread_time_ns()
        layer = self.layer(frame)
        spent = now - self._last
        self.ns[layer] += spent
        self.samples[layer] += 1
        if frame is not None:
            code = frame.f_code
            name = f"{code.co_filename.rpartition('site-packages/')[2]}:{code.co_qualname}"
            key = (layer, name)
            self.functions[key] = self.functions.get(key, 0) + spent
        self._last = time.thread_time_ns()
        self._busy = False

    def start(self) -> None:
        """Start (or go on) sampling."""
        signal.signal(signal.SIGALRM, self._sample)
        self._last = time.thread_time_ns()
        signal.setitimer(signal.ITIMER_REAL, self.interval, self.interval)

    def stop(self) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)


# ─────────────────────────────────────────────
# The server side: the real app, with three control paths of its own
# ─────────────────────────────────────────────


def create_profiled_app() -> Callable[..., Awaitable[None]]:
    """The real app (taskmanager.main.create_app), under /_layers/ a few controls:
    `cpu` (process CPU seconds), `start?interval=` and `stop` (the samples, as JSON)."""
    from taskmanager.main import create_app

    app = create_app()
    sampler: list[LayerSampler] = []

    async def answer(send: Callable[..., Awaitable[None]], payload: Any) -> None:
        body = json.dumps(payload).encode()
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def profiled(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/_layers/"):
            await app(scope, receive, send)
            return
        action = scope["path"].removeprefix("/_layers/")
        if action == "cpu":
            await answer(send, {"process": time.process_time()})
        elif action in ("start", "resume"):  # start: a new sampler; resume: the same again
            interval = float(scope["query_string"].decode().partition("=")[2] or "0.0005")
            if action == "start" or not sampler:
                sampler[:] = [LayerSampler(interval)]
            sampler[0].start()
            await answer(send, {"interval": interval})
        elif action == "stop":
            sampler[0].stop()
            top = sorted(sampler[0].functions.items(), key=lambda item: -item[1])[:60]
            functions = [[layer, name, ns] for (layer, name), ns in top]
            await answer(
                send,
                {"ns": sampler[0].ns, "samples": sampler[0].samples, "functions": functions},
            )
        else:
            await answer(send, {"unknown": action})

    return profiled


# ─────────────────────────────────────────────
# The driver
# ─────────────────────────────────────────────

ENDPOINTS = ("GET /tasks/{id}", "GET /tasks?limit=50", "POST /tasks", "PATCH /tasks/{id}")


async def drive(
    base: str, token: str, endpoint: str, count: int, concurrency: int, ids: tuple[int, int]
) -> None:
    """`count` requests of `endpoint`, `concurrency` at a time; any non-2xx stops the run."""
    import httpx
    from scenarios import PATCH_BODY, POST_BODY

    method, path = endpoint.split(" ", 1)
    body = {"POST": POST_BODY, "PATCH": PATCH_BODY}.get(method)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    remaining = iter(range(count))

    async def worker(client: httpx.AsyncClient) -> None:
        for _ in remaining:
            url = path.replace("{id}", str(random.randint(*ids)))
            content = body.replace("{n}", str(random.randint(1, 10**9))) if body else None
            response = await client.request(method, url, content=content, headers=headers)
            if response.status_code >= 300:
                raise RuntimeError(f"{endpoint}: {response.status_code} {response.text[:300]}")

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))


def measure(
    servers: dict[str, tuple[str, str]],
    endpoint: str,
    args: argparse.Namespace,
    ids: tuple[int, int],
) -> dict[str, dict[str, Any]]:
    """`endpoint` on every server: in --chunks rounds, each server in turn runs a chunk of
    requests unprofiled, then one sampled, so that the machine's drift hits both kinds of
    run and every server alike."""
    import httpx

    def control(base: str, action: str) -> dict[str, Any]:
        response = httpx.get(f"{base}/_layers/{action}", timeout=120)
        response.raise_for_status()
        answer: dict[str, Any] = response.json()
        return answer

    def requests(base: str, token: str, count: int) -> None:
        asyncio.run(drive(base, token, endpoint, count, args.concurrency, ids))

    chunk = max(1, args.requests // args.chunks)
    count = chunk * args.chunks
    cpu = dict.fromkeys(servers, 0.0)
    interval = args.interval_us / 1e6
    for base, token in servers.values():
        requests(base, token, args.warmup)
        control(base, f"start?interval={interval}")  # a fresh sampler, stopped at once
        control(base, "stop")
    for _ in range(args.chunks):
        for name, (base, token) in servers.items():
            before = control(base, "cpu")["process"]
            requests(base, token, chunk)
            cpu[name] += control(base, "cpu")["process"] - before
            control(base, f"resume?interval={interval}")
            requests(base, token, chunk)
            control(base, "stop")
    results = {}
    for name, (base, _) in servers.items():
        profile = control(base, "stop")  # the totals (stopping twice changes nothing)
        cpu_us = 1e6 * cpu[name] / count
        sampled_us = sum(profile["ns"].values()) / 1000 / count
        # The sampled requests cost a little more (the handler, its wake-ups of the loop,
        # its effect on caches): the layers are scaled to the unprofiled CPU.
        scale = cpu_us / sampled_us if sampled_us else 0.0
        samples = sum(profile["samples"].values())
        results[name] = {
            "endpoint": endpoint,
            "requests": count,
            "cpu_us": cpu_us,
            "sampled_us": sampled_us,
            "scale": scale,
            "samples": samples,
            "samples_by_layer": profile["samples"],
            "functions": [
                [layer, function, ns / 1000 / count * scale]
                for layer, function, ns in profile["functions"]
            ],
            "layers": {k: ns / 1000 / count * scale for k, ns in profile["ns"].items()},
            # One standard error of a layer's share, from the number of samples.
            "error_us": {
                k: cpu_us * (n / samples * (1 - n / samples) / samples) ** 0.5 if samples else 0.0
                for k, n in profile["samples"].items()
            },
        }
    return results


NAMES = {
    "GET /tasks/{id}": "GET one",
    "GET /tasks?limit=50": "list 50",
    "POST /tasks": "POST",
    "PATCH /tasks/{id}": "PATCH",
}


def table(runs: dict[str, list[dict[str, Any]]]) -> str:
    """One column per endpoint and server (`before / after` when two servers ran)."""
    servers = list(runs)
    endpoints = [r["endpoint"] for r in runs[servers[0]]]

    def cells(pick: Callable[[dict[str, Any]], str]) -> str:
        return " | ".join(
            " / ".join(pick(runs[server][i]) for server in servers) for i in range(len(endpoints))
        )

    head = " | ".join(NAMES.get(e, e) for e in endpoints)
    which = " (" + " / ".join(servers) + ")" if len(servers) > 1 else ""
    lines = [f"| µs of server CPU per request{which} | {head} |"]
    lines.append("|---" + "|---:" * len(endpoints) + "|")
    for layer in LAYERS:
        if all(round(r["layers"][layer]) == 0 for rs in runs.values() for r in rs):
            continue
        if len(servers) > 1:
            row = cells(lambda r, layer=layer: f"{r['layers'][layer]:,.0f}")
        else:
            row = cells(
                lambda r, layer=layer: f"{r['layers'][layer]:,.0f} ±{r['error_us'][layer]:,.0f}"
            )
        lines.append(f"| {layer} | {row} |")
    totals = cells(lambda r: "**{:,.0f}**".format(r["cpu_us"]))
    lines.append(f"| **total: process CPU, unprofiled** | {totals} |")
    lines.append(f"| samples | {cells(lambda r: '{:,}'.format(r['samples']))} |")
    sampled = cells(lambda r: "{:,.0f} ({:.2f}x)".format(r["sampled_us"], 1 / r["scale"]))
    lines.append(f"| CPU per request while sampled (x of unprofiled) | {sampled} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per endpoint")
    parser.add_argument(
        "--interval-us", type=float, default=500, help="µs of wall time between samples"
    )
    parser.add_argument("--warmup", type=int, default=200, help="warm-up requests per endpoint")
    parser.add_argument(
        "--chunks", type=int, default=10, help="rounds the requests are split into (alternating)"
    )
    parser.add_argument("--concurrency", type=int, default=4, help="requests at a time")
    parser.add_argument("--tasks", type=int, default=10_000, help="seeded tasks")
    parser.add_argument(
        "--tcp", action="store_true", help="PostgreSQL over TCP (default: embedded)"
    )
    parser.add_argument("--only", action="append", default=[], help="endpoints containing this")
    parser.add_argument(
        "--before",
        type=Path,
        help="the src/ of an earlier checkout: a second server runs it, measured alternately",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--detail", type=int, default=0, help="also list the N costliest innermost functions"
    )
    args = parser.parse_args()

    from harness import (
        bench_database,
        bench_server,
        log_in,
        restore_seeded_tasks,
        seed_database,
        seeded,
    )

    endpoints = [e for e in ENDPOINTS if not args.only or any(o in e for o in args.only)]
    mode = "tcp" if args.tcp else "embedded"
    runs: dict[str, list[dict[str, Any]]] = {}
    with bench_database(mode) as database, ExitStack() as stack:
        print(f"[{mode}] seeding {args.tasks:,} tasks ...", file=sys.stderr)
        secret = secrets.token_urlsafe(48)
        seed_database(database, secret, args.tasks, 20)
        ids = seeded(database.admin_url)
        env = {"TASKMANAGER_JWT_SECRET": secret}
        versions = {"after": env} if args.before else {"this checkout": env}
        if args.before:
            # Its src/ first, then the bench's directory (for this module), as bench_server
            # puts a PYTHONPATH of the caller's.
            path = os.pathsep.join((str(args.before.resolve()), str(BENCH_DIR)))
            versions = {"before": {**env, "PYTHONPATH": path}, **versions}
        servers = {}
        for name, extra in versions.items():
            base, _ = stack.enter_context(
                bench_server(database.app_url, 1, extra, app="layers_cpu:create_profiled_app")
            )
            servers[name] = (base, log_in(base))
            runs[name] = []
        for endpoint in endpoints:
            measured = measure(servers, endpoint, args, (ids.first_id, ids.last_id))
            for name, result in measured.items():
                runs[name].append(result)
                print(
                    f"[{mode}] {name:<13} {endpoint:<22} {result['cpu_us']:7,.0f} µs/request "
                    f"unprofiled, {result['sampled_us']:7,.0f} µs sampled "
                    f"({result['samples']:,} samples)",
                    file=sys.stderr,
                )
            if not endpoint.startswith("GET"):
                restore_seeded_tasks(database.admin_url, ids.last_id)
    meta = (
        f"Measured {time.strftime('%Y-%m-%d %H:%M')}, {mode}, {os.cpu_count()} cores, "
        f"Python {sys.version.split()[0]}: {args.requests:,} requests per endpoint, "
        f"{args.concurrency} at a time, after {args.warmup} to warm up, and as many sampled "
        f"every {args.interval_us:.0f} µs, in {args.chunks} alternating rounds; one uvicorn "
        "process (uvloop, httptools) per version."
    )
    print(meta + "\n\n" + table(runs))
    for name, results in runs.items() if args.detail else ():
        for result in results:
            print(f"\n{name}, {result['endpoint']}: the costliest innermost functions, µs/req\n")
            for layer, function, us in result["functions"][: args.detail]:
                print(f"  {us:7.1f}  {function}  [{layer}]")
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "runs": runs}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
