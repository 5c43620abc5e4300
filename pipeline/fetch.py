"""Fetching image bytes politely and safely: the network half of `FetchAndWriteShards`.

One `Fetcher` per worker process serves many threads. For every URL it
- checks the host with the address guard at every redirect hop and connects to the
  address it checked (`pipeline.guard`);
- honours robots.txt (fetched once per origin and cached) and `X-Robots-Tag`;
- limits concurrent requests per host, retries transient failures with exponential
  backoff and honours `Retry-After` up to a bound;
- streams the body under a byte limit and a total deadline, and insists on `image/*`
  (on HTML for `purpose="page"`, which the page crawler in `pipeline.crawl` uses).

The outcome is a `FetchResult` whose `status` is None on success, or one of the final
statuses `fetch_failed`, `opted_out`, `blocked_address` with a short `reason`.
See docs/operations.md for the opt-out policy.
"""

from __future__ import annotations

import email.utils
import random
import threading
import time
import urllib.robotparser
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

import requests

from pipeline.guard import (
    PINNED_ATTR,
    AddressGuard,
    BlockedAddress,
    PinnedAddressAdapter,
    Resolver,
    system_resolver,
)
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
ROBOTS_MAX_BYTES = 512 * 1024
HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})


@dataclass(frozen=True)
class FetchOptions:
    """Every knob of fetching, resizing and shard writing; picklable for Beam workers.

    `threads` and `per_host_connections` are per worker process; how many processes run
    is the Beam runner's choice (`--direct_num_workers` locally).
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

    def __post_init__(self):
        if self.shard_size < 1:
            raise ValueError(f"shard_size must be at least 1, got {self.shard_size}")
        if self.threads < 1 or self.per_host_connections < 1:
            raise ValueError("threads and per_host_connections must be at least 1")
        if self.max_redirects < 0 or self.retries < 0:
            raise ValueError("max_redirects and retries cannot be negative")


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


class HostLimiter:
    """One semaphore per host, created on demand and dropped when nobody holds it."""

    def __init__(self, limit: int):
        self.limit = limit
        self._lock = threading.Lock()
        self._hosts: dict[str, list] = {}

    @contextmanager
    def hold(self, host: str):
        with self._lock:
            entry = self._hosts.setdefault(host, [threading.Semaphore(self.limit), 0])
            entry[1] += 1
        entry[0].acquire()
        try:
            yield
        finally:
            entry[0].release()
            with self._lock:
                entry[1] -= 1
                if entry[1] == 0:
                    del self._hosts[host]


class RobotsCache:
    """robots.txt per origin, fetched once (even under concurrency) and kept LRU.

    Policy (RFC 9309, stricter where it is unclear): 2xx is parsed; 401/403 disallow
    everything; other 4xx allow everything; 5xx or an unreachable server disallow
    everything and give `fetch_failed` (the site did not opt out, we could not tell).
    """

    def __init__(self, fetcher: Fetcher, max_origins: int = 50_000):
        self._fetcher = fetcher
        self._max = max_origins
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, list] = OrderedDict()

    def verdict(self, url: str) -> tuple[str | None, str | None]:
        """(None, None) if url may be fetched, else (status, reason)."""
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc.lower()}"
        with self._lock:
            entry = self._entries.get(origin)
            owner = entry is None
            if owner:
                entry = [threading.Event(), None]
                self._entries[origin] = entry
                while len(self._entries) > self._max:
                    self._entries.popitem(last=False)
            else:
                self._entries.move_to_end(origin)
        if owner:
            try:
                entry[1] = self._load(origin)
            except Exception as err:  # never let one odd robots.txt read as an opt-out
                entry[1] = (FETCH_FAILED, f"robots_error {type(err).__name__}")
            finally:
                entry[0].set()
        else:
            entry[0].wait()
        rules = entry[1]
        if isinstance(rules, tuple):
            return rules
        if rules is None or not rules.can_fetch(self._fetcher.options.user_agent, url):
            return OPTED_OUT, "robots.txt"
        return None, None

    def crawl_delay(self, url: str) -> float | None:
        """The Crawl-delay robots.txt asks of us for url's origin, once its rules are loaded."""
        parts = urlsplit(url)
        with self._lock:
            entry = self._entries.get(f"{parts.scheme}://{parts.netloc.lower()}")
        if entry is None or not entry[0].is_set() or isinstance(entry[1], tuple):
            return None
        rules = entry[1]
        delay = rules.crawl_delay(self._fetcher.options.user_agent) if rules else None
        return float(delay) if delay is not None else None

    def _load(self, origin: str):
        result = self._fetcher.get(origin + "/robots.txt", purpose="robots")
        if result.status == BLOCKED_ADDRESS:
            return (BLOCKED_ADDRESS, result.reason)
        parser = urllib.robotparser.RobotFileParser()
        code = result.http_code or 0
        if result.ok:
            text = (result.data or b"").decode("utf-8", errors="replace")
            parser.parse(text.splitlines())
        elif code in (401, 403):
            parser.disallow_all = True
        elif 400 <= code < 500:
            parser.allow_all = True
        else:
            return (FETCH_FAILED, f"robots_unreachable {result.reason}")
        return parser


