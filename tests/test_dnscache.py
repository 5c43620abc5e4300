"""DNS: a per-worker cache with TTL and negative caching, the address guard on every cached
address, and falling back to a host's other addresses (pipeline/dnscache.py, through the
fetcher against the fixture web on loopback)."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from fetch_helpers import first_photo, options, timed_fetch

from pipeline.dnscache import CachingResolver, DNSFailure, dns_reason
from pipeline.fetch import Fetcher
from pipeline.fixtures.web import FixtureWeb


@pytest.fixture(scope="module")
def web(flickr_dir):
    with FixtureWeb(image_dir=flickr_dir) as server:
        yield server


class CountingResolver:
    def __init__(self, table: dict, delay: float = 0.0):
        self.table = table
        self.delay = delay
        self.calls: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, host, port):
        with self.lock:
            self.calls.append(host)
        if self.delay:
            time.sleep(self.delay)
        answer = self.table.get(host)
        if isinstance(answer, BaseException):
            raise answer
        if answer is None:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return answer


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_dns_lookup_is_shared_by_concurrent_threads():
    inner = CountingResolver({"a.example": ["93.184.215.14"]}, delay=0.2)
    cache = CachingResolver(inner)
    answers = []
    threads = [
        threading.Thread(target=lambda: answers.append(cache("a.example", 80))) for _ in range(20)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert inner.calls == ["a.example"]
    assert answers == [["93.184.215.14"]] * 20
    assert cache("A.EXAMPLE", 443) == ["93.184.215.14"] and cache.lookups == 1


def test_dns_answers_expire_after_their_ttl():
    clock = Clock()
    inner = CountingResolver({"a.example": ["93.184.215.14"]})
    cache = CachingResolver(inner, ttl=300, clock=clock)
    cache("a.example", 80)
    clock.now += 299
    cache("a.example", 80)
    assert len(inner.calls) == 1
    clock.now += 2
    cache("a.example", 80)
    assert len(inner.calls) == 2


@pytest.mark.parametrize(
    ("error", "reason", "cached_for"),
    [
        (socket.gaierror(socket.EAI_NONAME, "unknown"), "nxdomain", 60),
        (DNSFailure("no_address"), "no_address", 60),
        (socket.gaierror(socket.EAI_AGAIN, "try again"), "temporary", 5),
        (socket.gaierror(socket.EAI_FAIL, "fail"), "servfail", 5),
        (TimeoutError(), "timeout", 5),
        (UnicodeError("label too long"), "bad_name", 5),
    ],
)
def test_dns_failures_are_cached_by_kind(error, reason, cached_for):
    clock = Clock()
    inner = CountingResolver({"x.example": error})
    cache = CachingResolver(inner, negative_ttl=60, transient_ttl=5, clock=clock)
    for _ in range(3):
        with pytest.raises(DNSFailure) as failure:
            cache("x.example", 80)
        assert failure.value.reason == reason
    assert len(inner.calls) == 1
    clock.now += cached_for - 0.5
    with pytest.raises(DNSFailure):
        cache("x.example", 80)
    assert len(inner.calls) == 1
    clock.now += 1
    with pytest.raises(DNSFailure):
        cache("x.example", 80)
    assert len(inner.calls) == 2


def test_an_empty_answer_is_no_address():
    with pytest.raises(DNSFailure) as failure:
        CachingResolver(CountingResolver({"e.example": []}))("e.example", 80)
    assert failure.value.reason == "no_address"


def test_a_hanging_lookup_does_not_hold_the_thread():
    inner = CountingResolver({"slow.example": ["93.184.215.14"]}, delay=2.0)
    cache = CachingResolver(inner, timeout=0.3)
    start = time.monotonic()
    with pytest.raises(DNSFailure) as failure:
        cache("slow.example", 80)
    assert failure.value.reason == "timeout" and time.monotonic() - start < 1.0
    time.sleep(2.0)
    assert cache("slow.example", 80) == ["93.184.215.14"]  # the lookup finished and was kept
    assert len(inner.calls) == 1
    cache.close()


def test_demote_moves_a_failed_address_last():
    cache = CachingResolver(CountingResolver({"m.example": ["1.1.1.1", "2.2.2.2", "3.3.3.3"]}))
    cache("m.example", 80)
    cache.demote("m.example", "1.1.1.1")
    assert cache("m.example", 80) == ["2.2.2.2", "3.3.3.3", "1.1.1.1"]
    cache.demote("unknown.example", "1.1.1.1")  # nothing to do


def test_dns_reason_words():
    assert dns_reason(socket.gaierror(socket.EAI_NONAME, "x")) == "nxdomain"
    assert dns_reason(socket.gaierror(socket.EAI_AGAIN, "x")) == "temporary"
    assert dns_reason(DNSFailure("timeout")) == "timeout"
    assert dns_reason(ValueError("x")) == "ValueError"


def test_dns_failures_are_their_own_reason_and_resolved_once_per_worker(web):
    inner = CountingResolver({})
    fetcher = Fetcher(options(), resolver=inner)
    results = [fetcher.fetch(f"http://gone.example/{i}.jpg") for i in range(50)]
    assert {(r.status, r.reason) for r in results} == {("fetch_failed", "dns nxdomain")}
    assert inner.calls == ["gone.example"]


def test_a_dns_lookup_cannot_outlast_the_deadline():
    inner = CountingResolver({"slow.example": ["93.184.215.14"]}, delay=3.0)
    fetcher = Fetcher(options(total_timeout=0.5, connect_timeout=10.0), resolver=inner)
    result, seconds = timed_fetch(fetcher, "http://slow.example/a.jpg")
    assert result.status == "fetch_failed" and result.reason.startswith("deadline")
    assert seconds < 1.5


def connections_to(monkeypatch) -> list[str]:
    import pipeline.guard as guard_mod

    connected: list[str] = []
    real = guard_mod.urllib3_connection.create_connection

    def record(address, *args, **kwargs):
        connected.append(address[0])
        return real(address, *args, **kwargs)

    monkeypatch.setattr(guard_mod.urllib3_connection, "create_connection", record)
    return connected


def test_falls_back_to_the_next_address_and_remembers(web, flickr_dir, monkeypatch):
    """127.0.0.3 refuses (the fixture listens on 127.0.0.1 only): the fetch goes on to the
    host's next checked address, and later fetches try the working one first."""
    connected = connections_to(monkeypatch)
    inner = CountingResolver({"multi.fixture.test": ["127.0.0.3", "127.0.0.1"]})
    opts = options(allow_private_addresses=False, allowed_networks=("127.0.0.0/8",), retries=0)
    fetcher = Fetcher(opts, resolver=inner)
    name = first_photo(flickr_dir)
    result = fetcher.fetch(f"http://multi.fixture.test:{web.port}/images/{name}")
    assert result.ok, result
    assert connected[:2] == ["127.0.0.3", "127.0.0.1"]
    del connected[:]
    assert fetcher.fetch(f"http://multi.fixture.test:{web.port}/images/{name}?2").ok
    assert connected == ["127.0.0.1"]
    assert inner.calls == ["multi.fixture.test"]


