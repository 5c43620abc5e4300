"""robots.txt by RFC 9309: the RFC's own examples, the status-code policy and the cache.

Section numbers refer to RFC 9309 (https://www.rfc-editor.org/rfc/rfc9309).
"""

from __future__ import annotations

import threading
import time

import pytest

from pipeline.fetch import Fetcher, FetchOptions, FetchResult
from pipeline.robots import (
    ROBOTS_MAX_BYTES,
    RobotsCache,
    RobotsRules,
    decode_robots,
    product_token,
)

SITE = "https://example.com"


def allowed(robots: str, path: str, token: str = "wit-builder") -> bool:
    return RobotsRules.parse(robots, token).allowed(SITE + path)


# --- RFC 9309 5.1: the simple example ----------------------------------------------------------

RFC_EXAMPLE = """\
User-Agent: *
Disallow: *.gif$
Disallow: /example/
Allow: /publications/

User-Agent: foobot
Disallow:/
Allow:/example/page.html
Allow:/example/allowed.gif

User-Agent: barbot
User-Agent: bazbot
Disallow: /example/page.html

User-Agent: quxbot

EOF
"""


@pytest.mark.parametrize(
    ("token", "path", "expected"),
    [
        # foobot: everything disallowed except the two allowed files
        ("foobot", "/example/page.html", True),
        ("foobot", "/example/allowed.gif", True),
        ("foobot", "/example/other.html", False),
        ("foobot", "/", False),
        ("foobot", "/publications/", False),
        # barbot and bazbot share a group: only /example/page.html is disallowed
        ("barbot", "/example/page.html", False),
        ("barbot", "/example/other.html", True),
        ("barbot", "/image.gif", True),  # the * group does not apply to a named bot
        ("bazbot", "/example/page.html", False),
        ("bazbot", "/", True),
        # quxbot: an empty group, everything allowed
        ("quxbot", "/example/page.html", True),
        ("quxbot", "/image.gif", True),
        # everyone else follows the * group
        ("wit-builder", "/image.gif", False),
        ("wit-builder", "/a/b/image.gif", False),
        ("wit-builder", "/image.gif?size=2", True),  # $ anchors the end
        ("wit-builder", "/example/", False),
        ("wit-builder", "/example/page.html", False),
        ("wit-builder", "/publications/", True),
        ("wit-builder", "/publications/cover.gif", True),  # /publications/ is the longer match
        ("wit-builder", "/", True),
    ],
)
def test_rfc_simple_example(token, path, expected):
    assert allowed(RFC_EXAMPLE, path, token) is expected


# --- 5.2 and 2.2.2: longest match wins, Allow wins a tie ---------------------------------------


def test_rfc_longest_match_example():
    robots = "User-Agent: foobot\nAllow: /example/page/\nDisallow: /example/page/disallowed.gif\n"
    assert allowed(robots, "/example/page/", "foobot")
    assert allowed(robots, "/example/page/allowed.gif", "foobot")
    assert not allowed(robots, "/example/page/disallowed.gif", "foobot")


@pytest.mark.parametrize(
    ("robots", "path", "expected"),
    [
        # the three cases, which first-match parsers (urllib.robotparser) get wrong
        ("Allow: /\nDisallow: /private/", "/private/photo.jpg", False),
        ("Allow: /\nDisallow: /private/", "/public/photo.jpg", True),
        ("Disallow: /*.jpg$", "/a/b/photo.jpg", False),
        ("Disallow: /*.jpg$", "/a/b/photo.jpg?w=200", True),
        ("Disallow: /*.jpg$", "/a/b/photo.jpeg", True),
        ("Disallow: /img*/", "/img123/photo.jpg", False),
        ("Disallow: /img*/", "/img/photo.jpg", False),
        ("Disallow: /img*/", "/imgs", True),
        # ties: Allow wins
        ("Disallow: /page\nAllow: /page", "/page", True),
        ("Allow: /page\nDisallow: /page", "/page", True),
        ("Disallow: /*.php\nAllow: /*.php", "/index.php", True),
        # the longer rule wins whatever the order
        ("Disallow: /\nAllow: /photos/", "/photos/a.jpg", True),
        ("Allow: /photos/\nDisallow: /photos/private/", "/photos/private/a.jpg", False),
        ("Disallow: /photos\nAllow: /photos/*.jpg$", "/photos/a.jpg", True),
        ("Disallow: /photos\nAllow: /photos/*.jpg$", "/photos/a.png", False),
        # 2.2.3: special characters; a `*` anywhere, `$` only at the end
        ("Allow: /this/path/exactly$\nDisallow: /this/", "/this/path/exactly", True),
        ("Allow: /this/path/exactly$\nDisallow: /this/", "/this/path/exactly/not", False),
        ("Allow: /this/*/exactly\nDisallow: /this/", "/this/any/thing/exactly", True),
        ("Disallow: /a$b", "/a$b", False),  # a `$` inside a pattern is a plain character
        ("Disallow: /a$b", "/a", True),
        ("Disallow: /**/x", "/q/x", False),
        # an empty Disallow disallows nothing; robots.txt itself is always allowed
        ("Disallow:", "/anything", True),
        ("Disallow: /", "/robots.txt", True),
        # matching is case-sensitive in paths
        ("Disallow: /Private/", "/private/a.jpg", True),
        # comments and odd spacing
        ("Disallow: /tmp/ # scratch space\n  Allow : /tmp/ok/", "/tmp/ok/a.jpg", True),
        ("Disallow: /tmp/ # scratch space", "/tmp/a.jpg", False),
    ],
)
def test_rules_for_the_star_group(robots, path, expected):
    assert allowed("User-agent: *\n" + robots + "\n", path) is expected


