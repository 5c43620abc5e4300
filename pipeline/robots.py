"""robots.txt by RFC 9309: parsing with protego, group choice by product token, a cache.

`RobotsRules` answers "may this URL be fetched?" for one robots.txt and our product tokens
(`wit-builder`, and the first word of a custom User-Agent when one is set, so that renaming
the crawler never escapes a site's rules for `wit-builder`):

- the groups whose `user-agent` names one of our tokens (compared case-insensitively, the
  value read up to its first character outside `a-z A-Z _ -`) apply, all such groups
  combined; failing that, the `*` group; failing that, nothing is disallowed (RFC 9309 2.2.1);
- within it the longest matching rule wins, and `Allow` wins a tie (2.2.2);
- `*` matches any run of characters and a final `$` anchors the end (2.2.3);
- paths and patterns are compared after percent-encoding is normalised, so `/%62az` and
  `/baz` are one path and `%2F` stays distinct from `/` (2.2.2);
- `/robots.txt` itself is always allowed.

Parsing, percent-encoding and wildcard matching are protego's (Scrapy's RFC 9309 parser);
only the choice of group is ours, because protego picks a group whose name is any token of
the User-Agent header, so a group for `wit` or `builder` would apply to `wit-builder`.

`RobotsCache` keeps one verdict source per origin (scheme, host, port), fetched once even
under concurrency, for `ttl` seconds (24 h by default, as RFC 9309 2.4 asks), and applies the
status-code policy of RFC 9309 2.3.1: 2xx is parsed (the first 500 KiB, 2.5), 4xx means
"no robots.txt" (everything allowed), 5xx or an unreachable server means "disallow
everything" for `error_ttl` seconds (5 minutes by default), after which it is asked again;
when a refresh fails that way, a copy parsed earlier is used instead (2.4).
"""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from urllib.parse import urlsplit

from protego import Protego

from pipeline.schema import BLOCKED_ADDRESS, FETCH_FAILED, OPTED_OUT

#: RFC 9309 2.5: crawlers must parse at least the first 500 kibibytes.
ROBOTS_MAX_BYTES = 500 * 1024
#: RFC 9309 2.4: a cached robots.txt should not be used for more than 24 hours.
DEFAULT_TTL = 24 * 3600.0
#: How long "unreachable, so disallow everything" stands before robots.txt is asked again.
DEFAULT_ERROR_TTL = 300.0

_TOKEN_PREFIX = re.compile(r"[a-z_-]*")
#: The project's own product token: its groups apply whatever User-Agent is configured.
PROJECT_TOKEN = "wit-builder"


def product_token(user_agent: str) -> str:
    """The product token of a User-Agent (`Name/1.0 (...)` -> `name`), lower-cased."""
    return _TOKEN_PREFIX.match(user_agent.strip().lower()).group(0)


def decode_robots(body: bytes, limit: int = ROBOTS_MAX_BYTES) -> str:
    """The text to parse: the first `limit` bytes, cut back to the last whole line.

    A rule cut in half could say less than its author meant (`Allow: /p` from
    `Allow: /private-but-not-this/`), so a partial last line is dropped. A UTF-8 byte order
    mark is removed; bytes that are not UTF-8 become U+FFFD and match nothing.
    """
    if len(body) > limit:
        body = body[:limit]
        end = max(body.rfind(b"\n"), body.rfind(b"\r"))
        body = body[: end + 1] if end >= 0 else b""
    return body.decode("utf-8", errors="replace").removeprefix("\ufeff")


