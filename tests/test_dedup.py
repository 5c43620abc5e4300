"""Dedup's narrow-key path equals resolving every copy in one table.

The job shuffles only (uid bits, source, row, spill) per row and reads the wide rows back
from spill files; ``resolve_duplicates`` over all rows at once is the reference.
"""

from __future__ import annotations

import random

import pyarrow as pa

from pipeline import dedup
from pipeline.normalize import candidate_uid
from pipeline.status_io import work_table


def _tables(seed: int = 0) -> list[pa.Table]:
    """Three read batches from two sources; uids repeat within and across batches."""
    rng = random.Random(seed)
    uids = [candidate_uid(f"http://x.org/{i}.jpg", "a cat") for i in range(300)]
    out = []
    for source, first in (("b.parquet", 0), ("a.tsv", 0), ("b.parquet", 500)):
        rows = list(range(first, first + 400))
        chosen = [rng.choice(uids) for _ in rows]
        out.append(work_table({"uid": chosen, "source": [source] * len(rows), "row": rows,
                               "url": ["u"] * len(rows), "caption": ["c"] * len(rows)}))  # fmt: skip
    return out


def _outcome(winners: pa.Table, dups: pa.Table):
    kept = sorted(zip(winners["source"].to_pylist(), winners["row"].to_pylist(),
                      winners["uid"].to_pylist(), strict=True))  # fmt: skip
    lost = sorted(zip(dups["source"].to_pylist(), dups["row"].to_pylist(),
                      dups["uid"].to_pylist(), dups["reason"].to_pylist(),
                      dups["status"].to_pylist(), strict=True))  # fmt: skip
    return kept, lost


def test_narrow_keys_path_equals_one_table_resolution():
    tables = _tables()
    reference = _outcome(*dedup.resolve_duplicates(pa.concat_tables(tables)))
    local_dups, spilled, keys = [], {}, []
    for table in tables:  # what _SpillFn does per read batch
        winners, dups = dedup.resolve_duplicates(table)
        local_dups.append(dups)
        name = dedup.spill_name(winners)
        assert name not in spilled  # write-once names, one per batch
        spilled[name] = winners
        keys.append(dedup.narrow_keys(winners, name))
    losers = dedup.later_copies(pa.concat_tables(keys))  # one bucket holds every key here
    winners, dups = [], list(local_dups)
    for name, table in spilled.items():  # what _ReadBackFn does per spill file
        rest, lost = dedup.mark_duplicates(table, losers.get(name, []))
        winners.append(rest)
        dups.append(lost)
    got = _outcome(pa.concat_tables(winners), pa.concat_tables(dups))
    assert got == reference
    assert len(reference[0]) <= 300 and len(reference[1]) == 1200 - len(reference[0])
    assert {s for s, *_ in reference[0]} == {"a.tsv", "b.parquet"}
