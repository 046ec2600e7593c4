"""The Makefile's two commands, as `make --dry-run` shows them (nothing is run or installed).

`make run` installs only what serving needs and takes HOST and PORT; `make test` installs
the development tools too.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[2]


def dry_run(*args: str) -> list[str]:
    """The commands `make ARGS` would run from scratch (-B: every target out of date)."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    result = subprocess.run(
        ["make", "--dry-run", "--always-make", "--no-print-directory", *args],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.splitlines()


def syncs(commands: list[str]) -> list[str]:
    return [line for line in commands if " sync " in f"{line}"]


def test_make_run_installs_what_serving_needs_only() -> None:
    (sync,) = syncs(dry_run("run"))
    assert "--extra dev" not in sync
    # Leaves whatever else is installed (the tools of `make test`) where it is.
    assert "--inexact" in sync


def test_make_test_installs_the_development_tools() -> None:
    (sync,) = syncs(dry_run("test"))
    assert "--extra dev" in sync


def test_make_run_serves_on_the_host_and_port_given() -> None:
    commands = dry_run("run", "HOST=0.0.0.0", "PORT=8001")
    (serve,) = [line for line in commands if "taskmanager serve" in line]
    assert serve.split()[-4:] == ["--host", "0.0.0.0", "--port", "8001"]
    default = dry_run("run")
    (serve,) = [line for line in default if "taskmanager serve" in line]
    assert serve.split()[-4:] == ["--host", "127.0.0.1", "--port", "8000"]


def test_an_exported_host_does_not_move_make_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """Some shells export HOST (the machine's name): only `make run HOST=...` sets it."""
    monkeypatch.setenv("HOST", "some-machine")
    monkeypatch.setenv("PORT", "1234")
    (serve,) = [line for line in dry_run("run") if "taskmanager serve" in line]
    assert serve.split()[-4:] == ["--host", "127.0.0.1", "--port", "8000"]
