"""Reading MediaWiki XML dumps: decompression, work units, and pages out of XML bytes.

A dump is `pages-articles*.xml` (plain, bzip2 or gzip). Two ways to cut it into work:

- **Multistream** (`*-multistream.xml.bz2`, and any bzip2 file that is a concatenation of
  many streams): every stream starts on a byte boundary with the header `BZh[1-9]` and
  the block magic `1AY&SY`, so the stream starts are found by scanning the compressed
  bytes (no index file needed), and each worker decompresses its own byte range. Pages
  that straddle two ranges (a file recompressed by pbzip2 has streams that do not end
  on a page) are stitched back together from the pieces the workers hand back.
- **Single stream**: the parent process decompresses and cuts the XML after a `</page>`
  into batches that workers parse. Decompression then runs on one core (libbz2 gives
  ~30-40 MB/s of XML), which is about as fast as 16 workers parse.

A page is found by its `<page>` and `</page>` tags as bytes: `<` inside text is always
escaped as `&lt;` in XML, so the tags cannot occur inside a page's text. Each page is then
parsed with ElementTree.
"""

from __future__ import annotations

import bz2
import os
import re
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from .source import QueryListError

PAGE_OPEN = b"<page>"
PAGE_CLOSE = b"</page>"
FOOTER = b"</mediawiki>"
#: A bzip2 stream header (magic, block size 1-9) followed by the first block's magic.
_STREAM_START = re.compile(rb"BZh[1-9]1AY&SY")
#: A file counts as multistream when this many stream starts lie in its first PROBE bytes.
PROBE_BYTES = 64 << 20
#: Compressed bytes fed to a decompressor at a time: small enough that the pages before a
#: damaged bzip2 block (~200 KB compressed) come out before the error does.
READ_BYTES = 64 << 10
_TITLE = re.compile(rb"<title>([^<]*)</title>")
_ID = re.compile(rb"<id>(\d+)</id>")


class DumpError(QueryListError):
    """A dump cannot be read; the message (one line) names the file and the page reached."""


class CompressedDataError(Exception):
    """Bad compressed bytes at `offset` (a byte position in the compressed file);
    `partial` holds the XML decompressed before it, where that is known."""

    def __init__(self, reason: str, offset: int, partial: list[bytes] | None = None):
        super().__init__(reason)
        self.reason, self.offset = reason, offset
        self.partial = b"".join(partial or [])


@dataclass
class Page:
    title: str
    ns: int
    page_id: int
    redirect: bool
    text: str


