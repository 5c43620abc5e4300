"""Address guard: decide whether a URL's host may be contacted, before any packet is sent.

Image URLs come from the open web, so a hostile page can point us at internal services
(cloud metadata, admin panels on 10/8, localhost). The guard resolves the host once,
refuses every address that is not plainly public, and hands back the address it checked
so that the HTTP client connects to exactly that address (no second DNS lookup that a
rebinding DNS server could answer differently). The fetcher calls it at every redirect hop.

The decision is a plain function with an injectable resolver, so it is tested against a
table of hosts without opening a single connection.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from requests.adapters import HTTPAdapter
from urllib3._collections import RecentlyUsedContainer
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError
from urllib3.util import connection as urllib3_connection

from pipeline.dnscache import dns_reason

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: (host, port) -> addresses as strings, in the resolver's preference order.
Resolver = Callable[[str, int], Sequence[str]]

#: Cloud instance-metadata and host-agent endpoints. Most sit in ranges refused anyway,
#: but 168.63.129.16 (Azure's wire server) is a public address, and naming them all gives
#: a clearer reason.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean
        "169.254.170.2",  # AWS ECS task metadata
        "168.63.129.16",  # Azure wire server
        "100.100.100.200",  # Alibaba Cloud
        "192.0.0.192",  # Oracle Cloud
        "fd00:ec2::254",  # AWS over IPv6
    )
)

CGNAT = ipaddress.ip_network("100.64.0.0/10")
#: Special-purpose ranges that Python's `is_private`/`is_reserved` do not cover whole.
EXTRA_RESERVED = (
    ipaddress.ip_network("192.0.0.0/24"),  # IETF protocol assignments
    ipaddress.ip_network("192.88.99.0/24"),  # deprecated 6to4 relay anycast
)
NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")

_NUMERIC_LABEL = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$")


class BlockedAddress(Exception):
    """Raised when a connection would go to an address the guard refused."""


@dataclass(frozen=True)
class GuardDecision:
    """The outcome for one host.

    `address` is the address to connect to when `allowed`, and `addresses` every checked
    address in the resolver's order (the first is `address`; the fetcher falls back to the
    others when a connection fails); otherwise `status` says which final status the
    candidate gets (`blocked_address`, or `fetch_failed` when the name does not resolve)
    and `reason` says why.
    """

    allowed: bool
    address: str | None
    status: str | None
    reason: str | None
    addresses: tuple[str, ...] = ()


def system_resolver(host: str, port: int) -> list[str]:
    """All addresses the system resolver gives for host, deduplicated, order kept."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: dict[str, None] = {}
    for _family, _type, _proto, _canon, sockaddr in infos:
        seen.setdefault(str(sockaddr[0]), None)
    return list(seen)


def parse_ipv4_loose(host: str) -> ipaddress.IPv4Address | None:
    """Parse IPv4 the way inet_aton and browsers do, odd spellings included.

    `2130706433`, `0x7f000001`, `0177.0.0.1`, `127.1` and `0x7f.1` all mean 127.0.0.1.
    Returns None when host is not such a literal.
    """
    labels = host.split(".")
    if not 1 <= len(labels) <= 4 or not all(_NUMERIC_LABEL.match(x) for x in labels):
        return None
    values = []
    for label in labels:
        if label.startswith("0x"):
            if len(label) == 2:  # inet_aton refuses a bare "0x"; looks_numeric still blocks it
                return None
            values.append(int(label[2:], 16))
        elif len(label) > 1 and label.startswith("0"):
            if any(c in "89" for c in label):
                return None
            values.append(int(label, 8))
        else:
            values.append(int(label))
    head, last = values[:-1], values[-1]
    if any(v > 255 for v in head) or last >= 256 ** (5 - len(values)):
        return None
    number = last
    for i, v in enumerate(head):
        number += v << (8 * (3 - i))
    return ipaddress.IPv4Address(number)


def looks_numeric(host: str) -> bool:
    """True when the last label is a number: the WHATWG URL rules then demand an IPv4."""
    last = host.rsplit(".", 1)[-1]
    return bool(_NUMERIC_LABEL.match(last))


