"""Logging in through Swagger UI, as a person would: headless Chromium driven over WebDriver.

The docs page is where many users meet the API first: register, press **Authorize**, type
the email and password into the OAuth2 password-flow dialog, then "Try it out" on
GET /tasks. This test does exactly that against the real `taskmanager serve` and reads the
status Swagger UI shows: 200. It proves that the token endpoint speaks the form the
dialog sends, that the token Swagger UI receives is accepted, and that the page needs
nothing from the internet.

No Python dependency: the Debian `chromium-driver` package (scripts/install-system-deps.sh)
spoken to with plain W3C WebDriver requests through httpx.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.accounts import PASSWORD, TEST_SECRET
from tests.support.processes import clean_env, free_port, serve

pytestmark = [pytest.mark.browser, pytest.mark.server]

EMAIL = "swagger@example.com"
WAIT_SECONDS = 30
# W3C WebDriver: the key of an element reference in a response.
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"


def _chromedriver() -> str:
    path = shutil.which("chromedriver")
    if path is None:
        pytest.skip("chromedriver is not installed (run scripts/install-system-deps.sh as root)")
    return path


@pytest.fixture(scope="module")
def server_url(
    make_database: Callable[[str], str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    _chromedriver()
    env = clean_env(
        DATABASE_URL=make_database("docs_authorize"),
        TASKMANAGER_JWT_SECRET=TEST_SECRET,
        TASKMANAGER_LOG_LEVEL="WARNING",
    )
    with serve(env, tmp_path_factory.mktemp("docs-authorize")) as server:
        response = httpx.post(
            f"{server.base_url}/auth/register", json={"email": EMAIL, "password": PASSWORD}
        )
        assert response.status_code == 202, response.text
        yield server.base_url


def _reference(found: dict[str, str]) -> str:
    """An element's id in a WebDriver answer."""
    return found[ELEMENT]


