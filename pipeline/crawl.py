"""Crawling a list of page URLs into image candidates, politely, with one row per page.

`--input-format pages` starts from page URLs instead of (image URL, caption) pairs. Pages
are grouped by host before any request, so that one worker owns a host at a time and can
keep its politeness promises without talking to other workers: at most
`pages_in_flight_per_host` requests at once, page requests spaced by the larger of
`page_delay` and the site's robots.txt `Crawl-delay` (capped at `max_crawl_delay`), and a
budget for followed links. Fetching is `pipeline.fetch.Fetcher` with `purpose="page"`:
the same address guard at every redirect hop, robots.txt, retries, byte cap and timeouts
as for images, plus an HTML content-type check.

Each distinct page URL ends in exactly one page row (`PAGE_SCHEMA`) whose status is one
of `PAGE_STATUSES`; the images of fetched pages become raw candidate tables
(`RAW_SCHEMA`, `source` = the page URL) that flow through the usual stages.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import urldefrag, urlsplit

import apache_beam as beam
import pyarrow as pa
from apache_beam.metrics import Metrics

from pipeline.extract_html import TEXT_MODES, decode_html, parse_page
from pipeline.fetch import Fetcher, FetchOptions, FetchResult
from pipeline.read_tabular import RAW_SCHEMA
from pipeline.schema import (  # noqa: F401 - the page statuses are re-exported here
    BLOCKED_ADDRESS,
    FETCH_FAILED,
    FETCHED,
    INVALID_URL,
    NOT_HTML,
    OPTED_OUT,
    PAGE_SCHEMA,
    PAGE_STATUSES,
    ROBOTS_DISALLOWED,
)

CANDIDATES_TAG = "candidates"
#: Stands in for a list entry without a URL, so that it still gets its own page row.
EMPTY_ENTRY = "empty-entry:"


@dataclass(frozen=True)
class CrawlOptions:
    """Politeness and extraction knobs of the page crawl; picklable for Beam workers.

    `follow_links` is the per-host budget of extra pages reached through `<a href>` links
    on the listed pages (same host, depth 1); 0 switches following off.
    """

    fetch: FetchOptions = field(default_factory=FetchOptions)
    page_delay: float = 1.0
    max_crawl_delay: float = 30.0
    pages_in_flight_per_host: int = 2
    hosts_in_parallel: int = 16
    follow_links: int = 0
    page_text: str = "alt"

    def __post_init__(self):
        if self.page_text not in TEXT_MODES:
            raise ValueError(f"page_text must be one of {', '.join(TEXT_MODES)}")
        if self.follow_links < 0 or self.page_delay < 0 or self.max_crawl_delay < 0:
            raise ValueError("follow_links, page_delay and max_crawl_delay cannot be negative")
        if self.pages_in_flight_per_host < 1 or self.hosts_in_parallel < 1:
            raise ValueError("pages_in_flight_per_host and hosts_in_parallel must be at least 1")


@dataclass
class PageResult:
    """The fate of one page and, when fetched, what it offered."""

    page_url: str
    status: str
    reason: str | None = None
    images: list[tuple[str, str | None]] = field(default_factory=list)
    links: list[str] = field(default_factory=list)

    def row(self) -> dict:
        """The page's row in `pages/part-*.parquet` (PAGE_SCHEMA)."""
        return {
            "page_url": self.page_url,
            "status": self.status,
            "reason": self.reason,
            "images_found": len(self.images),
        }


def normalize_page_url(raw: str) -> tuple[str, str | None]:
    """(page URL without fragment, None) or (the text as given, why it is no page URL)."""
    text = (raw or "").strip()
    if not text or text.startswith(EMPTY_ENTRY):
        return text, "empty_url"
    try:
        url = urldefrag(text)[0]
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError as err:
        return text, f"bad_url {type(err).__name__}"
    if parts.scheme.lower() not in ("http", "https"):
        return text, f"scheme {parts.scheme.lower() or 'none'}"
    if not parts.hostname:
        return text, "no_host"
    return url, None


def host_key(url: str) -> str:
    """The politeness unit: scheme-less `host:port`, lower-cased ('' for invalid URLs)."""
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return ""
    return f"{parts.hostname}:{port}" if parts.hostname else ""