# --- 2.2.2: percent-encoding ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "path"),
    [
        # the RFC's table of how octets are matched
        ("/foo/bar?baz=quz", "/foo/bar?baz=quz"),
        ("/foo/bar?baz=https%3A%2F%2Ffoo.bar", "/foo/bar?baz=https%3A%2F%2Ffoo.bar"),
        ("/foo/bar?baz=https://foo.bar", "/foo/bar?baz=https://foo.bar"),
        ("/foo/bar/\u30c4", "/foo/bar/%E3%83%84"),  # U+30C4, written as UTF-8 in robots.txt
        ("/foo/bar/%E3%83%84", "/foo/bar/\u30c4"),
        ("/foo/bar/%E3%83%84", "/foo/bar/%E3%83%84"),
        ("/foo/bar/%e3%83%84", "/foo/bar/%E3%83%84"),  # hex digits in either case
        ("/foo/bar/%62%61%7A", "/foo/bar/baz"),  # unreserved octets are decoded
        ("/foo/bar/baz", "/foo/bar/%62%61%7A"),
        # 2.2.3: a literal * or $ in a path is matched through its percent-encoding
        ("/path/file-with-a-%2A.html", "/path/file-with-a-*.html"),
        ("/path/foo-%24", "/path/foo-$"),
    ],
)
def test_percent_encoding_is_normalised(rule, path):
    robots = f"User-agent: *\nDisallow: {rule}\n"
    assert not allowed(robots, path), (rule, path)
    assert allowed(robots, "/unrelated")


def test_an_encoded_slash_is_not_a_slash():
    """%2F is a reserved character's encoding: it must stay distinct from `/`."""
    assert allowed("User-agent: *\nDisallow: /a%2Fb\n", "/a/b")
    assert allowed("User-agent: *\nDisallow: /a/b\n", "/a%2Fb")


# --- 2.2.1: which group applies ------------------------------------------------------------


@pytest.mark.parametrize(
    ("robots", "expected"),
    [
        ("User-agent: wit-builder\nDisallow: /\n", False),
        ("User-agent: WIT-Builder\nDisallow: /\n", False),  # case-insensitive
        ("user-agent: WIT-BUILDER\ndisallow: /\n", False),
        ("User-agent: wit-builder/1.0\nDisallow: /\n", False),  # the token before the version
        ("User-agent: otherbot\nDisallow: /\n", True),
        ("User-agent: wit\nDisallow: /\n", True),  # a prefix of our token is another bot
        ("User-agent: builder\nDisallow: /\n", True),  # a word of our User-Agent header too
        ("User-agent: wit-builder-images\nDisallow: /\n", True),  # a longer token
        # our group replaces the * group entirely
        ("User-agent: *\nDisallow: /\n\nUser-agent: wit-builder\nAllow: /\n", True),
        ("User-agent: *\nAllow: /\n\nUser-agent: wit-builder\nDisallow: /x\n", True),
        # a group may name several agents
        ("User-agent: otherbot\nUser-agent: wit-builder\nDisallow: /\n", False),
        # no group for us and no * group: nothing applies
        ("User-agent: otherbot\nDisallow: /\n\nUser-agent: thirdbot\nDisallow: /\n", True),
        ("", True),
        ("Disallow: /\n", True),  # rules before any user-agent line belong to no group
        ("\ufeffUser-agent: *\nDisallow: /\n", False),  # a byte order mark is not a rule
    ],
)
def test_group_choice(robots, expected):
    assert allowed(robots, "/photo.jpg") is expected


