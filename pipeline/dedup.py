"""Dedup by uid: the first copy wins, later copies get ``duplicate``.

A status table holds each uid once, so a later copy is recorded under its row uid
(``row:`` + SHA-256 of source and position) and its ``reason`` is the winner's uid, which
joins back to the row that won.

"First" is the smallest (source, row), so the winner does not depend on how the runner
split or ordered the work. Rows are shuffled by uid bucket, so all copies of a uid meet in
one bucket, where this module's plain functions decide.
"""

from __future__ import annotations

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.normalize import row_uid
from pipeline.schema import DUPLICATE
from pipeline.status_io import FINAL


def resolve_duplicates(table: pa.Table) -> tuple[pa.Table, pa.Table]:
    """(winners, duplicates): one winner per uid; duplicates carry status and the winner."""
    if table.num_rows == 0:
        return table, table
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


def _dedup_bucket(kv):
    bucket, tables = kv
    winners, dups = resolve_duplicates(pa.concat_tables(list(tables)))
    yield beam.pvalue.TaggedOutput(FINAL, dups)
    yield bucket, winners


class Dedup(beam.PTransform):
    def expand(self, keyed):
        return (
            keyed
            | "ByUidBucket" >> beam.GroupByKey()
            | "FirstCopyWins" >> beam.FlatMap(_dedup_bucket).with_outputs(FINAL, main="unique")
        )
