"""The address guard's decision, tested on a table of hosts with no connection at all.

Every resolver here is a plain function; nothing in this file opens a socket.
"""

from __future__ import annotations

import ipaddress
import socket

import pytest

from pipeline.guard import (
    AddressGuard,
    classify_address,
    parse_ipv4_loose,
)


class FakeResolver:
    """Answers from a table and records every question."""

    def __init__(self, table: dict[str, list[str]]):
        self.table = table
        self.calls: list[str] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append(host)
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return self.table[host]


NAMES = {
    "images.example.com": ["93.184.215.14"],
    "v6.example.com": ["2606:4700:4700::1111"],
    "internal.example.com": ["10.0.0.7"],
    "rebind.example.com": ["93.184.215.14", "127.0.0.1"],
    "metadata.example.com": ["169.254.169.254"],
    "mapped.example.com": ["::ffff:192.168.0.1"],
    "cgnat.example.com": ["100.64.12.1"],
    "empty.example.com": [],
}

# host -> expected reason category (None = allowed)
TABLE = [
    # public
    ("8.8.8.8", None),
    ("1.1.1.1", None),
    ("2606:4700:4700::1111", None),
    ("[2606:4700:4700::1111]", None),
    ("images.example.com", None),
    ("IMAGES.Example.COM.", None),  # case and trailing dot
    ("v6.example.com", None),
    # loopback in every spelling
    ("127.0.0.1", "loopback"),
    ("127.0.0.1.", "loopback"),
    ("127.255.255.254", "loopback"),
    ("2130706433", "loopback"),  # decimal
    ("0x7f000001", "loopback"),  # hex
    ("0X7F000001", "loopback"),
    ("0177.0.0.1", "loopback"),  # octal
    ("017700000001", "loopback"),  # octal, one part
    ("127.1", "loopback"),  # short form
    ("0x7f.1", "loopback"),
    ("127.0.1", "loopback"),
    ("::1", "loopback"),
    ("[::1]", "loopback"),
    ("0:0:0:0:0:0:0:1", "loopback"),
    ("localhost", "loopback"),
    ("LOCALHOST.", "loopback"),
    ("app.localhost", "loopback"),
    # private, link-local, metadata, CGNAT
    ("10.0.0.1", "private"),
    ("172.16.5.4", "private"),
    ("192.168.1.1", "private"),
    ("0xc0a80101", "private"),  # 192.168.1.1 in hex
    ("fc00::1", "private"),
    ("fd12:3456::1", "private"),
    ("169.254.1.1", "link_local"),
    ("fe80::1", "link_local"),
    ("169.254.169.254", "metadata"),
    ("2852039166", "metadata"),  # 169.254.169.254 as a decimal
    ("fd00:ec2::254", "metadata"),
    ("168.63.129.16", "metadata"),
    ("100.100.100.200", "metadata"),
    ("100.64.0.1", "cgnat"),
    ("100.127.255.254", "cgnat"),
    # unspecified, multicast, reserved, documentation
    ("0.0.0.0", "unspecified"),
    ("0", "unspecified"),
    ("::", "unspecified"),
    ("224.0.0.1", "multicast"),
    ("ff02::1", "multicast"),
    ("240.0.0.1", "private"),  # Python files 240/4 under both private and reserved
    ("192.0.2.10", "private"),  # TEST-NET-1
    ("2001:db8::1", "private"),
    # IPv6 forms that reach IPv4
    ("::ffff:127.0.0.1", "ipv4_mapped"),
    ("::ffff:8.8.8.8", "ipv4_mapped"),
    ("[::ffff:7f00:1]", "ipv4_mapped"),
    ("::127.0.0.1", "tunnel_to_loopback"),  # IPv4-compatible
    ("2002:7f00:1::", "tunnel_to_loopback"),  # 6to4
    ("2002:a9fe:a9fe::", "tunnel_to_metadata"),
    ("64:ff9b::a00:1", "tunnel_to_private"),  # NAT64 of 10.0.0.1
    ("64:ff9b::808:808", "ipv4_tunnel"),  # NAT64 of a public address: refused too
    # names that resolve to forbidden addresses
    ("internal.example.com", "private"),
    ("rebind.example.com", "loopback"),  # one bad answer is enough
    ("metadata.example.com", "metadata"),
    ("mapped.example.com", "ipv4_mapped"),
    ("cgnat.example.com", "cgnat"),
    # numbers that are not addresses
    ("1.2.3.256", "bad_ip_literal"),
    ("0x100000000", "bad_ip_literal"),
    ("09.1.1.1", "bad_ip_literal"),
    ("", "empty_host"),
]


