"""OutboundClient against real servers on 127.0.0.1, and every way of aiming it at an address
it must not reach: literal private addresses, numeric tricks, IPv6 wrappers of IPv4, names
that resolve to the inside, DNS rebinding, redirects, proxies from the environment."""

from __future__ import annotations

import asyncio
import gzip
import ipaddress
import time
import tracemalloc

import httpcore
import pytest

from taskmanager.config import Settings
from taskmanager.integrations.outbound import (
    OutboundClient,
    OutboundConnectionError,
    OutboundPolicy,
    OutboundTimeout,
    Resolver,
    ResponseTooLarge,
    UndecodableAnswer,
    UnsafeDestination,
    _CheckedBackend,
)
from tests.support.scripted_server import Received, Reply, scripted_server

LOCAL = OutboundPolicy(allow_http=True, allowed_networks=(ipaddress.ip_network("127.0.0.1/32"),))
PUBLIC_ONLY = OutboundPolicy(allow_http=True)

# Each literal destination and the words its refusal must contain.
FORBIDDEN_LITERALS = [
    ("http://127.0.0.1/", "loopback"),
    ("http://127.8.9.10/", "loopback"),
    ("http://[::1]/", "loopback"),
    ("http://10.0.0.1/", "private"),
    ("http://172.16.5.4/", "private"),
    ("http://192.168.1.1/", "private"),
    ("http://[fd00::1]/", "private"),
    ("http://[fd00:ec2::254]/", "private"),  # a cloud's IPv6 metadata address
    ("http://169.254.169.254/latest/meta-data/", "link-local"),
    ("http://[fe80::1%25eth0]/", "link-local"),
    ("http://100.64.0.1/", "private|not a public"),  # carrier-grade NAT
    ("http://0.0.0.0/", "unspecified"),
    ("http://[::]/", "unspecified"),
    ("http://192.0.2.1/", "private|not a public"),  # documentation
    ("http://224.0.0.1/", "multicast"),
    ("http://[ff02::1]/", "multicast"),
    ("http://[::ffff:127.0.0.1]/", "carries 127.0.0.1"),  # IPv4-mapped IPv6
    ("http://[::ffff:a9fe:a9fe]/", "carries 169.254.169.254"),
    ("http://[64:ff9b::7f00:1]/", "carries 127.0.0.1"),  # NAT64
    ("http://[2002:a00:1::]/", "carries 10.0.0.1"),  # 6to4
    ("http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/", "carries 127.0.0.1"),  # Teredo
    ("http://[::127.0.0.1]/", "not a global unicast"),  # IPv4-compatible (deprecated)
    ("http://[::a9fe:a9fe]/", "not a global unicast"),
    ("http://[::ffff:0:7f00:1]/", "not a global unicast"),  # SIIT
    ("http://[64:ff9b:1::a9fe:a9fe]/", "not a global unicast"),  # a local NAT64 prefix
    ("http://[5f00::1]/", "not a global unicast"),
]
# Hosts refused before any lookup, by how they are written.
FORBIDDEN_FORMS = [
    ("http://localhost/", "local machine"),
    ("http://LOCALHOST./", "local machine"),
    ("http://tasks.localhost/", "local machine"),
    ("http://2130706433/", "non-standard form"),  # 127.0.0.1 as one decimal number
    ("http://0x7f000001/", "non-standard form"),
    ("http://0x7f.1/", "non-standard form"),
    ("http://0177.0.0.1/", "non-standard form|Invalid IPv4"),  # octal
    ("http://127.1/", "non-standard form"),
    ("http://%31%32%37.0.0.1/", "percent-encoded"),
    ("http://user:secret@example.com/", "user name or password"),
    ("ftp://example.com/", "must start with"),
    ("file:///etc/passwd", "must start with"),
    ("gopher://example.com/", "must start with"),
    ("http://" + "a" * 2050 + ".com/", "at most"),
    ("http://xn--localhost/", "not a URL"),  # IDNA refuses it: was a 500
    ("http://xn--ls8h.la/", "not a URL"),
    ("http://example.com:0/", "not a port"),
    ("http://example.com:99999/", "not a URL|not a port"),
]