def page_status(result: FetchResult) -> tuple[str, str | None]:
    """The page status for a failed page fetch (the fetcher speaks in image statuses)."""
    reason = result.reason or ""
    if result.status == OPTED_OUT and reason == "robots.txt":
        return ROBOTS_DISALLOWED, reason
    if result.status == FETCH_FAILED and reason.startswith("content_type "):
        return NOT_HTML, reason[len("content_type ") :]
    return result.status or FETCH_FAILED, result.reason


class HostPacer:
    """Spaces request starts per host: each start books the next free slot `delay` later.

    Threads sharing a host queue up in booking order; clock and sleep are injectable so
    that tests check the schedule without waiting.
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self._clock, self._sleep = clock, sleep
        self._lock = threading.Lock()
        self._next: dict[str, float] = {}

    def wait(self, host: str, delay: float) -> float:
        """Block until host's slot; returns the seconds waited."""
        with self._lock:
            now = self._clock()
            start = max(now, self._next.get(host, now))
            self._next[host] = start + delay
        pause = start - now
        if pause > 0:
            self._sleep(pause)
        return pause

    def forget(self, host: str) -> None:
        with self._lock:
            self._next.pop(host, None)


def crawl_delay(fetcher: Fetcher, url: str, options: CrawlOptions) -> float:
    """Seconds between page requests to url's host: our default or the site's, capped."""
    asked = fetcher.robots.crawl_delay(url) or 0.0
    return max(options.page_delay, min(asked, options.max_crawl_delay))


def crawl_page(fetcher: Fetcher, pacer: HostPacer, url: str, options: CrawlOptions) -> PageResult:
    """Fetch and parse one page; never raises for anything the page or server does."""
    status, reason = fetcher.robots.verdict(url)  # loads robots.txt (and Crawl-delay) first
    if status:
        return PageResult(url, *page_status(FetchResult(url, status, reason)))
    pacer.wait(host_key(url), crawl_delay(fetcher, url, options))
    result = fetcher.get(url, purpose="page")
    if not result.ok:
        return PageResult(url, *page_status(result))
    try:
        text = decode_html(result.data or b"", result.charset)
        parsed = parse_page(text, result.final_url or url, options.page_text)
    except Exception as err:  # noqa: BLE001 - one unparseable page must not stop the host
        return PageResult(url, FETCH_FAILED, f"parse_error {type(err).__name__}")
    return PageResult(url, FETCHED, None, parsed.images, parsed.links)


def _crawl_page_safely(fetcher, pacer, url: str, options: CrawlOptions) -> PageResult:
    """crawl_page, with any surprise recorded on the page instead of failing the bundle."""
    try:
        return crawl_page(fetcher, pacer, url, options)
    except Exception as err:  # noqa: BLE001 - every page must still get its one row
        return PageResult(url, FETCH_FAILED, f"crawl_error {type(err).__name__}")


def _followed(host: str, fetched: Iterable[PageResult], seen: set[str], budget: int) -> list[str]:
    """Up to `budget` unseen same-host links, in page order then link order."""
    out: list[str] = []
    for page in fetched:
        for link in page.links:
            if len(out) >= budget:
                return out
            if link not in seen and host_key(link) == host:
                seen.add(link)
                out.append(link)
    return out


def crawl_host(
    fetcher: Fetcher,
    pacer: HostPacer,
    host: str,
    urls: Iterable[str],
    options: CrawlOptions,
) -> list[PageResult]:
    """Every listed page of one host (deduplicated), then its followed links, one result each.

    `urls` are raw entries; invalid ones (host '') get `invalid_url` without a request.
    """
    seen: set[str] = set()
    results: list[PageResult] = []
    todo: list[str] = []
    for raw in urls:
        url, invalid = normalize_page_url(raw)
        if url in seen:
            continue
        seen.add(url)
        if invalid:
            results.append(PageResult(url, INVALID_URL, invalid))
        else:
            todo.append(url)
    with ThreadPoolExecutor(options.pages_in_flight_per_host) as pool:

        def crawl_all(batch: list[str]) -> list[PageResult]:
            return list(pool.map(lambda u: _crawl_page_safely(fetcher, pacer, u, options), batch))

        listed = crawl_all(todo)
        results += listed
        if options.follow_links and host:
            fetched = (r for r in listed if r.status == FETCHED)
            results += crawl_all(_followed(host, fetched, seen, options.follow_links))
    pacer.forget(host)
    return results


