"""OutboundClient: the one way the service reaches an address a user gave it.

A webhook's URL and a calendar's URL are chosen by users, so every request to them is one an
attacker may aim: at the loopback interface, at the private network the service runs in, at a
cloud's metadata address. The checks:

- Before the request, statically (`check_url`): http(s) only (plain http only where the
  deployment allows it), no user name or password in the URL, no `localhost` names, no
  numeric host in a non-standard form (2130706433, 0x7f.1, 0177.0.0.1), no literal address
  that is not public.
- Before EVERY connection (`_CheckedBackend.connect_tcp`, where httpcore opens its sockets):
  the host name is resolved once, every address it resolves to is checked (one forbidden
  address refuses the whole name: a DNS answer that mixes a public and a private address is
  a rebinding attempt), and the socket is connected to the checked address itself. Nothing
  resolves the name a second time, so a name that answers differently the next time (DNS
  rebinding) never reaches an unchecked address. TLS still verifies the certificate against
  the name in the URL.
- Forbidden: every address that is not globally reachable (`ipaddress`'s is_global:
  loopback, private, link-local (the metadata service at 169.254.169.254), carrier-grade NAT,
  unspecified, reserved, documentation), multicast, and IPv6 addresses that carry an IPv4
  address inside (IPv4-mapped ::ffff:0:0/96, NAT64 64:ff9b::/96, 6to4 2002::/16, Teredo) when
  the address inside is forbidden. `allowed_networks` (TASKMANAGER_OUTBOUND_ALLOWED_NETWORKS)
  lets tests and local development reach e.g. 127.0.0.1/32.
- Redirects are never followed (a 3xx is the answer), no proxy or .netrc is read from the
  environment, and a response body is read only up to a limit.

One client is shared by the whole process (built in the lifespan, closed on stop): its
connection pool keeps connections to a receiver open between requests, which a client made
per request would open (and, for https, negotiate) again each time.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import time
import zlib
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpcore
import httpx

if TYPE_CHECKING:
    from taskmanager.config import Settings

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# The longest URL accepted (browsers and most servers stop near 8 KiB; a webhook needs less).
MAX_URL_LENGTH = 2048
# Resolves a host name and port to the addresses to connect to (the loop's getaddrinfo unless
# a test gives its own: a name answering differently each time is how rebinding is tested).
Resolver = Callable[[str, int], Awaitable[list[str]]]
# The only IPv6 addresses the internet routes to hosts (RFC 4291 2.4: global unicast).
_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")
# IPv6 ranges that carry an IPv4 address in their last 32 bits (NAT64, RFC 6052).
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class OutboundError(Exception):
    """A request to an outside address did not give an answer; `reason` says why, for a log
    or a delivery record (it never holds the response's body)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UnsafeDestination(OutboundError):  # noqa: N818 (names what happened, like TimeoutError)
    """The URL, or an address its host resolves to, is not one the service may reach."""


class OutboundTimeout(OutboundError):  # noqa: N818 (names what happened, like TimeoutError)
    """No complete answer within the time allowed."""


class OutboundConnectionError(OutboundError):
    """The name did not resolve, the connection was refused or reset, or TLS failed."""


class UndecodableAnswer(OutboundError):  # noqa: N818 (names what happened)
    """The body is encoded in a way that is not decoded (only when the caller asked for the
    whole body)."""


class ResponseTooLarge(OutboundError):  # noqa: N818 (names what happened, like TimeoutError)
    """The body is larger than allowed (only raised when the caller asked to refuse it)."""


@dataclass(frozen=True, slots=True)
class OutboundResponse:
    """An answer: its status, headers and body (at most the bytes asked for)."""

    status_code: int
    headers: httpx.Headers
    body: bytes
    truncated: bool
    elapsed_ms: float


@dataclass(frozen=True, slots=True)
class OutboundPolicy:
    """Which destinations are allowed beyond the public internet over https."""

    allow_http: bool = False
    allowed_networks: tuple[Network, ...] = ()

    @classmethod
    def from_settings(cls, settings: Settings) -> OutboundPolicy:
        return cls(
            allow_http=settings.outbound_http_allowed,
            allowed_networks=tuple(
                ipaddress.ip_network(network, strict=False)
                for network in settings.outbound_networks
            ),
        )

    def refusal(self, address: Address) -> str | None:
        """Why `address` may not be reached, or None when it may."""
        if any(address in network for network in self.allowed_networks):
            return None
        if isinstance(address, ipaddress.IPv6Address):
            inside = _embedded_ipv4(address)
            if inside is not None:
                why = self.refusal(inside)
                return None if why is None else f"{address} carries {inside}: {why}"
        if address.is_multicast:
            return f"{address} is a multicast address"
        if address.is_loopback:
            return f"{address} is a loopback address"
        if address.is_unspecified:
            return f"{address} is the unspecified address (this machine)"
        if address.is_link_local:
            return f"{address} is a link-local address (e.g. a cloud metadata service)"
        if address.is_private:
            return f"{address} is a private address"
        if isinstance(address, ipaddress.IPv6Address) and address not in _GLOBAL_UNICAST:
            # Every other IPv6 range is special (IPv4-compatible ::/96, SIIT ::ffff:0:0:0/96,
            # local NAT64 64:ff9b:1::/48, unique local, reserved): refused as a whole.
            return f"{address} is not a global unicast IPv6 address"
        if not address.is_global:
            return f"{address} is not a public address"
        return None


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, NAT64, 6to4, Teredo), if any."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    return None


