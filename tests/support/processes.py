"""Start `taskmanager serve` as a real subprocess on a real socket (or `taskmanager worker`),
and stop it by its PID.

Shared by the tests that need the real commit or a real restart (commit-before-response,
data surviving a restart). Every process started here is stopped here, also on failure:
SIGINT first (Ctrl-C, the clean path under test), then SIGTERM, then SIGKILL, for the
server and any process it left behind.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

# Seconds for migrate + start-up (+ the embedded server's initdb): generous, since a busy
# machine makes uvicorn workers slow to import, and a passing test never waits it out.
READY_WITHIN = 60.0
STOP_WITHIN = 20.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def clean_env(**overrides: str | None) -> dict[str, str]:
    """This environment without any taskmanager setting, plus `overrides` (None unsets).

    Given a DATABASE_URL (a test database's), the signing key is the one that database's
    caller key was installed from, unless `overrides` says otherwise."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DATABASE_URL", "OWNER_DATABASE_URL") and not key.startswith("TASKMANAGER_")
    }
    if overrides.get("DATABASE_URL") and "TASKMANAGER_JWT_SECRET" not in overrides:
        from tests.support.accounts import TEST_SECRET

        env["TASKMANAGER_JWT_SECRET"] = TEST_SECRET
    env.setdefault("XDG_RUNTIME_DIR", "/tmp")
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


@dataclass
class ServeProcess:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    # Children seen while running (uvicorn workers); stopped too if they outlive the parent.
    children: list[psutil.Process] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def remember_children(self) -> None:
        with suppress(psutil.NoSuchProcess):
            self.children = psutil.Process(self.pid).children(recursive=True)

    def wait_ready(self, within: float = READY_WITHIN) -> None:
        """Poll GET /health/ready until it answers 200; fail with the server's output if not."""
        deadline = time.monotonic() + within
        last: object = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"serve exited with {self.process.returncode} before it was ready:\n"
                    + self.output()
                )
            try:
                response = httpx.get(f"{self.base_url}/health/ready", timeout=2.0)
            except httpx.TransportError as exc:
                last = exc
            else:
                if response.status_code == 200:
                    self.remember_children()
                    return
                last = response
            time.sleep(0.1)
        raise AssertionError(f"serve not ready within {within}s ({last!r}):\n" + self.output())

    def interrupt(self, within: float = STOP_WITHIN) -> int | None:
        """Ctrl-C: send SIGINT and return the exit code, or None if it did not exit in time."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(within)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        """Make sure the server and the children it had are gone (SIGTERM, then SIGKILL)."""
        processes = [p for p in self.children if p.is_running()]
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        terminate_all(processes)


@contextmanager
def serve(
    env: Mapping[str, str],
    cwd: Path,
    *args: str,
    port: int | None = None,
    ready: bool = True,
) -> Iterator[ServeProcess]:
    """Run `python -m taskmanager serve --host 127.0.0.1 --port PORT ARGS` until the block ends.

    Leaving the block sends SIGINT (unless the test already stopped it) and, if the
    process is still there after STOP_WITHIN seconds, kills it and whatever it started.
    """
    port = port or free_port()
    with tempfile.NamedTemporaryFile(
        prefix="taskmanager-serve-", suffix=".log", delete=False
    ) as log_file:
        log_path = Path(log_file.name)
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "taskmanager",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                *args,
            ],
            env=dict(env),
            cwd=cwd,  # not the project root: its .env must not leak into the test
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    server = ServeProcess(process, port, log_path)
    try:
        if ready:
            server.wait_ready()
        yield server
    finally:
        try:
            if server.process.poll() is None:
                server.remember_children()
                server.interrupt()
            server.kill()  # whatever is still there: the parent, or a worker it left behind
        finally:
            log_path.unlink(missing_ok=True)


def postgres_processes(data_dir: Path) -> list[psutil.Process]:
    """Running `postgres` processes whose command line names `data_dir`."""
    needle = str(data_dir.resolve())
    found = []
    for process in psutil.process_iter(attrs=("name", "cmdline")):
        cmdline = process.info["cmdline"] or []
        if process.info["name"] == "postgres" and any(needle in part for part in cmdline):
            found.append(process)
    return found


def stop_postgres(data_dir: Path) -> None:
    """Kill what `postgres_processes(data_dir)` finds: cleanup after a failed test."""
    terminate_all(postgres_processes(data_dir))


def terminate_all(processes: list[psutil.Process]) -> None:
    """SIGTERM each process, then SIGKILL those still running 5 s later."""
    for process in processes:
        with suppress(psutil.NoSuchProcess):
            process.terminate()
    _, alive = psutil.wait_procs(processes, timeout=5)
    for process in alive:
        with suppress(psutil.NoSuchProcess):
            process.kill()


def wait_for_no_postgres(data_dir: Path, within: float = 10.0) -> list[psutil.Process]:
    """The postgres processes still running on `data_dir` after waiting up to `within`."""
    deadline = time.monotonic() + within
    while (left := postgres_processes(data_dir)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


@dataclass
class WorkerProcess:
    """`taskmanager worker` running as a subprocess."""

    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def terminate(self, within: float = STOP_WITHIN) -> int | None:
        """SIGTERM (what a process manager sends): the exit code, or None if it did not
        exit within `within` seconds."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(within)
        except subprocess.TimeoutExpired:
            return None


@contextmanager
def worker(env: Mapping[str, str], cwd: Path) -> Iterator[WorkerProcess]:
    """Run `python -m taskmanager worker` until the block ends; then SIGTERM, and SIGKILL
    if it is still there 5 s later (by its PID)."""
    with tempfile.NamedTemporaryFile(
        prefix="taskmanager-worker-", suffix=".log", delete=False
    ) as log_file:
        log_path = Path(log_file.name)
        process = subprocess.Popen(
            [sys.executable, "-m", "taskmanager", "worker"],
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    running = WorkerProcess(process, log_path)
    try:
        yield running
    finally:
        try:
            if running.terminate(5) is None:
                process.kill()
                process.wait(5)
        finally:
            log_path.unlink(missing_ok=True)