def normalize_host(host: str) -> str:
    """Lower-case, strip brackets and trailing dots: `LOCALHOST.` and `localhost` are one."""
    host = host.strip().lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host.rstrip(".")


def parse_literal(host: str) -> IPAddress | None:
    """An IP literal in any spelling the system would accept, else None."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    return parse_ipv4_loose(host)


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address tunnels to (mapped, 6to4, Teredo, NAT64)."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if any(ip in net for net in NAT64) or ip in IPV4_COMPATIBLE:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def classify_address(ip: IPAddress) -> str | None:
    """Why ip must not be contacted (`loopback`, `private`, ...), or None if it is public."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
        ip = ipaddress.IPv6Address(str(ip).split("%", 1)[0])
    if ip in METADATA_ADDRESSES:
        return "metadata"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link_local"
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:
        return "site_local"  # fec0::/10: deprecated (RFC 3879), yet is_global says True
    if ip.is_multicast:
        return "multicast"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return "ipv4_mapped"
        inner = embedded_ipv4(ip)
        if inner is not None:
            inner_reason = classify_address(inner)
            return f"tunnel_to_{inner_reason}" if inner_reason else "ipv4_tunnel"
    if isinstance(ip, ipaddress.IPv4Address) and ip in CGNAT:
        return "cgnat"
    if ip.is_private:
        return "private"
    if ip.is_reserved or _in_networks(ip, EXTRA_RESERVED):
        return "reserved"
    if not ip.is_global:
        return "not_global"
    return None


def _in_networks(ip: IPAddress, networks: Iterable[ipaddress._BaseNetwork]) -> bool:
    return any(ip.version == net.version and ip in net for net in networks)


class AddressGuard:
    """Resolves hosts and decides, with the policy fixed at construction.

    `allow_private=True` (the `--allow-private-addresses` switch) still resolves once and
    pins the address, but refuses nothing. `allowed_networks` lets named networks through
    while the rest of the policy stays on (tests use it to allow 127.0.0.1 only).
    """

    def __init__(
        self,
        *,
        allow_private: bool = False,
        allowed_networks: Iterable[str] = (),
        resolver: Resolver = system_resolver,
    ):
        self.allow_private = allow_private
        self.allowed_networks = tuple(ipaddress.ip_network(n) for n in allowed_networks)
        self.resolver = resolver

    def _refusal(self, ip: IPAddress) -> str | None:
        if self.allow_private or _in_networks(ip, self.allowed_networks):
            return None
        why = classify_address(ip)
        return f"{why} {ip}" if why else None

    def check(self, host: str, port: int = 80) -> GuardDecision:
        """Decide for one host; the resolver is called at most once."""
        name = normalize_host(host)
        if not name:
            return GuardDecision(False, None, "blocked_address", "empty_host")
        literal = parse_literal(name)
        if literal is not None:
            addresses: list[IPAddress] = [literal]
        elif looks_numeric(name):
            return GuardDecision(False, None, "blocked_address", f"bad_ip_literal {name}")
        elif (name == "localhost" or name.endswith(".localhost")) and not self.allow_private:
            return GuardDecision(False, None, "blocked_address", f"loopback {name}")
        else:
            try:
                resolved = self.resolver(name, port)
                addresses = [ipaddress.ip_address(a) for a in resolved]
            except (OSError, UnicodeError, ValueError) as err:
                return GuardDecision(False, None, "fetch_failed", f"dns {dns_reason(err)}")
            if not addresses:
                return GuardDecision(False, None, "fetch_failed", "dns no_address")
        # Refuse if any answer is forbidden: a name that mixes public and private answers
        # is exactly what a rebinding attack looks like.
        for ip in addresses:
            refusal = self._refusal(ip)
            if refusal:
                return GuardDecision(False, None, "blocked_address", refusal)
        checked = tuple(dict.fromkeys(str(ip) for ip in addresses))
        return GuardDecision(True, checked[0], None, None, checked)