class Fetcher:
    """Thread-safe image fetcher for one worker process."""

    def __init__(self, options: FetchOptions, resolver: Resolver = system_resolver):
        self.options = options
        self.guard = AddressGuard(
            allow_private=options.allow_private_addresses,
            allowed_networks=options.allowed_networks,
            resolver=resolver,
        )
        self.adapter = PinnedAddressAdapter(pool_maxsize=options.per_host_connections)
        self.limiter = HostLimiter(options.per_host_connections)
        self.robots = RobotsCache(self)

    def close(self) -> None:
        self.adapter.close()

    def fetch(self, url: str) -> FetchResult:
        """Download one image URL; never raises for network or server misbehaviour."""
        return self.get(url, purpose="image")

    def get(self, url: str, purpose: str = "image") -> FetchResult:
        """Follow redirects by hand so that every hop passes the guard (and robots)."""
        opts = self.options
        deadline = time.monotonic() + opts.total_timeout
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
                return FetchResult(url, decision.status, decision.reason, redirects=hop)
            if purpose in ("image", "page"):
                status, reason = self.robots.verdict(prepared.url)
                if status:
                    return FetchResult(url, status, reason, redirects=hop)
            setattr(prepared, PINNED_ATTR, decision.address)
            try:
                reply = self._with_retries(prepared, host, purpose, deadline)
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

    def _with_retries(self, prepared, host: str, purpose: str, deadline: float) -> _Reply:
        opts = self.options
        last = "unknown"
        for attempt in range(opts.retries + 1):
            try:
                with self.limiter.hold(host):
                    return self._attempt(prepared, purpose, deadline)
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

    def _attempt(self, prepared, purpose: str, deadline: float) -> _Reply:
        """One request; raises _Retry for transient trouble and _Final for the rest."""
        opts = self.options
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _Final(FETCH_FAILED, "deadline")
        timeout = (min(opts.connect_timeout, remaining), min(opts.read_timeout, remaining))
        try:
            response = self.adapter.send(
                prepared, stream=True, timeout=timeout, verify=opts.ca_bundle or True
            )
        except BlockedAddress as err:
            raise _Final(BLOCKED_ADDRESS, str(err)) from err
        except requests.exceptions.SSLError as err:  # retrying will not fix a certificate
            raise _Final(FETCH_FAILED, type(err).__name__) from err
        except TRANSIENT_ERRORS as err:
            raise _Retry(type(err).__name__) from err
        except (requests.RequestException, OSError, ValueError) as err:
            raise _Final(FETCH_FAILED, type(err).__name__) from err
        with response:
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
                if time.monotonic() > deadline:
                    raise _Final(FETCH_FAILED, "deadline")
        except TRANSIENT_ERRORS as err:
            raise _Retry(type(err).__name__) from err
        except requests.RequestException as err:
            raise _Final(FETCH_FAILED, type(err).__name__) from err
        return b"".join(chunks)


class _Final(Exception):
    """A failure that ends the fetch with a final status."""

    def __init__(self, status: str, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason
