"""Counts per status and per query, computed inside the pipeline by a lifted combiner.

The launcher must do O(queries + shards) work, never O(rows): so every status table, as it
is written, also yields a small ``Tally`` (status counts and sparse per-query counts by
query id); ``TallyFn`` merges them before and after the shuffle, and one DoFn writes
``counts/query_counts.parquet`` and ``counts/totals.json``. The launcher reads only
``totals.json``.

Definitions (docs/shard-format.md): ``matched`` counts candidates that reached balancing
(past dedup and language ID) and contain the query; ``selected`` the candidates it
selected; ``kept`` the candidates containing it that ended ``kept``.
"""

from __future__ import annotations

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import fsio
from pipeline.match import WithQueries
from pipeline.schema import KEPT, QUERY_COUNTS_SCHEMA, STATUSES

#: Statuses given before balancing: their rows did not reach it.
BEFORE_BALANCING = ("duplicate", "caption_rejected", "no_match", "language_rejected")
TOTALS_FILE = "totals.json"
_EMPTY = np.zeros(0, np.int64)


def _sparse(lists) -> tuple[np.ndarray, np.ndarray]:
    """(query ids, counts) over the ids in a list column (nulls are empty lists)."""
    flat = pc.list_flatten(lists)
    if len(flat) == 0:
        return _EMPTY, _EMPTY
    ids, counts = np.unique(flat.to_numpy(zero_copy_only=False), return_counts=True)
    return ids.astype(np.int64), counts.astype(np.int64)


class Tally:
    """Status counts plus sparse per-query (matched, selected, kept) counts."""

    __slots__ = ("statuses", "queries")

    def __init__(self, statuses=None, queries=None):
        self.statuses: dict[str, int] = statuses or {}
        # name -> (ids, counts); ids unique within one array
        self.queries: dict[str, tuple[np.ndarray, np.ndarray]] = queries or {
            k: (_EMPTY, _EMPTY) for k in ("matched", "selected", "kept")
        }

    def __reduce__(self):
        return Tally, (self.statuses, self.queries)

    @property
    def rows(self) -> int:
        return sum(self.statuses.values())

    @staticmethod
    def of_table(table: pa.Table) -> Tally:
        """The tally of one WORK_SCHEMA table (query ids in ``qids``/``sel``)."""
        vc = pc.value_counts(table["status"])
        statuses = dict(
            zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist(), strict=True)
        )
        status = table["status"]
        reached = pc.invert(pc.is_in(status, pa.array(BEFORE_BALANCING)))
        kept = pc.equal(status, KEPT)
        qids = table["qids"]
        return Tally(
            statuses,
            {
                "matched": _sparse(qids.filter(reached)),
                "selected": _sparse(table["sel"]),
                "kept": _sparse(qids.filter(kept)),
            },
        )

    @staticmethod
    def merge(parts: list[Tally]) -> Tally:
        statuses: dict[str, int] = {}
        for part in parts:
            for s, n in part.statuses.items():
                statuses[s] = statuses.get(s, 0) + n
        queries = {}
        for name in ("matched", "selected", "kept"):
            ids = np.concatenate([p.queries[name][0] for p in parts] or [_EMPTY])
            counts = np.concatenate([p.queries[name][1] for p in parts] or [_EMPTY])
            if len(ids):
                uniq, inv = np.unique(ids, return_inverse=True)
                summed = np.zeros(len(uniq), np.int64)
                np.add.at(summed, inv, counts)
                queries[name] = (uniq, summed)
            else:
                queries[name] = (_EMPTY, _EMPTY)
        return Tally(statuses, queries)

    def dense(self, n_queries: int) -> dict[str, np.ndarray]:
        out = {}
        for name, (ids, counts) in self.queries.items():
            column = np.zeros(n_queries, np.int64)
            column[ids] = counts
            out[name] = column
        return out


class BundleTally:
    """Tallies of many tables summed into dense per-query arrays: one ``Tally`` per
    bundle leaves the DoFn instead of one per table, since whatever crosses into the
    combine is buffered by the local runner (a table's sparse tally is up to ~1 MB)."""

    def __init__(self, n_queries: int):
        self.n_queries = n_queries
        self.reset()

    def reset(self) -> None:
        self.statuses: dict[str, int] = {}
        self.dense = {
            k: np.zeros(self.n_queries, np.int64) for k in ("matched", "selected", "kept")
        }
        self.empty = True

    def add(self, tally: Tally) -> None:
        self.empty = False
        for s, n in tally.statuses.items():
            self.statuses[s] = self.statuses.get(s, 0) + n
        for name, (ids, counts) in tally.queries.items():
            if len(ids):
                self.dense[name][ids] += counts  # ids are unique within one tally

    def take(self) -> Tally | None:
        if self.empty:
            return None
        queries = {}
        for name, column in self.dense.items():
            ids = np.flatnonzero(column)
            queries[name] = (ids.astype(np.int64), column[ids])
        out = Tally(self.statuses, queries)
        self.reset()
        return out


class TallyFn(beam.CombineFn):
    """Lifted: partial tallies merge on each worker before the (single-key) shuffle."""

    def create_accumulator(self):
        return []

    def add_input(self, acc, tally):
        acc.append(tally)
        if len(acc) >= 256:
            acc[:] = [Tally.merge(acc)]
        return acc

    def merge_accumulators(self, accs):
        return [Tally.merge([t for acc in accs for t in acc])]

    def compact(self, acc):
        return [Tally.merge(acc)]

    def extract_output(self, acc):
        return Tally.merge(acc)


def query_counts_table(tally: Tally, queries: list[str]) -> pa.Table:
    dense = tally.dense(len(queries))
    return pa.table(
        {"query": queries, **{k: dense[k] for k in ("matched", "selected", "kept")}},
        schema=QUERY_COUNTS_SCHEMA,
    )


def totals_record(tally: Tally, input_rows: int) -> dict:
    """What the launcher needs for the manifest: a few numbers, never rows."""
    return {
        "rows": tally.rows,
        "input_rows": int(input_rows),
        "totals": {s: int(tally.statuses.get(s, 0)) for s in STATUSES},
        "other_statuses": {s: n for s, n in tally.statuses.items() if s not in STATUSES},
    }


class _WriteCountsFn(WithQueries):
    def __init__(self, handle, querylist, out_dir, beam_args=()):
        super().__init__(handle, querylist, beam_args)
        self.out_dir = out_dir

    def process(self, tally, input_rows):
        table = query_counts_table(tally, self.q.queries)
        fsio.publish(
            fsio.join(self.out_dir, "counts", "query_counts.parquet"), fsio.parquet_bytes(table)
        )
        fsio.publish_json(
            fsio.join(self.out_dir, "counts", TOTALS_FILE), totals_record(tally, input_rows)
        )
        return []


class WriteCounts(beam.PTransform):
    """Tallies in (one per status part); counts/query_counts.parquet and totals.json out."""

    def __init__(self, handle, querylist, out_dir, input_rows, beam_args=()):
        super().__init__()
        self.fn = _WriteCountsFn(handle, querylist, out_dir, beam_args)
        self.input_rows = input_rows

    def expand(self, tallies):
        return (
            tallies
            | "MergeTallies" >> beam.CombineGlobally(TallyFn())
            | "Write" >> beam.ParDo(self.fn, beam.pvalue.AsSingleton(self.input_rows))
        )


def read_totals(out_dir: str) -> dict:
    return fsio.read_json(fsio.join(out_dir, "counts", TOTALS_FILE))