class RobotsRules:
    """A parsed robots.txt as it applies to our product token(s).

    `token` is one token or several (`("wit-builder", "mybot")`); the first is the one
    handed to protego should its internals ever change.
    """

    def __init__(
        self, parser: Protego | None, token: str | tuple[str, ...], everything: bool | None = None
    ):
        self._parser = parser
        tokens = (token,) if isinstance(token, str) else tuple(token)
        self.tokens = tuple(dict.fromkeys(t.lower() for t in tokens if t))
        self.token = self.tokens[0] if self.tokens else ""
        self._everything = everything  # True: allow all; False: disallow all; None: rules
        self._groups = self._matching_groups() if parser is not None else []

    @classmethod
    def parse(cls, text: str | bytes, token: str | tuple[str, ...]) -> RobotsRules:
        if isinstance(text, bytes):
            text = decode_robots(text)
        return cls(Protego.parse(text.removeprefix("\ufeff")), token)

    @classmethod
    def allow_all(cls, token: str | tuple[str, ...]) -> RobotsRules:
        return cls(None, token, everything=True)

    @classmethod
    def disallow_all(cls, token: str | tuple[str, ...]) -> RobotsRules:
        return cls(None, token, everything=False)

    def _matching_groups(self) -> list:
        groups = getattr(self._parser, "_user_agents", None)
        if groups is None:  # protego changed its insides: let it choose (token-only UA)
            return []
        ours = [rs for name, rs in groups.items() if product_token(name) in self.tokens]
        if ours:
            return ours
        return [groups["*"]] if "*" in groups else []

    def allowed(self, url: str) -> bool:
        """True when url may be fetched under these rules."""
        if self._everything is not None:
            return self._everything or urlsplit(url).path == "/robots.txt"
        assert self._parser is not None
        if not hasattr(self._parser, "_user_agents"):
            return self._parser.can_fetch(url, self.token)
        if urlsplit(url).path == "/robots.txt":
            return True
        if len(self._groups) == 1:
            return self._groups[0].can_fetch(url)
        return self._combined_allowed(url)

    def _combined_allowed(self, url: str) -> bool:
        """Longest match over several groups for our tokens (RFC 9309 2.2.1 combines them)."""
        if not self._groups:
            return True
        from protego._utils import _quote_path

        path = _quote_path(url)
        best: tuple[int, bool] | None = None
        for group in self._groups:
            for rule in group._rules:  # sorted longest first, Allow before Disallow
                if rule.value.match(path):
                    found = (rule.value.priority, rule.field == "allow")
                    best = found if best is None else max(best, found)
                    break
        return best is None or best[1]

    def crawl_delay(self) -> float | None:
        """The Crawl-delay of the group that applies to us (not part of RFC 9309)."""
        delays = [g.crawl_delay for g in self._groups if g.crawl_delay is not None]
        if delays:
            return float(max(delays))
        if self._parser is not None and not hasattr(self._parser, "_user_agents"):
            delay = self._parser.crawl_delay(self.token)
            return float(delay) if delay is not None else None
        return None


Verdict = tuple[str | None, str | None]


class _Entry:
    __slots__ = ("ready", "value", "expires")

    def __init__(self):
        self.ready = threading.Event()
        self.value: RobotsRules | Verdict | None = None
        self.expires = float("inf")


