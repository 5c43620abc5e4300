"""Fetching image bytes politely and safely: the network half of `FetchAndWriteShards`.

One `Fetcher` per worker process serves many threads. For every URL it
- resolves the host through a per-worker DNS cache with TTL and negative caching
  (`pipeline.dnscache`), checks every address with the address guard at every redirect hop,
  and connects to a checked address, falling back to the host's other checked addresses
  when a connection fails (`pipeline.guard`);
- honours robots.txt by RFC 9309 (`pipeline.robots`: fetched once per origin, cached 24 h)
  and `X-Robots-Tag`;
- limits concurrent requests per host, retries transient failures with exponential
  backoff and honours `Retry-After` up to a bound;
- streams the body under a byte limit, and insists on `image/*` (on HTML for
  `purpose="page"`, which the page crawler in `pipeline.crawl` uses);
- holds `total_timeout` as a true wall-clock bound on the whole URL: DNS, the wait for a
  host slot, connect, TLS, headers, body, retries and redirects. A watchdog thread shuts
  down the socket of a fetch that passes its deadline, so a server that drips bytes, or
  stalls a TLS handshake, cannot hold a thread longer than that.

The outcome is a `FetchResult` whose `status` is None on success, or one of the final
statuses `fetch_failed`, `opted_out`, `blocked_address` with a short `reason`.
See docs/operations.md for the opt-out policy.
"""

from __future__ import annotations

import email.utils
import random
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

import requests

from pipeline.deadline import WATCHDOG, Scope, connect_failed, response_socket
from pipeline.dnscache import CachingResolver
from pipeline.guard import (
    PINNED_ATTR,
    AddressGuard,
    BlockedAddress,
    PinnedAddressAdapter,
    Resolver,
    system_resolver,
)
from pipeline.robots import ROBOTS_MAX_BYTES, RobotsCache, RobotsRules  # noqa: F401 - re-exported
from pipeline.schema import BLOCKED_ADDRESS, FETCH_FAILED, OPTED_OUT

#: The robots.txt product token; rules for it (or for `*`) apply to us.
ROBOTS_TOKEN = "wit-builder"
DOCS_HINT = "see docs/operations.md in the wit-builder project"
DEFAULT_USER_AGENT = f"{ROBOTS_TOKEN}/0.1 (CLIP-style dataset builder; {DOCS_HINT})"

#: X-Robots-Tag directives that mean "do not put this image in a dataset".
OPT_OUT_DIRECTIVES = frozenset({"noai", "noimageai", "noindex", "noimageindex", "none"})
#: X-Robots-Tag directives that carry a value after a colon (not a bot name).
_VALUED_DIRECTIVES = frozenset(
    {"unavailable_after", "max-snippet", "max-image-preview", "max-video-preview"}
)
REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
RETRY_CODES = frozenset({429, 500, 502, 503, 504})
HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})


