"""Dedup by uid: the first copy wins, later copies get ``duplicate``.

A status table holds each uid once, so a later copy is recorded under its row uid
(``row:`` + SHA-256 of source and position) and its ``reason`` is the winner's uid, which
joins back to the row that won.

"First" is the smallest (source, row), so the winner does not depend on how the runner
split or ordered the work.

Only narrow keys cross the shuffle: the local runner holds every shuffled PCollection in
memory, and a cluster pays for every shuffled byte. So:

1. each accepted table first drops its own copies, is written as-is to a spill file under
   ``OUT/_work/`` (through FileSystems), and emits only (uid bits, source, row, spill) per
   row, grouped by uid bucket (the bucket count grows with the input);
2. per bucket, ``later_copies`` finds the rows that lose to an earlier copy and sends
   (spill, rows) back;
3. per spill file, the file is read back, its losing rows become ``duplicate`` and the
   rest go on, in slices of at most ``MAX_TABLE_ROWS`` rows.

About 30 bytes a row cross each shuffle instead of the whole row (url, caption, source).
"""

from __future__ import annotations

import hashlib

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows

from pipeline import fsio, status_io
from pipeline.normalize import row_uid
from pipeline.schema import DUPLICATE
from pipeline.status_io import FINAL


def resolve_duplicates(table: pa.Table) -> tuple[pa.Table, pa.Table]:
    """(winners, duplicates): one winner per uid; duplicates carry status and the winner."""
    if table.num_rows == 0 or pc.count_distinct(table["uid"]).as_py() == table.num_rows:
        return table, table.slice(0, 0)
    table = table.sort_by([("uid", "ascending"), ("source", "ascending"), ("row", "ascending")])
    uids = table["uid"].to_pylist()
    first = [True] + [uids[i] != uids[i - 1] for i in range(1, len(uids))]
    mask = pa.array(first)
    winners = table.filter(mask)
    if winners.num_rows == table.num_rows:
        return winners, table.slice(0, 0)
    sources, rows = table["source"].to_pylist(), table["row"].to_pylist()
    dup_reasons, dup_uids, won_by = [], [], None
    for i, is_first in enumerate(first):
        if is_first:
            won_by = uids[i]
        else:
            dup_reasons.append(won_by)
            dup_uids.append(row_uid(sources[i], rows[i]))
    dups = table.filter(pc.invert(mask))
    dups = dups.set_column(
        dups.schema.get_field_index("uid"), "uid", pa.array(dup_uids, pa.string())
    )
    dups = dups.set_column(dups.schema.get_field_index("status"), "status",
                           pa.array([DUPLICATE] * dups.num_rows, pa.string()))  # fmt: skip
    dups = dups.set_column(
        dups.schema.get_field_index("reason"), "reason", pa.array(dup_reasons, pa.string())
    )
    return winners, dups


# --- the narrow shuffle --------------------------------------------------------------------

#: Target rows per dedup bucket; the job derives the bucket count from the input size.
ROWS_PER_BUCKET = 100_000
#: No table that leaves Dedup is larger than this (the later stages are per-table maps).
MAX_TABLE_ROWS = 50_000
WORK_DIR = "_work"
KEY_SCHEMA = pa.schema([("hi", pa.uint64()), ("lo", pa.uint64()), ("source", pa.string()),
                        ("row", pa.int64()), ("spill", pa.string())])  # fmt: skip


def spill_name(table: pa.Table) -> str:
    """A write-once name for a table's spill file: its source and first row identify it
    (read batches partition each source's rows), so a retried bundle rewrites it."""
    source = table["source"][0].as_py() or ""
    first = pc.min(table["row"]).as_py()
    return f"{hashlib.sha1(source.encode()).hexdigest()[:16]}-{first}.parquet"


def narrow_keys(table: pa.Table, spill: str) -> pa.Table:
    n = table.num_rows
    return pa.table(
        {
            "hi": status_io.uid_keys(table["uid"], first=True),
            "lo": status_io.uid_keys(table["uid"]),
            "source": table["source"],
            "row": table["row"],
            "spill": pa.array([spill] * n, pa.string()),
        },
        schema=KEY_SCHEMA,
    )


def later_copies(keys: pa.Table) -> dict[str, list[int]]:
    """spill -> rows that lose to an earlier (source, row) copy of the same uid."""
    if keys.num_rows == 0:
        return {}
    hi, lo = keys["hi"].to_numpy(), keys["lo"].to_numpy()
    sources = keys["source"].to_numpy(zero_copy_only=False).astype(object)
    _names, source_rank = np.unique(sources, return_inverse=True)  # sorted: rank = order
    rows = keys["row"].to_numpy()
    order = np.lexsort((rows, source_rank, lo, hi))
    same = (hi[order][1:] == hi[order][:-1]) & (lo[order][1:] == lo[order][:-1])
    losers = order[1:][same]
    if len(losers) == 0:
        return {}
    spills = keys["spill"].to_numpy(zero_copy_only=False)[losers]
    out: dict[str, list[int]] = {}
    for spill, row in zip(spills.tolist(), rows[losers].tolist(), strict=True):
        out.setdefault(spill, []).append(row)
    return out