def candidates_table(page: PageResult) -> pa.Table | None:
    """A fetched page's images as raw candidates: `source` is the page, `row` the position."""
    if not page.images:
        return None
    n = len(page.images)
    return pa.table(
        {
            "url": [url for url, _ in page.images],
            "caption": [caption for _, caption in page.images],
            "source": [page.page_url] * n,
            "row": list(range(n)),
            "error": [None] * n,
        },
        schema=RAW_SCHEMA,
    )


def pages_table(rows: list[dict]) -> pa.Table:
    """Page rows as an Arrow table in the documented schema."""
    return pa.Table.from_pylist(rows, schema=PAGE_SCHEMA)


# --- Beam ------------------------------------------------------------------------------


class _CrawlHostsFn(beam.DoFn):
    """Crawls a batch of hosts side by side; page rows go out main, candidates tagged."""

    def __init__(self, options: CrawlOptions):
        self.options = options
        self.pages = Metrics.counter("wit", "pages")
        self.fetched = Metrics.counter("wit", "pages_fetched")
        self.images = Metrics.counter("wit", "page_images")
        self.rows = Metrics.counter("wit", "input_rows")  # the job checks status rows == this

    def setup(self):
        self.fetcher = Fetcher(self.options.fetch)
        self.pacer = HostPacer()

    def teardown(self):
        self.fetcher.close()

    def process(self, batch):
        def one(item):
            host, urls = item
            return crawl_host(self.fetcher, self.pacer, host, urls, self.options)

        with ThreadPoolExecutor(min(len(batch), self.options.hosts_in_parallel) or 1) as pool:
            for results in pool.map(one, batch):
                for page in results:
                    self.pages.inc()
                    if page.status == FETCHED:
                        self.fetched.inc()
                        self.images.inc(len(page.images))
                    yield page.row()
                    table = candidates_table(page)
                    if table is not None:
                        self.rows.inc(table.num_rows)
                        yield beam.pvalue.TaggedOutput(CANDIDATES_TAG, table)


class CrawlPages(beam.PTransform):
    """Page URLs -> {"pages": page rows (PAGE_SCHEMA dicts), "candidates": RAW_SCHEMA tables}.

    Pages are grouped by host so that each host's politeness limits hold on one worker.
    """

    def __init__(self, options: CrawlOptions):
        super().__init__()
        self.options = options

    def expand(self, urls):
        crawled = (
            urls
            | "ByHost" >> beam.Map(lambda u: (host_key(normalize_page_url(u)[0]), u))
            | "GroupByHost" >> beam.GroupByKey()
            | "BatchHosts"
            >> beam.BatchElements(min_batch_size=1, max_batch_size=self.options.hosts_in_parallel)
            | "Crawl"
            >> beam.ParDo(_CrawlHostsFn(self.options)).with_outputs(CANDIDATES_TAG, main="pages")
        )
        return {"pages": crawled.pages, "candidates": crawled[CANDIDATES_TAG]}


# --- Page lists --------------------------------------------------------------------------

PAGE_URL_NAMES = ("url", "page_url", "page", "link")


def _url_column(names: list[str], path: str) -> str:
    lowered = {n.lower(): n for n in names}
    for option in PAGE_URL_NAMES:
        if option in lowered:
            return lowered[option]
    raise ValueError(f"{path}: no url column among {', '.join(names) or 'no columns'}")


def list_kind(path: str) -> str:
    """'parquet', 'csv' or 'txt' (one URL a line, # comments), by file name."""
    name = path.lower()
    for ext in (".gz", ".bz2"):
        name = name.removesuffix(ext)
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    return "csv" if name.endswith(".csv") else "txt"


def check_page_list(path: str) -> None:
    """Fail early, with one line, when a tabular page list has no url column."""
    kind = list_kind(path)
    if kind == "parquet":
        import pyarrow.parquet as pq

        _url_column(pq.read_schema(path).names, path)
    elif kind == "csv":
        import csv
        import io

        from apache_beam.io.filesystems import FileSystems

        with FileSystems.open(path) as raw:
            header = next(csv.reader(io.TextIOWrapper(raw, "utf-8", errors="replace")), [])
        _url_column(header, path)


