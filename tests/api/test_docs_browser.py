"""A real-browser smoke test of /docs and /redoc: headless Chromium against the real server.

The HTML of /docs loading proves little: Swagger UI builds the page in JavaScript from
/openapi.json, and shows "Unable to render this definition" when the two disagree (an
OpenAPI 3.1 document with a Swagger UI too old for it) or nothing when an asset is missing.
So Chromium runs the page's scripts (`--virtual-time-budget`) and the test reads the DOM
it rendered: the operation blocks must be there, the deprecated PUT shown as deprecated.
The page's console (`--enable-logging=stderr`) must report no Content-Security-Policy
violation: the policy allows what the page needs, and nothing it needs is refused.

No Python dependency: the Debian `chromium` package (scripts/install-system-deps.sh
installs it for `make test`) with `--dump-dom` and `--screenshot`. The network flags keep
Chromium off the internet this machine does not have; each run gets its own profile and
process group, killed whole afterwards so no renderer outlives the test.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.processes import clean_env, serve

pytestmark = [pytest.mark.browser, pytest.mark.server]

CHROMIUM_TIMEOUT = 45  # seconds for one Chromium run (it usually takes 2-4)
VIRTUAL_TIME_BUDGET_MS = 15_000  # page time Chromium lets the scripts run before dumping
# Set to a path (docs/img/swagger-ui.png) to remake the README's screenshot of /docs.
SCREENSHOT_ENV = "TASKMANAGER_DOCS_SCREENSHOT"


def _chromium() -> str:
    for candidate in (shutil.which("chromium"), "/usr/bin/chromium"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.skip("Chromium is not installed (run scripts/install-system-deps.sh as root)")


def _stop(process: subprocess.Popen[Any], *, group: bool = False) -> None:
    """SIGINT (a clean shutdown), then SIGKILL; `group` also reaps the process's children."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
    if group:  # the process led its own group (start_new_session): kill what it left
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def server_url(
    make_database: Callable[[str], str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The real `taskmanager serve` on a free port, with its own database."""
    _chromium()  # skip before starting anything when there is no browser
    env = clean_env(DATABASE_URL=make_database("docs_browser"), TASKMANAGER_LOG_LEVEL="WARNING")
    with serve(env, tmp_path_factory.mktemp("docs-server")) as server:
        yield server.base_url


def _run_chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run headless Chromium once with a fresh profile; its whole process group dies after."""
    profile = tmp_path / f"profile-{time.monotonic_ns()}"
    command = [
        _chromium(),
        "--headless",
        "--no-sandbox",  # root in a container: the setuid sandbox is not available
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        f"--virtual-time-budget={VIRTUAL_TIME_BUDGET_MS}",
        "--enable-logging=stderr",  # the page's console, CSP violations included
        "--v=0",
        *args,
    ]
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, so its helpers can be killed too
    )
    try:
        stdout, stderr = process.communicate(timeout=CHROMIUM_TIMEOUT)
    except subprocess.TimeoutExpired:
        _stop(process, group=True)
        pytest.fail(f"Chromium did not finish in {CHROMIUM_TIMEOUT} s: {' '.join(command)}")
    finally:
        _stop(process, group=True)
        shutil.rmtree(profile, ignore_errors=True)
    assert process.returncode == 0, f"Chromium failed ({process.returncode}):\n{stderr}"
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


# ReDoc's "API docs by Redocly" link shows a logo from its CDN, with no option to turn it
# off, and hides it when it does not load (as offline): the policy's one expected refusal.
REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"


def csp_violations(console: str, *expected: str) -> list[str]:
    """The console lines in which the browser refused something by the page's policy, but
    for the refusals of the `expected` URLs."""
    return [
        line
        for line in console.splitlines()
        if "Content Security Policy" in line and not any(f"'{url}'" in line for url in expected)
    ]


class _Operations(HTMLParser):
    """The operation blocks Swagger UI rendered: (METHOD, path, deprecated) each."""

    def __init__(self) -> None:
        super().__init__()
        self.operations: list[tuple[str, str, bool]] = []
        self._current: dict[str, str | bool] | None = None
        self._in_method = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        classes = (attributes.get("class") or "").split()
        if tag == "div" and "opblock" in classes:
            self._flush()
            self._current = {
                "method": "",
                "path": "",
                "deprecated": "opblock-deprecated" in classes,
            }
        elif self._current is not None and "opblock-summary-method" in classes:
            self._in_method = True
        elif self._current is not None and attributes.get("data-path") is not None:
            # class opblock-summary-path, or opblock-summary-path__deprecated (struck through)
            self._current["path"] = attributes["data-path"] or ""

    def handle_endtag(self, tag: str) -> None:
        self._in_method = False

    def handle_data(self, data: str) -> None:
        if self._in_method and self._current is not None:
            self._current["method"] = f"{self._current['method']}{data.strip()}"

    def close(self) -> None:
        super().close()
        self._flush()

    def _flush(self) -> None:
        if self._current is not None:
            current, self._current = self._current, None
            method, path, deprecated = current["method"], current["path"], current["deprecated"]
            self.operations.append((str(method), str(path), bool(deprecated)))


def _operations(dom: str) -> list[tuple[str, str, bool]]:
    parser = _Operations()
    parser.feed(dom)
    parser.close()
    return parser.operations


def test_swagger_ui_renders_the_operations(server_url: str, tmp_path: Path) -> None:
    run = _run_chromium(tmp_path, "--dump-dom", f"{server_url}/docs")
    dom = run.stdout
    (tmp_path / "docs.html").write_text(dom)  # to look at when an assertion fails

    assert not csp_violations(run.stderr), csp_violations(run.stderr)

    assert "Unable to render this definition" not in dom, dom[:2000]
    assert 'class="swagger-ui"' in dom, "Swagger UI did not mount:\n" + dom[:2000]
    operations = _operations(dom)
    assert ("POST", "/tasks", False) in operations, operations
    assert ("GET", "/tasks", False) in operations, operations
    assert ("GET", "/tasks/{task_id}", False) in operations, operations
    assert ("PATCH", "/tasks/{task_id}", False) in operations, operations
    assert ("PUT", "/tasks/{task_id}", True) in operations, operations  # deprecated=True
    assert ("POST", "/categories", False) in operations, operations
    assert ("GET", "/categories", False) in operations, operations
    assert ("GET", "/health/live", False) in operations, operations
    assert [op for op in operations if op[2]] == [("PUT", "/tasks/{task_id}", True)]
    # The schemas section (Problem among them) rendered too, and no doc route leaked in.
    assert "Problem" in dom
    assert not any(path in {"/docs", "/redoc"} for _, path, _ in operations), operations


def test_swagger_ui_screenshot_is_not_blank(server_url: str, tmp_path: Path) -> None:
    png = tmp_path / "docs.png"
    _run_chromium(tmp_path, f"--screenshot={png}", "--window-size=1280,2000", f"{server_url}/docs")

    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1280, 2000)
    # A blank page compresses to a few KB; rendered operation blocks take far more.
    assert len(data) > 60_000, f"the screenshot looks empty ({len(data)} bytes)"

    readme_image = os.environ.get(SCREENSHOT_ENV)
    if readme_image:  # the README's image: the top of the page, in a smaller window
        readme_png = tmp_path / "swagger-ui.png"
        window = "--window-size=1280,900"
        _run_chromium(tmp_path, f"--screenshot={readme_png}", window, f"{server_url}/docs")
        Path(readme_image).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(readme_png, readme_image)