def sniff(path: str) -> str:
    """'bz2', 'gzip' or 'xml' by the first bytes; DumpError if unreadable or none of them."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as e:
        raise DumpError(f"cannot read {path}: {e.strerror or e}") from e
    if head[:3] == b"BZh":
        return "bz2"
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith((b"<?xml", b"<mediawiki")):
        return "xml"
    if not head:
        raise DumpError(f"{path}: empty file, not a MediaWiki XML dump")
    raise DumpError(f"{path}: not a MediaWiki XML dump (neither bzip2, gzip nor XML)")


def stream_starts(path: str, limit: int | None = None) -> Iterator[int]:
    """Byte offsets of the bzip2 streams in `path`, in order, scanning up to `limit` bytes."""
    keep = 9  # a start cut by a block boundary is found once the next block is read
    with open(path, "rb") as f:
        base, tail = 0, b""
        while limit is None or base < limit:
            block = f.read(8 << 20)
            if not block:
                return
            data = tail + block
            for m in _STREAM_START.finditer(data):
                yield base - len(tail) + m.start()
            base += len(block)
            tail = data[-keep:]


def is_multistream(path: str) -> bool:
    """True when `path` is bzip2 with at least two streams in its first PROBE_BYTES."""
    size = os.path.getsize(path)
    starts = 0
    for offset in stream_starts(path, limit=min(size, PROBE_BYTES)):
        if offset >= PROBE_BYTES:
            break
        starts += 1
        if starts >= 2:
            return True
    return False


def plan_ranges(path: str, chunk_bytes: int) -> Iterator[tuple[int, int]]:
    """(start, end) byte ranges of whole streams, each at least `chunk_bytes` but the last."""
    size = os.path.getsize(path)
    begin = 0
    for offset in stream_starts(path):
        if offset - begin >= chunk_bytes:
            yield begin, offset
            begin = offset
    if size > begin:
        yield begin, size


def decompress_range(path: str, start: int, end: int) -> bytes:
    """The XML of the whole bzip2 streams in bytes [start, end) of `path`.

    Raises CompressedDataError with the offset where the data went bad.
    """
    out: list[bytes] = []
    dec, fed = bz2.BZ2Decompressor(), False
    pos = start
    with open(path, "rb") as f:
        f.seek(start)
        while pos < end:
            raw = f.read(min(READ_BYTES, end - pos))
            if not raw:
                break
            pos += len(raw)
            try:
                while raw:
                    out.append(dec.decompress(raw))
                    fed = True
                    if not dec.eof:
                        break
                    raw = dec.unused_data
                    dec, fed = bz2.BZ2Decompressor(), False
            except (OSError, ValueError) as e:
                raise CompressedDataError(f"damaged bzip2 data ({e})", pos, out) from None
    if fed and not dec.eof:
        if pos >= os.path.getsize(path):
            reason = "the bzip2 data ends inside a stream (truncated file?)"
        else:
            reason = "a bzip2 stream does not end where the next one starts"
        raise CompressedDataError(reason, pos, out)
    return b"".join(out)


def iter_decompressed(path: str, kind: str) -> Iterator[tuple[bytes, int]]:
    """(XML bytes, compressed bytes consumed so far) for the whole file, in order.

    bzip2 and gzip files may hold several streams/members back to back. Raises
    CompressedDataError on damaged or truncated data.
    """
    with open(path, "rb") as f:
        if kind == "xml":
            pos = 0
            while raw := f.read(READ_BYTES):
                pos += len(raw)
                yield raw, pos
            return
        new = bz2.BZ2Decompressor if kind == "bz2" else lambda: zlib.decompressobj(31)
        errors = (OSError, ValueError) if kind == "bz2" else (zlib.error,)
        label = "bzip2" if kind == "bz2" else kind
        dec, pos, fed = new(), 0, False
        while raw := f.read(READ_BYTES):
            pos += len(raw)
            try:
                while raw:
                    data = dec.decompress(raw)
                    fed = True
                    if data:
                        yield data, pos
                    done = dec.eof
                    if not done:
                        break
                    raw = dec.unused_data
                    dec, fed = new(), False
            except errors as e:
                raise CompressedDataError(f"damaged {label} data ({e})", pos) from None
        if fed and not dec.eof:
            raise CompressedDataError(
                f"the {label} data ends inside a stream (truncated file?)", pos
            )


def last_page(xml: bytes) -> str:
    """ "'Title' (id N)" of the last complete page in `xml`, or '' if none, for messages."""
    close = xml.rfind(PAGE_CLOSE)
    if close < 0:
        return ""
    return page_ref(xml[max(xml.rfind(PAGE_OPEN, 0, close), 0) : close])


def page_ref(xml: bytes) -> str:
    """ "'Title' (id N)" of the page that starts in `xml` ('' if it has no title yet)."""
    m = _TITLE.search(xml)
    if not m:
        return ""
    title = _unescape(m.group(1))
    pid = _ID.search(xml, m.end())
    return f"{title!r} (id {int(pid.group(1))})" if pid else repr(title)


def _unescape(raw: bytes) -> str:
    try:
        return ET.fromstring(b"<t>" + raw + b"</t>").text or ""
    except ET.ParseError:
        return raw.decode("utf-8", "replace")


def parse_page(xml: bytes) -> Page:
    """One `<page>...</page>` element (bytes) as a Page; ET.ParseError if malformed."""
    el = ET.fromstring(xml)
    title = el.findtext("title") or ""
    ns_text = el.findtext("ns")
    text = el.findtext("revision/text") or ""
    redirect = el.find("redirect") is not None or text[:9].upper() == "#REDIRECT"
    return Page(
        title=title,
        ns=int(ns_text) if ns_text and ns_text.strip().lstrip("-").isdigit() else 0,
        page_id=int(el.findtext("id") or 0),
        redirect=redirect,
        text=text,
    )


@dataclass
class Split:
    """XML bytes cut at `<page>` tags: what comes before the first page, the complete
    pages, and what follows the last complete page."""

    lead: bytes
    pages: list[bytes]
    tail: bytes
    found: bool = True  # False: no `<page>` at all, everything is in `lead`


def split_pages(data: bytes) -> Split:
    """Cut `data` into whole `<page>...</page>` elements.

    `lead` is everything before the first `<page>` (the dump's header, or the end of a
    page that began in an earlier range); `tail` is what follows the last complete page,
    if it is more than whitespace: a page cut short, or the `</mediawiki>` footer.
    Raises ValueError when something other than whitespace lies between two pages, or a
    page has no `</page>` before the next `<page>`.
    """
    pos = data.find(PAGE_OPEN)
    if pos < 0:
        return Split(data, [], b"", found=False)
    lead = data[:pos]
    pages: list[bytes] = []
    while True:
        close = data.find(PAGE_CLOSE, pos)
        nxt = data.find(PAGE_OPEN, pos + len(PAGE_OPEN))
        if close < 0:
            if nxt >= 0:
                raise ValueError("a page has no </page> before the next <page>")
            return Split(lead, pages, data[pos:])
        if 0 <= nxt < close:
            raise ValueError("a page has no </page> before the next <page>")
        end = close + len(PAGE_CLOSE)
        pages.append(data[pos:end])
        if nxt < 0:
            rest = data[end:]
            return Split(lead, pages, rest if rest.strip() else b"")
        if data[end:nxt].strip():
            raise ValueError(f"unexpected data between pages: {data[end:nxt].strip()[:40]!r}")
        pos = nxt


def is_header(lead: bytes) -> bool:
    """True for whitespace, or for the dump's `<mediawiki ...><siteinfo>...` header."""
    return not lead.strip() or (b"<mediawiki" in lead and PAGE_CLOSE not in lead)


def is_footer(tail: bytes) -> bool:
    return tail.strip() == FOOTER
