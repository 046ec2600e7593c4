"""The package as a user installs it: the wheel, in a fresh virtual environment, no extras.

`pip install taskmanager` must give a working API and CLI on its own: every module outside
`taskmanager.demo` imports, the migrations ship inside the wheel, `--version` and
`python -m taskmanager --help` work, and `taskmanager demo ...` says in one line how to
install the demo extra instead of failing with an ImportError.

Built with the project's uv (`.uv/bin/uv`, bootstrapped by the Makefile; fast, and it reuses
its cache) or, without it, with pip. Skipped when the package index cannot be reached.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from taskmanager import __version__, extras
from taskmanager.cli import DEMO_EXTRA_NEEDED
from taskmanager.postgres import migrate
from tests.support.processes import clean_env

PROJECT = Path(__file__).resolve().parents[2]
UV = PROJECT / ".uv" / "bin" / "uv"
INSTALL_WITHIN = 240  # seconds for one build or install step (pip downloads everything)
RUN_WITHIN = 60

# What uv and pip print when the index cannot be reached (as opposed to a broken package).
NO_INDEX = re.compile(
    r"failed to fetch|error sending request|dns error|name resolution|name or service not "
    r"known|network is unreachable|connection refused|could not connect|newconnectionerror|"
    r"max retries exceeded|connecttimeout|timed out|offline",
    re.IGNORECASE,
)

# Imported one by one in the plain install: everything but the demonstrations, `__main__`
# (it runs the CLI) and Alembic's env.py (it only runs inside an Alembic command).
IMPORT_EVERY_MODULE = """
import importlib, pkgutil, taskmanager
skip = ("taskmanager.demo.", "taskmanager.__main__", "taskmanager.migrations.env")
for module in pkgutil.walk_packages(taskmanager.__path__, "taskmanager."):
    if not (module.name + ".").startswith(skip):
        importlib.import_module(module.name)
from taskmanager.postgres.migrate import heads
print(" ".join(heads()))
"""


@dataclass(frozen=True)
class PlainInstall:
    """A virtual environment holding the built wheel and its runtime dependencies only."""

    bin: Path

    def run(self, program: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bin / program), *args],
            # Nothing from this checkout: no settings, no .env (cwd), no PYTHONPATH.
            env=clean_env(PYTHONPATH=None, VIRTUAL_ENV=None),
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=RUN_WITHIN,
            check=False,
        )


def install_step(command: Sequence[str | Path]) -> None:
    """Run a build or install step; skip the module if the index is unreachable."""
    result = subprocess.run(
        [str(part) for part in command],
        env=clean_env(PYTHONPATH=None, VIRTUAL_ENV=None),
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=INSTALL_WITHIN,
        check=False,
    )
    if result.returncode != 0:
        output = result.stdout + result.stderr
        # Offline, the install cannot be tried; in CI (CI set) it must work, so it fails.
        if NO_INDEX.search(output) and not os.environ.get("CI"):
            pytest.skip(f"the package index cannot be reached: {output.strip()[-300:]}")
        raise AssertionError(f"{' '.join(map(str, command))} failed:\n{output}")


@pytest.fixture(scope="module")
def plain_install(tmp_path_factory: pytest.TempPathFactory) -> PlainInstall:
    work = tmp_path_factory.mktemp("plain-install")
    dist, venv = work / "dist", work / "venv"
    python = venv / "bin" / "python"
    if UV.exists():
        install_step([UV, "build", "--wheel", "--out-dir", dist, PROJECT])
        install_step([UV, "venv", "--quiet", "--python", sys.executable, venv])
        (wheel,) = dist.glob("taskmanager-*.whl")
        install_step([UV, "pip", "install", "--quiet", "--python", python, wheel])
    else:
        pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
        install_step([*pip, "wheel", "--quiet", "--no-deps", "--wheel-dir", dist, PROJECT])
        install_step([sys.executable, "-m", "venv", venv])
        (wheel,) = dist.glob("taskmanager-*.whl")
        venv_pip = [python, "-m", "pip", "--disable-pip-version-check"]
        install_step([*venv_pip, "install", "--quiet", wheel])
    return PlainInstall(venv / "bin")


def test_version(plain_install: PlainInstall, tmp_path: Path) -> None:
    result = plain_install.run("taskmanager", "--version", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"taskmanager {__version__}"


def test_python_m_help(plain_install: PlainInstall, tmp_path: Path) -> None:
    result = plain_install.run("python", "-m", "taskmanager", "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "python -m taskmanager" in result.stdout
    for command in ("serve", "db", "demo"):
        assert re.search(rf"^\W*{command}\s", result.stdout, re.MULTILINE), result.stdout


def test_every_module_but_the_demos_imports(plain_install: PlainInstall, tmp_path: Path) -> None:
    """The runtime dependencies are enough for the API and CLI, and the migrations ship."""
    result = plain_install.run("python", "-c", IMPORT_EVERY_MODULE, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == list(migrate.heads())


@pytest.mark.parametrize("args", [("mistakes",), ("sync-trap", "--concurrency", "5"), ("--help",)])
def test_demo_without_the_extra_is_one_line(
    plain_install: PlainInstall, tmp_path: Path, args: tuple[str, ...]
) -> None:
    result = plain_install.run("taskmanager", "demo", *args, cwd=tmp_path)
    output = (result.stdout + result.stderr).strip()
    assert result.returncode != 0, output
    assert "Traceback" not in output
    assert len(output.splitlines()) == 1, output
    assert output.startswith(DEMO_EXTRA_NEEDED), output
    assert re.fullmatch(r".* \(missing: [\w, .-]+\)", output), output


def test_the_demo_extra_is_read_from_one_place() -> None:
    """The installed metadata and the checkout's pyproject.toml list the same demo extra,
    the one the CLI's check reads; in this (make install) environment nothing is missing."""
    installed = extras.extra_requirements("demo")
    assert installed is not None
    assert sorted(installed) == sorted(extras._from_pyproject("demo") or [])
    assert {"psycopg", "matplotlib", "httpx"} <= set(installed)
    assert extras.missing_requirements("demo") == []
    assert extras.extra_requirements("no-such-extra") == []
