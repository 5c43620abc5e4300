"""The working table that flows between stages, and writing `status/` and `counts/`.

Inside the job, candidates travel as Arrow tables of WORK_SCHEMA (batches, because the
per-element cost of Beam dominates tiny text operations). Queries travel as integer ids
into the query list; they become strings only when a status part is written.
"""

from __future__ import annotations

import copyreg
import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import fsio
from pipeline.schema import QUERY_COUNTS_SCHEMA, STATUS_SCHEMA, STATUSES

WORK_SCHEMA = pa.schema(
    [
        pa.field("uid", pa.string()),
        pa.field("url", pa.string()),
        pa.field("caption", pa.string()),
        pa.field("source", pa.string()),
        pa.field("row", pa.int64()),
        pa.field("status", pa.string()),
        pa.field("reason", pa.string()),
        pa.field("qids", pa.list_(pa.int32())),
        pa.field("sel", pa.list_(pa.int32())),
        pa.field("shard", pa.string()),
        pa.field("key", pa.string()),
    ]
)

#: The tagged output on which a stage emits the rows it has given their final status.
FINAL = "final"


def _table_from_ipc(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(pa.py_buffer(data)).read_all()


def _table_to_ipc(table: pa.Table):
    sink = pa.BufferOutputStream()
    options = pa.ipc.IpcWriteOptions(compression="zstd")
    with pa.ipc.new_stream(sink, table.schema, options=options) as writer:
        writer.write_table(table)
    return _table_from_ipc, (sink.getvalue().to_pybytes(),)


# Beam pickles the Arrow tables that cross stage boundaries, and the local runner keeps
# them in memory between stages. zstd-compressed Arrow IPC is 2-3x smaller than a plain
# pickle of a table of captions and URLs; at 1M candidates it cut the runner's peak memory
# from 8.2 to 3.3 GiB (LZ4: 3.9 GiB, the same total CPU within noise).
copyreg.pickle(pa.Table, _table_to_ipc)


_HEX_VALUE = np.full(256, 0, np.uint64)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX_VALUE[_c] = _i
_POWERS = np.array([1 << (4 * (15 - i)) for i in range(16)], np.uint64)


def uid_keys(uids: pa.ChunkedArray | pa.Array, first: bool = False) -> np.ndarray:
    """The last 16 hex digits of each uid as uint64 (``first``: the leading 16 instead).

    uids are SHA-256 hex, so these are uniform 64-bit numbers: good hash keys for free.
    """
    sliced = (
        pc.utf8_slice_codeunits(uids, start=0, stop=16)
        if first
        else pc.utf8_slice_codeunits(uids, start=-16)
    )
    arr = sliced.combine_chunks() if isinstance(sliced, pa.ChunkedArray) else sliced
    offsets = np.frombuffer(arr.buffers()[1], np.int32)[arr.offset : arr.offset + len(arr) + 1]
    if len(arr) and (np.any(np.diff(offsets) != 16)):
        return np.fromiter(
            (int(u, 16) if _is_hex(u) else _fallback_key(u) for u in arr.to_pylist()),
            np.uint64,
            len(arr),
        )
    raw = np.frombuffer(arr.buffers()[2], np.uint8)[offsets[0] : offsets[0] + 16 * len(arr)]
    nibbles = _HEX_VALUE[raw.reshape(-1, 16)]
    return (nibbles * _POWERS).sum(axis=1, dtype=np.uint64)


def _is_hex(text: str | None) -> bool:
    return bool(text) and all(c in "0123456789abcdef" for c in text)


def _fallback_key(text: str | None) -> int:
    return int.from_bytes(hashlib.blake2b((text or "").encode(), digest_size=8).digest(), "little")


def uid_buckets(uids: pa.ChunkedArray | pa.Array, n_buckets: int) -> np.ndarray:
    """Which of ``n_buckets`` shuffle buckets each uid belongs to: uniform, stable across
    runs and workers, and any number of buckets (the job sizes it from the input)."""
    if n_buckets <= 1:
        return np.zeros(len(uids), np.int64)
    return (uid_keys(uids, first=True) % np.uint64(n_buckets)).astype(np.int64)


def split_by_bucket(
    table: pa.Table, n_buckets: int, buckets: np.ndarray | None = None
) -> list[tuple[int, pa.Table]]:
    """(bucket, rows of that bucket) for every bucket present in ``table`` (by its uids,
    or by the given per-row ``buckets``)."""
    if table.num_rows == 0:
        return []
    if buckets is None:
        buckets = uid_buckets(table["uid"], n_buckets)
    order = np.argsort(buckets, kind="stable")
    sorted_buckets = buckets[order]
    cuts = np.flatnonzero(np.diff(sorted_buckets)) + 1
    starts = np.concatenate(([0], cuts))
    ends = np.concatenate((cuts, [len(order)]))
    return [
        (int(sorted_buckets[s]), table.take(pa.array(order[s:e])))
        for s, e in zip(starts, ends, strict=True)
    ]


def work_table(columns: dict[str, list]) -> pa.Table:
    """A WORK_SCHEMA table from python columns; missing columns are null."""
    n = len(next(iter(columns.values())))
    full = {f.name: columns.get(f.name, [None] * n) for f in WORK_SCHEMA}
    return pa.table(full, schema=WORK_SCHEMA)


def split_final(table: pa.Table, final_mask: list[bool]) -> tuple[pa.Table, pa.Table]:
    """(rows whose status is now final, rows that go on to the next stage)."""
    mask = pa.array(final_mask, pa.bool_())
    return table.filter(mask), table.filter(pc.invert(mask))


def with_columns(table: pa.Table, **columns) -> pa.Table:
    """``table`` with some WORK_SCHEMA columns replaced by python lists."""
    for name, values in columns.items():
        i = table.schema.get_field_index(name)
        table = table.set_column(
            i, WORK_SCHEMA.field(name), pa.array(values, WORK_SCHEMA.field(name).type)
        )
    return table


def _ids_to_names(ids: pa.ChunkedArray, names: pa.Array) -> pa.Array:
    ids = ids.combine_chunks()
    flat = pc.take(names, pc.list_flatten(ids))
    offsets = ids.offsets
    out = pa.ListArray.from_arrays(offsets, flat)
    if ids.null_count:
        out = pa.ListArray.from_arrays(offsets, flat, mask=ids.is_null())
    return out


def to_status_table(table: pa.Table, query_names: pa.Array) -> pa.Table:
    """WORK_SCHEMA -> STATUS_SCHEMA: query ids become query strings, internals are dropped."""
    empty_list = pa.array([[]] * table.num_rows, pa.list_(pa.int32()))
    qids = (
        pc.if_else(table["qids"].is_null(), empty_list, table["qids"])
        if table.num_rows
        else table["qids"]
    )
    sel = (
        pc.if_else(table["sel"].is_null(), empty_list, table["sel"])
        if table.num_rows
        else table["sel"]
    )
    cols = {name: table[name] for name in ("uid", "url", "caption", "source", "status", "reason")}
    cols["matched_queries"] = _ids_to_names(pa.chunked_array(qids), query_names)
    cols["selected_by"] = _ids_to_names(pa.chunked_array(sel), query_names)
    cols["shard"] = table["shard"]
    cols["key"] = table["key"]
    return pa.table(cols, schema=STATUS_SCHEMA)


def status_part_path(out_dir: str, stage: str, table: pa.Table) -> str:
    """A status part's name: a digest of its (uid, status) rows, so a retried bundle
    rewrites the same file and a later change of the rows can find it again."""
    table = table.sort_by("uid")
    lines = (
        f"{u}\t{s}"
        for u, s in zip(table["uid"].to_pylist(), table["status"].to_pylist(), strict=True)
    )
    digest = hashlib.sha1("\n".join(lines).encode()).hexdigest()[:20]
    return fsio.join(out_dir, "status", f"part-{stage}-{digest}.parquet")


def write_status_part(out_dir: str, stage: str, table: pa.Table) -> str | None:
    """Write one status part named by its content (``status_part_path``)."""
    if table.num_rows == 0:
        return None
    missing = [s for s in set(table["status"].to_pylist()) if s not in STATUSES]
    if missing:
        raise ValueError(f"status outside the closed set: {missing}")
    table = table.sort_by("uid")
    path = status_part_path(out_dir, stage, table)
    fsio.publish(path, fsio.parquet_bytes(table))
    return path


def read_status(out_dir: str, columns: list[str] | None = None) -> pa.Table:
    """All status parts of OUT as one table: for tests and small outputs only.

    The job itself never reads status rows back (its counts come out of the pipeline);
    wit-stats reads them with DuckDB in place.
    """
    files = fsio.list_files(fsio.join(out_dir, "status", "*.parquet"))
    if not files:
        return (
            STATUS_SCHEMA.empty_table().select(columns) if columns else STATUS_SCHEMA.empty_table()
        )
    return pa.concat_tables([fsio.read_parquet(f, columns=columns) for f in files])


def query_counts(status: pa.Table, queries: list[str]) -> pa.Table:
    """matched / selected / kept per query, from the final status table (the reference
    for the job's in-pipeline tally, ``pipeline.tally``; used by tests).

    matched: candidates that reached balancing (past dedup and language ID) and contain it;
    selected: candidates it selected; kept: candidates containing it that ended ``kept``.
    """
    index = {q: i for i, q in enumerate(queries)}
    n = len(queries)

    def tally(lists: pa.ChunkedArray) -> list[int]:
        counts = [0] * n
        flat = pc.list_flatten(lists)
        if len(flat):
            vc = pc.value_counts(flat)
            for name, c in zip(
                vc.field("values").to_pylist(), vc.field("counts").to_pylist(), strict=True
            ):
                if name in index:
                    counts[index[name]] += c
        return counts

    reached = pc.invert(pc.is_in(status["status"], pa.array(
        ["duplicate", "caption_rejected", "no_match", "language_rejected"])))  # fmt: skip
    kept = pc.equal(status["status"], "kept")
    matched = tally(status.filter(reached)["matched_queries"])
    selected = tally(status["selected_by"])
    kept_counts = tally(status.filter(kept)["matched_queries"])
    return pa.table(
        {"query": queries, "matched": matched, "selected": selected, "kept": kept_counts},
        schema=QUERY_COUNTS_SCHEMA,
    )


def write_query_counts(out_dir: str, table: pa.Table) -> str:
    path = fsio.join(out_dir, "counts", "query_counts.parquet")
    fsio.publish(path, fsio.parquet_bytes(table))
    return path