@pytest.mark.parametrize(("host", "expected"), TABLE)
def test_decision_table(host, expected):
    resolver = FakeResolver(NAMES)
    decision = AddressGuard(resolver=resolver).check(host, 80)
    if expected is None:
        assert decision.allowed, decision
        assert decision.address is not None
        ipaddress.ip_address(decision.address)  # a real address to connect to
    else:
        assert not decision.allowed
        assert decision.status == "blocked_address"
        assert decision.reason.split(" ")[0] == expected, decision
    assert len(resolver.calls) <= 1


@pytest.mark.parametrize(
    "host",
    ["2130706433", "0x7f000001", "0177.0.0.1", "127.1", "[::1]", "10.1.2.3", "::ffff:1.2.3.4"],
)
def test_literals_never_reach_the_resolver(host):
    resolver = FakeResolver(NAMES)
    AddressGuard(resolver=resolver).check(host)
    AddressGuard(resolver=resolver, allow_private=True).check(host)
    assert resolver.calls == []


def test_localhost_is_refused_without_asking_dns():
    resolver = FakeResolver({"localhost": ["93.184.215.14"]})  # a lying resolver
    decision = AddressGuard(resolver=resolver).check("localhost")
    assert not decision.allowed and resolver.calls == []


def test_unresolvable_name_is_a_fetch_failure_not_a_block():
    decision = AddressGuard(resolver=FakeResolver(NAMES)).check("nowhere.example.com")
    assert (decision.allowed, decision.status) == (False, "fetch_failed")
    assert decision.reason.startswith("dns")
    decision = AddressGuard(resolver=FakeResolver(NAMES)).check("empty.example.com")
    assert decision.status == "fetch_failed"


def test_pinned_address_is_the_checked_one():
    resolver = FakeResolver({"img.example.com": ["93.184.215.14", "93.184.215.15"]})
    decision = AddressGuard(resolver=resolver).check("img.example.com", 443)
    assert decision.address == "93.184.215.14"
    assert resolver.calls == ["img.example.com"]


def test_allow_private_switches_the_policy_off_but_still_pins():
    resolver = FakeResolver({"box.lan": ["192.168.7.7"]})
    guard = AddressGuard(allow_private=True, resolver=resolver)
    assert guard.check("127.0.0.1").address == "127.0.0.1"
    assert guard.check("0x7f000001").address == "127.0.0.1"
    assert guard.check("::1").address == "::1"
    assert guard.check("box.lan").address == "192.168.7.7"
    assert guard.check("localhost").allowed is False  # resolver table has no localhost
    assert guard.check("localhost").status == "fetch_failed"


def test_allowed_networks_open_only_what_they_name():
    guard = AddressGuard(allowed_networks=["127.0.0.1/32"], resolver=FakeResolver(NAMES))
    assert guard.check("127.0.0.1").allowed
    assert guard.check("2130706433").allowed
    assert not guard.check("127.0.0.2").allowed
    assert not guard.check("::1").allowed
    assert not guard.check("10.0.0.1").allowed


SPELLINGS = [
    "127.0.0.1",
    "2130706433",
    "0x7f000001",
    "0177.0.0.1",
    "0177.0.0.01",
    "127.1",
    "127.0.1",
    "0x7f.1",
    "0x7f.0x0.0x0.0x1",
    "017700000001",
    "10.0x10.0200.7",
    "192.168.257",
    "1.2.3.4",
    "255.255.255.255",
    "4294967295",
    "0",
    "0x",
]


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_loose_ipv4_parsing_matches_inet_aton(spelling):
    """inet_aton (the C library's parser, no network) is the reference for odd spellings."""
    try:
        expected = ipaddress.IPv4Address(socket.inet_aton(spelling))
    except OSError:
        expected = None
    assert parse_ipv4_loose(spelling) == expected


@pytest.mark.parametrize("spelling", ["1.2.3.256", "4294967296", "08", "1.2.3.4.5", "1..2", "a.b"])
def test_loose_ipv4_parsing_rejects_what_inet_aton_rejects(spelling):
    with pytest.raises(OSError):
        socket.inet_aton(spelling)
    assert parse_ipv4_loose(spelling) is None


def test_every_public_sample_is_allowed_and_every_special_range_refused():
    """Sweep the first and last address of each special-purpose range Python knows."""
    special = [
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",
        "240.0.0.0/4",
        "::/128",
        "::1/128",
        "fc00::/7",
        "fe80::/10",
        "ff00::/8",
        "::ffff:0:0/96",
        "2001:db8::/32",
    ]
    for net in map(ipaddress.ip_network, special):
        for ip in (net[0], net[-1]):
            assert classify_address(ip) is not None, ip
    for public in ["8.8.4.4", "151.101.1.69", "2a00:1450:4001:80b::200e", "1.0.0.1"]:
        assert classify_address(ipaddress.ip_address(public)) is None, public