def test_redoc_renders_the_operations(server_url: str, tmp_path: Path) -> None:
    run = _run_chromium(tmp_path, "--dump-dom", f"{server_url}/redoc")
    dom = run.stdout
    (tmp_path / "redoc.html").write_text(dom)

    assert not csp_violations(run.stderr, REDOC_LOGO), csp_violations(run.stderr, REDOC_LOGO)

    assert "Something went wrong" not in dom, dom[:2000]
    # The side menu lists every operation of the served document with its method badge ...
    methods = re.findall(r'class="[^"]*\boperation-type (\w+)"', dom)
    document = httpx.get(f"{server_url}/openapi.json", timeout=10).json()
    documented = [method for path in document["paths"].values() for method in path]
    assert len(documented) >= 27  # tasks, categories, health, auth, users, workspaces
    # ReDoc badges the webhooks section's entries (what the service sends) "hook".
    hooks = ["hook" for _ in document.get("webhooks", {})]
    assert len(hooks) >= 4
    assert sorted(methods) == sorted(documented + hooks), methods
    # ... and the content its title, the deprecated PUT's with a "Deprecated" badge.
    assert re.search(r"Replace Task <span[^>]*>\s*Deprecated\s*</span>", dom), dom[:2000]
    assert "Create Category" in dom
