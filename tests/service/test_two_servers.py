"""Two separate `taskmanager serve` processes that share nothing but PostgreSQL.

Each runs on its own port from its own working directory, with the same DATABASE_URL and
the same TASKMANAGER_JWT_SECRET: two machines behind a load balancer. Everything a login
depends on lives in the database, so it holds across both: a token issued by one is
accepted by the other, a refresh token spent on one is spent on the other (and presenting
it again ends the login everywhere), and failed logins count toward one limit whichever
server they reach, while the owner, at an address they logged in from, still gets in on both.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass

import httpx
import pytest

from taskmanager.config import Settings
from tests.support.accounts import PASSWORD, TEST_SECRET, login_over_http, register_over_http
from tests.support.problems import assert_problem
from tests.support.processes import ServeProcess, clean_env, serve

pytestmark = pytest.mark.server

FAILURES_PER_ACCOUNT_AND_ADDRESS = Settings.model_fields[
    "login_failures_per_account_and_address"
].default
# Another loopback address of this machine: a second client address over real sockets.
ATTACKER_ADDRESS = "127.0.0.2"


@dataclass(frozen=True)
class TwoServers:
    a: ServeProcess
    b: ServeProcess

    def client(self, server: ServeProcess, address: str | None = None) -> httpx.Client:
        """A client of `server`, connecting from `address` (default: 127.0.0.1)."""
        transport = httpx.HTTPTransport(local_address=address) if address else None
        return httpx.Client(base_url=server.base_url, timeout=30, transport=transport)


@pytest.fixture(scope="module")
def servers(
    make_database: Callable[[str], str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TwoServers]:
    env = clean_env(
        DATABASE_URL=make_database("two_servers"),
        TASKMANAGER_JWT_SECRET=TEST_SECRET,
        TASKMANAGER_LOG_LEVEL="WARNING",
    )
    with ExitStack() as stack:
        a = stack.enter_context(serve(env, tmp_path_factory.mktemp("server-a")))
        b = stack.enter_context(serve(env, tmp_path_factory.mktemp("server-b")))
        assert a.port != b.port
        yield TwoServers(a, b)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_a_token_issued_by_one_server_works_on_the_other(servers: TwoServers) -> None:
    registered = register_over_http(servers.a.base_url, "both@example.com")
    with servers.client(servers.a) as a, servers.client(servers.b) as b:
        me = b.get("/users/me", headers=registered.headers)
        assert me.status_code == 200, me.text
        assert me.json()["id"] == registered.user_id

        created = b.post("/tasks", json={"title": "made on B"}, headers=registered.headers)
        assert created.status_code == 201, created.text
        read = a.get(f"/tasks/{created.json()['id']}", headers=registered.headers)
        assert read.status_code == 200, read.text
        assert read.json() == created.json()

        # And the other way: a login on B, used on A.
        on_b = login_over_http(b, "both@example.com")
        listed = a.get("/tasks", headers=bearer(on_b["access_token"]))
        assert listed.status_code == 200, listed.text
        assert [task["id"] for task in listed.json()] == [created.json()["id"]]


def test_a_refresh_token_spent_on_one_server_is_spent_on_the_other(servers: TwoServers) -> None:
    register_over_http(servers.a.base_url, "refresh@example.com")
    with servers.client(servers.a) as a, servers.client(servers.b) as b:
        first = login_over_http(a, "refresh@example.com")
        rotated = a.post("/auth/refresh", json={"refresh_token": first["refresh_token"]})
        assert rotated.status_code == 200, rotated.text
        fresh = rotated.json()
        assert b.get("/users/me", headers=bearer(fresh["access_token"])).status_code == 200

        # The spent token, presented to the other server: refused as reused ...
        reused = b.post("/auth/refresh", json={"refresh_token": first["refresh_token"]})
        assert_problem(reused, 401, problem_type="/problems/unauthorized")
        assert "already used" in reused.json()["detail"]
        assert reused.headers["WWW-Authenticate"].startswith("Bearer")

        # ... and the whole login ended, on both servers: its newest refresh token and its
        # access token stop working.
        for server in (a, b):
            again = server.post("/auth/refresh", json={"refresh_token": fresh["refresh_token"]})
            assert_problem(again, 401)
            me = server.get("/users/me", headers=bearer(fresh["access_token"]))
            assert_problem(me, 401)
            assert me.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'

        # Another login of the same account was not touched.
        other = login_over_http(b, "refresh@example.com")
        assert a.get("/users/me", headers=bearer(other["access_token"])).status_code == 200


def test_failed_logins_count_across_both_servers(servers: TwoServers) -> None:
    assert FAILURES_PER_ACCOUNT_AND_ADDRESS == 5  # split 3 + 2: neither server alone reaches it
    email = "limited@example.com"
    register_over_http(servers.b.base_url, email)  # and logged in, from 127.0.0.1
    wrong = {"username": email, "password": "not the password"}
    right = {"username": email, "password": PASSWORD}
    with (
        servers.client(servers.a) as a,
        servers.client(servers.b) as b,
        servers.client(servers.a, ATTACKER_ADDRESS) as attacker_a,
        servers.client(servers.b, ATTACKER_ADDRESS) as attacker_b,
    ):
        # The limit's failures, split between the servers: neither saw enough on its own.
        for attempt in range(FAILURES_PER_ACCOUNT_AND_ADDRESS):
            failed = (attacker_a, attacker_b)[attempt % 2].post("/auth/token", data=wrong)
            assert_problem(failed, 401)

        # Now both refuse even the right password from there, and say for how long.
        for attacker in (attacker_b, attacker_a):
            blocked = attacker.post("/auth/token", data=right)
            assert_problem(blocked, 429)
            retry_after = int(blocked.headers["Retry-After"])
            assert 0 < retry_after <= 900, retry_after  # within the default 15-minute window

        # The owner, at the address they logged in from, is not held back on either.
        for server in (a, b):
            assert server.post("/auth/token", data=right).status_code == 200

        # Another account is not blocked by this one's failures (the address limit is 50).
        register_over_http(servers.a.base_url, "unlimited@example.com")
        on_a = attacker_a.post(
            "/auth/token", data={"username": "unlimited@example.com", "password": PASSWORD}
        )
        assert on_a.status_code == 200, on_a.text