@dataclass(frozen=True)
class FetchOptions:
    """Every knob of fetching, resizing and shard writing; picklable for Beam workers.

    `threads` and `per_host_connections` are per worker process; how many processes run
    is the Beam runner's choice (`--direct_num_workers` locally).

    `total_timeout` is a wall-clock bound on one URL, everything included (DNS, waiting
    for a host slot, connect, TLS, body, retries, redirects, robots.txt); `connect_timeout`
    and `read_timeout` bound a single connect (or lookup) and a single read within it.
    """

    connect_timeout: float = 10.0
    read_timeout: float = 20.0
    total_timeout: float = 60.0
    retries: int = 2
    backoff_base: float = 0.5
    backoff_max: float = 8.0
    max_retry_after: float = 30.0
    max_bytes: int = 20 * 1024 * 1024
    max_page_bytes: int = 5 * 1024 * 1024  # HTML pages (purpose="page")
    max_redirects: int = 5
    user_agent: str = DEFAULT_USER_AGENT
    allow_private_addresses: bool = False
    allowed_networks: tuple[str, ...] = ()
    ca_bundle: str | None = None  # a CA bundle file to trust instead of certifi's
    per_host_connections: int = 8
    threads: int = 32
    image_size: int = 256
    resize_mode: str = "keep_ratio"
    resize_only_if_bigger: bool = False
    min_image_size: int = 10
    max_aspect_ratio: float = 10.0
    encode_format: str = "jpg"
    encode_quality: int = 95
    shard_size: int = 10000
    dns_ttl: float = 300.0  # seconds a resolved name is reused by a worker
    dns_negative_ttl: float = 60.0  # seconds "no such name" is remembered
    robots_ttl: float = 24 * 3600.0  # seconds a robots.txt is reused (RFC 9309 2.4)
    robots_error_ttl: float = 300.0  # seconds an unreachable robots.txt disallows all

    def __post_init__(self):
        if self.shard_size < 1:
            raise ValueError(f"shard_size must be at least 1, got {self.shard_size}")
        if self.threads < 1 or self.per_host_connections < 1:
            raise ValueError("threads and per_host_connections must be at least 1")
        if self.max_redirects < 0 or self.retries < 0:
            raise ValueError("max_redirects and retries cannot be negative")
        if not self.total_timeout > 0:
            raise ValueError(f"total_timeout must be positive, got {self.total_timeout}")


#: Network failures worth retrying, while connecting and while reading the body alike.
TRANSIENT_ERRORS = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
)


@dataclass
class FetchResult:
    """What happened to one URL; `status` None means `data` holds the image bytes."""

    url: str
    status: str | None = None
    reason: str | None = None
    data: bytes | None = None
    final_url: str | None = None
    content_type: str | None = None
    redirects: int = 0
    http_code: int | None = None
    charset: str | None = None  # the Content-Type's charset parameter, if any

    @property
    def ok(self) -> bool:
        return self.status is None


class _Retry(Exception):
    """A transient failure worth another attempt."""

    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


@dataclass
class _Reply:
    code: int
    headers: dict = field(default_factory=dict)
    body: bytes = b""


def x_robots_opt_out(value: str | None, token: str = ROBOTS_TOKEN) -> str | None:
    """The opt-out directive in an X-Robots-Tag header that applies to us, else None.

    Directives may be scoped to a bot (`googlebot: noindex, nofollow`); a scope lasts
    until the next one. Unscoped directives and those scoped to our token apply.
    """
    if not value:
        return None
    scope: str | None = None
    for part in value.split(","):
        part = part.strip().lower()
        if ":" in part:
            head, _, rest = part.partition(":")
            if head.strip() not in _VALUED_DIRECTIVES:
                scope, part = head.strip(), rest.strip()
        if scope not in (None, "*", token):
            continue
        for directive in part.split():
            if directive in OPT_OUT_DIRECTIVES:
                return directive
    return None


def charset_of(params: str) -> str | None:
    """The charset named in Content-Type parameters (`; charset="utf-8"` -> `utf-8`)."""
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip("\"'"):
            return value.strip().strip("\"'").lower()
    return None


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


def backoff_delay(attempt: int, options: FetchOptions, retry_after: float | None) -> float:
    """Exponential backoff with jitter; a server's Retry-After wins when it asks for more."""
    base = min(options.backoff_max, options.backoff_base * (2**attempt))
    delay = base * (0.5 + random.random() / 2)
    return max(delay, retry_after or 0.0)


class HostBusy(TimeoutError):
    """No connection slot for the host came free in time."""


class HostLimiter:
    """One semaphore per host, created on demand and dropped when nobody holds it."""

    def __init__(self, limit: int):
        self.limit = limit
        self._lock = threading.Lock()
        self._hosts: dict[str, list] = {}

    @contextmanager
    def hold(self, host: str, timeout: float | None = None):
        """Hold one of host's slots; `HostBusy` if none frees up within `timeout` seconds."""
        with self._lock:
            entry = self._hosts.setdefault(host, [threading.Semaphore(self.limit), 0])
            entry[1] += 1
        acquired = False
        try:
            acquired = entry[0].acquire(timeout=None if timeout is None else max(timeout, 0))
            if not acquired:
                raise HostBusy(f"no free connection slot for {host}")
            yield
        finally:
            if acquired:
                entry[0].release()
            with self._lock:
                entry[1] -= 1
                if entry[1] == 0:
                    del self._hosts[host]


