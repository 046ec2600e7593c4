"""Run a real PgBouncer (the Debian package) in front of the embedded test server.

PgBouncer listens on a free TCP port of 127.0.0.1 and forwards to the embedded PostgreSQL
through its Unix socket directory, in transaction pooling mode with a few server
connections, so every transaction may land on any of them. It refuses to run as root:
started by root it drops to the user that runs the embedded PostgreSQL (the owner of the
socket directory, `pgserver`), which can reach that socket. Every process started here is
stopped here, by its PID, also on failure.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url

from tests.support.processes import free_port

READY_WITHIN = 10.0
STOP_WITHIN = 5.0


def pgbouncer_binary() -> str | None:
    """The pgbouncer executable (Debian puts it in /usr/sbin, often not on a user's PATH)."""
    found = shutil.which("pgbouncer")
    if found:
        return found
    for candidate in ("/usr/sbin/pgbouncer", "/usr/local/sbin/pgbouncer", "/usr/bin/pgbouncer"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def pgbouncer_version(binary: str) -> tuple[int, int]:
    """(major, minor) from `pgbouncer --version` ("PgBouncer 1.18.0")."""
    output = subprocess.run(
        [binary, "--version"], capture_output=True, text=True, check=False, timeout=10
    ).stdout
    match = re.search(r"PgBouncer (\d+)\.(\d+)", output)
    if match is None:
        raise RuntimeError(f"cannot read the PgBouncer version from {output!r}")
    return int(match.group(1)), int(match.group(2))


@dataclass(frozen=True)
class UnixSocketTarget:
    """Where PostgreSQL listens: its socket directory, port and a database on it."""

    socket_dir: Path
    port: int
    dbname: str
    user: str

    @classmethod
    def from_url(cls, url: str) -> UnixSocketTarget:
        """From an embedded-server URL like postgresql+asyncpg://postgres:@/DB?host=/dir."""
        parsed = make_url(url)
        host = parsed.query.get("host")
        if not isinstance(host, str) or not host.startswith("/"):
            raise ValueError(f"{url!r} does not name a Unix socket directory (?host=/...)")
        return cls(
            socket_dir=Path(host),
            port=parsed.port or 5432,
            dbname=str(parsed.database),
            user=parsed.username or "postgres",
        )


@dataclass
class PgBouncer:
    process: subprocess.Popen[bytes]
    port: int
    dbname: str
    user: str
    config_dir: Path
    version: tuple[int, int]

    @property
    def log_path(self) -> Path:
        return self.config_dir / "pgbouncer.log"

    def url(self, driver: str = "postgresql") -> str:
        """A client URL through PgBouncer (no password: PgBouncer trusts 127.0.0.1 here)."""
        return f"{driver}://{self.user}@127.0.0.1:{self.port}/{self.dbname}"

    def output(self) -> str:
        """PgBouncer's log (its stderr)."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_ready(self, within: float = READY_WITHIN) -> None:
        """Until PgBouncer accepts TCP connections on its port (bounded)."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"pgbouncer exited with {self.process.returncode}:\n{self.output()}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"pgbouncer not listening within {within}s:\n{self.output()}")

    def stop(self) -> None:
        """SIGINT (PgBouncer's immediate shutdown), then SIGKILL if it lingers."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(STOP_WITHIN)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_WITHIN)


def pgbouncer_ini(
    target: UnixSocketTarget,
    config_dir: Path,
    port: int,
    *,
    version: tuple[int, int],
    pool_size: int,
    max_client_conn: int,
) -> str:
    lines = [
        "[databases]",
        # Clients ask for the same database name; PgBouncer connects through the socket dir.
        f"{target.dbname} = host={target.socket_dir} port={target.port} "
        f"dbname={target.dbname} user={target.user}",
        "",
        "[pgbouncer]",
        "listen_addr = 127.0.0.1",
        f"listen_port = {port}",
        "unix_socket_dir =",  # TCP only: no socket file left in /tmp
        # Password-free like the embedded server itself: trust, but only for names listed
        # in the auth_file (PgBouncer 1.18 still requires one for trust).
        "auth_type = trust",
        f"auth_file = {config_dir / 'userlist.txt'}",
        "pool_mode = transaction",
        # Few server connections for many clients: transactions really share them.
        f"default_pool_size = {pool_size}",
        "min_pool_size = 0",
        "reserve_pool_size = 0",
        f"max_db_connections = {pool_size}",
        f"max_client_conn = {max_client_conn}",
        # Sent by psql/JDBC/psycopg, not by asyncpg; harmless to ignore, and we want any
        # other unsupported startup parameter (statement_timeout, ...) to be refused.
        "ignore_startup_parameters = extra_float_digits",
        "log_connections = 0",
        "log_disconnections = 0",
        "server_login_retry = 1",
    ]
    if version >= (1, 21):
        # 1.21+ can track protocol-level prepared statements when this is > 0; 0 emulates a
        # pooler without that support (like Debian bookworm's 1.18), which is what the
        # pgbouncer mode is for.
        lines.append("max_prepared_statements = 0")
    return "\n".join(lines) + "\n"


@contextmanager
def run_pgbouncer(
    database_url: str, *, pool_size: int = 4, max_client_conn: int = 200
) -> Iterator[PgBouncer]:
    """PgBouncer in transaction mode in front of `database_url` (an embedded-server URL)."""
    binary = pgbouncer_binary()
    if binary is None:
        raise FileNotFoundError("pgbouncer is not installed")
    version = pgbouncer_version(binary)
    target = UnixSocketTarget.from_url(database_url)
    if target.dbname == "pgbouncer":
        raise ValueError('"pgbouncer" is PgBouncer\'s admin console: choose another database')
    config_dir = Path(tempfile.mkdtemp(prefix="taskmanager-pgbouncer-"))
    bouncer: PgBouncer | None = None
    try:
        port = free_port()
        (config_dir / "userlist.txt").write_text(f'"{target.user}" ""\n')
        ini = config_dir / "pgbouncer.ini"
        ini.write_text(
            pgbouncer_ini(
                target,
                config_dir,
                port,
                version=version,
                pool_size=pool_size,
                max_client_conn=max_client_conn,
            )
        )
        command = [binary, str(ini)]  # it logs to stderr, which goes to pgbouncer.log
        if os.geteuid() == 0:
            # Root is refused; run as the user that runs PostgreSQL (it can reach the
            # socket), and let it read its files in the config directory.
            owner = target.socket_dir.stat().st_uid
            if owner == 0:
                raise RuntimeError(f"{target.socket_dir} is owned by root: no user to run as")
            user = pwd.getpwuid(owner)
            for path in (config_dir, *config_dir.iterdir()):
                os.chown(path, user.pw_uid, user.pw_gid)
            command[1:1] = ["-u", user.pw_name]
        with (config_dir / "pgbouncer.log").open("wb") as log:
            process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        bouncer = PgBouncer(process, port, target.dbname, target.user, config_dir, version)
        bouncer.wait_ready()
        yield bouncer
    finally:
        try:
            if bouncer is not None:
                bouncer.stop()
        finally:
            shutil.rmtree(config_dir, ignore_errors=True)
