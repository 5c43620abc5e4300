"""NormalizeCaptions: repair and normalize captions and URLs, and reject unusable rows.

Every rejection names its rule in ``reason`` so that status tables explain themselves.
A rejected row has no usable (url, caption) pair, so its uid is derived from its source
and row position (``row:`` + SHA-256), as docs/shard-format.md specifies; accepted rows get
``uid = sha256(url + "\\n" + caption)``.
"""

from __future__ import annotations

import hashlib
import html
import re
from typing import NamedTuple

import apache_beam as beam
import ftfy
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import status_io
from pipeline.schema import CAPTION_REJECTED
from pipeline.status_io import FINAL

MIN_CAPTION_CHARS = 5
MAX_CAPTION_CHARS = 1000
MAX_URL_CHARS = 2048

# Text that needs ftfy: anything outside printable ASCII, or an HTML entity start.
# Plain printable ASCII comes out of ftfy unchanged, so skipping it is exact and fast.
_NEEDS_FTFY = re.compile(r"[^\x20-\x7e]|&")

_IMAGE_EXT = r"(?:jpe?g|png|gif|webp|bmp|tiff?|svg|heic|avif|ico)"
_FILENAME_LIKE = re.compile(
    rf"^(?:[\w\-]+\.{_IMAGE_EXT}"  # photo-01.jpg
    r"|(?:img|dsc|dscn|dscf|pict|pic|image|photo|screenshot|scan|p|mvimg|vid)[\s_\-]?\d{2,}[\w\-]*"
    r"|\d[\d_\-\s]*"  # 20190612_101503, 1234
    r"|[0-9a-f]{16,})$",  # hashes
    re.IGNORECASE,
)
BOILERPLATE = frozenset(
    {
        "image", "images", "img", "photo", "photos", "picture", "pictures", "pic", "click here",
        "click", "here", "untitled", "no title", "logo", "icon", "thumbnail", "thumb",
        "banner", "spacer", "placeholder", "read more", "more", "null", "none", "n/a",
        "undefined", "alt", "alt text", "image description", "default", "loading", "blank",
        "advertisement", "ad", "button", "arrow", "avatar", "profile picture", "featured image",
        "image not found", "no image", "no image available", "photo credit",
    }
)  # fmt: skip
_LONGEST_BOILERPLATE = max(map(len, BOILERPLATE))
_PUNCT_EDGES = re.compile(r"^[\W_]+|[\W_]+$")
_SPACE = re.compile(r"\s")


def fix_caption(raw: str) -> str:
    """ftfy repair, HTML unescape and whitespace collapse."""
    text = raw
    if _NEEDS_FTFY.search(text):
        text = ftfy.fix_text(text, unescape_html=False)
        if "&" in text:
            text = html.unescape(text)
            text = ftfy.fix_text(text, unescape_html=False) if _NEEDS_FTFY.search(text) else text
    return " ".join(text.split())


def caption_rule(caption: str) -> str | None:
    """The name of the rule that rejects a normalized caption, or None if it passes."""
    if not caption:
        return "empty"
    if len(caption) < MIN_CAPTION_CHARS:
        return "too_short"
    if len(caption) > MAX_CAPTION_CHARS:
        return "too_long"
    if _FILENAME_LIKE.match(caption):
        return "filename_like"
    if len(caption) <= _LONGEST_BOILERPLATE + 8:
        core = _PUNCT_EDGES.sub("", caption.casefold())
        if core in BOILERPLATE:
            return "boilerplate"
    return None


def fix_url(raw: str) -> str:
    return raw.strip()


def url_rule(url: str) -> str | None:
    """The name of the rule that rejects a normalized URL, or None if it passes."""
    if not url:
        return "missing_url"
    head = url[:8].lower()
    if head.startswith("data:"):
        return "data_uri"
    if not (head.startswith("http://") or head.startswith("https://")):
        return "bad_scheme"
    if len(url) > MAX_URL_CHARS:
        return "url_too_long"
    if not url.split("/", 3)[2]:
        return "missing_host"
    if _SPACE.search(url):
        return "whitespace_in_url"
    return None


def candidate_uid(url: str, caption: str) -> str:
    return hashlib.sha256(f"{url}\n{caption}".encode()).hexdigest()


def row_uid(source: str, row: int) -> str:
    """uid of a row without a usable (url, caption): unique per source and position."""
    return "row:" + hashlib.sha256(f"{source}\n{row}".encode()).hexdigest()


class Normalized(NamedTuple):
    uid: str
    url: str | None
    caption: str | None
    reason: str | None  # None = accepted


def normalize_row(
    url: str | None, caption: str | None, source: str, row: int, read_error: str | None = None
) -> Normalized:
    """Normalize one candidate; never raises (bad values become a named reason)."""
    if read_error:
        return Normalized(row_uid(source, row), url, caption, read_error)
    try:
        u = fix_url(url) if isinstance(url, str) else ""
        c = fix_caption(caption) if isinstance(caption, str) else ""
    except Exception as e:  # noqa: BLE001 - a value ftfy cannot handle is a bad row
        return Normalized(row_uid(source, row), url, caption, f"unreadable_row:{type(e).__name__}")
    reason = url_rule(u) or caption_rule(c)
    if reason:
        return Normalized(row_uid(source, row), u or None, c or None, reason)
    return Normalized(candidate_uid(u, c), u, c, None)


def normalize_table(raw: pa.Table) -> pa.Table:
    """RAW_SCHEMA -> WORK_SCHEMA with uid, normalized url/caption and caption_rejected rows."""
    cols = {k: [] for k in ("uid", "url", "caption", "source", "row", "status", "reason")}
    for url, cap, source, row, err in zip(
        *(raw[c].to_pylist() for c in ("url", "caption", "source", "row", "error")), strict=True
    ):
        n = normalize_row(url, cap, source, row, err)
        cols["uid"].append(n.uid)
        cols["url"].append(n.url)
        cols["caption"].append(n.caption)
        cols["source"].append(source)
        cols["row"].append(row)
        cols["status"].append(CAPTION_REJECTED if n.reason else None)
        cols["reason"].append(n.reason)
    return status_io.work_table(cols)


# --- Beam ---------------------------------------------------------------------


class _NormalizeFn(beam.DoFn):
    def process(self, raw):
        table = normalize_table(raw)
        rejected = pc.is_valid(table["status"])
        if pc.any(rejected).as_py():
            yield beam.pvalue.TaggedOutput(FINAL, table.filter(rejected))
        accepted = table.filter(pc.invert(rejected))
        if accepted.num_rows:
            yield accepted


class NormalizeCaptions(beam.PTransform):
    """raw tables -> accepted rows (tables) and, tagged ``final``, rejected rows."""

    def expand(self, raw):
        return raw | beam.ParDo(_NormalizeFn()).with_outputs(FINAL, main="accepted")