def test_groups_for_the_same_agent_are_combined():
    """2.2.1: 'If there is more than one group matching the user-agent, the matching
    groups' rules MUST be combined into one group' (the RFC's ExampleBot example)."""
    robots = (
        "user-agent: ExampleBot\ndisallow: /foo\ndisallow: /bar\n\n"
        "user-agent: ExampleBot\ndisallow: /baz\n"
    )
    for path in ("/foo", "/bar", "/baz"):
        assert not allowed(robots, path, "examplebot"), path
    assert allowed(robots, "/qux", "examplebot")


def test_groups_under_two_spellings_of_our_token_are_combined_by_longest_match():
    robots = (
        "User-agent: wit-builder\nDisallow: /photos/\n\n"
        "User-agent: WIT-Builder/2\nAllow: /photos/public/\n"
    )
    assert not allowed(robots, "/photos/a.jpg")
    assert allowed(robots, "/photos/public/a.jpg")
    assert allowed(robots, "/other.jpg")


def test_a_custom_user_agent_still_obeys_the_rules_for_wit_builder():
    robots = (
        "User-agent: *\nDisallow:\n\n"
        "User-agent: wit-builder\nDisallow: /a/\n\n"
        "User-agent: mybot\nDisallow: /b/\n"
    )
    stub = StubFetcher(ok(robots), user_agent="MyBot/2.0 (+mailto:me@example.com)")
    cache = RobotsCache(stub)
    assert cache.token == ("wit-builder", "mybot")
    assert cache.verdict("http://s.example/a/x.jpg") == ("opted_out", "robots.txt")
    assert cache.verdict("http://s.example/b/x.jpg") == ("opted_out", "robots.txt")
    assert cache.verdict("http://s.example/c/x.jpg") == (None, None)
    default = RobotsCache(StubFetcher(ok(robots)))
    assert default.token == ("wit-builder",)
    assert default.verdict("http://s.example/b/x.jpg") == (None, None)


def test_product_token_of_a_user_agent_header():
    assert product_token("wit-builder/0.1 (CLIP-style dataset builder)") == "wit-builder"
    assert product_token("Mozilla/5.0") == "mozilla"
    assert product_token("  My_Bot ") == "my_bot"


def test_crawl_delay_comes_from_our_group():
    robots = "User-agent: *\nCrawl-delay: 9\n\nUser-agent: wit-builder\nCrawl-delay: 2.5\n"
    assert RobotsRules.parse(robots, "wit-builder").crawl_delay() == 2.5
    assert RobotsRules.parse(robots, "otherbot").crawl_delay() == 9.0
    assert RobotsRules.parse("User-agent: *\nDisallow:\n", "x").crawl_delay() is None


# --- 2.5: the parse limit --------------------------------------------------------------------


def test_parse_limit_is_500_kib_and_drops_a_cut_line():
    assert ROBOTS_MAX_BYTES == 500 * 1024
    head = b"User-agent: *\n#" + b"-" * (ROBOTS_MAX_BYTES - 20 - 16) + b"\n"
    assert len(head) == ROBOTS_MAX_BYTES - 20
    body = head + b"Disallow: /private-but-longer-than-the-limit/\nDisallow: /late/\n"
    text = decode_robots(body)
    assert len(text.encode()) <= ROBOTS_MAX_BYTES
    assert text.endswith("\n") and "Disallow: /pri" not in text  # the cut line is dropped
    rules = RobotsRules.parse(body, "wit-builder")
    assert rules.allowed(SITE + "/late/a.jpg")  # beyond the limit: not parsed
    assert rules.allowed(SITE + "/p")  # and no half rule such as "Disallow: /p"


def test_rules_within_the_limit_apply():
    body = b"User-agent: *\nDisallow: /early/\n" + b"# x\n" * 200_000
    assert not RobotsRules.parse(body, "wit-builder").allowed(SITE + "/early/a.jpg")