def _literal_address(host: str) -> Address | None:
    """The address a URL's host names literally, or None for a name."""
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


def _numeric_but_not_standard(host: str) -> bool:
    """A host that inet_aton reads as an IPv4 address but is not written as four decimal
    numbers: 2130706433, 0x7f000001, 0177.0.0.1, 127.1. Resolvers and browsers disagree on
    these, so they are refused rather than interpreted."""
    try:
        socket.inet_aton(host)
    except OSError:
        return False
    return True


class _CheckedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend with the check between resolving and connecting."""

    def __init__(self, policy: OutboundPolicy, resolver: Resolver | None) -> None:
        self.policy = policy
        self.resolver = resolver or _getaddrinfo
        self._backend = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await self._resolve(host, port, timeout)
        for address in addresses:
            why = self.policy.refusal(address)
            if why is not None:
                raise UnsafeDestination(f"{host} resolves to {why}")
        last: Exception | None = None
        for address in addresses:  # every one was checked; the first that answers is used
            try:
                return await self._backend.connect_tcp(
                    str(address), port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as error:
                last = error
        assert last is not None  # there was at least one address
        raise last

    async def _resolve(
        self,
        host: str,
        port: int,
        timeout: float | None,  # noqa: ASYNC109
    ) -> list[Address]:
        literal = _literal_address(host)
        if literal is not None:
            return [literal]
        try:
            async with asyncio.timeout(timeout):
                answers = await self.resolver(host, port)
        except TimeoutError as error:
            raise httpcore.ConnectTimeout(f"resolving {host} took too long") from error
        except socket.gaierror as error:
            raise httpcore.ConnectError(f"{host} does not resolve: {error.strerror}") from error
        addresses: list[Address] = []
        for answer in answers:
            address = ipaddress.ip_address(answer.split("%", 1)[0])
            if address not in addresses:
                addresses.append(address)
        if not addresses:
            raise httpcore.ConnectError(f"{host} does not resolve")
        return addresses

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise UnsafeDestination("Unix sockets are never reached")

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)


async def _getaddrinfo(host: str, port: int) -> list[str]:
    answers = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(sockaddr[0]) for _family, _type, _proto, _name, sockaddr in answers]


class _CheckedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport over a pool whose every connection goes through _CheckedBackend."""

    def __init__(
        self, policy: OutboundPolicy, limits: httpx.Limits, resolver: Resolver | None
    ) -> None:
        super().__init__(trust_env=False, limits=limits)
        # httpx builds its pool without a way to pass a network backend; this is the same
        # pool with the backend given (tests/integrations check the attribute is in use).
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl.create_default_context(),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_CheckedBackend(policy, resolver),
        )