class Fetcher:
    """Thread-safe image fetcher for one worker process.

    `resolver` is wrapped in a `CachingResolver` shared by every thread of this fetcher
    (`self.resolver`), so each host is looked up once per `dns_ttl`.
    """

    def __init__(self, options: FetchOptions, resolver: Resolver = system_resolver):
        self.options = options
        self._local = threading.local()
        self.resolver = CachingResolver(
            resolver,
            ttl=options.dns_ttl,
            negative_ttl=options.dns_negative_ttl,
            timeout=options.connect_timeout,
            remaining=self._remaining,
            workers=max(4, min(32, options.threads // 2)),
        )
        self.guard = AddressGuard(
            allow_private=options.allow_private_addresses,
            allowed_networks=options.allowed_networks,
            resolver=self.resolver,
        )
        self.adapter = PinnedAddressAdapter(
            pool_maxsize=options.per_host_connections, on_checkout=self._on_checkout
        )
        self.limiter = HostLimiter(options.per_host_connections)
        self.robots = RobotsCache(self)

    def close(self) -> None:
        self.adapter.close()
        self.resolver.close()

    def fetch(self, url: str, deadline: float | None = None) -> FetchResult:
        """Download one image URL; never raises for network or server misbehaviour.

        It returns within `total_timeout` (plus a fraction of a second), or by `deadline`
        (a `time.monotonic()` value, e.g. a shard's cut-off) when that comes first.
        """
        return self.get(url, purpose="image", deadline=deadline)

    # -- deadline plumbing ------------------------------------------------------------------

    def _scope(self) -> Scope | None:
        return getattr(self._local, "scope", None)

    def _remaining(self) -> float | None:
        scope = self._scope()
        return None if scope is None else scope.deadline - time.monotonic()

    def _on_checkout(self, conn) -> None:
        scope = self._scope()
        if scope is not None:
            scope.attach(conn)

    @contextmanager
    def _deadline(self, deadline: float | None):
        """Run the body under a wall-clock deadline of total_timeout (or `deadline`)."""
        outer = self._scope()
        external = deadline if deadline is not None else (outer.external if outer else None)
        limit = time.monotonic() + self.options.total_timeout
        scope = Scope(limit if external is None else min(limit, external), external)
        self._local.scope = scope
        WATCHDOG.watch(scope)
        try:
            yield scope
        finally:
            scope.finish()
            self._local.scope = outer

    # -- fetching ---------------------------------------------------------------------------

    def get(self, url: str, purpose: str = "image", deadline: float | None = None) -> FetchResult:
        """Follow redirects by hand so that every hop passes the guard (and robots).

        A nested call (robots.txt, fetched on the way to an image) gets its own
        total_timeout, bounded only by a `deadline` the outer caller passed.
        """
        with self._deadline(deadline) as scope:
            return self._get(url, purpose, scope)

    def _get(self, url: str, purpose: str, scope: Scope) -> FetchResult:
        opts = self.options
        deadline = scope.deadline
        current = url
        for hop in range(opts.max_redirects + 1):
            parts = urlsplit(current)
            if parts.scheme not in ("http", "https"):
                return FetchResult(url, FETCH_FAILED, f"scheme {parts.scheme or 'none'}")
            try:
                prepared = requests.Request(
                    "GET", current, headers=self._headers(purpose)
                ).prepare()
                target = urlsplit(prepared.url)
                host = target.hostname or ""
                port = target.port or (443 if target.scheme == "https" else 80)
            except (requests.RequestException, ValueError, UnicodeError) as err:
                return FetchResult(url, FETCH_FAILED, f"bad_url {type(err).__name__}")
            decision = self.guard.check(host, port)
            if not decision.allowed:
                ran_out = time.monotonic() >= deadline  # the lookup ran out of our time
                if ran_out and (decision.reason or "").startswith("dns "):
                    return FetchResult(url, FETCH_FAILED, "deadline dns", redirects=hop)
                return FetchResult(url, decision.status, decision.reason, redirects=hop)
            if purpose in ("image", "page"):
                status, reason = self.robots.verdict(prepared.url, deadline=deadline)
                if status:
                    return FetchResult(url, status, reason, redirects=hop)
            addresses = decision.addresses or (decision.address,)
            try:
                reply = self._with_retries(prepared, host, addresses, purpose, deadline)
            except _Final as final:
                return FetchResult(url, final.status, final.reason, redirects=hop)
            if reply.code in REDIRECT_CODES and reply.headers.get("location"):
                current = urljoin(prepared.url, reply.headers["location"])
                continue
            if reply.code != 200:
                return FetchResult(
                    url, FETCH_FAILED, f"http_{reply.code}", redirects=hop, http_code=reply.code
                )
            ctype, _, params = reply.headers.get("content-type", "").partition(";")
            ctype = ctype.strip().lower()
            return FetchResult(
                url, None, None, reply.body, prepared.url, ctype or None, hop, reply.code,
                charset_of(params),
            )  # fmt: skip
        return FetchResult(url, FETCH_FAILED, "too_many_redirects", redirects=opts.max_redirects)

    def _headers(self, purpose: str) -> dict[str, str]:
        accept = {
            "image": "image/avif,image/webp,image/*;q=0.9",
            "page": "text/html,application/xhtml+xml;q=0.9",
        }.get(purpose, "text/plain")
        return {"User-Agent": self.options.user_agent, "Accept": accept}

    def _with_retries(
        self, prepared, host: str, addresses, purpose: str, deadline: float
    ) -> _Reply:
        opts = self.options
        last = "unknown"
        for attempt in range(opts.retries + 1):
            try:
                with self.limiter.hold(host, timeout=deadline - time.monotonic()):
                    return self._attempt_addresses(prepared, host, addresses, purpose, deadline)
            except HostBusy:
                raise _Final(FETCH_FAILED, "deadline host_queue") from None
            except _Retry as retry:
                last = retry.reason
                if retry.retry_after is not None and retry.retry_after > opts.max_retry_after:
                    raise _Final(
                        FETCH_FAILED, f"{last} retry_after={retry.retry_after:g}s"
                    ) from None
                if attempt == opts.retries:
                    break
                delay = backoff_delay(attempt, opts, retry.retry_after)
                if time.monotonic() + delay > deadline:
                    raise _Final(FETCH_FAILED, f"{last} deadline") from None
                time.sleep(delay)
        raise _Final(FETCH_FAILED, last)

    def _attempt_addresses(
        self, prepared, host: str, addresses, purpose: str, deadline: float
    ) -> _Reply:
        """One attempt, on the first checked address that accepts a connection."""
        for i, address in enumerate(addresses):
            setattr(prepared, PINNED_ATTR, address)
            try:
                return self._attempt(prepared, purpose, deadline)
            except _ConnectFailed as failed:
                if len(addresses) > 1:
                    self.resolver.demote(host, address)  # try it last next time
                if i == len(addresses) - 1:
                    raise _Retry(failed.reason) from None
        raise _Final(FETCH_FAILED, "dns no_address")

    def _attempt(self, prepared, purpose: str, deadline: float) -> _Reply:
        """One request; raises _Retry for transient trouble and _Final for the rest."""
        opts = self.options
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _Final(FETCH_FAILED, "deadline")
        timeout = (min(opts.connect_timeout, remaining), min(opts.read_timeout, remaining))
        scope = self._scope()
        try:
            try:
                response = self.adapter.send(
                    prepared, stream=True, timeout=timeout, verify=opts.ca_bundle or True
                )
            except BlockedAddress as err:
                raise _Final(BLOCKED_ADDRESS, str(err)) from err
            except (requests.RequestException, OSError, ValueError) as err:
                if time.monotonic() >= deadline:
                    raise _Final(FETCH_FAILED, "deadline") from err
                if connect_failed(err):
                    raise _ConnectFailed(type(err).__name__) from err
                if isinstance(err, requests.exceptions.SSLError):  # a retry will not fix it
                    raise _Final(FETCH_FAILED, type(err).__name__) from err
                if isinstance(err, TRANSIENT_ERRORS):
                    raise _Retry(type(err).__name__) from err
                raise _Final(FETCH_FAILED, type(err).__name__) from err
            if scope is not None:
                sock = response_socket(response)
                if sock is not None:
                    scope.attach(sock)
            with response:
                try:
                    return self._reply(response, purpose, deadline)
                finally:
                    if scope is not None:
                        scope.release()  # before the connection goes back to the pool
        finally:
            if scope is not None:
                scope.release()

    def _reply(self, response, purpose: str, deadline: float) -> _Reply:
        opts = self.options
        headers = {k.lower(): v for k, v in response.headers.items()}
        code = response.status_code
        if code in RETRY_CODES:
            raise _Retry(f"http_{code}", retry_after_seconds(headers.get("retry-after")))
        if code != 200:
            return _Reply(code, headers)
        limit = {"image": opts.max_bytes, "page": opts.max_page_bytes}.get(
            purpose, ROBOTS_MAX_BYTES
        )
        if purpose == "image":
            self._check_image_headers(headers, limit)
        elif purpose == "page":
            self._check_page_headers(headers, limit)
        return _Reply(code, headers, self._read_body(response, limit, purpose, deadline))

    @staticmethod
    def _check_image_headers(headers: dict, limit: int) -> None:
        opt_out = x_robots_opt_out(headers.get("x-robots-tag"))
        if opt_out:
            raise _Final(OPTED_OUT, f"x-robots-tag {opt_out}")
        ctype = headers.get("content-type", "").split(";")[0].strip().lower()
        if not ctype.startswith("image/"):
            raise _Final(FETCH_FAILED, f"content_type {ctype or 'missing'}")
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            raise _Final(FETCH_FAILED, f"too_large {length} bytes")

    @staticmethod
    def _check_page_headers(headers: dict, limit: int) -> None:
        """Pages must be HTML; their X-Robots-Tag opt-outs count as for images."""
        opt_out = x_robots_opt_out(headers.get("x-robots-tag"))
        if opt_out:
            raise _Final(OPTED_OUT, f"x-robots-tag {opt_out}")
        ctype = headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype not in HTML_TYPES:
            raise _Final(FETCH_FAILED, f"content_type {ctype or 'missing'}")
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            raise _Final(FETCH_FAILED, f"too_large {length} bytes")

    @staticmethod
    def _read_body(response, limit: int, purpose: str, deadline: float) -> bytes:
        chunks: list[bytes] = []
        size = 0
        try:
            for chunk in response.iter_content(64 * 1024):
                size += len(chunk)
                if size > limit:
                    if purpose == "robots":  # RFC 9309: parse the first 500 KiB
                        chunks.append(chunk[: len(chunk) - (size - limit)])
                        break
                    raise _Final(FETCH_FAILED, f"too_large >{limit} bytes")
                chunks.append(chunk)
                if time.monotonic() >= deadline:
                    raise _Final(FETCH_FAILED, "deadline")
        except (requests.RequestException, OSError) as err:
            if time.monotonic() >= deadline:  # the watchdog cut the connection
                raise _Final(FETCH_FAILED, "deadline") from err
            if isinstance(err, TRANSIENT_ERRORS):
                raise _Retry(type(err).__name__) from err
            raise _Final(FETCH_FAILED, type(err).__name__) from err
        if time.monotonic() >= deadline:  # a body without Content-Length, cut at the deadline
            raise _Final(FETCH_FAILED, "deadline")
        return b"".join(chunks)


class _ConnectFailed(Exception):
    """No TCP connection to one address; the next checked address may do better."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class _Final(Exception):
    """A failure that ends the fetch with a final status."""

    def __init__(self, status: str, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason
