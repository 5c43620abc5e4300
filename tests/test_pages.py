"""Crawling pages from a URL list: extraction, page statuses, politeness, accounting, Beam."""

from __future__ import annotations

import csv
import gzip
import html
from collections import Counter

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that
from conftest import shared_path
from warcio.archiveiterator import ArchiveIterator

from pipeline import crawl
from pipeline.crawl import (
    BLOCKED_ADDRESS,
    FETCH_FAILED,
    FETCHED,
    INVALID_URL,
    NOT_HTML,
    OPTED_OUT,
    PAGE_STATUSES,
    ROBOTS_DISALLOWED,
    CrawlOptions,
    CrawlPages,
    HostPacer,
    crawl_host,
    host_key,
    read_page_list,
)
from pipeline.extract_html import extract_images, largest, parse_page, parse_srcset
from pipeline.fetch import Fetcher, FetchOptions
from pipeline.fixtures import web as web_module
from pipeline.fixtures.web import FixtureWeb
from pipeline.read_tabular import RAW_SCHEMA
from pipeline.read_warc import images_in_html
from pipeline.schema import PAGE_SCHEMA

LOOPBACK_ONLY = ("127.0.0.1/32",)


def options(**overrides) -> CrawlOptions:
    fetch = FetchOptions(
        allowed_networks=LOOPBACK_ONLY, retries=0, total_timeout=20, max_page_bytes=64 * 1024
    )
    settings = {"fetch": fetch, "page_delay": 0.0}
    settings.update(overrides)
    return CrawlOptions(**settings)


@pytest.fixture(scope="module")
def flickr():
    """(image file, caption) pairs of the real Flickr8k sample, one caption per image."""
    root = shared_path("flickr8k-1k")
    pairs: dict[str, str] = {}
    with open(root / "captions.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            pairs.setdefault(row["image"], row["caption"])
    return root / "images", sorted(pairs.items())


@pytest.fixture
def web(flickr):
    with FixtureWeb(image_dir=flickr[0]) as server:
        yield server


def crawl_all(server, urls, **overrides):
    opts = options(**overrides)
    fetcher = Fetcher(opts.fetch)
    try:
        return crawl_host(fetcher, HostPacer(), host_key(server.base_url), urls, opts)
    finally:
        fetcher.close()


# --- extraction ----------------------------------------------------------------------


def test_srcset_follows_the_html_parsing_rules():
    got = parse_srcset(
        " a.jpg 100w,b.jpg  2x , https://cdn.test/w_300,h_200/c.jpg 300w, d.jpg,"
        " bad.jpg 10q, e.jpg 1x 2x, f.jpg 400w 300h"
    )
    assert [(c.url, c.size, c.unit) for c in got] == [
        ("a.jpg", 100, "w"),
        ("b.jpg", 2, "x"),
        ("https://cdn.test/w_300,h_200/c.jpg", 300, "w"),
        ("d.jpg", 1, "x"),
        ("f.jpg", 400, "w"),
    ]
    assert parse_srcset("") == [] and parse_srcset(None) == []


def test_largest_prefers_widths_then_density_and_real_urls():
    assert largest(parse_srcset("s.jpg 1x, m.jpg 2x, l.jpg 3x")).url == "l.jpg"
    assert largest(parse_srcset("s.jpg 320w, xl.jpg 1600w, m.jpg 800w")).url == "xl.jpg"
    assert largest(parse_srcset("data:image/gif;base64,R0 5x, real.jpg 1x")).url == "real.jpg"
    assert largest([]) is None


PAGE = """<!doctype html><html><head><base href="https://site.test/gallery/">
<title>Page title</title></head><body>
<img src="rel.jpg" alt="relative one">
<img src="/abs.jpg" alt="root relative">
<img src="https://other.test/full.jpg" alt="absolute" title="Image title">
<img src="small.jpg" srcset="small.jpg 320w, big.jpg 1280w, mid.jpg 640w" alt="responsive">
<figure><picture>
  <source srcset="pic.svg 4x" type="image/svg+xml">
  <source srcset="pic-1x.webp 1x, pic-2x.webp 2x" type="image/webp">
  <img src="pic.jpg" alt="in a picture"></picture>
  <figcaption>  A  dog   <b>runs</b> </figcaption></figure>
<img data-src="lazy.jpg" src="data:image/gif;base64,R0lGOD" alt="lazy">
<img alt="no source at all">
<a href="next.html#top">next</a><a href="mailto:x@y.z">mail</a>
</body></html>"""


def test_images_resolve_against_base_and_take_the_largest_candidate():
    assert extract_images(PAGE, "https://site.test/a/page.html") == [
        ("https://site.test/gallery/rel.jpg", "relative one"),
        ("https://site.test/abs.jpg", "root relative"),
        ("https://other.test/full.jpg", "absolute"),
        ("https://site.test/gallery/big.jpg", "responsive"),
        ("https://site.test/gallery/pic-2x.webp", "in a picture"),
        ("https://site.test/gallery/lazy.jpg", "lazy"),
    ]
    assert parse_page(PAGE, "https://site.test/a/page.html").links == [
        "https://site.test/gallery/next.html"
    ]


def test_title_and_figcaption_are_opt_in_and_fall_back_to_alt():
    by_title = dict((u.rsplit("/", 1)[1], c) for u, c in extract_images(PAGE, "x:", "title"))
    assert by_title["full.jpg"] == "Image title" and by_title["rel.jpg"] == "relative one"
    by_fig = dict((u.rsplit("/", 1)[1], c) for u, c in extract_images(PAGE, "x:", "figcaption"))
    assert by_fig["pic-2x.webp"] == "A dog runs" and by_fig["big.jpg"] == "responsive"
    with pytest.raises(ValueError, match="page text must be one of"):
        extract_images(PAGE, "x:", "heading")


def _warc_html_pages(path):
    with open(path, "rb") as fh:
        for record in ArchiveIterator(fh):
            ctype = record.http_headers.get_header("Content-Type") if record.http_headers else ""
            if record.rec_type == "response" and "html" in (ctype or "").lower():
                yield (
                    record.rec_headers.get_header("WARC-Target-URI"),
                    record.content_stream().read(),
                )


def test_agrees_with_the_warc_reader_on_real_pages_without_srcset():
    """On real crawled pages, plain `<img src>` gives what the WARC reader gives."""
    compared = 0
    for path in sorted(shared_path("warc").glob("*.warc.gz")):
        if path.name.endswith(".wat.gz"):
            continue
        for url, body in _warc_html_pages(path):
            lowered = body.lower()
            if b"srcset" in lowered or b"data-src" in lowered or b"<picture" in lowered:
                continue
            ours = extract_images(body, url)
            assert ours == images_in_html(body, url)
            compared += len(ours)
    if compared == 0:
        pytest.skip("the WARC sample has no page with plain images")


# --- crawling on the fixture web -------------------------------------------------------


def test_pages_of_real_captions_yield_exactly_their_images(web, flickr):
    """Relative, absolute and srcset images on 10 pages carry the real Flickr8k captions."""
    _, pairs = flickr
    expected = {}
    for p in range(10):
        chunk = pairs[p * 5 : p * 5 + 5]
        tags = [
            f'<img src="../images/{chunk[0][0]}" alt="{html.escape(chunk[0][1])}">',
            f'<img src="{web.url("/images/" + chunk[1][0])}" alt="{html.escape(chunk[1][1])}">',
            f'<img src="/images/{chunk[2][0]}" alt="{html.escape(chunk[2][1])}">',
            f'<img src="/images/tiny.jpg" srcset="/images/{chunk[3][0]} 500w, /e/tiny.jpg 50w"'
            f' alt="{html.escape(chunk[3][1])}">',
            f'<picture><source srcset="/images/{chunk[4][0]} 2x"><img src="x.jpg"'
            f' alt="{html.escape(chunk[4][1])}"></picture>',
        ]
        web.pages[f"p{p}"] = "<html><body>" + "".join(tags) + "</body></html>"
        expected[web.url(f"/pages/p{p}.html")] = [(web.url("/images/" + f), c) for f, c in chunk]
    results = crawl_all(web, list(expected))
    assert {r.page_url: r.images for r in results} == expected
    assert all(r.status == FETCHED for r in results)


def test_every_page_ends_in_its_documented_status(web):
    web.pages["big"] = "<html><body>" + "<p>filler</p>" * 10_000 + "</body></html>"
    web.pages["ok"] = [("/images/a.jpg", "a cat")]
    cases = {
        web.url("/pages/ok.html"): (FETCHED, None),
        web.url("/private/secret.html"): (ROBOTS_DISALLOWED, "robots.txt"),
        web.url("/e/noai.jpg"): (OPTED_OUT, "x-robots-tag noai"),
        web.url("/e/tiny.jpg"): (NOT_HTML, "image/jpeg"),
        web.url("/pages/big.html"): (FETCH_FAILED, None),
        web.url("/e/404"): (FETCH_FAILED, "http_404"),
        web.url(f"/e/redirect-to?url=http://localhost:{web.port}/pages/ok.html"): (
            BLOCKED_ADDRESS,
            "loopback localhost",
        ),
        web.url("/e/redirect-to?url=http://127.0.0.2/pages/ok.html"): (
            BLOCKED_ADDRESS,
            "loopback 127.0.0.2",
        ),
        "ftp://example.test/page.html": (INVALID_URL, "scheme ftp"),
    }
    got = {r.page_url: (r.status, r.reason) for r in crawl_all(web, list(cases))}
    assert got.keys() == cases.keys()
    for url, (status, reason) in cases.items():
        assert got[url][0] == status, url
        if reason:
            assert got[url][1] == reason, url
    assert got[web.url("/pages/big.html")][1].startswith("too_large")
    assert web.hits("/private/secret.html") == 0  # robots is asked before the page
    assert web.hits("/pages/ok.html") == 1  # only the direct fetch: no blocked hop was followed


def test_page_on_loopback_is_blocked_before_any_packet(web):
    opts = options(fetch=FetchOptions(retries=0))  # the default guard: no loopback at all
    fetcher = Fetcher(opts.fetch)
    results = crawl_host(fetcher, HostPacer(), "h", [web.url("/pages/ok.html")], opts)
    assert [(r.status, r.reason) for r in results] == [(BLOCKED_ADDRESS, "loopback 127.0.0.1")]
    assert web.requests == []


def test_followed_links_stay_on_host_depth_one_and_within_budget(web):
    web.pages["hub"] = (
        '<a href="/pages/a.html">a</a><a href="b.html#frag">b</a><a href="/pages/c.html">c</a>'
        '<a href="http://other.test/x.html">other host</a><a href="/pages/hub.html">self</a>'
    )
    web.pages["a"] = '<img src="/images/1.jpg" alt="one"><a href="/pages/deep.html">deep</a>'
    web.pages["b"] = '<img src="/images/2.jpg" alt="two">'
    web.pages["c"] = '<img src="/images/3.jpg" alt="three">'
    web.pages["deep"] = '<img src="/images/4.jpg" alt="four">'
    hub = web.url("/pages/hub.html")
    off = crawl_all(web, [hub])
    assert [r.page_url for r in off] == [hub]
    on = crawl_all(web, [hub, web.url("/pages/b.html")], follow_links=2)
    assert [r.page_url for r in on] == [hub, web.url("/pages/b.html")] + [
        web.url("/pages/a.html"),
        web.url("/pages/c.html"),
    ]
    assert web.hits("/pages/deep.html") == 0 and web.hits("/pages/b.html") == 1


def test_crawl_delay_from_robots_spaces_requests(web, monkeypatch):
    monkeypatch.setattr(web_module, "ROBOTS_TXT", b"User-agent: *\nCrawl-delay: 3\n")
    for name in "xyz":
        web.pages[name] = [("/images/a.jpg", name)]
    urls = [web.url(f"/pages/{n}.html") for n in "xyz"]
    sleeps: list[float] = []
    pacer = HostPacer(clock=lambda: 100.0, sleep=sleeps.append)
    opts = options(pages_in_flight_per_host=1, page_delay=0.5)
    fetcher = Fetcher(opts.fetch)
    results = crawl_host(fetcher, pacer, host_key(web.base_url), urls, opts)
    assert [r.status for r in results] == [FETCHED] * 3
    assert sleeps == [3.0, 6.0]  # first page at once, then one Crawl-delay apart
    capped = options(pages_in_flight_per_host=1, max_crawl_delay=2.0)
    assert crawl.crawl_delay(fetcher, urls[0], capped) == 2.0
    assert crawl.crawl_delay(fetcher, urls[0], options(page_delay=5.0)) == 5.0


def test_host_pacer_books_consecutive_slots_per_host():
    now = [0.0]
    sleeps: list[float] = []
    pacer = HostPacer(clock=lambda: now[0], sleep=sleeps.append)
    assert pacer.wait("a", 1.0) == 0
    assert pacer.wait("a", 1.0) == 1.0
    assert pacer.wait("b", 1.0) == 0  # hosts do not wait for each other
    now[0] = 5.0
    assert pacer.wait("a", 1.0) == 0  # the slot has passed
    assert sleeps == [1.0]


# --- page lists and the Beam transform -------------------------------------------------


def test_page_lists_in_text_csv_and_parquet(tmp_path):
    (tmp_path / "a.txt").write_text("# seeds\nhttp://a.test/1\n\n  http://a.test/2  \n")
    with gzip.open(tmp_path / "b.txt.gz", "wt") as fh:
        fh.write("http://b.test/1\n")
    (tmp_path / "c.csv").write_text("id,URL\n1,http://c.test/1\n2,\n")
    pq.write_table(pa.table({"url": ["http://d.test/1", None]}), tmp_path / "d.parquet")
    pq.write_table(pa.table({"href": ["x"]}), tmp_path / "e.parquet")
    assert list(read_page_list(str(tmp_path / "a.txt"))) == ["http://a.test/1", "http://a.test/2"]
    assert list(read_page_list(str(tmp_path / "b.txt.gz"))) == ["http://b.test/1"]
    csv_urls = list(read_page_list(str(tmp_path / "c.csv")))
    assert csv_urls == ["http://c.test/1", f"empty-entry:{tmp_path / 'c.csv'}#row=1"]
    pq_urls = list(read_page_list(str(tmp_path / "d.parquet")))
    assert pq_urls[0] == "http://d.test/1"
    assert crawl.normalize_page_url(pq_urls[1]) == (pq_urls[1], "empty_url")
    with pytest.raises(ValueError, match="no url column among href"):
        crawl.check_page_list(str(tmp_path / "e.parquet"))


def test_beam_transform_accounts_for_every_page_exactly_once(web, flickr):
    """The page-accounting invariant: one row per distinct page URL, images == candidates."""
    _, pairs = flickr
    for p in range(6):
        web.pages[f"q{p}"] = [(f"/images/{f}", c) for f, c in pairs[p * 3 : p * 3 + 3]]
    listed = [web.url(f"/pages/q{p}.html") for p in range(6)]
    listed += [listed[0] + "#dup", " " + listed[1], web.url("/private/p.html")]
    listed += [web.url("/e/404"), "not a url", "", web.url("/e/tiny.jpg")]
    distinct = {crawl.normalize_page_url(u)[0] for u in listed}
    sources = set(listed[:6])

    def check_pages(rows):
        urls = [r["page_url"] for r in rows]
        assert sorted(urls) == sorted(distinct)  # each distinct page URL exactly once
        table = crawl.pages_table(rows)
        assert table.schema == PAGE_SCHEMA
        assert set(table.column("status").to_pylist()) <= set(PAGE_STATUSES)
        assert sum(r["images_found"] for r in rows) == 18
        assert Counter(r["status"] for r in rows) == {
            FETCHED: 6,
            ROBOTS_DISALLOWED: 1,
            FETCH_FAILED: 1,
            INVALID_URL: 2,
            NOT_HTML: 1,
        }

    def check_candidates(tables):
        candidates = pa.concat_tables(tables)
        assert candidates.schema == RAW_SCHEMA
        assert candidates.num_rows == 18
        assert set(candidates.column("source").to_pylist()) == sources

    with BeamTestPipeline(runner=FnApiRunner()) as p:
        out = p | beam.Create(listed) | CrawlPages(options())
        assert_that(out["pages"], check_pages, label="Pages")
        assert_that(out["candidates"], check_candidates, label="Candidates")


def test_bad_options_fail_with_one_line():
    with pytest.raises(ValueError, match="page_text must be one of"):
        CrawlOptions(page_text="headline")
    with pytest.raises(ValueError, match="cannot be negative"):
        CrawlOptions(follow_links=-1)


def test_page_lists_crawl_writes_one_page_row_each_to_out(web, flickr, tmp_path):
    _, pairs = flickr
    web.pages["r0"] = [(f"/images/{f}", c) for f, c in pairs[:4]]
    web.pages["r1"] = [(f"../images/{f}", c) for f, c in pairs[4:6]]
    listing = tmp_path / "pages.txt"
    listing.write_text(
        "\n".join([web.url("/pages/r0.html"), web.url("/pages/r1.html"), web.url("/e/404")])
    )
    (tmp_path / "more.csv").write_text(f"url\n{web.url('/pages/r0.html')}\n\n")
    out = tmp_path / "OUT"

    def check(tables):
        assert sum(t.num_rows for t in tables) == 6

    with BeamTestPipeline(runner=FnApiRunner()) as p:
        candidates = p | crawl.CrawlPageLists(
            [str(listing), str(tmp_path / "more.csv")], options(), str(out)
        )
        assert_that(candidates, check)
    table = pa.concat_tables(pq.read_table(f) for f in sorted(out.glob("pages/part-*.parquet")))
    assert table.schema == PAGE_SCHEMA
    assert sorted(table.column("page_url").to_pylist()) == sorted(
        [web.url("/pages/r0.html"), web.url("/pages/r1.html"), web.url("/e/404")]
    )
    expected = dict.fromkeys(PAGE_STATUSES, 0)
    expected.update({FETCHED: 2, FETCH_FAILED: 1})
    assert crawl.page_totals(str(out)) == expected


def test_a_surprise_on_one_page_is_recorded_and_the_rest_go_on(web, monkeypatch):
    web.pages["fine"] = [("/images/a.jpg", "a cat")]
    real = crawl.crawl_page

    def flaky(fetcher, pacer, url, opts):
        if url.endswith("boom.html"):
            raise RuntimeError("unexpected")
        return real(fetcher, pacer, url, opts)

    monkeypatch.setattr(crawl, "crawl_page", flaky)
    listed = [web.url("/pages/boom.html"), web.url("/pages/fine.html")]
    got = {r.page_url: (r.status, r.reason) for r in crawl_all(web, listed)}
    assert got == {
        web.url("/pages/boom.html"): (FETCH_FAILED, "crawl_error RuntimeError"),
        web.url("/pages/fine.html"): (FETCHED, None),
    }


def test_pages_decode_by_http_charset_then_meta_then_utf8_then_cp1252():
    from pipeline.extract_html import decode_html
    from pipeline.fetch import charset_of

    page = '<html><head>{}</head><body><img src="a.jpg" alt="café crème"></body></html>'
    meta = '<meta http-equiv="Content-Type" content="text/html; charset=ISO-8859-1">'
    assert charset_of(' charset="Shift_JIS"; q=1') == "shift_jis" and charset_of("") is None
    cases = [
        (page.format("").encode("utf-16"), "utf-16"),  # the HTTP header wins
        (page.format(meta).encode("latin-1"), None),  # then <meta>
        (page.format("").encode("utf-8"), None),  # then UTF-8
        (page.format("").encode("cp1252"), None),  # then windows-1252
        (page.format("").encode("utf-8"), "no-such-charset"),  # an unknown name is ignored
    ]
    for body, charset in cases:
        assert extract_images(decode_html(body, charset), "http://x.test/") == [
            ("http://x.test/a.jpg", "café crème")
        ]


def test_wit_build_crawls_a_page_list_end_to_end(tmp_path, capsys):
    """`wit-build --input-format pages` on the demo corpus: pages and candidates accounted."""
    import json

    from pipeline import cli
    from pipeline.fixtures.candidates import write_candidates
    from pipeline.fixtures.corpus import demo_queries, generate_images
    from pipeline.stats import cli as stats_cli
    from pipeline.status_io import read_status

    generate_images(tmp_path / "corpus", n=60, size=24)
    (tmp_path / "queries.txt").write_text("\n".join(demo_queries()) + "\n", encoding="utf-8")
    with FixtureWeb(image_dir=tmp_path / "corpus" / "images") as server:
        counts = write_candidates(tmp_path / "corpus", server.base_url, tmp_path / "cands")
        names = sorted(p.stem for p in (tmp_path / "cands" / "pages").glob("*.html"))
        for name in names:
            server.pages[name] = (tmp_path / "cands" / "pages" / f"{name}.html").read_text()
        listed = [server.url(f"/pages/{n}.html") for n in names]
        listed += [server.url("/private/x.html"), server.url("/e/404"), listed[0]]
        (tmp_path / "pages.txt").write_text("\n".join(listed) + "\n")
        out = tmp_path / "OUT"
        rc = cli.main([
            "--querylist", str(tmp_path / "queries.txt"), "--out", str(out), "--no-fetch",
            "--input", str(tmp_path / "pages.txt"), "--input-format", "pages",
            "--allow-private-addresses", "--direct_num_workers=1",
            "--direct_running_mode=in_memory",
        ])  # fmt: skip
    assert rc == 0
    pages = pq.read_table(out / "pages").to_pylist()
    assert len(pages) == len(names) + 2  # the repeated page counts once
    by_status = Counter(r["status"] for r in pages)
    assert by_status == {FETCHED: len(names), ROBOTS_DISALLOWED: 1, FETCH_FAILED: 1}
    status = read_status(str(out))
    assert status.num_rows == sum(r["images_found"] for r in pages) == counts["page_images"]
    assert len(set(status["uid"].to_pylist())) == status.num_rows
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["pages"][FETCHED] == len(names)
    capsys.readouterr()
    assert stats_cli.main([str(out)]) == 0
    assert "robots_disallowed" in capsys.readouterr().out


def test_cli_options_reach_the_crawl(tmp_path):
    from pipeline import cli

    base = ["--querylist", "q.txt", "--input", "p.txt", "--out", "o", "--input-format", "pages"]
    args = cli.build_parser().parse_args([*base, "--follow-links", "5", "--page-text", "title"])
    opts = cli._crawl_options(args)
    assert (opts.follow_links, opts.page_text, opts.page_delay) == (5, "title", 1.0)
    assert not opts.fetch.allow_private_addresses
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*base, "--follow-links", "-1"])
    assert exit_info.value.code == 2