class OutboundClient:
    """A shared httpx.AsyncClient that reaches only what the policy allows."""

    def __init__(
        self,
        policy: OutboundPolicy,
        *,
        user_agent: str = "taskmanager",
        max_connections: int = 100,
        resolver: Resolver | None = None,
    ) -> None:
        self.policy = policy
        limits = httpx.Limits(
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=30.0,
        )
        self._client = httpx.AsyncClient(
            transport=_CheckedTransport(policy, limits, resolver),
            follow_redirects=False,
            trust_env=False,
            # Compressed answers are decoded here within the limits (_read_body); asking
            # for none makes most servers send none.
            headers={"User-Agent": user_agent, "Accept-Encoding": "identity"},
        )

    def check_url(self, url: str) -> str:
        """The URL, normalized, if it may be used at all; UnsafeDestination (its reason
        names what is wrong) if not. The addresses it resolves to are checked later, before
        every connection: a name's answer can change after this check."""
        if len(url) > MAX_URL_LENGTH:
            raise UnsafeDestination(f"a URL may be at most {MAX_URL_LENGTH} characters")
        try:
            parsed = httpx.URL(url)
            raw_host, port = parsed.host, parsed.port
        except (httpx.InvalidURL, TypeError, ValueError, UnicodeError) as error:
            # ValueError/UnicodeError: a host IDNA refuses (xn--localhost, emoji labels).
            raise UnsafeDestination(f"not a URL: {error}") from None
        if port is not None and not 1 <= port <= 65535:
            raise UnsafeDestination(f"{port} is not a port (1 to 65535)")
        schemes = ("https", "http") if self.policy.allow_http else ("https",)
        if parsed.scheme not in schemes:
            raise UnsafeDestination(
                "the URL must start with https://"
                if not self.policy.allow_http
                else "the URL must start with https:// or http://"
            )
        if parsed.userinfo:
            raise UnsafeDestination("a URL may not carry a user name or password")
        host = raw_host.rstrip(".").lower()
        if not host:
            raise UnsafeDestination("the URL has no host")
        if host == "localhost" or host.endswith(".localhost"):
            raise UnsafeDestination(f"{host} is the local machine")
        literal = _literal_address(host)
        if literal is None and "%" in host:
            raise UnsafeDestination(f"{host} is percent-encoded; write the host name plainly")
        if literal is None and _numeric_but_not_standard(host):
            raise UnsafeDestination(f"{host} is a numeric address in a non-standard form")
        if literal is not None:
            why = self.policy.refusal(literal)
            if why is not None:
                raise UnsafeDestination(why)
        return str(parsed.copy_with(fragment=None))

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
        timeout: float = 10.0,  # noqa: ASYNC109 (one deadline for the whole exchange)
        max_bytes: int = 64_000,
        refuse_larger: bool = False,
    ) -> OutboundResponse:
        """Send one request and read at most `max_bytes` of the answer, all within
        `timeout` seconds (resolving, connecting, sending and reading included)."""
        checked = self.check_url(url)
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout):
                return await self._send(
                    method, checked, headers, content, timeout, max_bytes, refuse_larger, started
                )
        except TimeoutError:
            raise OutboundTimeout(f"no complete answer within {timeout:g} s") from None
        except httpx.TimeoutException as error:
            raise OutboundTimeout(f"no complete answer within {timeout:g} s ({error})") from None
        except httpx.TransportError as error:
            raise OutboundConnectionError(_transport_reason(error)) from None

    async def _send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None,
        content: bytes | None,
        timeout: float,  # noqa: ASYNC109 (httpx's per-phase timeouts)
        max_bytes: int,
        refuse_larger: bool,
        started: float,
    ) -> OutboundResponse:
        request = self._client.build_request(
            method, url, headers=headers, content=content, timeout=httpx.Timeout(timeout)
        )
        response = await self._client.send(request, stream=True)
        try:
            declared = response.headers.get("content-length", "")
            encoding = response.headers.get("content-encoding", "identity").strip().lower()
            too_long = declared.isdigit() and int(declared) > max_bytes
            if refuse_larger and encoding == "identity" and too_long:
                raise ResponseTooLarge(f"the body is {declared} bytes, more than {max_bytes}")
            body, truncated = await _read_body(response, encoding, max_bytes, refuse_larger)
        finally:
            await response.aclose()
        return OutboundResponse(
            status_code=response.status_code,
            headers=response.headers,
            body=bytes(body),
            truncated=truncated,
            elapsed_ms=(time.perf_counter() - started) * 1000.0,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> OutboundClient:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()


async def _read_body(
    response: httpx.Response, encoding: str, max_bytes: int, refuse_larger: bool
) -> tuple[bytes, bool]:
    """At most `max_bytes` of the body, decoded, and whether there was more. The raw bytes
    are read and decompressed here, never by httpx: httpx inflates each chunk whole, so a
    few hundred compressed bytes could become gigabytes before any limit is looked at.
    Decompressing with `max_length` stops at the limit, whatever the ratio."""
    if encoding not in _DECODABLE:
        # Asked for identity (Accept-Encoding), answered otherwise: br, zstd, or codings
        # stacked ("gzip, gzip"). Nothing of it is decoded.
        if refuse_larger:
            raise UndecodableAnswer(f"the answer's Content-Encoding {encoding!r} is not accepted")
        return b"", True
    decoder = _decoder(encoding)
    body = bytearray()
    async for chunk in response.aiter_raw():
        pending = chunk
        while pending:
            if decoder is None:
                piece, pending = pending, b""
            else:
                piece = decoder.decompress(pending, max_bytes + 1 - len(body))
                pending = decoder.unconsumed_tail
                if decoder.eof:
                    pending = b""
            body += piece
            if len(body) > max_bytes:
                if refuse_larger:
                    raise ResponseTooLarge(f"the body is more than {max_bytes} bytes")
                del body[max_bytes:]
                return bytes(body), True
            if decoder is not None and not piece and pending:
                break  # nothing comes out of what is left (a broken stream): stop
    return bytes(body), False


# What an answer may be encoded with: nothing, or one layer of gzip or deflate.
_DECODABLE = ("identity", "", "gzip", "x-gzip", "deflate")


def _decoder(encoding: str) -> Any:
    """A zlib decompressor for the encoding, or None for identity."""
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        # RFC 9110 means zlib-wrapped; some servers send raw deflate. 32 + : either header.
        return zlib.decompressobj(32 + zlib.MAX_WBITS)
    return None


def _transport_reason(error: httpx.TransportError) -> str:
    """What went wrong, in a line (httpx's own message, or the kind of error)."""
    text = str(error).strip()
    kind = type(error).__name__
    return f"{kind}: {text}" if text else kind
