"""The README and the docs pages, pasted in order: every `bash` block runs, and must succeed.

One real `taskmanager serve` (as `make run` starts it: the embedded PostgreSQL, here in a
scratch data directory) serves every page. Each page runs in one bash of its own, its
blocks in order (so the `TOKEN` and ids one block captures serve the next), under
`set -euo pipefail`: a block fails the page when any of its commands fails, and the
blocks check what the text promises themselves (`expect 404 curl ...`, `grep`, `test`).
The blocks say `http://127.0.0.1:8000`, where `make run` serves; the test replaces that
address with its server's.

A block that must not run here (`make run` itself, commands for another machine) says why
in a marker on the line before its fence (tests/support/markdown.py); they are counted,
so they stay few.
"""

from __future__ import annotations

import re
import secrets
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from taskmanager.cache.local_redis import redis_server_binary
from tests.support.markdown import (
    ROOT,
    SHELL_LANGUAGES,
    Block,
    blocks,
    name_of,
    pages,
)
from tests.support.processes import ServeProcess, clean_env, serve, stop_postgres
from tests.support.redis import REDIS_MISSING

ADDRESS = "127.0.0.1:8000"  # where `make run` serves, and every block says it does
PAGE_WITHIN = 600  # seconds for one page's blocks; the slowest, the demos, takes about 30 s
MOST_NOT_RUN = 10  # blocks that may say why they are not run, over all pages
# Pages whose blocks talk to the Redis `serve` starts (only where redis-server is installed).
NEEDS_REDIS = {"docs/cache.md"}

RUN_PAGES = [page for page in pages() if any(block.runs for block in blocks(page))]


@dataclass
class Walkthrough:
    """The server the pages' blocks talk to, and what their shell gets."""

    server: ServeProcess
    env: dict[str, str]
    cwd: Path

    def script(self, page: Path) -> str:
        """The page's blocks that run, in order, each announced by where it is."""
        lines = ["set -euo pipefail", """trap 'echo "failed: $BASH_COMMAND" >&2' ERR"""]
        for block in blocks(page):
            if block.runs:
                lines.append(f"printf '\\n>>> %s\\n' {shlex.quote(block.where)}")
                lines.append(block.text.replace(ADDRESS, f"127.0.0.1:{self.server.port}"))
        return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def walkthrough() -> Iterator[Walkthrough]:
    """`taskmanager serve` on a throwaway embedded database, with a metrics token (the
    operations page reads /metrics), and a working directory like a checkout's: `.venv`
    is the project's, nothing else is there.

    Not under tmp_path: as root, PostgreSQL runs as "pgserver", which must traverse every
    parent directory (see tests/service/test_serve_restart.py)."""
    if shutil.which("curl") is None or shutil.which("bash") is None:
        pytest.skip("the walkthrough needs bash and curl")
    parent = Path(tempfile.mkdtemp(prefix="taskmanager-walkthrough-"))
    data_dir = parent / "pgdata"
    cwd = parent / "checkout"
    cwd.mkdir()
    (cwd / ".venv").symlink_to(ROOT / ".venv")
    env = clean_env(
        TASKMANAGER_DATA_DIR=str(data_dir),
        # Where `make run` writes mail (beside its database, in the checkout), which the
        # pages' examples read.
        TASKMANAGER_MAIL_DIR=str(cwd / ".taskmanager" / "mail"),
        TASKMANAGER_LOG_LEVEL="WARNING",
        TASKMANAGER_METRICS_TOKEN=secrets.token_urlsafe(32),
        # Each page opens the accounts it uses, as a reader following that page would; all
        # the pages together, from one address, open more than the default allows in an
        # hour (10).
        TASKMANAGER_REGISTRATIONS_PER_ADDRESS="40",
    )
    try:
        with serve(env, cwd) as server:
            yield Walkthrough(server, env, cwd)
    finally:
        stop_postgres(data_dir)
        shutil.rmtree(parent, ignore_errors=True)


def _failure(page: Path, output: str, server: ServeProcess) -> str:
    """Which block failed, the block itself, and what it printed."""
    where = None
    for line in output.splitlines():
        if line.startswith(">>> "):
            where = line.removeprefix(">>> ")
    block = next((b for b in blocks(page) if b.where == where), None)
    shown = "\n".join(output.splitlines()[-40:])
    return (
        f"the block at {where} failed:\n{block.text if block else '?'}\n"
        f"--- what the page's blocks printed (the end):\n{shown}\n"
        f"--- the server's output (the end):\n{server.output()[-3000:]}"
    )


@pytest.mark.timeout(PAGE_WITHIN + 120)
@pytest.mark.parametrize("page", RUN_PAGES, ids=name_of)
def test_the_page_runs_in_order(page: Path, walkthrough: Walkthrough) -> None:
    if name_of(page) in NEEDS_REDIS and redis_server_binary() is None:
        pytest.skip(f"{name_of(page)}: {REDIS_MISSING}")
    started = time.monotonic()
    result = subprocess.run(
        ["bash", "--noprofile", "--norc", "-c", walkthrough.script(page)],
        env=walkthrough.env,
        cwd=walkthrough.cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=PAGE_WITHIN,
        check=False,
    )
    assert result.returncode == 0, _failure(page, result.stdout, walkthrough.server)
    print(f"{name_of(page)}: {time.monotonic() - started:.1f} s")


# ─── what the test relies on, and what keeps blocks from slipping out of it


def _all_blocks() -> list[Block]:
    return [block for page in pages() for block in blocks(page)]


def test_the_readme_and_the_api_page_are_walked() -> None:
    names = {name_of(page) for page in RUN_PAGES}
    assert {"README.md", "docs/api.md"} <= names
    assert sum(block.runs for block in blocks(ROOT / "README.md")) >= 8


def test_few_blocks_are_not_run_and_each_says_why() -> None:
    not_run = [block for block in _all_blocks() if block.not_run is not None]
    assert len(not_run) <= MOST_NOT_RUN, [block.where for block in not_run]
    for block in not_run:
        assert block.language == "bash", f"{block.where}: only bash blocks run anyway"
        assert len(block.not_run or "") >= 10, f"{block.where}: say why it is not run"


def test_commands_are_in_bash_blocks() -> None:
    """A block of commands in another language would be skipped without a word."""
    other = [block.where for block in _all_blocks() if block.language in SHELL_LANGUAGES]
    assert other == []


def test_blocks_that_run_talk_to_make_runs_address() -> None:
    """The test can point a block at its server only where the block says 127.0.0.1:8000."""
    for block in _all_blocks():
        if block.runs:
            for other in ("localhost:", "0.0.0.0:", "[::1]:"):
                assert other not in block.text, block.where
            ports = set(re.findall(r"127\.0\.0\.1:(\d+)", block.text))
            assert ports <= {"8000"}, f"{block.where}: {ports}"