# --- Connecting to the checked address -------------------------------------------------
# Letting urllib3 resolve the host again would reopen the hole the guard closes: a DNS
# server can answer the guard with a public address and the connection with 127.0.0.1.
# So each request carries the checked address (`request.pinned_address`) and the adapter
# opens the TCP connection to it, while the Host header, TLS SNI and certificate checks
# still use the URL's host name.

PINNED_ATTR = "pinned_address"


class _PinnedConnectionMixin:
    """Overrides only where the socket goes; everything else is urllib3's."""

    def __init__(self, *args: Any, pinned_address: str, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._pinned_address = pinned_address

    def _new_conn(self):
        try:
            return urllib3_connection.create_connection(
                (self._pinned_address, self.port),
                self.timeout,
                source_address=self.source_address,
                socket_options=self.socket_options,
            )
        except TimeoutError as err:
            raise ConnectTimeoutError(
                self, f"connect to {self.host} ({self._pinned_address}) timed out"
            ) from err
        except OSError as err:
            raise NewConnectionError(
                self, f"cannot connect to {self._pinned_address}: {err}"
            ) from err


class PinnedHTTPConnection(_PinnedConnectionMixin, HTTPConnection):
    pass


class PinnedHTTPSConnection(_PinnedConnectionMixin, HTTPSConnection):
    pass


class _CheckoutHookMixin:
    """Calls `on_checkout(conn)` for every connection handed to a request, new or reused,
    in the requesting thread (the fetcher uses it to enforce its wall-clock deadline)."""

    on_checkout: Callable[[Any], None] | None = None

    def _get_conn(self, timeout=None):
        conn = super()._get_conn(timeout)
        if self.on_checkout is not None:
            self.on_checkout(conn)
        return conn


class PinnedHTTPConnectionPool(_CheckoutHookMixin, HTTPConnectionPool):
    ConnectionCls = PinnedHTTPConnection


class PinnedHTTPSConnectionPool(_CheckoutHookMixin, HTTPSConnectionPool):
    ConnectionCls = PinnedHTTPSConnection


class PinnedAddressAdapter(HTTPAdapter):
    """HTTPAdapter whose pools are keyed by (scheme, host, port, checked address).

    A request without a pinned address is refused: every request must pass the guard.
    Proxies are not supported (a proxy would resolve the name itself).
    """

    def __init__(
        self,
        pool_maxsize: int = 8,
        max_pools: int = 256,
        on_checkout: Callable[[Any], None] | None = None,
    ):
        super().__init__(pool_maxsize=pool_maxsize, max_retries=0)
        self._pool_maxsize = pool_maxsize
        self._on_checkout = on_checkout
        self._pools: RecentlyUsedContainer = RecentlyUsedContainer(
            max_pools, dispose_func=lambda pool: pool.close()
        )
        self._pools_lock = threading.Lock()

    def get_connection_with_tls_context(self, request, verify, proxies=None, cert=None):
        address = getattr(request, PINNED_ATTR, None)
        if not address:
            raise BlockedAddress(f"request to {request.url} has no checked address")
        if proxies and any(proxies.values()):
            raise BlockedAddress("proxies are not supported with the address guard")
        host_params, pool_kwargs = self.build_connection_pool_key_attributes(request, verify, cert)
        scheme = host_params["scheme"]
        host = host_params["host"]
        port = host_params["port"] or (443 if scheme == "https" else 80)
        key = (scheme, host, port, address, tuple(sorted(pool_kwargs.items())))
        with self._pools_lock:  # two pools for one key would close each other's
            return self._pools.get(key) or self._new_pool(key, pool_kwargs)

    def _new_pool(self, key, pool_kwargs):
        scheme, host, port, address, _ = key
        if scheme == "https":
            pool = PinnedHTTPSConnectionPool(
                host, port, maxsize=self._pool_maxsize, pinned_address=address, **pool_kwargs
            )
        elif scheme == "http":
            pool = PinnedHTTPConnectionPool(
                host, port, maxsize=self._pool_maxsize, pinned_address=address
            )
        else:
            raise BlockedAddress(f"unsupported scheme {scheme!r}")
        pool.on_checkout = self._on_checkout
        self._pools[key] = pool
        return pool

    def close(self):
        self._pools.clear()
        super().close()
