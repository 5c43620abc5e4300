"""Candidates from crawled pages: WARC responses, Common Crawl WAT metadata, HTML files.

An HTML page yields one candidate per ``<img>``: the ``src`` resolved against the page URL
(or its ``<base href>``) and the ``alt`` text. A WAT record yields its ``IMG@/src`` links.
gzip files are not splittable, so each file is one unit; ``row`` counts candidates in file
order. A damaged file yields what precedes the damage and reports the failure.
"""

from __future__ import annotations

import gzip
import json
import pathlib
import zlib
from collections.abc import Callable, Iterator
from urllib.parse import urljoin

import pyarrow as pa
from apache_beam.io.filesystems import CompressionTypes, FileSystems
from selectolax.lexbor import LexborHTMLParser as HTMLParser
from warcio.archiveiterator import ArchiveIterator

from pipeline.read_tabular import BATCH_ROWS, RAW_SCHEMA

MAX_PAGE_BYTES = 20 << 20


def _resolve(base: str, src: str) -> str:
    try:
        return urljoin(base, src.strip())
    except ValueError:
        return src.strip()


def images_in_html(html: bytes | str, page_url: str) -> list[tuple[str, str | None]]:
    """(absolute src, alt) for every ``<img src>`` of a page; alt is None when absent."""
    tree = HTMLParser(html)
    base = page_url
    base_node = tree.css_first("base[href]")
    if base_node is not None and base_node.attributes.get("href"):
        base = _resolve(page_url, base_node.attributes["href"])
    out = []
    for img in tree.css("img"):
        attrs = img.attributes
        src = attrs.get("src")
        if not src or not src.strip():
            continue
        out.append((_resolve(base, src), attrs.get("alt")))
    return out


def page_url_of_html_file(html: bytes, path: str) -> str:
    """A local HTML file's URL: its canonical/og:url if it names one, else its file URI."""
    tree = HTMLParser(html)
    for selector, attr in (
        ('link[rel="canonical"]', "href"),
        ('meta[property="og:url"]', "content"),
    ):
        node = tree.css_first(selector)
        if node is not None and (node.attributes.get(attr) or "").startswith(
            ("http://", "https://")
        ):
            return node.attributes[attr]
    p = pathlib.Path(path)
    return p.resolve().as_uri() if p.exists() else path


class _Batcher:
    """Accumulates (url, alt) pairs of one file into RAW_SCHEMA tables."""

    def __init__(self, source: str):
        self.source, self.row = source, 0
        self.urls: list = []
        self.caps: list = []

    def add(self, url: str, alt: str | None) -> pa.Table | None:
        self.urls.append(url)
        self.caps.append(alt)
        return self.flush() if len(self.urls) >= BATCH_ROWS else None

    def flush(self) -> pa.Table | None:
        if not self.urls:
            return None
        n = len(self.urls)
        table = pa.table(
            {"url": self.urls, "caption": self.caps, "source": [self.source] * n,
             "row": list(range(self.row, self.row + n)), "error": [None] * n},
            schema=RAW_SCHEMA,
        )  # fmt: skip
        self.row += n
        self.urls, self.caps = [], []
        return table


def _is_html(record) -> bool:
    if record.http_headers is None:
        return False
    ctype = (record.http_headers.get_header("Content-Type") or "").lower()
    return "html" in ctype


def _pairs_from_warc(stream) -> Iterator[tuple[str, str | None]]:
    for record in ArchiveIterator(stream):
        if record.rec_type != "response" or not _is_html(record):
            continue
        page = record.rec_headers.get_header("WARC-Target-URI") or ""
        body = record.content_stream().read(MAX_PAGE_BYTES)
        yield from images_in_html(body, page)


def _pairs_from_wat(stream) -> Iterator[tuple[str, str | None]]:
    for record in ArchiveIterator(stream):
        if record.rec_type != "metadata":
            continue
        try:
            meta = json.loads(record.content_stream().read())
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue  # a metadata record that is not JSON carries no links
        env = meta.get("Envelope", {})
        page = env.get("WARC-Header-Metadata", {}).get("WARC-Target-URI", "")
        html_meta = (
            env.get("Payload-Metadata", {})
            .get("HTTP-Response-Metadata", {})
            .get("HTML-Metadata", {})
        )
        base = html_meta.get("Head", {}).get("Base") or page
        base = _resolve(page, base) if page else base
        for link in html_meta.get("Links", []) or []:
            if link.get("path") == "IMG@/src" and link.get("url"):
                yield _resolve(base, link["url"]), link.get("alt")


def _pairs_from_html_file(stream, path: str) -> Iterator[tuple[str, str | None]]:
    body = stream.read(MAX_PAGE_BYTES)
    yield from images_in_html(body, page_url_of_html_file(body, path))


class GzipDamageStream:
    """A gzip file decompressed once, for warcio, that remembers why it stopped early.

    warcio ends iteration quietly at damaged gzip data (it even swallows the EOFError of a
    truncated member), so the damage is caught here, in the one decompressing pass, and the
    stream just ends. `problem` then says why (truncated, not gzip, bad deflate data).
    Multi-member files (one member per record, as WARC writers make them) read as one
    stream, and so does a WARC compressed as a single member.
    """

    def __init__(self, raw):
        self._gzip = gzip.GzipFile(fileobj=raw, mode="rb")
        self.problem: str | None = None

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return b"".join(iter(lambda: self.read(1 << 20), b""))
        if self.problem is not None:
            return b""
        try:
            # read1: at most one step of decompression, so the data before damage is
            # returned before the error is met (read() would drop what it had collected).
            return self._gzip.read1(size)
        except (OSError, EOFError, zlib.error) as e:
            self.problem = f"damaged gzip data: {type(e).__name__}: {e}"
            return b""

    def close(self) -> None:
        self._gzip.close()


def read_page_unit(unit: dict, on_error: Callable[[str, str], None]) -> Iterator[pa.Table]:
    """Tables of candidates from one WARC, WAT or HTML file; damage goes to ``on_error``."""
    path, kind = unit["path"], unit["kind"]
    batcher = _Batcher(path)
    gz = None
    try:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            stream = f
            if kind in ("warc", "wat") and path.lower().endswith(".gz"):
                stream = gz = GzipDamageStream(f)
            if kind == "warc":
                pairs = _pairs_from_warc(stream)
            elif kind == "wat":
                pairs = _pairs_from_wat(stream)
            else:
                pairs = _pairs_from_html_file(stream, path)
            for url, alt in pairs:
                table = batcher.add(url, alt)
                if table is not None:
                    yield table
    except Exception as e:  # noqa: BLE001 - a damaged file must not stop the job
        on_error(path, f"{type(e).__name__}: {e}")
    else:
        if gz is not None and gz.problem:  # the stream ended at the damage; say what was lost
            on_error(path, f"{gz.problem} (the records before the damage were read)")
    table = batcher.flush()
    if table is not None:
        yield table