def test_every_address_fails_gives_a_connection_reason(web, monkeypatch):
    connected = connections_to(monkeypatch)
    inner = CountingResolver({"dead.fixture.test": ["127.0.0.3", "127.0.0.4"]})
    opts = options(allow_private_addresses=False, allowed_networks=("127.0.0.0/8",), retries=0)
    result = Fetcher(opts, resolver=inner).fetch(f"http://dead.fixture.test:{web.port}/a.jpg")
    assert (result.status, result.reason) == ("fetch_failed", "robots_unreachable ConnectionError")
    assert set(connected) == {"127.0.0.3", "127.0.0.4"}


def test_the_guard_checks_every_cached_address_on_every_hop(web, flickr_dir, monkeypatch):
    """A cached answer is checked again at every use; one forbidden address blocks the host,
    also when it is reached through a redirect."""
    connected = connections_to(monkeypatch)
    inner = CountingResolver(
        {"ok.fixture.test": ["127.0.0.1"], "mixed.fixture.test": ["127.0.0.1", "10.0.0.7"]}
    )
    opts = options(allow_private_addresses=False, allowed_networks=("127.0.0.1/32",))
    fetcher = Fetcher(opts, resolver=inner)
    name = first_photo(flickr_dir)
    assert fetcher.fetch(f"http://ok.fixture.test:{web.port}/images/{name}").ok
    for _ in range(2):
        direct = fetcher.fetch(f"http://mixed.fixture.test:{web.port}/images/{name}")
        assert (direct.status, direct.reason) == ("blocked_address", "private 10.0.0.7")
    target = f"http://mixed.fixture.test:{web.port}/images/{name}"
    hop = fetcher.fetch(f"http://ok.fixture.test:{web.port}/e/redirect-to?url={target}")
    assert (hop.status, hop.redirects) == ("blocked_address", 1)
    assert "10.0.0.7" not in connected
    assert sorted(inner.calls) == ["mixed.fixture.test", "ok.fixture.test"]