class RobotsCache:
    """robots.txt per origin, fetched once (even under concurrency), kept `ttl` seconds, LRU.

    `fetcher` needs `options.user_agent` and `get(url, purpose="robots", deadline=None)`
    returning a `FetchResult`. Verdicts: `(None, None)` to go ahead, `(opted_out,
    "robots.txt")` when disallowed, `(fetch_failed, "robots_unreachable ...")` when
    robots.txt could not be read (5xx, timeout, DNS), `(blocked_address, ...)` when its
    host is refused by the address guard.
    """

    def __init__(
        self,
        fetcher,
        max_origins: int = 50_000,
        ttl: float | None = None,
        error_ttl: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        options = getattr(fetcher, "options", None)
        self._fetcher = fetcher
        self._max = max_origins
        self.ttl = ttl if ttl is not None else getattr(options, "robots_ttl", DEFAULT_TTL)
        self.error_ttl = (
            error_ttl
            if error_ttl is not None
            else getattr(options, "robots_error_ttl", DEFAULT_ERROR_TTL)
        )
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    @property
    def token(self) -> tuple[str, ...]:
        """`wit-builder` and the configured User-Agent's product token."""
        return tuple(
            dict.fromkeys([PROJECT_TOKEN, product_token(self._fetcher.options.user_agent)])
        )

    @staticmethod
    def origin(url: str) -> str:
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.netloc.lower()}"

    def _entry(self, origin: str) -> tuple[_Entry, bool, _Entry | None]:
        """(entry, whether this caller must load it, the expired entry it replaces)."""
        now = self._clock()
        with self._lock:
            entry = self._entries.get(origin)
            if entry is not None and (not entry.ready.is_set() or entry.expires > now):
                self._entries.move_to_end(origin)
                return entry, False, None
            fresh = _Entry()
            self._entries[origin] = fresh
            self._entries.move_to_end(origin)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)
            return fresh, True, entry

    def verdict(self, url: str, deadline: float | None = None) -> Verdict:
        """(None, None) if url may be fetched, else (status, reason).

        `deadline` (time.monotonic) bounds the wait for another thread's robots.txt fetch.
        """
        origin = self.origin(url)
        entry, owner, stale = self._entry(origin)
        if owner:
            try:
                entry.value, lifetime = self._load(origin, stale)
            except Exception as err:  # never let one odd robots.txt read as an opt-out
                entry.value, lifetime = (
                    (FETCH_FAILED, f"robots_error {type(err).__name__}"),
                    self.error_ttl,
                )
            finally:
                if entry.value is None:
                    entry.value, lifetime = (FETCH_FAILED, "robots_error"), self.error_ttl
                entry.expires = self._clock() + lifetime
                entry.ready.set()
        else:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not entry.ready.wait(timeout):
                return FETCH_FAILED, "deadline robots.txt"
        rules = entry.value
        if isinstance(rules, tuple):
            return rules
        if not rules.allowed(url):
            return OPTED_OUT, "robots.txt"
        return None, None

    def rules(self, url: str) -> RobotsRules | None:
        """The loaded rules for url's origin, or None when absent or unreadable."""
        with self._lock:
            entry = self._entries.get(self.origin(url))
        if entry is None or not entry.ready.is_set() or isinstance(entry.value, tuple):
            return None
        return entry.value

    def crawl_delay(self, url: str) -> float | None:
        """The Crawl-delay robots.txt asks of us for url's origin, once its rules are loaded."""
        rules = self.rules(url)
        return rules.crawl_delay() if rules is not None else None

    def _load(self, origin: str, stale: _Entry | None) -> tuple[RobotsRules | Verdict, float]:
        started = time.monotonic()
        result = self._fetcher.get(origin + "/robots.txt", purpose="robots")
        token = self.token
        if result.status == BLOCKED_ADDRESS:
            return (BLOCKED_ADDRESS, result.reason), self.ttl
        code = result.http_code or 0
        if result.ok:
            return RobotsRules.parse(result.data or b"", token), self.ttl
        if 400 <= code < 500 and code != 429:  # RFC 9309 2.3.1.3: "unavailable"
            return RobotsRules.allow_all(token), self.ttl
        # 5xx, 429, timeouts, connection and DNS errors: RFC 9309 2.3.1.4 "unreachable".
        if stale is not None and isinstance(stale.value, RobotsRules):
            return stale.value, self.error_ttl  # keep the copy we had (RFC 9309 2.4)
        lifetime = self.error_ttl
        total = getattr(getattr(self._fetcher, "options", None), "total_timeout", None)
        cut_short = total is not None and time.monotonic() - started < total - 0.5
        if (result.reason or "").startswith("deadline") and cut_short:
            lifetime = 0.0  # a deadline our caller imposed, not the site's slowness
        return (FETCH_FAILED, f"robots_unreachable {result.reason}"), lifetime
