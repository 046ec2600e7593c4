"""The client address a password attempt or a registration is counted under: one IPv4
address, one IPv6 /64 (whoever holds an address of it can use them all), and an IPv4-mapped
IPv6 address as the IPv4 address it is."""

from __future__ import annotations

import pytest

from taskmanager.accounts.login_limits import client_network


@pytest.mark.parametrize(
    ("host", "network"),
    [
        ("203.0.113.9", "203.0.113.9"),
        ("2001:db8:1:2::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
        ("2001:0DB8:0001:0002:0000:0000:0000:0001", "2001:db8:1:2::/64"),  # one spelling
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        ("::ffff:203.0.113.9", "203.0.113.9"),
        ("::ffff:cb00:7109", "203.0.113.9"),
        ("::1", "::/64"),
        ("fe80::1%eth0", "fe80::/64"),  # the zone is not part of the address
        ("testclient", "testclient"),  # not from a socket (Starlette's TestClient)
        ("a b\tc", "abc"),  # no spaces: they separate the address from the account in keys
        ("", "unknown"),
        (None, "unknown"),
    ],
)
def test_client_network(host: str | None, network: str) -> None:
    assert client_network(host) == network


def test_a_name_that_is_not_an_address_is_cut_short() -> None:
    assert len(client_network("x" * 1000)) == 48
