"""A Redis of our own on a Unix socket: what `taskmanager serve` starts for the embedded
default (and the tests start for themselves) when the machine has `redis-server`.

It listens on `redis.sock` in its directory only (`port 0`: no TCP port to collide with or
expose; the socket and the directory are the owner's alone), keeps nothing on disk (no RDB
snapshot, no append-only file: a cache refills), evicts the least recently used keys at
its memory limit instead of refusing writes, and logs into `redis.log` beside its socket.
Whoever starts it stops it, by its PID.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

SOCKET_NAME = "redis.sock"
PID_NAME = "redis.pid"
LOG_NAME = "redis.log"
CONFIG_NAME = "redis.conf"
DEFAULT_MAXMEMORY = "128mb"
READY_WITHIN = 10.0
STOP_WITHIN = 5.0
# sun_path holds 108 bytes on Linux (104 on macOS), its final NUL included.
_MAX_SOCKET_PATH = 103


class LocalRedisError(Exception):
    """The local Redis could not be started; the message says why and what to do."""


def redis_server_binary() -> str | None:
    """The `redis-server` on PATH, or None when the machine has none."""
    return shutil.which("redis-server")


@dataclass
class LocalRedis:
    """A running `redis-server` started by `start_local_redis`."""

    directory: Path
    process: subprocess.Popen[bytes]
    _stopped: bool = field(default=False, repr=False)

    @property
    def socket_path(self) -> Path:
        return self.directory / SOCKET_NAME

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def running(self) -> bool:
        return not self._stopped and self.process.poll() is None

    def stop(self, within: float = STOP_WITHIN) -> None:
        """SIGTERM, then SIGKILL if it is still there `within` seconds later; then its socket
        and pid file are removed. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            try:
                self.process.wait(within)
            except subprocess.TimeoutExpired:
                log.warning("Redis (PID %s) ignored SIGTERM for %ss; killing it", self.pid, within)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                self.process.wait(within)
        for name in (SOCKET_NAME, PID_NAME):
            (self.directory / name).unlink(missing_ok=True)
        log.info("stopped the local Redis in %s", self.directory)


def start_local_redis(
    directory: Path,
    *,
    maxmemory: str = DEFAULT_MAXMEMORY,
    ready_within: float = READY_WITHIN,
) -> LocalRedis:
    """Start `redis-server` on `directory/redis.sock` and return once it answers PING.

    Raises LocalRedisError, saying why, when there is no redis-server, when a Redis already
    answers on that socket (another server's: it is left alone), or when it does not start
    within `ready_within` seconds (its log's last lines in the message). The socket and pid
    file of a Redis that died without cleaning up are removed first.
    """
    binary = redis_server_binary()
    if binary is None:
        raise LocalRedisError("no redis-server on this machine (apt-get install redis-server)")
    directory = directory.expanduser().resolve()
    socket_path = directory / SOCKET_NAME
    if len(str(socket_path).encode()) > _MAX_SOCKET_PATH:
        raise LocalRedisError(
            f"the path {socket_path} is too long for a Unix socket (at most "
            f"{_MAX_SOCKET_PATH} bytes): use a shorter data directory"
        )
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)  # the socket is its owner's only, also through the directory
    _clear_leftovers(directory)
    config = directory / CONFIG_NAME
    config.write_text(_config(directory, maxmemory), encoding="utf-8")
    with (directory / LOG_NAME).open("ab") as output:
        process = subprocess.Popen(
            [binary, str(config)],
            cwd=directory,
            stdin=subprocess.DEVNULL,
            stdout=output,  # what it says before its log file is open (a bad option)
            stderr=subprocess.STDOUT,
            # Out of the terminal's process group: Ctrl-C reaches `serve`, which drains its
            # requests (still using the cache) and then stops this itself.
            start_new_session=True,
        )
    server = LocalRedis(directory, process)
    try:
        _wait_until_it_answers(server, ready_within)
    except BaseException:
        server.stop()
        raise
    log.info("started a local Redis (PID %s) on %s", server.pid, socket_path)
    return server


def _config(directory: Path, maxmemory: str) -> str:
    return "\n".join(
        (
            "# Written by taskmanager at each start; edits are lost.",
            "port 0",
            f"unixsocket {_quoted(directory / SOCKET_NAME)}",
            "unixsocketperm 700",
            f"dir {_quoted(directory)}",
            f"pidfile {_quoted(directory / PID_NAME)}",
            f"logfile {_quoted(directory / LOG_NAME)}",
            "daemonize no",
            'save ""',
            "appendonly no",
            f"maxmemory {maxmemory}",
            "maxmemory-policy allkeys-lru",
            "",
        )
    )


def _quoted(path: Path) -> str:
    text = str(path)
    if any(character in text for character in "\n\r\0"):
        raise LocalRedisError(f"{text!r}: a line break in the directory's path")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _clear_leftovers(directory: Path) -> None:
    """Refuse when a Redis answers on the socket; remove what a dead one left behind."""
    socket_path = directory / SOCKET_NAME
    pid = _pid_in(directory / PID_NAME)
    if socket_path.exists() and _accepts_connections(socket_path):
        raise LocalRedisError(
            f"a Redis is already running on {socket_path}"
            + (f" (PID {pid})" if pid else "")
            + ": another taskmanager serve on this data directory? Stop it"
            + (f" (kill {pid})" if pid else "")
            + " or use another data directory"
        )
    if pid is not None and _is_redis(pid):
        raise LocalRedisError(
            f"a Redis (PID {pid}) still holds {directory} without answering on its socket: "
            f"stop it (kill {pid}) and start again"
        )
    for name in (SOCKET_NAME, PID_NAME):
        path = directory / name
        if path.exists():
            log.info("removing %s, left behind by a Redis that is gone", path)
            path.unlink(missing_ok=True)


def _pid_in(path: Path) -> int | None:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _is_redis(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, someone else's
    try:
        return b"redis" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # alive, and no /proc to tell what it is: assume the worst


def _accepts_connections(socket_path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(socket_path))
        except OSError:
            return False
    return True


def _wait_until_it_answers(server: LocalRedis, within: float) -> None:
    deadline = time.monotonic() + within
    while True:
        if server.process.poll() is not None:
            raise LocalRedisError(
                f"redis-server exited with {server.process.returncode} at start: "
                + _log_tail(server.directory)
            )
        if server.socket_path.exists() and _answers_ping(server.socket_path):
            return
        if time.monotonic() > deadline:
            raise LocalRedisError(
                f"redis-server did not answer within {within:g} s: " + _log_tail(server.directory)
            )
        time.sleep(0.02)


def _answers_ping(socket_path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(socket_path))
            probe.sendall(b"PING\r\n")
            return probe.recv(64).startswith(b"+PONG")
        except OSError:
            return False


def _log_tail(directory: Path, lines: int = 5) -> str:
    try:
        text = (directory / LOG_NAME).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    tail = [line for line in text.splitlines() if line.strip()][-lines:]
    return " | ".join(tail) or "(empty log)"