@pytest.mark.parametrize(("url", "why"), FORBIDDEN_LITERALS + FORBIDDEN_FORMS)
async def test_a_forbidden_destination_is_refused_before_any_connection(url: str, why: str) -> None:
    async with OutboundClient(PUBLIC_ONLY) as client:
        with pytest.raises(UnsafeDestination, match=why):
            client.check_url(url)
        with pytest.raises(UnsafeDestination, match=why):
            await client.request("GET", url, timeout=2)


def test_plain_http_only_where_the_deployment_allows_it() -> None:
    strict = OutboundClient(OutboundPolicy())
    with pytest.raises(UnsafeDestination, match="https://"):
        strict.check_url("http://example.com/hook")
    assert strict.check_url("https://example.com/hook#part") == "https://example.com/hook"
    assert OutboundClient(PUBLIC_ONLY).check_url("http://example.com/") == "http://example.com/"


async def test_the_allow_list_reaches_a_local_receiver_and_nothing_next_to_it() -> None:
    async with (
        scripted_server(lambda request: Reply(200, body=b"hello")) as server,
        OutboundClient(LOCAL) as client,
    ):
        response = await client.request(
            "POST", server.url("/hook"), content=b'{"a":1}', headers={"X-Test": "1"}
        )
        assert (response.status_code, response.body, response.truncated) == (200, b"hello", False)
        assert server.received[0].body == b'{"a":1}'
        assert server.received[0].headers["x-test"] == "1"
        assert server.received[0].headers["user-agent"] == "taskmanager"
        # The allow-list is the networks it names: 127.0.0.2 is loopback and still refused.
        with pytest.raises(UnsafeDestination, match="loopback"):
            await client.request("GET", f"http://127.0.0.2:{server.port}/")
    async with scripted_server(lambda request: Reply()) as server:
        with pytest.raises(UnsafeDestination, match="loopback"):
            await OutboundClient(PUBLIC_ONLY).request("GET", server.url())
        assert server.received == []


def _resolver(*answers: list[str]) -> tuple[list[str], Resolver]:
    """A resolver answering each lookup with the next of `answers` (the last one repeats),
    and the list of names it was asked for."""
    asked: list[str] = []

    async def resolve(host: str, port: int) -> list[str]:
        asked.append(host)
        return answers[min(len(asked), len(answers)) - 1]

    return asked, resolve


async def test_a_name_that_resolves_to_the_inside_is_refused_before_connecting() -> None:
    async with scripted_server(lambda request: Reply()) as server:
        for answer in (["127.0.0.1"], ["169.254.169.254"], ["::ffff:127.0.0.1"], ["10.1.2.3"]):
            asked, resolve = _resolver(answer)
            client = OutboundClient(PUBLIC_ONLY, resolver=resolve)
            with pytest.raises(UnsafeDestination, match=r"hooks\.example\.com resolves to"):
                await client.request("GET", f"http://hooks.example.com:{server.port}/")
            assert asked == ["hooks.example.com"]
            await client.aclose()
        assert server.received == []


async def test_one_forbidden_address_in_an_answer_refuses_the_whole_name() -> None:
    _, resolve = _resolver(["93.184.215.14", "127.0.0.1"])
    async with OutboundClient(PUBLIC_ONLY, resolver=resolve) as client:
        with pytest.raises(UnsafeDestination, match=r"127\.0\.0\.1 is a loopback"):
            await client.request("GET", "http://mixed.example.com/")


async def test_dns_rebinding_the_connection_goes_to_the_address_that_was_checked() -> None:
    """The name answers an allowed address once, then a forbidden one. The request reaches
    the checked address (nothing resolves the name a second time for that connection), and
    the next new connection asks again and is refused."""
    asked, resolve = _resolver(["127.0.0.1"], ["10.0.0.1"])
    async with (
        scripted_server(lambda request: Reply(200, body=b"checked")) as server,
        OutboundClient(LOCAL, resolver=resolve) as client,
    ):
        url = f"http://rebind.example.com:{server.port}/"
        assert (await client.request("GET", url)).body == b"checked"
        assert (await client.request("GET", url)).body == b"checked"  # the pooled connection
        assert asked == ["rebind.example.com"]
        assert server.received[0].headers["host"] == f"rebind.example.com:{server.port}"
    async with (
        scripted_server(lambda request: Reply()) as server,
        OutboundClient(LOCAL, resolver=resolve) as fresh,
    ):
        with pytest.raises(UnsafeDestination, match=r"10\.0\.0\.1 is a private"):
            await fresh.request("GET", f"http://rebind.example.com:{server.port}/")
        assert server.received == []