# --- 2.3.1: what each robots.txt answer means ------------------------------------------------


class StubFetcher:
    """Answers robots.txt requests from a list of results (the last one repeats)."""

    def __init__(self, *results: FetchResult, delay: float = 0.0, **options):
        self.options = FetchOptions(**options)
        self.results = list(results)
        self.calls = 0
        self.delay = delay

    def get(self, url, purpose="image", deadline=None):
        assert url.endswith("/robots.txt") and purpose == "robots"
        self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        return self.results[min(self.calls, len(self.results)) - 1]


def ok(text: str) -> FetchResult:
    return FetchResult("r", data=text.encode(), http_code=200)


def failed(code: int | None, reason: str | None = None) -> FetchResult:
    return FetchResult("r", "fetch_failed", reason or f"http_{code}", http_code=code)


@pytest.mark.parametrize(
    ("result", "status"),
    [
        (ok("User-agent: *\nDisallow: /a/\n"), "opted_out"),
        (ok("User-agent: wit-builder\nDisallow: /\n"), "opted_out"),
        (ok("User-agent: otherbot\nDisallow: /\n"), None),
        # 2.3.1.3 "unavailable": any 4xx, 401 and 403 included, means no rules
        (failed(400), None),
        (failed(401), None),
        (failed(403), None),
        (failed(404), None),
        (failed(410), None),
        (failed(451), None),
        # 2.3.1.4 "unreachable": 5xx and network errors mean disallow everything. The site
        # did not opt out, so the URL is fetch_failed, not opted_out. 429 counts here too.
        (failed(500), "fetch_failed"),
        (failed(503), "fetch_failed"),
        (failed(429), "fetch_failed"),
        (failed(None, "ConnectTimeout"), "fetch_failed"),
        (failed(None, "dns nxdomain"), "fetch_failed"),
        (FetchResult("r", "blocked_address", "loopback 127.0.0.1"), "blocked_address"),
    ],
)
def test_status_code_policy(result, status):
    stub = StubFetcher(result)
    cache = RobotsCache(stub)
    got, reason = cache.verdict("http://site.example/a/cat.jpg")
    assert got == status
    if status == "opted_out":
        assert reason == "robots.txt"
    if status == "fetch_failed":
        assert reason.startswith("robots_unreachable")
    cache.verdict("http://site.example/b/dog.jpg")
    cache.verdict("http://SITE.example/c/bird.jpg")  # the same origin
    assert stub.calls == 1


def test_a_robots_txt_that_ran_out_of_a_callers_deadline_is_not_remembered():
    """A timeout the site caused is cached; one our caller imposed (a shard's cut-off,
    shorter than total_timeout) is not, so the next URL asks again."""
    stub = StubFetcher(failed(None, "deadline"), total_timeout=30.0)
    cache = RobotsCache(stub)
    assert cache.verdict("http://s.example/x")[0] == "fetch_failed"
    assert cache.verdict("http://s.example/y")[0] == "fetch_failed"
    assert stub.calls == 2
    slow = StubFetcher(failed(None, "deadline"), delay=0.3, total_timeout=0.3)
    cache = RobotsCache(slow)
    assert cache.verdict("http://s.example/x")[0] == "fetch_failed"
    assert cache.verdict("http://s.example/y")[0] == "fetch_failed"
    assert slow.calls == 1


def test_each_origin_has_its_own_robots_txt():
    stub = StubFetcher(ok("User-agent: *\nDisallow: /\n"))
    cache = RobotsCache(stub)
    for url in ("http://a.example/x", "https://a.example/x", "http://a.example:8080/x"):
        cache.verdict(url)
    assert stub.calls == 3


# --- 2.4: caching --------------------------------------------------------------------------


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_cached_for_its_lifetime_then_fetched_again():
    clock = Clock()
    stub = StubFetcher(ok("User-agent: *\nDisallow: /a/\n"), ok("User-agent: *\nDisallow: /\n"))
    cache = RobotsCache(stub, clock=clock)
    assert cache.ttl == 24 * 3600  # RFC 9309 2.4: no more than 24 hours
    assert cache.verdict("http://s.example/b.jpg") == (None, None)
    clock.now += 23 * 3600
    assert cache.verdict("http://s.example/b.jpg") == (None, None)
    assert stub.calls == 1
    clock.now += 2 * 3600
    assert cache.verdict("http://s.example/b.jpg") == ("opted_out", "robots.txt")
    assert stub.calls == 2


