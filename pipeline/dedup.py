"""Dedup by uid: the first copy wins, later copies get ``duplicate``.

A status table holds each uid once, so a later copy is recorded under its row uid
(``row:`` + SHA-256 of source and position) and its ``reason`` is the winner's uid, which
joins back to the row that won.

"First" is the smallest (source, row), so the winner does not depend on how the runner
split or ordered the work. Each input table is first deduplicated on its own (copies
inside one read batch never cross the shuffle), then the surviving rows are shuffled by
uid bucket, so all copies of a uid meet in one bucket, where this module's plain
functions decide. The number of buckets is sized from the input (about
``ROWS_PER_BUCKET`` rows each), so parallelism grows with the input, and each bucket's
winners leave in slices of at most ``MAX_TABLE_ROWS`` rows.
"""

from __future__ import annotations

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.metrics import Metrics

from pipeline import status_io
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


# --- Beam ---------------------------------------------------------------------------------


#: Target rows per dedup bucket; the job derives the bucket count from the input size.
ROWS_PER_BUCKET = 100_000
#: No table that leaves Dedup is larger than this (the later stages are per-table maps).
MAX_TABLE_ROWS = 50_000


def _first_copies_locally(table, n_buckets):
    winners, dups = resolve_duplicates(table)
    if dups.num_rows:
        yield beam.pvalue.TaggedOutput(FINAL, dups)
    yield from status_io.split_by_bucket(winners, n_buckets)


_GROUPS = Metrics.counter("wit.units", "dedup_groups")
_GROUP_ROWS = Metrics.distribution("wit.units", "dedup_group_rows")


def _dedup_bucket(kv):
    _bucket, tables = kv
    _GROUPS.inc()
    table = pa.concat_tables(list(tables))
    _GROUP_ROWS.update(table.num_rows)
    winners, dups = resolve_duplicates(table)
    if dups.num_rows:
        yield beam.pvalue.TaggedOutput(FINAL, dups)
    for start in range(0, winners.num_rows, MAX_TABLE_ROWS):
        yield winners.slice(start, MAX_TABLE_ROWS)


class Dedup(beam.PTransform):
    """Candidate tables in; unique candidates out (tables), duplicates tagged ``final``."""

    def __init__(self, n_buckets: int = 1):
        super().__init__()
        self.n_buckets = max(1, int(n_buckets))

    def expand(self, tables):
        local = tables | "FirstCopiesPerTable" >> beam.FlatMap(
            _first_copies_locally, self.n_buckets
        ).with_outputs(FINAL, main="keyed")
        grouped = (
            local.keyed
            | "ByUidBucket" >> beam.GroupByKey()
            | "FirstCopyWins" >> beam.FlatMap(_dedup_bucket).with_outputs(FINAL, main="unique")
        )
        both = (local[FINAL], grouped[FINAL]) | "AllDuplicates" >> beam.Flatten()
        return {"unique": grouped.unique, FINAL: both}
