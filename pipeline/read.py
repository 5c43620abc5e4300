"""ReadCandidates: expand the inputs into splittable units and read them on the workers.

Planning runs once, on the launching machine: it expands globs, detects each file's
format and cuts files into units (parquet row groups, byte ranges). A file that cannot be
planned is reported on stderr and listed in the manifest instead of stopping the job.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass, field

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from pipeline import read_tabular, read_warc

PAGE_KINDS = ("warc", "wat", "html")


def detect_format(path: str) -> str | None:
    """The input format implied by a file name, or None when it is not a candidate file."""
    name = path.lower()
    for ext in (".gz", ".bz2", ".zst", ".zstd", ".deflate"):
        if name.endswith(ext) and not name.endswith((".warc.gz", ".wat.gz")):
            name = name[: -len(ext)]
    if name.endswith((".wat.gz", ".wat")):
        return "wat"
    if name.endswith((".warc.gz", ".warc")):
        return "warc"
    for fmt, exts in (
        ("parquet", (".parquet", ".pq")),
        ("csv", (".csv",)),
        ("tsv", (".tsv", ".tab")),
        ("jsonl", (".jsonl", ".ndjson", ".json")),
        ("html", (".html", ".htm")),
    ):
        if name.endswith(exts):
            return fmt
    return None


@dataclass
class Plan:
    units: list[dict] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    unreadable: list[dict] = field(default_factory=list)  # {"path", "error"}
    # Paths that named a file already named by an earlier --input (or an earlier match of
    # the same pattern), in the order met; each such file is read once, at its first naming.
    duplicates_dropped: list[str] = field(default_factory=list)


def expand_pattern(pattern: str) -> list[str]:
    """Files named by a glob; a folder (a local directory, or any URI ending in "/")
    stands for the HTML files under it. Listing goes through FileSystems."""
    if pattern.endswith("/") or _is_local_dir(pattern):
        found = FileSystems.match([pattern.rstrip("/") + "/**"])[0].metadata_list
        return sorted(m.path for m in found if m.path.lower().endswith((".html", ".htm")))
    result = FileSystems.match([pattern])[0]
    return sorted(m.path for m in result.metadata_list)


def _is_local_dir(path: str) -> bool:
    """Local-only: is this plain path a directory (object stores have no folders)."""
    import os

    return "://" not in path and os.path.isdir(path)


def same_file_key(path: str) -> str:
    """What two spellings of one file have in common: the real path of a local file
    (`pool/x.parquet`, `./pool/x.parquet`, a symlink), the path itself on remote storage."""
    import os

    if "://" in path:
        return path
    return os.path.realpath(path)


def expand_inputs(patterns: list[str]) -> tuple[list[str], list[str]]:
    """(files, duplicates dropped): every pattern expanded, each file kept once.

    Overlapping patterns (`--input pool/x.parquet --input 'pool/*.parquet'`) would
    otherwise read a file twice: its rows would get the same uids twice and the job would
    fail at the end. Raises ValueError when a pattern cannot be listed or matches no file.
    """
    files: list[str] = []
    dropped: list[str] = []
    seen: set[str] = set()
    for pattern in patterns:
        try:
            paths = expand_pattern(pattern)
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"cannot list input {pattern}: {e}") from None
        if not paths:
            raise ValueError(f"input {pattern} matches no file")
        for path in paths:
            key = same_file_key(path)
            if key in seen:
                dropped.append(path)
                continue
            seen.add(key)
            files.append(path)
    for path in dropped:
        print(
            f"wit-build: {path} is named by more than one --input; it is read once",
            file=sys.stderr,
        )
    return files, dropped


def plan_inputs(
    patterns: list[str],
    fmt: str = "auto",
    url_col: str | None = None,
    caption_col: str | None = None,
) -> Plan:
    """Cut every input into units. Raises ValueError when a pattern matches no file."""
    plan = Plan()
    paths, plan.duplicates_dropped = expand_inputs(patterns)
    for path in paths:
        kind = detect_format(path) if fmt == "auto" else fmt
        if kind is None:
            plan.unreadable.append({"path": path, "error": "unknown format (use --input-format)"})
            continue
        try:
            if kind == "parquet":
                units = read_tabular.plan_parquet(path, url_col, caption_col)
            elif kind in ("tsv", "jsonl"):
                units = read_tabular.plan_lines(path, kind, url_col, caption_col)
            elif kind == "csv":
                units = read_tabular.plan_csv(path, url_col, caption_col)
            elif kind in PAGE_KINDS:
                units = [{"kind": kind, "path": path}]
            else:
                raise ValueError(f"input format {kind!r} is not read by this job")
        except Exception as e:  # noqa: BLE001 - report the file, keep the job going
            plan.unreadable.append(
                {"path": path, "error": one_printable_line(f"{type(e).__name__}: {e}")}
            )
            continue
        plan.files.append(path)
        plan.units.extend(units)
    for unreadable in plan.unreadable:
        print(
            f"wit-build: cannot read {unreadable['path']}: {unreadable['error']}", file=sys.stderr
        )
    return plan


def read_unit(unit: dict, on_error=None):
    """The raw tables (RAW_SCHEMA) of one unit; used by the DoFn and directly by tests."""
    on_error = on_error or (lambda path, msg: None)
    kind = unit["kind"]
    if kind == "parquet":
        yield from read_tabular.read_parquet_unit(unit)
    elif kind in ("tsv", "jsonl"):
        yield from read_tabular.read_lines_unit(unit)
    elif kind == "csv":
        yield from read_tabular.read_csv_unit(unit)
    else:
        yield from read_warc.read_page_unit(unit, on_error)


def one_printable_line(message: str, limit: int = 300) -> str:
    """Error text as one printable line: library messages may quote raw damaged bytes."""
    text = "".join(c if c.isprintable() else " " for c in message)
    return " ".join(text.split())[:limit]


def record_read_error(errors_dir: str | None, path: str, message: str) -> None:
    """Report a file that broke mid-read: stderr now, and a note the job adds to the manifest."""
    message = one_printable_line(message)
    print(f"wit-build: error reading {path}: {message}", file=sys.stderr)
    if errors_dir:
        name = hashlib.sha1(path.encode()).hexdigest()[:16] + ".json"
        with FileSystems.create(FileSystems.join(errors_dir, name)) as f:
            f.write(json.dumps({"path": path, "error": message}).encode())


class _ReadUnitFn(beam.DoFn):
    def __init__(self, errors_dir: str | None, beam_args=(), out_dir: str | None = None):
        self.errors_dir = errors_dir
        self.out_dir = out_dir
        self.beam_args = tuple(beam_args or ())
        self.rows = Metrics.counter("wit", "input_rows")
        self.broken = Metrics.counter("wit", "unreadable_files")

    def setup(self):
        from pipeline.fsio import ensure_options
        from pipeline.progress import Reporter

        ensure_options(self.beam_args)  # inputs on s3:// or gs:// from pool-started workers
        self.progress = Reporter(self.out_dir, "read")

    def process(self, unit):
        def on_error(path, message):
            self.broken.inc()
            record_read_error(self.errors_dir, path, message)

        try:
            for table in read_unit(unit, on_error):
                self.rows.inc(table.num_rows)
                self.progress.add(table.num_rows)
                yield table
        except Exception as e:  # noqa: BLE001 - tabular files failing mid-read
            on_error(unit["path"], f"{type(e).__name__}: {e}")

    def finish_bundle(self):
        self.progress.flush()


class ReadCandidates(beam.PTransform):
    """Units -> raw candidate tables (RAW_SCHEMA), spread over the workers."""

    def __init__(
        self, units: list[dict], errors_dir: str | None = None, beam_args=(), out_dir=None
    ):
        super().__init__()
        self.units = units
        self.errors_dir = errors_dir
        self.beam_args = tuple(beam_args or ())
        self.out_dir = out_dir  # where progress markers go (OUT), None for none

    def expand(self, pbegin):
        return (
            pbegin
            | "Units" >> beam.Create(self.units, reshuffle=False)
            | "Spread" >> beam.Reshuffle()
            | "Read" >> beam.ParDo(_ReadUnitFn(self.errors_dir, self.beam_args, self.out_dir))
        )