def test_unreachable_robots_txt_is_asked_again_after_the_error_lifetime():
    clock = Clock()
    stub = StubFetcher(failed(503), ok("User-agent: *\nDisallow: /a/\n"))
    cache = RobotsCache(stub, clock=clock, error_ttl=60)
    assert cache.verdict("http://s.example/b.jpg")[0] == "fetch_failed"
    clock.now += 30
    assert cache.verdict("http://s.example/b.jpg")[0] == "fetch_failed"
    assert stub.calls == 1
    clock.now += 31
    assert cache.verdict("http://s.example/b.jpg") == (None, None)
    assert cache.verdict("http://s.example/a/x.jpg") == ("opted_out", "robots.txt")
    assert stub.calls == 2


def test_a_failed_refresh_keeps_the_copy_it_had():
    """2.4: a cached robots.txt may be used past its lifetime while the server is unreachable."""
    clock = Clock()
    stub = StubFetcher(ok("User-agent: *\nDisallow: /a/\n"), failed(500))
    cache = RobotsCache(stub, clock=clock, ttl=100, error_ttl=10)
    assert cache.verdict("http://s.example/a/x.jpg") == ("opted_out", "robots.txt")
    clock.now += 101
    assert cache.verdict("http://s.example/a/x.jpg") == ("opted_out", "robots.txt")
    assert cache.verdict("http://s.example/b.jpg") == (None, None)
    assert stub.calls == 2
    clock.now += 11
    cache.verdict("http://s.example/b.jpg")
    assert stub.calls == 3  # asked again after the error lifetime


def test_fetched_once_under_concurrency():
    stub = StubFetcher(ok("User-agent: *\nDisallow: /a/\n"), delay=0.2)
    cache = RobotsCache(stub)
    verdicts = []
    threads = [
        threading.Thread(target=lambda: verdicts.append(cache.verdict("http://s.example/a/x")))
        for _ in range(20)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert stub.calls == 1
    assert verdicts == [("opted_out", "robots.txt")] * 20


def test_waiting_for_another_threads_fetch_respects_the_deadline():
    stub = StubFetcher(ok("User-agent: *\nDisallow:\n"), delay=1.0)
    cache = RobotsCache(stub)
    owner = threading.Thread(target=cache.verdict, args=("http://s.example/x",))
    owner.start()
    time.sleep(0.1)
    start = time.monotonic()
    got = cache.verdict("http://s.example/y", deadline=time.monotonic() + 0.2)
    assert got == ("fetch_failed", "deadline robots.txt")
    assert time.monotonic() - start < 0.6
    owner.join()
    assert cache.verdict("http://s.example/y") == (None, None)


def test_lru_bound():
    stub = StubFetcher(ok("User-agent: *\nDisallow:\n"))
    cache = RobotsCache(stub, max_origins=3)
    for i in range(5):
        cache.verdict(f"http://h{i}.example/x")
    cache.verdict("http://h0.example/x")
    assert stub.calls == 6


def test_fetcher_options_set_the_lifetimes():
    stub = StubFetcher(robots_ttl=7.0, robots_error_ttl=3.0)
    cache = RobotsCache(stub)
    assert (cache.ttl, cache.error_ttl) == (7.0, 3.0)


def test_the_fetcher_uses_rfc_9309_end_to_end():
    """A real Fetcher against a local server whose robots.txt needs longest-match."""
    import http.server

    from pipeline.fixtures import payloads

    robots = b"User-agent: *\nAllow: /\nDisallow: /img*/\nDisallow: /*.png$\n"
    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            seen.append(self.path)
            body = robots if self.path == "/robots.txt" else payloads.jpeg()
            self.send_response(200)
            ctype = "text/plain" if self.path == "/robots.txt" else "image/jpeg"
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        fetcher = Fetcher(FetchOptions(allow_private_addresses=True, retries=0))
        assert fetcher.fetch(base + "/photos/a.jpg").ok
        assert fetcher.fetch(base + "/img2/a.jpg").reason == "robots.txt"
        assert fetcher.fetch(base + "/photos/a.png").reason == "robots.txt"
        assert fetcher.fetch(base + "/photos/a.png?w=1").ok
        fetcher.close()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    assert seen.count("/robots.txt") == 1
    assert "/img2/a.jpg" not in seen and "/photos/a.png" not in seen