def mark_duplicates(table: pa.Table, rows: list[int]) -> tuple[pa.Table, pa.Table]:
    """(rows that go on, duplicates): the given rows become ``duplicate`` of their uid."""
    if not rows:
        return table, table.slice(0, 0)
    lost = pc.is_in(table["row"], pa.array(rows, pa.int64()))
    dups, rest = table.filter(lost), table.filter(pc.invert(lost))
    winners = dups["uid"]  # a copy's uid is the winner's uid: that is what makes it one
    ids = [row_uid(s, r) for s, r in zip(dups["source"].to_pylist(), dups["row"].to_pylist(),
                                         strict=True)]  # fmt: skip
    for name, values in (("uid", pa.array(ids, pa.string())), ("reason", winners),
                         ("status", pa.array([DUPLICATE] * dups.num_rows, pa.string()))):  # fmt: skip
        i = dups.schema.get_field_index(name)
        dups = dups.set_column(i, status_io.WORK_SCHEMA.field(name), values)
    return rest, dups


# --- Beam ---------------------------------------------------------------------------------

_GROUPS = Metrics.counter("wit.units", "dedup_groups")
_GROUP_ROWS = Metrics.distribution("wit.units", "dedup_group_rows")
_SPILLS = Metrics.counter("wit.units", "dedup_spill_files")


#: Narrow keys gathered per bucket before they leave a worker: one element per bucket
#: and bundle (or per this many rows), not one per read batch and bucket, whose number
#: would grow with the square of the input. A worker buffers at most KEYS_BUFFERED rows
#: (~100 bytes each in memory) before it sends everything it holds.
KEYS_PER_ELEMENT = 5_000
KEYS_BUFFERED = 500_000


class _SpillFn(fsio.FsDoFn):
    """Drop a table's own copies, spill it, emit its narrow keys by uid bucket."""

    def __init__(self, out_dir: str, n_buckets: int, beam_args=()):
        super().__init__(beam_args)
        self.out_dir, self.n_buckets = out_dir, n_buckets

    def start_bundle(self):
        self._keys: dict[int, list[pa.Table]] = {}
        self._rows: dict[int, int] = {}

    def process(self, table):
        winners, dups = resolve_duplicates(table)
        if dups.num_rows:
            yield beam.pvalue.TaggedOutput(FINAL, dups)
        if winners.num_rows == 0:
            return
        name = spill_name(winners)
        fsio.publish(fsio.join(self.out_dir, WORK_DIR, name), fsio.parquet_bytes(winners))
        _SPILLS.inc()
        yield beam.pvalue.TaggedOutput("spilled", (name, None))
        keys = narrow_keys(winners, name)
        buckets = (keys["hi"].to_numpy() % np.uint64(self.n_buckets)).astype(np.int64)
        for bucket, part in status_io.split_by_bucket(keys, self.n_buckets, buckets):
            self._keys.setdefault(bucket, []).append(part)
            self._rows[bucket] = self._rows.get(bucket, 0) + part.num_rows
            if self._rows[bucket] >= KEYS_PER_ELEMENT:
                yield bucket, pa.concat_tables(self._keys.pop(bucket))
                del self._rows[bucket]
        if sum(self._rows.values()) > KEYS_BUFFERED:
            for bucket, parts in self._keys.items():
                yield bucket, pa.concat_tables(parts)
            self._keys, self._rows = {}, {}

    def finish_bundle(self):
        for bucket, parts in self._keys.items():
            yield GlobalWindows.windowed_value((bucket, pa.concat_tables(parts)))
        self._keys, self._rows = {}, {}


def _later_copies_of_bucket(kv):
    _bucket, tables = kv
    _GROUPS.inc()
    keys = pa.concat_tables(list(tables))
    _GROUP_ROWS.update(keys.num_rows)
    yield from later_copies(keys).items()


class _ReadBackFn(fsio.FsDoFn):
    """Per spill file: read it back, mark its later copies, pass the rest on in slices."""

    def __init__(self, out_dir: str, beam_args=()):
        super().__init__(beam_args)
        self.out_dir = out_dir

    def process(self, kv):
        name, grouped = kv
        rows = [r for part in grouped["losers"] for r in part]
        if not list(grouped["spilled"]):
            return
        table = fsio.read_parquet(fsio.join(self.out_dir, WORK_DIR, name))
        table = table.cast(status_io.WORK_SCHEMA)
        rest, dups = mark_duplicates(table, rows)
        if dups.num_rows:
            yield beam.pvalue.TaggedOutput(FINAL, dups)
        for start in range(0, rest.num_rows, MAX_TABLE_ROWS):
            yield rest.slice(start, MAX_TABLE_ROWS)


class Dedup(beam.PTransform):
    """Candidate tables in; unique candidates out (tables); duplicates out as ``final``
    (copies inside one table) and ``late`` (copies across tables).

    ``out_dir`` holds the spill files (``OUT/_work``; the job deletes it after the run).
    """

    def __init__(self, out_dir: str, n_buckets: int = 1, beam_args=()):
        super().__init__()
        self.out_dir, self.beam_args = out_dir, tuple(beam_args)
        self.n_buckets = max(1, int(n_buckets))

    def expand(self, tables):
        spilled = tables | "SpillAndKey" >> beam.ParDo(
            _SpillFn(self.out_dir, self.n_buckets, self.beam_args)
        ).with_outputs(FINAL, "spilled", main="keys")
        losers = (
            spilled.keys
            | "ByUidBucket" >> beam.GroupByKey()
            | "LaterCopies" >> beam.FlatMap(_later_copies_of_bucket)
        )
        back = (
            {"spilled": spilled.spilled, "losers": losers}
            | "BySpillFile" >> beam.CoGroupByKey()
            | "ReadBack"
            >> beam.ParDo(_ReadBackFn(self.out_dir, self.beam_args)).with_outputs(
                FINAL, main="unique"
            )
        )
        # two outputs, not one Flatten: each is written where it is produced
        return {"unique": back.unique, FINAL: spilled[FINAL], "late": back[FINAL]}
