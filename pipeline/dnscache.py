"""A resolver cache for one worker process: TTL, negative caching, one lookup per host.

img2dataset resolves every URL's host afresh, so a shard of 10,000 images from a few
hundred hosts makes 10,000 lookups, and a resolver that rate-limits or times out costs
images (img2dataset issues #400, #417, #430). `CachingResolver` wraps any `Resolver`
(`(host, port) -> addresses`) and is shared by all the fetch threads of a worker:

- a name is looked up once; threads that want it meanwhile wait for that one lookup;
- answers are kept `ttl` seconds (the system resolver does not tell us the record's TTL, so
  this is an upper bound: 5 minutes by default, like nscd's);
- failures are kept too: a name that does not exist (`nxdomain`) or has no address
  (`no_address`) for `negative_ttl` seconds (1 minute, RFC 2308's usual floor), a transient
  failure (`timeout`, `temporary`, other errors) for `transient_ttl` seconds (5 s), so that
  a host with 500 images on a dead domain costs one lookup, not 500;
- lookups run on a small thread pool and the caller waits at most `timeout` seconds (or
  what its fetch deadline leaves), so a hanging `getaddrinfo` cannot hold a fetch thread;
- `demote(host, address)` moves an address that failed to connect to the end of the cached
  list, so the next fetch tries the others first.

Failures are raised as `DNSFailure` (an `OSError`) whose `reason` the address guard puts in
the `fetch_failed` reason: `dns nxdomain`, `dns no_address`, `dns timeout`, ...
The address guard still checks every address of every answer, cached or not.
"""

from __future__ import annotations

import concurrent.futures
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

#: getaddrinfo error codes -> our reason words. EAI_NODATA exists on glibc only.
_GAI_REASONS = {
    socket.EAI_NONAME: "nxdomain",
    socket.EAI_AGAIN: "temporary",
    socket.EAI_FAIL: "servfail",
}
if hasattr(socket, "EAI_NODATA"):
    _GAI_REASONS[socket.EAI_NODATA] = "no_address"
if hasattr(socket, "EAI_ADDRFAMILY"):
    _GAI_REASONS[socket.EAI_ADDRFAMILY] = "no_address"

#: Reasons that say the name has no address (cached `negative_ttl`); the rest are transient.
DEFINITE_REASONS = frozenset({"nxdomain", "no_address"})


class DNSFailure(OSError):
    """A lookup that gave no address; `reason` is one short word (`nxdomain`, `timeout`)."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason} {detail}".strip())
        self.reason = reason


def dns_reason(err: BaseException) -> str:
    """One short word for why a lookup failed, for the `dns ...` fetch_failed reason."""
    reason = getattr(err, "reason", None)
    if isinstance(err, DNSFailure) and reason:
        return reason
    if isinstance(err, socket.gaierror):
        return _GAI_REASONS.get(err.errno, f"error_{err.errno}")
    if isinstance(err, TimeoutError | socket.timeout):
        return "timeout"
    if isinstance(err, UnicodeError):
        return "bad_name"  # IDNA cannot encode it
    return type(err).__name__


class _Entry:
    __slots__ = ("done", "addresses", "error", "expires")

    def __init__(self):
        self.done = threading.Event()
        self.addresses: list[str] | None = None
        self.error: DNSFailure | None = None
        self.expires = 0.0


class CachingResolver:
    """A thread-safe `Resolver` with a TTL cache, negative caching and bounded waits.

    `timeout` is the longest a caller waits for a lookup; `remaining` (when given) returns
    the seconds the calling thread has left, and the wait is the smaller of the two.
    """

    def __init__(
        self,
        resolve: Callable[[str, int], Sequence[str]],
        *,
        ttl: float = 300.0,
        negative_ttl: float = 60.0,
        transient_ttl: float = 5.0,
        timeout: float = 10.0,
        remaining: Callable[[], float | None] | None = None,
        max_hosts: int = 100_000,
        workers: int = 8,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._resolve = resolve
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.transient_ttl = transient_ttl
        self.timeout = timeout
        self._remaining = remaining
        self._max = max_hosts
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        self._workers = workers
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self.lookups = 0  # how many times the wrapped resolver was called

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def __call__(self, host: str, port: int) -> list[str]:
        key = host.lower()
        now = self._clock()
        with self._lock:
            entry = self._cache.get(key)
            start = entry is None or (entry.done.is_set() and entry.expires <= now)
            if start:
                entry = _Entry()
                self._cache[key] = entry
                while len(self._cache) > self._max:
                    self._cache.popitem(last=False)
                self.lookups += 1
                self._executor().submit(self._lookup, entry, host, port)
            self._cache.move_to_end(key)
        if not entry.done.wait(self._wait_seconds()):
            raise DNSFailure("timeout", host)
        if entry.error is not None:
            raise entry.error
        assert entry.addresses is not None
        return list(entry.addresses)

    def demote(self, host: str, address: str) -> None:
        """Try `address` last for `host` from now on (it failed to connect)."""
        with self._lock:
            entry = self._cache.get(host.lower())
            if entry is None or not entry.done.is_set() or not entry.addresses:
                return
            if address in entry.addresses and entry.addresses[-1] != address:
                entry.addresses = [a for a in entry.addresses if a != address] + [address]

    def _wait_seconds(self) -> float:
        left = self._remaining() if self._remaining is not None else None
        wait = self.timeout if left is None else min(self.timeout, left)
        return max(wait, 0.0)

    def _executor(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=self._workers, thread_name_prefix="dns"
            )
        return self._pool

    def _lookup(self, entry: _Entry, host: str, port: int) -> None:
        try:
            addresses = list(self._resolve(host, port))
            if not addresses:
                raise DNSFailure("no_address", host)
            entry.addresses = addresses
            lifetime = self.ttl
        except BaseException as err:  # noqa: BLE001 - every failure is an answer to cache
            reason = dns_reason(err)
            entry.error = DNSFailure(reason, host)
            lifetime = self.negative_ttl if reason in DEFINITE_REASONS else self.transient_ttl
        entry.expires = self._clock() + lifetime
        entry.done.set()