class Browser:
    """The few WebDriver commands the test needs."""

    def __init__(self, driver_url: str, session_id: str) -> None:
        self.http = httpx.Client(base_url=f"{driver_url}/session/{session_id}", timeout=60)

    def command(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = self.http.request(method, path, json=body if body is not None else None)
        payload = response.json()
        assert response.status_code == 200, payload
        return payload["value"]

    def find(self, css: str) -> str | None:
        found = self.command("POST", "/elements", {"using": "css selector", "value": css})
        return _reference(found[0]) if found else None

    def wait_for(self, css: str, *, text: str | None = None) -> str:
        """The first element matching `css` (with `text` in it), waiting for it to appear."""
        deadline = time.monotonic() + WAIT_SECONDS
        while time.monotonic() < deadline:
            for found in self.command("POST", "/elements", {"using": "css selector", "value": css}):
                element = _reference(found)
                if text is None or text in self.text(element):
                    return element
            time.sleep(0.2)
        raise AssertionError(
            f"no {css!r}{f' with {text!r}' if text else ''} within {WAIT_SECONDS} s"
        )

    def click(self, element: str) -> None:
        # Through the page's own click(): Swagger UI's buttons may sit under its sticky header.
        self.command(
            "POST",
            "/execute/sync",
            {"script": "arguments[0].click()", "args": [{ELEMENT: element}]},
        )

    def type(self, element: str, text: str) -> None:
        self.command("POST", f"/element/{element}/value", {"text": text})

    def text(self, element: str) -> str:
        return str(self.command("GET", f"/element/{element}/text"))

    def script(self, source: str, *args: Any) -> Any:
        """Run `source` (a function body) in the page; its return value."""
        return self.command("POST", "/execute/sync", {"script": source, "args": list(args)})

    def console(self) -> list[str]:
        """The page's console messages since the last call (ChromeDriver's log endpoint)."""
        entries = self.command("POST", "/se/log", {"type": "browser"})
        return [str(entry["message"]) for entry in entries]


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    port = free_port()
    driver = subprocess.Popen(
        [_chromedriver(), f"--port={port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    driver_url = f"http://127.0.0.1:{port}"
    session_id: str | None = None
    try:
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{driver_url}/status", timeout=2).json()["value"]["ready"]:
                    break
            assert time.monotonic() < deadline, "chromedriver did not start"
            time.sleep(0.2)
        options = {
            "args": [
                "--headless",
                "--no-sandbox",  # root in a container: the setuid sandbox is not available
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--window-size=1280,2000",
                f"--user-data-dir={tmp_path / 'profile'}",
            ]
        }
        created = httpx.post(
            f"{driver_url}/session",
            json={
                "capabilities": {
                    "alwaysMatch": {
                        "goog:chromeOptions": options,
                        # The page's console, read by `console()`.
                        "goog:loggingPrefs": {"browser": "ALL"},
                    }
                }
            },
            timeout=60,
        ).json()["value"]
        session_id = created["sessionId"]
        yield Browser(driver_url, session_id)
    finally:
        if session_id is not None:
            with contextlib.suppress(httpx.HTTPError):
                httpx.delete(f"{driver_url}/session/{session_id}", timeout=30)
        driver.terminate()
        try:
            driver.wait(timeout=10)
        except subprocess.TimeoutExpired:
            driver.kill()
            driver.wait(timeout=5)


def test_authorize_then_get_tasks_answers_200(server_url: str, browser: Browser) -> None:
    browser.command("POST", "/url", {"url": f"{server_url}/docs"})

    # Authorize: the OAuth2 password flow of /auth/token.
    browser.click(browser.wait_for("button.authorize"))
    browser.type(browser.wait_for("#oauth_username"), EMAIL)
    browser.type(browser.wait_for("#oauth_password"), PASSWORD)
    browser.click(browser.wait_for(".auth-btn-wrapper button.authorize"))
    browser.wait_for(".auth-container", text="Authorized")
    browser.click(browser.wait_for(".auth-btn-wrapper button.btn-done"))

    # GET /tasks: open it, "Try it out", "Execute"; Swagger UI shows the live answer.
    browser.click(browser.wait_for("#operations-tasks-list_tasks .opblock-summary-control"))
    browser.click(browser.wait_for("#operations-tasks-list_tasks button.try-out__btn"))
    browser.click(browser.wait_for("#operations-tasks-list_tasks button.execute"))
    status = browser.wait_for(
        "#operations-tasks-list_tasks .live-responses-table tr.response .response-col_status"
    )
    assert browser.text(status).strip() == "200"
    # The request Swagger UI sent carried the token it was given at login.
    curl = browser.text(browser.wait_for("#operations-tasks-list_tasks .curl-command"))
    assert "Authorization: Bearer " in curl
    # The page's Content-Security-Policy refused nothing the dialog or the call needed.
    console = browser.console()
    assert not [line for line in console if "Content Security Policy" in line], console


# The ids of the inputs and selects of the Authorize dialog a person can see.
_VISIBLE_FIELDS = """
return [...document.querySelectorAll('.auth-container input, .auth-container select')]
    .filter(field => field.checkVisibility())
    .map(field => field.id);
"""
_LABEL_SHOWN = """
const label = document.querySelector(`label[for="${arguments[0]}"]`);
return getComputedStyle(label, '::before').content;
"""


def test_the_authorize_dialog_asks_only_for_the_email_and_the_password(
    server_url: str, browser: Browser
) -> None:
    browser.command("POST", "/url", {"url": f"{server_url}/docs"})
    browser.click(browser.wait_for("button.authorize"))
    browser.wait_for("#oauth_username")

    assert browser.script(_VISIBLE_FIELDS) == ["oauth_username", "oauth_password"]
    assert browser.script(_LABEL_SHOWN, "oauth_username") == '"email:"'
    dialog = browser.text(browser.wait_for(".auth-container"))
    for noise in ("client_id", "client_secret", "Client credentials", "scopes", "Flow"):
        assert noise.lower() not in dialog.lower(), dialog

    # A wrong password: the dialog says so, in words.
    browser.type(browser.wait_for("#oauth_username"), EMAIL)
    browser.type(browser.wait_for("#oauth_password"), "not the password")
    browser.click(browser.wait_for(".auth-btn-wrapper button.authorize"))
    browser.wait_for(".auth-container .errors", text="the email or the password is wrong")

    # The right one: authorized, and what it shows is the email and the password.
    password = browser.wait_for("#oauth_password")
    browser.command("POST", f"/element/{password}/clear", {})
    browser.type(password, PASSWORD)
    browser.click(browser.wait_for(".auth-btn-wrapper button.authorize"))
    authorized = browser.text(browser.wait_for(".auth-container", text="Authorized"))
    assert EMAIL in authorized
    for noise in ("client_secret", "Client credentials", "basic"):
        assert noise not in authorized, authorized
    console = browser.console()
    assert not [line for line in console if "Content Security Policy" in line], console
