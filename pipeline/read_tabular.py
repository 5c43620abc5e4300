"""Reading tabular candidate files (parquet, csv, tsv, jsonl) in splittable units.

A unit is a piece of one file that one worker reads alone: a parquet row group, or a byte
range of an uncompressed tsv/jsonl file (lines that start inside the range belong to it).
CSV may quote newlines, so a CSV file is one unit. Every physical row yields exactly one
raw row; a row that cannot be parsed yields ``error="unreadable_row"`` instead of vanishing.
The row position (``row``) is the row number for parquet/csv and the line's byte offset
for tsv/jsonl, so it is unique within a file and orders rows as they appear.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import CompressionTypes, FileSystems

URL_NAMES = ("url", "image_url", "img_url", "src", "image", "link")
CAPTION_NAMES = ("caption", "text", "alt", "alt_text", "alttext", "description", "title")
SPLIT_BYTES = 32 << 20
BATCH_ROWS = 32768

RAW_SCHEMA = pa.schema(
    [
        pa.field("url", pa.string()),
        pa.field("caption", pa.string()),
        pa.field("source", pa.string()),
        pa.field("row", pa.int64()),
        pa.field("error", pa.string()),
    ]
)


class InputError(ValueError):
    """A file or column problem that makes a whole input unusable (one-line message)."""


@dataclass(frozen=True)
class Columns:
    """Where the URL and caption live: names for keyed formats, indices for headerless."""

    url: str | int
    caption: str | int
    header: bool = True


def pick_columns(names: list[str], url_col: str | None, caption_col: str | None) -> Columns:
    """Auto-detect the URL and caption columns among ``names`` (or check the given ones)."""

    def find(wanted: str | None, options: tuple[str, ...], what: str) -> str:
        if wanted is not None:
            if wanted not in names:
                raise InputError(f"no {what} column {wanted!r} (columns: {', '.join(names)})")
            return wanted
        lowered = {n.lower(): n for n in reversed(names)}
        for option in options:
            if option in lowered:
                return lowered[option]
        raise InputError(f"cannot find a {what} column among {', '.join(names)}; pass --{what}-col")

    return Columns(find(url_col, URL_NAMES, "url"), find(caption_col, CAPTION_NAMES, "caption"))


def _looks_like_url(value: str) -> bool:
    v = value.strip().lower()
    return v.startswith(("http://", "https://", "data:", "//")) or "://" in v[:16]


def delimited_columns(
    first_line: list[str], url_col: str | None, caption_col: str | None
) -> Columns:
    """Columns of a csv/tsv file from its first row: a header, or data (CC3M's caption<TAB>url)."""
    lowered = [f.strip().lower() for f in first_line]
    if any(f in URL_NAMES or f in CAPTION_NAMES for f in lowered) or url_col or caption_col:
        names = [f.strip() for f in first_line]
        cols = pick_columns(names, url_col, caption_col)
        return Columns(names.index(cols.url), names.index(cols.caption), header=True)
    url_idx = [i for i, f in enumerate(first_line) if _looks_like_url(f)]
    if len(url_idx) != 1 or len(first_line) < 2:
        raise InputError("no header and no single URL-looking field; pass --url-col/--caption-col")
    others = [i for i in range(len(first_line)) if i != url_idx[0]]
    return Columns(url_idx[0], others[0], header=False)


def _batch(urls, captions, source, rows, errors) -> pa.Table:
    return pa.table(
        {"url": urls, "caption": captions, "source": [source] * len(rows), "row": rows,
         "error": errors},
        schema=RAW_SCHEMA,
    )  # fmt: skip


def _as_text(value) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


# --- parquet ------------------------------------------------------------------------------


def plan_parquet(path: str, url_col, caption_col) -> list[dict]:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        meta = pq.ParquetFile(f).metadata
        names = meta.schema.to_arrow_schema().names
    cols = pick_columns(names, url_col, caption_col)
    units, start = [], 0
    for i in range(meta.num_row_groups):
        n = meta.row_group(i).num_rows
        units.append({"kind": "parquet", "path": path, "row_group": i, "first_row": start,
                      "rows": n, "url_col": cols.url, "caption_col": cols.caption})  # fmt: skip
        start += n
    return units


def read_parquet_unit(unit: dict) -> Iterator[pa.Table]:
    path, row = unit["path"], unit["first_row"]
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        pf = pq.ParquetFile(f)
        cols = [unit["url_col"], unit["caption_col"]]
        for rb in pf.iter_batches(
            batch_size=BATCH_ROWS, row_groups=[unit["row_group"]], columns=cols
        ):
            urls = [_as_text(v) for v in rb.column(0).to_pylist()]
            caps = [_as_text(v) for v in rb.column(1).to_pylist()]
            n = rb.num_rows
            yield _batch(urls, caps, path, list(range(row, row + n)), [None] * n)
            row += n


# --- tsv / jsonl (splittable by byte range) --------------------------------------------------


def _is_compressed(path: str) -> bool:
    return CompressionTypes.detect_compression_type(path) != CompressionTypes.UNCOMPRESSED


def _first_line(path: str) -> bytes:
    with FileSystems.open(path) as f:
        return f.readline()


def plan_lines(path: str, fmt: str, url_col, caption_col) -> list[dict]:
    """Units of a line-per-row file; the columns are fixed here, once, from its first line."""
    first = _first_line(path)
    try:
        text = first.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise InputError("first line is not UTF-8") from None
    if not text:
        return []
    if fmt == "jsonl":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            raise InputError("first line is not a JSON object") from None
        if not isinstance(obj, dict):
            raise InputError("first line is not a JSON object")
        cols = pick_columns(list(obj), url_col, caption_col)
    else:
        cols = delimited_columns(text.split("\t"), url_col, caption_col)
    base = {"kind": fmt, "path": path, "url_col": cols.url, "caption_col": cols.caption,
            "header": cols.header and fmt == "tsv"}  # fmt: skip
    if _is_compressed(path):
        return [dict(base, start=0, end=None)]
    size = FileSystems.match([path])[0].metadata_list[0].size_in_bytes
    return [
        dict(base, start=s, end=min(s + SPLIT_BYTES, size)) for s in range(0, size, SPLIT_BYTES)
    ]


def _lines_in_range(f, start: int, end: int | None) -> Iterator[tuple[int, bytes]]:
    """(offset, line) for lines that begin in [start, end)."""
    pos = start
    if start > 0:
        f.seek(start - 1)
        skipped = f.readline()  # the tail of a line owned by the previous unit
        pos = start - 1 + len(skipped)
    while end is None or pos < end:
        line = f.readline()
        if not line:
            return
        yield pos, line
        pos += len(line)


def _parse_line(line: bytes, unit: dict) -> tuple[str | None, str | None, str | None]:
    try:
        text = line.decode("utf-8").rstrip("\r\n")
        if unit["kind"] == "jsonl":
            obj = json.loads(text)
            if not isinstance(obj, dict):
                return None, None, "unreadable_row"
            return _as_text(obj.get(unit["url_col"])), _as_text(obj.get(unit["caption_col"])), None
        fields = text.split("\t")
        u, c = unit["url_col"], unit["caption_col"]
        if max(u, c) >= len(fields):
            return None, None, "unreadable_row"
        return fields[u], fields[c], None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None, None, "unreadable_row"


def read_lines_unit(unit: dict) -> Iterator[pa.Table]:
    path = unit["path"]
    compression = CompressionTypes.AUTO if unit["end"] is None else CompressionTypes.UNCOMPRESSED
    urls, caps, rows, errs = [], [], [], []
    with FileSystems.open(path, compression_type=compression) as f:
        for offset, line in _lines_in_range(f, unit["start"], unit["end"]):
            if offset == 0 and unit["header"]:
                continue
            if not line.strip():
                continue  # blank lines are not rows
            u, c, e = _parse_line(line, unit)
            urls.append(u)
            caps.append(c)
            rows.append(offset)
            errs.append(e)
            if len(rows) >= BATCH_ROWS:
                yield _batch(urls, caps, path, rows, errs)
                urls, caps, rows, errs = [], [], [], []
    if rows:
        yield _batch(urls, caps, path, rows, errs)


# --- csv (one unit per file: quoted fields may hold newlines) -------------------------------


def plan_csv(path: str, url_col, caption_col) -> list[dict]:
    first = _first_line(path).decode("utf-8", errors="replace")
    header = next(csv.reader([first]), [])
    cols = delimited_columns(header, url_col, caption_col)
    return [{"kind": "csv", "path": path, "url_col": cols.url, "caption_col": cols.caption,
             "header": cols.header}]  # fmt: skip


def read_csv_unit(unit: dict) -> Iterator[pa.Table]:
    path = unit["path"]
    urls, caps, rows, errs = [], [], [], []
    with FileSystems.open(path) as f:
        text = io.TextIOWrapper(f, encoding="utf-8", errors="replace", newline="")
        reader = csv.reader(text)
        if unit["header"]:
            next(reader, None)
        u, c = unit["url_col"], unit["caption_col"]
        row = 0
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                break
            except csv.Error:
                fields = None  # a malformed record still counts as one row
            if fields == []:
                continue
            ok = fields is not None and max(u, c) < len(fields)
            urls.append(fields[u] if ok else None)
            caps.append(fields[c] if ok else None)
            errs.append(None if ok else "unreadable_row")
            rows.append(row)
            row += 1
            if len(rows) >= BATCH_ROWS:
                yield _batch(urls, caps, path, rows, errs)
                urls, caps, rows, errs = [], [], [], []
    if rows:
        yield _batch(urls, caps, path, rows, errs)