def _text_values(path: str, kind: str) -> Iterator[str | None]:
    import csv

    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(path) as raw:  # decompresses .gz/.bz2 by name
        text = (line.decode("utf-8", errors="replace") for line in iter(raw.readline, b""))
        if kind == "csv":
            reader = csv.DictReader(text)
            name = _url_column(list(reader.fieldnames or []), path)
            yield from (row.get(name) for row in reader)
        else:
            yield from (line for line in text if line.strip() and not line.startswith("#"))


def read_page_list(path: str) -> Iterator[str]:
    """The page URLs of one list file; a row without a URL yields a marker that is invalid."""
    kind = list_kind(path)
    if kind == "parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        values: Iterable = table.column(_url_column(table.column_names, path)).to_pylist()
    else:
        values = _text_values(path, kind)
    for i, value in enumerate(values):
        value = value.strip() if isinstance(value, str) else ""
        yield value or f"{EMPTY_ENTRY}{path}#row={i}"


class ReadPageLists(beam.PTransform):
    """List files -> page URL strings, each file read on a worker."""

    def __init__(self, paths: list[str]):
        super().__init__()
        self.paths = paths

    def expand(self, pbegin):
        return (
            pbegin
            | "PageLists" >> beam.Create(self.paths, reshuffle=False)
            | "ReadLists" >> beam.FlatMap(read_page_list)
            | "SpreadPages" >> beam.Reshuffle()
        )


# --- The source that wit-build wires in -------------------------------------------------


class CrawlPageLists(beam.PTransform):
    """List files -> raw candidate tables; every page's row goes to `OUT/pages/part-*.parquet`."""

    def __init__(self, paths: list[str], options: CrawlOptions, out_dir: str, beam_args=()):
        super().__init__()
        self.paths, self.options, self.out_dir = paths, options, out_dir
        self.beam_args = tuple(beam_args)

    def expand(self, pbegin):
        crawled = (
            pbegin
            | "ReadPageLists" >> ReadPageLists(self.paths)
            | "CrawlPages" >> CrawlPages(self.options)
        )
        _ = (
            crawled["pages"]
            | "PageBatches" >> beam.BatchElements(min_batch_size=1, max_batch_size=5000)
            | "WritePages" >> beam.ParDo(_WritePagesFn(self.out_dir, self.beam_args))
            | "PageTotals" >> beam.CombineGlobally(_sum_counts)
            | "WritePageTotals" >> beam.ParDo(_WritePageTotalsFn(self.out_dir, self.beam_args))
        )
        return crawled["candidates"]


def _sum_counts(dicts: Iterable[dict]) -> dict:
    total: dict[str, int] = {}
    for d in dicts:
        for k, v in d.items():
            total[k] = total.get(k, 0) + v
    return total


class _WritePagesFn(beam.DoFn):
    """One `OUT/pages/part-<digest>.parquet` per batch of page rows (content-named, so a
    retried bundle rewrites the same file); yields the batch's pages per status."""

    def __init__(self, out_dir: str, beam_args=()):
        self.out_dir, self.beam_args = out_dir, tuple(beam_args)

    def setup(self):
        from pipeline.fsio import ensure_options

        ensure_options(self.beam_args)

    def process(self, rows):
        import hashlib

        from pipeline import fsio

        table = pages_table(rows)
        digest = hashlib.sha1("\n".join(sorted(r["page_url"] or "" for r in rows)).encode())
        path = fsio.join(self.out_dir, "pages", f"part-{digest.hexdigest()[:20]}.parquet")
        fsio.publish(path, fsio.parquet_bytes(table))
        counts: dict[str, int] = {}
        for r in rows:
            counts[r["status"]] = counts.get(r["status"], 0) + 1
        yield counts


class _WritePageTotalsFn(_WritePagesFn):
    def process(self, totals):
        from pipeline import fsio

        fsio.publish_json(fsio.join(self.out_dir, "counts", "pages.json"), totals)
        return []


def page_totals(out_dir: str) -> dict[str, int]:
    """Pages per status (every status listed, zeros included) for the manifest; the
    pipeline counted them into `OUT/counts/pages.json` (the launcher reads no page rows)."""
    from pipeline import fsio

    totals = dict.fromkeys(PAGE_STATUSES, 0)
    path = fsio.join(out_dir, "counts", "pages.json")
    if fsio.exists(path):
        for status, n in fsio.read_json(path).items():
            totals[status] = totals.get(status, 0) + n
    return totals
