"""The demo app's uvicorn server, in its own process, started and stopped by PID.

A separate process from the load driver, as in production: the driver's own event loop
must not share (or be blocked by) the server's. The server gets its own session, so a
Ctrl-C in the terminal reaches only the driver, which then stops the server itself:
SIGTERM (uvicorn shuts down gracefully), then SIGKILL if it is still there after a few
seconds.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from taskmanager.demo.sync_trap.measure import PING_PATH, DemoHTTPError, http_get

HOST = "127.0.0.1"  # only ever the loopback interface
READY_WITHIN = 30.0
# uvicorn handles SIGTERM on its event loop; while the trap keeps that loop busy with queued
# requests, even shutting down waits its turn. The demo server holds no data: kill it then.
TERMINATE_WITHIN = 3.0
KILL_WITHIN = 5.0
APP = "taskmanager.demo.sync_trap.wiring:create_app"


class DemoServerError(RuntimeError):
    """The demo server did not start; the message carries the tail of its output."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class DemoServer:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    host: str = HOST

    def output_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.rstrip().splitlines()[-lines:])

    async def wait_ready(self, within: float = READY_WITHIN) -> None:
        """Poll /ping until it answers; raise DemoServerError with the server's output if the
        process exits first or `within` seconds pass."""
        deadline = time.monotonic() + within
        last_error = "no answer yet"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise DemoServerError(
                    f"the demo server exited with code {self.process.returncode} before it "
                    f"was ready; its output ends with:\n{self.output_tail()}"
                )
            try:
                await http_get(self.host, self.port, PING_PATH, within=2.0)
            except DemoHTTPError as exc:
                last_error = str(exc)
                await asyncio.sleep(0.1)
            else:
                return
        raise DemoServerError(
            f"the demo server did not answer {PING_PATH} within {within:.0f}s ({last_error}); "
            f"its output ends with:\n{self.output_tail()}"
        )

    def stop(self) -> int | None:
        """Stop the server by its PID: SIGTERM, then SIGKILL. Returns its exit code."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(TERMINATE_WITHIN)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(KILL_WITHIN)
        return self.process.returncode


@contextmanager
def demo_server(
    database_url: str, *, pool_size: int, max_overflow: int, pool_timeout: float
) -> Iterator[DemoServer]:
    """Run the demo app under uvicorn on 127.0.0.1:<free port> until the block ends."""
    port = free_port()
    env = {
        **os.environ,
        "SYNC_TRAP_DATABASE_URL": database_url,
        "SYNC_TRAP_POOL_SIZE": str(pool_size),
        "SYNC_TRAP_MAX_OVERFLOW": str(max_overflow),
        "SYNC_TRAP_POOL_TIMEOUT": str(pool_timeout),
        "PYTHONUNBUFFERED": "1",
    }
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        APP,
        "--factory",
        "--host",
        HOST,
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
        "--timeout-graceful-shutdown",
        "5",
    ]
    with tempfile.NamedTemporaryFile(
        prefix="taskmanager-sync-trap-", suffix=".log", delete=False
    ) as log_file:
        log_path = Path(log_file.name)
        process = subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C goes to the driver, which stops the server
        )
    server = DemoServer(process, port, log_path)
    try:
        yield server
    finally:
        try:
            server.stop()
        finally:
            log_path.unlink(missing_ok=True)