async def test_a_redirect_to_a_private_address_is_answered_not_followed() -> None:
    async with scripted_server(lambda request: Reply()) as inside:
        location = f"http://169.254.169.254:{inside.port}/latest/meta-data/"

        def redirect(request: Received) -> Reply:
            return Reply(302, headers={"Location": location}, body=b"")

        async with scripted_server(redirect) as server, OutboundClient(LOCAL) as client:
            response = await client.request("GET", server.url())
            assert response.status_code == 302
            assert response.headers["location"] == location
            assert len(server.received) == 1
        assert inside.received == []


async def test_a_proxy_in_the_environment_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    # The proxy would see (and could answer for) every request, were it used.
    async with (
        scripted_server(lambda request: Reply(body=b"direct")) as server,
        scripted_server(lambda request: Reply(body=b"proxy")) as proxy,
    ):
        monkeypatch.setenv("HTTP_PROXY", proxy.url())
        monkeypatch.setenv("ALL_PROXY", proxy.url())
        async with OutboundClient(LOCAL) as client:
            assert (await client.request("GET", server.url())).body == b"direct"
        assert proxy.received == []


async def test_a_slow_answer_times_out_within_the_time_allowed() -> None:
    async with (
        scripted_server(lambda request: Reply(delay=5)) as server,
        OutboundClient(LOCAL) as client,
    ):
        started = time.perf_counter()
        with pytest.raises(OutboundTimeout, match=r"within 0\.3 s"):
            await client.request("GET", server.url(), timeout=0.3)
        assert time.perf_counter() - started < 2


async def test_a_reset_connection_is_a_connection_error() -> None:
    async with (
        scripted_server(lambda request: Reply(reset=True)) as server,
        OutboundClient(LOCAL) as client,
    ):
        with pytest.raises(OutboundConnectionError):
            await client.request("GET", server.url(), timeout=2)


async def test_a_refused_connection_is_a_connection_error() -> None:
    async with scripted_server(lambda request: Reply()) as server:
        port = server.port
    async with OutboundClient(LOCAL) as client:
        with pytest.raises(OutboundConnectionError):
            await client.request("GET", f"http://127.0.0.1:{port}/", timeout=2)


async def test_a_large_body_is_cut_or_refused() -> None:
    big = b"x" * 300_000
    async with (
        scripted_server(lambda request: Reply(body=big)) as server,
        OutboundClient(LOCAL) as client,
    ):
        cut = await client.request("GET", server.url(), max_bytes=1000)
        assert (len(cut.body), cut.truncated) == (1000, True)
        with pytest.raises(ResponseTooLarge, match="300000 bytes, more than 1000"):
            await client.request("GET", server.url(), max_bytes=1000, refuse_larger=True)


async def test_a_unix_socket_is_never_reached() -> None:
    with pytest.raises(UnsafeDestination):
        await _CheckedBackend(LOCAL, None).connect_unix_socket("/tmp/anything.sock")


def test_every_connection_goes_through_the_checked_backend() -> None:
    """The transport's pool is the one given the checking backend: were httpx to build its
    pool elsewhere, this fails before any request could bypass the check."""
    client = OutboundClient(LOCAL)
    transport = client._client._transport
    pool = transport._pool  # type: ignore[attr-defined]
    assert isinstance(pool, httpcore.AsyncConnectionPool)
    assert isinstance(pool._network_backend, _CheckedBackend)
    assert client._client.follow_redirects is False
    asyncio.run(client.aclose())


def test_the_policy_comes_from_the_settings() -> None:
    settings = Settings(
        outbound_allow_http=True, outbound_allowed_networks=["127.0.0.1/32", "10.0.0.0/8"]
    )
    policy = OutboundPolicy.from_settings(settings)
    assert policy.allow_http is True
    assert policy.refusal(ipaddress.ip_address("10.9.9.9")) is None
    assert policy.refusal(ipaddress.ip_address("192.168.0.1")) is not None
    with pytest.raises(ValueError, match="not a network"):
        Settings(outbound_allowed_networks=["localhost"])


