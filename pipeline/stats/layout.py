"""Find and check the files of a wit-build OUT folder before DuckDB reads them.

DuckDB reports a bad file deep inside a query, sometimes without its name; checking every
parquet footer and schema up front turns a missing, corrupt or misshapen file into one
line that names it, and reading only a few kilobytes per file keeps that cheap.
"""

from __future__ import annotations

import json
import pathlib
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.schema import PAGE_SCHEMA, QUERY_COUNTS_SCHEMA, SAMPLE_SCHEMA, STATUS_SCHEMA


class StatsInputError(Exception):
    """An OUT folder that cannot be reported on; the message is one line naming the file."""


@dataclass
class OutLayout:
    """The checked files of one OUT folder and what the manifest says about the build."""

    root: pathlib.Path
    status_files: list[pathlib.Path]
    counts_file: pathlib.Path
    sample_files: list[pathlib.Path]
    page_files: list[pathlib.Path]
    manifest: dict
    sizes: dict[str, int]
    sample_rows: dict[str, int] = field(default_factory=dict)

    @property
    def parameters(self) -> dict:
        params = self.manifest.get("parameters")
        return params if isinstance(params, dict) else {}


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _compatible(got: pa.DataType, want: pa.DataType) -> bool:
    """Accept the Arrow spellings that DuckDB reads the same way (string vs large_string)."""
    if got == want or pa.types.is_null(got):
        return True
    if pa.types.is_string(want):
        return pa.types.is_string(got) or pa.types.is_large_string(got)
    if pa.types.is_list(want):
        if not (pa.types.is_list(got) or pa.types.is_large_list(got)):
            return False
        return _compatible(got.value_type, want.value_type)
    if pa.types.is_integer(want):
        return pa.types.is_integer(got)
    return False


def check_parquet(path: pathlib.Path, schema: pa.Schema) -> int:
    """Read the footer of one parquet file, check its columns, and return its row count."""
    try:
        meta = pq.read_metadata(path)
        got = meta.schema.to_arrow_schema()
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise StatsInputError(f"corrupt parquet file {path}: {_one_line(exc)}") from exc
    for want in schema:
        idx = got.get_field_index(want.name)
        if idx < 0:
            raise StatsInputError(f"parquet file {path} lacks column {want.name!r}")
        if not _compatible(got.field(idx).type, want.type):
            raise StatsInputError(
                f"parquet file {path}: column {want.name!r} is {got.field(idx).type}, "
                f"expected {want.type}"
            )
    return meta.num_rows


def _read_json(path: pathlib.Path, required: bool) -> dict:
    if not path.exists():
        if required:
            raise StatsInputError(f"missing file {path}")
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StatsInputError(f"unreadable JSON file {path}: {_one_line(exc)}") from exc
    if not isinstance(data, dict):
        raise StatsInputError(f"JSON file {path} is not an object")
    return data


def load_layout(out: str | pathlib.Path, need_manifest: bool = True) -> OutLayout:
    """Locate and check everything wit-stats reads; raise StatsInputError on the first problem.

    status/ and counts/ must exist. shards/ may be absent (a `--no-fetch` build has none),
    and pages/ exists only for page input.
    """
    root = pathlib.Path(out)
    if not root.is_dir():
        raise StatsInputError(f"OUT folder not found: {root}")
    status_files = sorted((root / "status").glob("part-*.parquet"))
    if not status_files:
        raise StatsInputError(f"missing file {root / 'status' / 'part-*.parquet'}")
    for path in status_files:
        check_parquet(path, STATUS_SCHEMA)
    counts_file = root / "counts" / "query_counts.parquet"
    if not counts_file.exists():
        raise StatsInputError(f"missing file {counts_file}")
    check_parquet(counts_file, QUERY_COUNTS_SCHEMA)
    # a writer's temporary files start with a dot (`.00000.tar.tmp`); only finished ones count
    sample_files = sorted(p for p in (root / "shards").glob("*.parquet") if p.name[0] != ".")
    sample_rows = {p.stem: check_parquet(p, SAMPLE_SCHEMA) for p in sample_files}
    page_files = sorted((root / "pages").glob("part-*.parquet"))
    for path in page_files:
        check_parquet(path, PAGE_SCHEMA)
    manifest = _read_json(root / "manifest.json", required=need_manifest)
    sizes_raw = _read_json(root / "sizes.json", required=False)
    sizes: dict[str, int] = {}
    for name, n in sizes_raw.items():
        if not isinstance(n, int):
            raise StatsInputError(f"sizes.json {root / 'sizes.json'}: {name!r} is not a count")
        sizes[name] = n
    return OutLayout(
        root=root,
        status_files=status_files,
        counts_file=counts_file,
        sample_files=sample_files,
        page_files=page_files,
        manifest=manifest,
        sizes=sizes,
        sample_rows=sample_rows,
    )


def shard_table(layout: OutLayout) -> pa.Table:
    """One row per shard, from sizes.json, the tars on disk and the per-shard parquet files.

    Three sources that should agree; putting them side by side lets a query spot a shard
    whose tar is missing or whose counts differ.
    """
    shard_dir = layout.root / "shards"
    names = set(layout.sample_rows)
    names.update(pathlib.Path(n).stem for n in layout.sizes)
    if shard_dir.is_dir():
        names.update(p.stem for p in shard_dir.glob("*.tar") if p.name[0] != ".")
    rows = sorted(names)
    tar_bytes = []
    for name in rows:
        tar = shard_dir / f"{name}.tar"
        tar_bytes.append(tar.stat().st_size if tar.exists() else None)
    return pa.table(
        {
            "shard": pa.array(rows, pa.string()),
            "samples": pa.array([layout.sizes.get(f"{n}.tar") for n in rows], pa.int64()),
            "parquet_rows": pa.array([layout.sample_rows.get(n) for n in rows], pa.int64()),
            "tar_bytes": pa.array(tar_bytes, pa.int64()),
        }
    )
