"""`taskmanager serve`: migrate (as the owner, when there is one), check, then serve."""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import shutil
import signal
import tempfile
from types import FrameType
from typing import Annotated

import typer
from rich.markup import escape

from taskmanager.cli.serve_cache import ServingCache, serving_cache
from taskmanager.cli.shared import DATABASE_HELP, caller_key, console
from taskmanager.config import Settings, get_settings, load_settings
from taskmanager.postgres.logins import database_logins

SERVE_SHORT_HELP = "Migrate the database to head, then serve the API."
SERVE_HELP = (
    "Migrate the database to head (as OWNER_DATABASE_URL, when it is set or the "
    "server is the embedded one), then serve the API on HOST:PORT (Ctrl-C or SIGTERM stops "
    "it cleanly).\n\n" + DATABASE_HELP
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
        # default one for SIGTERM kills the process there, before `database_logins()` stops the
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
    from taskmanager.postgres.deployment import check_service
    from taskmanager.postgres.migrate import upgrade_deployment

    _check_port_free(host, port)
    # Once here, before any worker: a generated key is written once and then read by
    # every worker, and a bad one stops start-up with one line instead of a traceback
    # per worker.
    key = caller_key(settings)
    with database_logins(settings) as logins:
        if logins.owner is not None:  # the embedded server, or OWNER_DATABASE_URL given
            upgrade_deployment(logins, key)
        # Never serve through a login that could step around the policies.
        check_service(logins.service, key)
        with serving_cache(settings) as cache:
            _run(settings, logins.service, cache, host, port, workers, reload)


def outbound_environment(settings: Settings, host: str) -> tuple[dict[str, str], str | None]:
    """The outbound settings `serve` hands its workers, resolved here, and a line to say
    when development's defaults were not taken. Development (the embedded database) may
    reach this machine over http only while it serves this machine alone: served on
    another address, anyone who can register could aim a webhook or a calendar at the
    host's own services."""
    allow_http, networks = settings.outbound_http_allowed, settings.outbound_networks
    line = None
    unset = settings.outbound_allow_http is None and settings.outbound_allowed_networks is None
    if unset and settings.uses_embedded_database and not _loopback(host):
        allow_http, networks = False, []
        line = (
            f"outbound: public https addresses only (serving on {host}, not this machine "
            "alone; TASKMANAGER_OUTBOUND_ALLOWED_NETWORKS and _ALLOW_HTTP allow more)"
        )
    environment = {
        "TASKMANAGER_OUTBOUND_ALLOW_HTTP": "true" if allow_http else "false",
        "TASKMANAGER_OUTBOUND_ALLOWED_NETWORKS": json.dumps(networks),
    }
    return environment, line


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _run(
    settings: Settings,
    service_url: str,
    cache: ServingCache,
    host: str,
    port: int,
    workers: int,
    reload: bool,
) -> None:
    """Hand the workers their settings, say where the data and the cache are, and serve
    until stopped."""
    import uvicorn

    # Workers (and the reloader's child) read their settings from the environment:
    # hand them the service's URL so they share this database instead of starting
    # one, and nothing of the owner's: serving needs none of it.
    os.environ["DATABASE_URL"] = service_url
    for name in ("OWNER_DATABASE_URL", "TASKMANAGER_OWNER_DATABASE_URL"):
        os.environ.pop(name, None)
    # The cache likewise: the Redis decided here (the one started here, or none), and the
    # namespace of this database (a worker sees DATABASE_URL, not the data directory).
    os.environ.update(cache.environment)
    # And what webhooks and calendars may reach, decided by the database this started
    # with (development's loopback over http with the embedded one), not by the
    # DATABASE_URL the workers now see.
    outbound, outbound_line = outbound_environment(settings, host)
    os.environ.update(outbound)
    get_settings.cache_clear()  # the in-process worker must read it too
    database = (
        "embedded, " + str(settings.data_dir) if settings.uses_embedded_database else "DATABASE_URL"
    )
    if settings.log_format == "json":  # every line of the output is a JSON object
        logging.getLogger("taskmanager.cli").info("%s", cache.line)
        if outbound_line:
            logging.getLogger("taskmanager.cli").info("%s", outbound_line)
        logging.getLogger("taskmanager.cli").info(
            "taskmanager on http://%s:%s (docs: /docs), database: %s", host, port, database
        )
    else:
        console.print(escape(cache.line), highlight=False)
        if outbound_line:
            console.print(escape(outbound_line), highlight=False)
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