def test_development_reaches_this_machine_and_a_deployment_only_the_public_internet() -> None:
    development = OutboundPolicy.from_settings(Settings(database_url=None))
    assert development.allow_http is True
    assert development.refusal(ipaddress.ip_address("127.0.0.1")) is None
    assert development.refusal(ipaddress.ip_address("::1")) is None
    assert development.refusal(ipaddress.ip_address("10.0.0.1")) is not None
    deployment = OutboundPolicy.from_settings(
        Settings(database_url="postgresql+asyncpg://app@db.internal/taskmanager")
    )
    assert deployment.allow_http is False
    assert deployment.refusal(ipaddress.ip_address("127.0.0.1")) is not None
    strict_development = OutboundPolicy.from_settings(
        Settings(database_url=None, outbound_allow_http=False, outbound_allowed_networks=[])
    )
    assert strict_development.allow_http is False
    assert strict_development.refusal(ipaddress.ip_address("127.0.0.1")) is not None


async def test_a_compressed_answer_is_decoded_within_the_limit() -> None:
    """Inflated by httpx, 60 KB of gzip became 60 MB before any limit was looked at; here
    the decompressor stops at the limit whatever the ratio."""
    bomb = gzip.compress(b"\0" * 60_000_000)
    assert len(bomb) < 100_000
    small = gzip.compress(b"BEGIN:VCALENDAR")
    replies = {
        "/bomb": Reply(headers={"Content-Encoding": "gzip"}, body=bomb),
        "/small": Reply(headers={"Content-Encoding": "gzip"}, body=small),
        "/stacked": Reply(headers={"Content-Encoding": "gzip, gzip"}, body=gzip.compress(small)),
        "/brotli": Reply(headers={"Content-Encoding": "br"}, body=b"\x8b\x03\x80hello\x03"),
    }
    async with (
        scripted_server(lambda request: replies[request.target]) as server,
        OutboundClient(LOCAL) as client,
    ):
        tracemalloc.start()
        cut = await client.request("GET", server.url("/bomb"), max_bytes=10_000)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert (len(cut.body), cut.truncated) == (10_000, True)
        assert peak < 5_000_000, peak
        with pytest.raises(ResponseTooLarge):
            await client.request("GET", server.url("/bomb"), max_bytes=10_000, refuse_larger=True)
        plain = await client.request("GET", server.url("/small"), refuse_larger=True)
        assert (plain.body, plain.truncated) == (b"BEGIN:VCALENDAR", False)
        for path in ("/stacked", "/brotli"):
            with pytest.raises(UndecodableAnswer, match="Content-Encoding"):
                await client.request("GET", server.url(path), refuse_larger=True)
            kept = await client.request("GET", server.url(path))
            assert (kept.body, kept.truncated) == (b"", True)
        assert {r.headers["accept-encoding"] for r in server.received} == {"identity"}


def test_serve_keeps_development_defaults_only_while_it_serves_this_machine_alone() -> None:
    from taskmanager.cli.serve import outbound_environment

    development = Settings(database_url=None)
    local, line = outbound_environment(development, "127.0.0.1")
    assert local["TASKMANAGER_OUTBOUND_ALLOW_HTTP"] == "true"
    assert "127.0.0.1/32" in local["TASKMANAGER_OUTBOUND_ALLOWED_NETWORKS"]
    assert line is None
    for host in ("0.0.0.0", "192.168.1.20", "::"):
        exposed, line = outbound_environment(development, host)
        assert exposed == {
            "TASKMANAGER_OUTBOUND_ALLOW_HTTP": "false",
            "TASKMANAGER_OUTBOUND_ALLOWED_NETWORKS": "[]",
        }
        assert line is not None
        assert host in line
    # Said outright, it holds wherever it serves.
    chosen = Settings(database_url=None, outbound_allowed_networks=["127.0.0.1/32"])
    kept, line = outbound_environment(chosen, "0.0.0.0")
    assert (kept["TASKMANAGER_OUTBOUND_ALLOWED_NETWORKS"], line) == ('["127.0.0.1/32"]', None)
