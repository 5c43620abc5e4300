"""Fetching against the fixture web on 127.0.0.1 / ::1 only.

Every misbehaving endpoint must end in its documented status; the guard must refuse
loopback without `allow_private_addresses` and the server must never see the request.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time

import pytest
from fetch_helpers import first_photo, options, timed_fetch

from pipeline.fetch import (
    DEFAULT_USER_AGENT,
    Fetcher,
    FetchOptions,
    HostLimiter,
    _Final,
    backoff_delay,
    retry_after_seconds,
    x_robots_opt_out,
)
from pipeline.fixtures import payloads
from pipeline.fixtures.web import FixtureWeb
from pipeline.resize import ImageResizer


@pytest.fixture(scope="module")
def web(flickr_dir):
    payloads.bomb_png()  # built once up front, so a read timeout never races its creation
    with FixtureWeb(image_dir=flickr_dir) as server:
        yield server


@pytest.fixture
def no_sleep(monkeypatch):
    """Record the backoff sleeps instead of waiting them out."""
    slept: list[float] = []
    monkeypatch.setattr("pipeline.fetch.time.sleep", slept.append)
    return slept


def outcome(fetcher: Fetcher, resizer: ImageResizer, url: str) -> tuple[str, str | None]:
    """(final status, reason) the way the shard writer decides it."""
    result = fetcher.fetch(url)
    if not result.ok:
        return result.status, result.reason
    image = resizer(result.data)
    return ("kept", None) if image.ok else ("image_rejected", image.reason)


# --- every fixture endpoint ends in its documented status ----------------------------------

ENDPOINTS = [
    ("/e/404", "fetch_failed", "http_404"),
    ("/e/500", "fetch_failed", "http_500"),
    ("/e/429", "fetch_failed", "http_429"),
    ("/e/429-once/tok-a.jpg", "kept", None),
    ("/e/redirect/3.jpg", "kept", None),
    ("/e/redirect/9.jpg", "fetch_failed", "too_many_redirects"),
    ("/e/loop.jpg", "fetch_failed", "too_many_redirects"),
    ("/e/huge.jpg", "fetch_failed", "too_large"),
    ("/e/wrong-type.jpg", "fetch_failed", "content_type text/html"),
    ("/e/truncated.jpg", "image_rejected", "truncated"),
    ("/e/not-image.jpg", "image_rejected", "not_an_image"),
    ("/e/bomb.png", "image_rejected", "decompression_bomb"),
    ("/e/noai.jpg", "opted_out", "x-robots-tag noai"),
    ("/e/noimageai.jpg", "opted_out", "x-robots-tag noimageai"),
    ("/e/empty.jpg", "image_rejected", "empty"),
    ("/e/tiny.jpg", "image_rejected", "too_small"),
    ("/private/photo.jpg", "opted_out", "robots.txt"),
    ("/e/redirect-to?url=file:///etc/passwd", "fetch_failed", "scheme file"),
    ("/e/nonexistent-fixture", "fetch_failed", "http_404"),
]


@pytest.mark.parametrize(("path", "status", "reason"), ENDPOINTS)
def test_endpoint_ends_in_documented_status(web, no_sleep, path, status, reason):
    fetcher = Fetcher(options())
    got_status, got_reason = outcome(fetcher, ImageResizer(fetcher.options), web.url(path))
    assert got_status == status
    if reason is None:
        assert got_reason is None
    else:
        assert got_reason.startswith(reason), got_reason


def test_slow_server_times_out(web):
    fetcher = Fetcher(options(read_timeout=0.3, retries=0))
    result = fetcher.fetch(web.url("/e/slow.jpg?s=5"))
    assert (result.status, result.reason) == ("fetch_failed", "ReadTimeout")


def test_real_photo_is_kept_with_its_bytes(web, flickr_dir):
    name = first_photo(flickr_dir)
    result = Fetcher(options()).fetch(web.url(f"/images/{name}"))
    assert result.ok and result.content_type == "image/jpeg"
    assert result.data == (flickr_dir / name).read_bytes()


def test_robots_disallowed_path_is_never_requested(web):
    web.reset_hits()
    Fetcher(options()).fetch(web.url("/private/secret.jpg"))
    assert web.hits("/private/secret.jpg") == 0
    assert web.hits("/robots.txt") == 1


# --- retries and Retry-After ------------------------------------------------------------------


def test_transient_errors_are_retried_with_backoff(web, no_sleep):
    web.reset_hits()
    result = Fetcher(options(retries=2)).fetch(web.url("/e/500"))
    assert result.reason == "http_500"
    assert web.hits("/e/500") == 3
    assert len(no_sleep) == 2


def test_retry_after_is_honoured(web, no_sleep):
    web.reset_hits()
    result = Fetcher(options(retries=1)).fetch(web.url("/e/429-once/tok-b.jpg"))
    assert result.ok
    assert web.hits("/e/429-once/tok-b.jpg") == 2
    assert no_sleep and no_sleep[0] >= 1.0  # the server asked for one second


def test_permanent_errors_are_not_retried(web, no_sleep):
    web.reset_hits()
    Fetcher(options(retries=3)).fetch(web.url("/e/404"))
    assert web.hits("/e/404") == 1 and no_sleep == []


def test_retry_after_beyond_the_bound_gives_up_at_once(web, no_sleep):
    web.reset_hits()
    result = Fetcher(options(retries=3, max_retry_after=0.5)).fetch(web.url("/e/429"))
    assert result.reason.startswith("http_429 retry_after=1")
    assert web.hits("/e/429") == 1 and no_sleep == []


def test_retry_after_parsing():
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412490.0) == 0.0
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds(None) is None


def test_backoff_grows_and_respects_retry_after():
    opts = FetchOptions(backoff_base=1.0, backoff_max=4.0)
    assert 0.5 <= backoff_delay(0, opts, None) <= 1.0
    assert 2.0 <= backoff_delay(2, opts, None) <= 4.0
    assert 2.0 <= backoff_delay(9, opts, None) <= 4.0  # capped
    assert backoff_delay(0, opts, 3.0) == 3.0


# --- byte limit, content type, opt-out headers ------------------------------------------------


def test_byte_limit_from_content_length(web, flickr_dir):
    name = first_photo(flickr_dir)
    result = Fetcher(options(max_bytes=1000)).fetch(web.url(f"/images/{name}"))
    assert result.status == "fetch_failed" and result.reason.startswith("too_large")


class _StreamingResponse:
    def __init__(self, chunks):
        self.chunks = chunks

    def iter_content(self, size):
        yield from self.chunks


def test_byte_limit_while_streaming_without_content_length():
    body = _StreamingResponse([b"x" * 4096] * 10)
    with pytest.raises(_Final) as err:
        Fetcher._read_body(body, 10_000, "image", time.monotonic() + 10)
    assert err.value.reason.startswith("too_large")
    # robots.txt is cut at the limit and parsed, not refused
    assert len(Fetcher._read_body(body, 10_000, "robots", time.monotonic() + 10)) == 10_000


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("noai", "noai"),
        ("noimageai", "noimageai"),
        ("NoIndex", "noindex"),
        ("noimageindex", "noimageindex"),
        ("none", "none"),
        ("noarchive, nofollow", None),
        ("googlebot: noindex, nofollow", None),
        ("googlebot: noindex, wit-builder: noai", "noai"),
        ("wit-builder: noimageai", "noimageai"),
        ("unavailable_after: 25 Jun 2010 15:00:00 PST, noai", "noai"),
        ("max-image-preview: large", None),
        ("", None),
        (None, None),
    ],
)
def test_x_robots_tag_parsing(header, expected):
    assert x_robots_opt_out(header) == expected


# --- robots.txt ----------------------------------------------------------------------------------


def test_robots_fetched_once_per_host_under_concurrency(web, flickr_dir):
    names = sorted(p.name for p in flickr_dir.glob("*.jpg"))[:40]
    fetcher = Fetcher(options(threads=16))
    web.reset_hits()
    threads = [
        threading.Thread(target=fetcher.fetch, args=(web.url(f"/images/{n}"),)) for n in names
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert web.hits("/robots.txt") == 1
    assert sum(web.hits(f"/images/{n}") for n in names) == len(names)


def test_user_agent_names_project_and_docs(web, flickr_dir):
    web.reset_hits()
    Fetcher(options()).fetch(web.url(f"/images/{first_photo(flickr_dir)}"))
    agents = {ua for _method, _path, ua in web.requests}
    assert agents == {DEFAULT_USER_AGENT}
    assert "wit-builder" in DEFAULT_USER_AGENT and "docs/operations.md" in DEFAULT_USER_AGENT


# --- the address guard, end to end on loopback only -------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_loopback_refused_and_never_contacted(flickr_dir, host):
    name = first_photo(flickr_dir)
    with FixtureWeb(image_dir=flickr_dir, host=host) as server:
        result = Fetcher(options(allow_private_addresses=False)).fetch(
            server.url(f"/images/{name}")
        )
        assert (result.status, result.reason.split()[0]) == ("blocked_address", "loopback")
        assert server.requests == []  # not robots.txt, not the image: nothing
        allowed = Fetcher(options()).fetch(server.url(f"/images/{name}"))
        assert allowed.ok and server.hits(f"/images/{name}") == 1


def test_every_redirect_hop_is_checked(web, flickr_dir, no_sleep):
    """127.0.0.1 is allowed; a redirect to another loopback address must be refused."""
    fetcher = Fetcher(options(allow_private_addresses=False, allowed_networks=("127.0.0.1/32",)))
    name = first_photo(flickr_dir)
    assert fetcher.fetch(web.url(f"/images/{name}")).ok
    for target in (
        f"http://127.0.0.2:{web.port}/images/{name}",
        f"http://0x7f000002:{web.port}/images/{name}",
        f"http://[::1]:{web.port}/images/{name}",
        f"http://localhost:{web.port}/images/{name}",
    ):
        result = fetcher.fetch(web.url(f"/e/redirect-to?url={target}"))
        assert result.status == "blocked_address", (target, result)
        assert result.redirects == 1


def test_connects_to_the_checked_address_without_a_second_lookup(web, flickr_dir, monkeypatch):
    """A name only our resolver knows: if urllib3 resolved it again, the fetch would fail."""
    lookups: list[str] = []
    real_getaddrinfo = socket.getaddrinfo

    def numeric_only(host, *args, **kwargs):
        try:
            ipaddress.ip_address(host)
        except ValueError:
            lookups.append(host)
            raise socket.gaierror(socket.EAI_NONAME, "no DNS in this test") from None
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", numeric_only)
    answers: list[str] = []

    def resolver(host, port):
        answers.append(host)
        return ["127.0.0.1"]

    opts = options(allow_private_addresses=False, allowed_networks=("127.0.0.1/32",))
    fetcher = Fetcher(opts, resolver=resolver)
    name = first_photo(flickr_dir)
    result = fetcher.fetch(f"http://images.fixture.test:{web.port}/images/{name}")
    assert result.ok, result
    assert result.data == (flickr_dir / name).read_bytes()
    assert lookups == []  # the system resolver was never asked
    assert answers == ["images.fixture.test"]  # robots.txt and image: one cached lookup


# --- HTTPS to a pinned address ------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    """An HTTPS server on 127.0.0.1 with a self-signed certificate for images.fixture.test."""
    import http.server
    import shutil
    import ssl
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=images.fixture.test",
         "-addext", "subjectAltName=DNS:images.fixture.test"],
        check=True, capture_output=True,
    )  # fmt: skip
    seen = {"sni": [], "host": []}
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.sni_callback = lambda sock, name, ctx: seen["sni"].append(name)

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            seen["host"].append(self.headers.get("Host"))
            body = b"User-agent: *\nAllow: /\n" if self.path == "/robots.txt" else payloads.jpeg()
            self.send_response(200)
            ctype = "text/plain" if self.path == "/robots.txt" else "image/jpeg"
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield server.server_address[1], str(cert), seen
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_https_uses_the_url_name_for_sni_host_and_certificate(tls_server):
    port, cert, seen = tls_server
    opts = options(
        allow_private_addresses=False, allowed_networks=("127.0.0.1/32",), ca_bundle=cert
    )
    fetcher = Fetcher(opts, resolver=lambda host, p: ["127.0.0.1"])
    result = fetcher.fetch(f"https://images.fixture.test:{port}/photo.jpg")
    assert result.ok, result
    assert result.data == payloads.jpeg()
    assert set(seen["sni"]) == {"images.fixture.test"}
    assert set(seen["host"]) == {f"images.fixture.test:{port}"}
    # The same address under a name the certificate does not cover must fail verification.
    wrong = fetcher.fetch(f"https://other.fixture.test:{port}/photo.jpg")
    assert wrong.status == "fetch_failed" and "SSLError" in wrong.reason, wrong


def test_host_limiter_caps_concurrency_per_host_and_forgets_idle_hosts():
    limiter = HostLimiter(2)
    lock = threading.Lock()
    active = {"a": 0, "b": 0}
    peak = {"a": 0, "b": 0}

    def work(host):
        with limiter.hold(host):
            with lock:
                active[host] += 1
                peak[host] = max(peak[host], active[host])
            time.sleep(0.02)
            with lock:
                active[host] -= 1

    threads = [threading.Thread(target=work, args=(h,)) for h in "ab" * 8]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert 1 <= peak["a"] <= 2 and 1 <= peak["b"] <= 2
    assert limiter._hosts == {}  # no semaphore kept for hosts nobody is fetching from


def test_host_limiter_gives_up_after_its_timeout():
    limiter = HostLimiter(1)
    with limiter.hold("a"):
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            with limiter.hold("a", timeout=0.2):
                pass
        assert 0.15 < time.monotonic() - start < 1.0
    assert limiter._hosts == {}


# --- a deadline that holds: wall clock, connect + TLS + headers + body -----------------------


def test_trickling_body_is_cut_at_the_deadline(web):
    """16 pieces over 12 s: every read gets data, so only a wall-clock deadline stops it."""
    fetcher = Fetcher(options(total_timeout=2.0, read_timeout=5.0, retries=2))
    fetcher.robots.verdict(web.url("/x"))  # robots.txt fetched beforehand, as in a busy worker
    result, seconds = timed_fetch(fetcher, web.url("/e/trickle.jpg?s=12"))
    assert (result.status, result.reason) == ("fetch_failed", "deadline")
    assert seconds <= 2.0 + 1.0, seconds
    # robots.txt included: a fresh fetcher also loads it within the same bound
    result, seconds = timed_fetch(
        Fetcher(options(total_timeout=2.0, retries=2)), web.url("/e/trickle.jpg?s=12")
    )
    assert result.reason == "deadline" and seconds <= 3.0, seconds


def test_a_trickle_within_the_deadline_is_kept(web):
    result, seconds = timed_fetch(
        Fetcher(options(total_timeout=5.0)), web.url("/e/trickle.jpg?s=0.8")
    )
    assert result.ok and result.data == payloads.jpeg()


def test_a_callers_deadline_cuts_sooner(web):
    fetcher = Fetcher(options(total_timeout=20.0))
    result, seconds = timed_fetch(
        fetcher, web.url("/e/trickle.jpg?s=12"), deadline=time.monotonic() + 0.7
    )
    assert result.reason == "deadline" and seconds <= 1.7, seconds
    # a deadline that cut robots.txt short is not remembered as "robots.txt unreachable"
    assert fetcher.fetch(web.url("/e/tiny.jpg")).ok


class DripServer:
    """A TCP server on 127.0.0.1 that answers every connection with `head`, then one byte
    of `drip` every `every` seconds, for as long as the client stays."""

    def __init__(self, head: bytes, drip: bytes = b"a", every: float = 0.1, read_first=True):
        self.head, self.drip, self.every, self.read_first = head, drip, every, read_first
        self.stop = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self):
        self.sock.settimeout(0.1)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            thread.start()
            self.threads.append(thread)

    def _serve(self, conn):
        with conn:
            try:
                if self.read_first:
                    conn.recv(65536)
                conn.sendall(self.head)
                while not self.stop.wait(self.every):
                    conn.sendall(self.drip)
            except OSError:
                return

    def close(self):
        self.stop.set()
        self.sock.close()
        for thread in self.threads:
            thread.join(timeout=5)


@pytest.fixture
def drip():
    servers = []

    def make(*args, **kwargs):
        servers.append(DripServer(*args, **kwargs))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


def no_robots(fetcher: Fetcher) -> Fetcher:
    """Skip robots.txt: these servers answer everything with the same drip."""
    fetcher.robots.verdict = lambda url, deadline=None: (None, None)
    return fetcher


def test_dripping_headers_are_cut_at_the_deadline(drip):
    server = drip(b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nX-Slow: ")
    fetcher = no_robots(Fetcher(options(total_timeout=1.0, read_timeout=5.0, retries=3)))
    result, seconds = timed_fetch(fetcher, f"http://127.0.0.1:{server.port}/a.jpg")
    assert (result.status, result.reason) == ("fetch_failed", "deadline")
    assert seconds <= 2.0, seconds


def test_a_stalled_tls_handshake_is_cut_at_the_deadline(drip):
    """A TLS record header announcing 16 KiB, then a byte every 0.1 s: each read succeeds
    within the 10 s connect timeout, so only the watchdog ends the handshake."""
    server = drip(b"\x16\x03\x03\x40\x00")
    fetcher = no_robots(Fetcher(options(total_timeout=1.0, connect_timeout=10.0, retries=3)))
    result, seconds = timed_fetch(fetcher, f"https://127.0.0.1:{server.port}/a.jpg")
    assert (result.status, result.reason) == ("fetch_failed", "deadline")
    assert seconds <= 2.0, seconds


def test_a_worker_full_of_stragglers_still_finishes(web):
    """Per-worker straggler bound: 12 trickling URLs on 4 threads end within
    3 rounds x (deadline + 1 s), and every thread comes back."""
    from concurrent.futures import ThreadPoolExecutor

    fetcher = Fetcher(options(total_timeout=1.0, per_host_connections=4, retries=2))
    urls = [web.url(f"/e/trickle.jpg?s=30&i={i}") for i in range(12)]
    start = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(fetcher.fetch, urls))
    assert time.monotonic() - start <= 3 * (1.0 + 1.0)
    assert {r.reason for r in results} == {"deadline"}


def test_waiting_for_a_host_slot_counts_against_the_deadline(web):
    fetcher = Fetcher(options(total_timeout=2.0, per_host_connections=1, retries=0))
    fetcher.robots.verdict(web.url("/x"))
    holder = threading.Thread(target=fetcher.fetch, args=(web.url("/e/trickle.jpg?s=10"),))
    holder.start()
    time.sleep(0.2)
    result, seconds = timed_fetch(fetcher, web.url("/e/tiny.jpg"), deadline=time.monotonic() + 0.5)
    assert (result.status, result.reason) == ("fetch_failed", "deadline host_queue")
    assert seconds < 1.0
    holder.join()
