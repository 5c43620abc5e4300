"""BalancePerQuery: at most t candidates per query (``exact``) or MetaCLIP-style sampling.

Both modes decide per (query, candidate) pair from ``pair_hash(seed, query, uid)``, a stable
64-bit hash, so a rerun with the same seed selects the same pairs on any runner:

- ``exact``: per query, rank its candidates by the hash and select the first t;
- ``metaclip``: select the pair when hash / 2**64 < min(1, t / count(query)); a candidate
  that matched queries q1..qk is then kept with probability 1 - prod(1 - min(1, t/count(q))).

A candidate is kept when at least one of its queries selects it; ``selected_by`` lists them.

This is MetaCLIP's two-pass shape, so that no step needs all the pairs of one query in
one place (a query like "a" matches a large share of a pool):

1. ``QueryStatsFn``, a lifted combiner keyed by query bucket, computes per query its
   match count and, for ``exact``, the t-th smallest (hash, uid bits) pair. Partial
   accumulators keep at most t pairs per query, so no worker holds more.
2. Those numbers reach every worker as one side input of compact arrays (one entry per
   query; a 500k-entry dict side input would cost ~0.5 GB per worker).
3. Selection is then a per-candidate map (``select_candidates``): a pair is selected when
   its hash is at or below its query's threshold.

The selected set equals the old sort-per-query selection exactly (tests/test_balance.py
checks it against those functions, kept in tests/balance_reference.py).
"""

from __future__ import annotations

import hashlib

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.metrics import Metrics

from pipeline.match import WithQueries
from pipeline.schema import KEPT, NOT_SELECTED
from pipeline.status_io import WORK_SCHEMA, uid_keys

MODES = ("exact", "metaclip")
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_MAX = np.uint64(0xFFFFFFFFFFFFFFFF)
#: Pairs an accumulator may hold before it is compacted to at most t per query.
COMPACT_AT = 2_000_000


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: a bijective, well-mixed 64-bit permutation."""
    x = x.astype(np.uint64, copy=True)
    x ^= x >> np.uint64(30)
    x *= _M1
    x ^= x >> np.uint64(27)
    x *= _M2
    x ^= x >> np.uint64(31)
    return x


def query_key(seed: int, query: str) -> int:
    """64 bits that depend on the seed and the query string only."""
    digest = hashlib.blake2b(f"{seed}\x1f{query}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def uid_key(uid: str) -> int:
    """uids end in SHA-256 hex digits; their last 16 are already uniform 64 bits."""
    return int(uid[-16:], 16)


def pair_hashes(query_keys: np.ndarray, uid_keys: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return _mix(_mix(query_keys.astype(np.uint64)) ^ uid_keys.astype(np.uint64))


def pair_hash(seed: int, query: str, uid: str) -> int:
    """hash(seed, query, uid) for one pair (the vectorized form is ``pair_hashes``)."""
    return int(
        pair_hashes(
            np.array([query_key(seed, query)], np.uint64), np.array([uid_key(uid)], np.uint64)
        )[0]
    )


def query_keys(queries: list[str], seed: int) -> np.ndarray:
    """``query_key(seed, q)`` for every query, as one uint64 array indexed by query id."""
    return np.fromiter((query_key(seed, q) for q in queries), np.uint64, len(queries))


def candidate_pairs(table: pa.Table, qkeys: np.ndarray):
    """Explode candidates into (query id, pair hash, uid high bits, candidate row) arrays.

    A pair's rank key is (hash, uid high bits): the hash orders, the other 64 uid bits
    break 64-bit hash ties, so the order is total over distinct uids.
    """
    qids = table["qids"].combine_chunks()
    flat = pc.list_flatten(qids).to_numpy(zero_copy_only=False).astype(np.int64)
    if len(flat) == 0:
        empty = np.zeros(0, np.uint64)
        return flat, empty, empty, np.zeros(0, np.int64)
    parents = pc.list_parent_indices(qids).to_numpy(zero_copy_only=False).astype(np.int64)
    lo, hi = uid_keys(table["uid"]), uid_keys(table["uid"], first=True)
    h = pair_hashes(qkeys[flat], lo[parents])
    return flat, h, hi[parents], parents


class QueryStats:
    """Per query: match count and (``exact``) its t smallest (hash, hi) pairs.

    The accumulator of ``QueryStatsFn``; also a partial built from one candidate table.
    Pairs beyond the t smallest of their query can never decide a threshold, so
    ``compact`` drops them: memory is bounded by t per query, whatever the input.
    """

    __slots__ = ("cq", "cn", "q", "h", "hi")

    def __init__(self, cq=None, cn=None, q=None, h=None, hi=None):
        self.cq = np.zeros(0, np.int64) if cq is None else cq  # query ids (unique)
        self.cn = np.zeros(0, np.int64) if cn is None else cn  # their counts
        self.q = np.zeros(0, np.int64) if q is None else q  # pairs kept for thresholds
        self.h = np.zeros(0, np.uint64) if h is None else h
        self.hi = np.zeros(0, np.uint64) if hi is None else hi

    def __reduce__(self):
        return QueryStats, (self.cq, self.cn, self.q, self.h, self.hi)

    @staticmethod
    def merge(parts: list[QueryStats], cap: int | None) -> QueryStats:
        """One QueryStats from many; ``cap`` None keeps counts only (``metaclip``)."""
        parts = [p for p in parts if len(p.cq)]
        if not parts:
            return QueryStats()
        if len(parts) == 1:
            return parts[0].compact(cap) if cap is not None else parts[0]
        cq = np.concatenate([p.cq for p in parts])
        cn = np.concatenate([p.cn for p in parts])
        uq, inv = np.unique(cq, return_inverse=True)
        counts = np.zeros(len(uq), np.int64)
        np.add.at(counts, inv, cn)
        merged = QueryStats(uq, counts)
        if cap is not None:
            merged.q = np.concatenate([p.q for p in parts])
            merged.h = np.concatenate([p.h for p in parts])
            merged.hi = np.concatenate([p.hi for p in parts])
        return merged.compact(cap)

    def compact(self, cap: int | None) -> QueryStats:
        """Keep at most ``cap`` pairs per query: the smallest by (hash, hi)."""
        if cap is None or len(self.q) == 0:
            return self
        order = np.lexsort((self.hi, self.h, self.q))
        sq = self.q[order]
        starts = np.r_[0, np.flatnonzero(np.diff(sq)) + 1]
        rank = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
        keep = order[rank < cap]
        if len(keep) == len(order):
            return self
        return QueryStats(self.cq, self.cn, self.q[keep], self.h[keep], self.hi[keep])

    def thresholds(self, cap: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(query ids, t-th smallest hash, its hi bits) for queries with more than t pairs."""
        over = set(self.cq[self.cn > cap].tolist())
        if not over or len(self.q) == 0:
            empty = np.zeros(0, np.uint64)
            return np.zeros(0, np.int64), empty, empty
        stats = self.compact(cap)
        order = np.lexsort((stats.hi, stats.h, stats.q))
        sq = stats.q[order]
        last = np.r_[np.flatnonzero(np.diff(sq)), len(sq) - 1]  # last (= t-th) of each query
        pick = order[last]
        mask = np.isin(stats.q[pick], np.fromiter(over, np.int64, len(over)))
        pick = pick[mask]
        return stats.q[pick], stats.h[pick], stats.hi[pick]


def _by_bucket(q: np.ndarray, n_buckets: int, make) -> list:
    buckets = q % n_buckets
    return [(int(b), make(buckets == b)) for b in np.unique(buckets).tolist()]


def table_counts(table: pa.Table, n_buckets: int) -> list[tuple[int, QueryStats]]:
    """Pass 1 partials: (query bucket, match counts) of one table; no hashes needed."""
    qids = table["qids"].combine_chunks()
    q = pc.list_flatten(qids).to_numpy(zero_copy_only=False).astype(np.int64)
    if len(q) == 0:
        return []

    def make(m):
        uq, counts = np.unique(q[m], return_counts=True)
        return QueryStats(uq, counts.astype(np.int64))

    return _by_bucket(q, n_buckets, make)


#: Pass 2 finds each heavy query's t-th smallest pair hash by radix select: a histogram
#: of the hash's top BIN_BITS bits, then the pairs of the one bin that holds the t-th.
BIN_BITS = 12
_SHIFT = np.uint64(64 - BIN_BITS)


def _heavy_pairs(table, qkeys, heavy: np.ndarray):
    """(query, hash, hi) of the pairs whose query is marked in ``heavy`` (by query id)."""
    q, h, hi, _ = candidate_pairs(table, qkeys)
    if len(q) == 0:
        return q, h, hi
    m = heavy[q]
    return q[m], h[m], hi[m]


def table_histogram(
    table: pa.Table, qkeys: np.ndarray, counts: np.ndarray, cap: int, n_buckets: int
) -> list[tuple[int, QueryStats]]:
    """Pass 2a partials (``exact``): per query over the cap, how many of its pairs fall in
    each of 2**BIN_BITS hash bins (as counts of ``query * bins + bin`` codes). Queries
    under the cap need no threshold; no pair leaves the worker."""
    q, h, _hi = _heavy_pairs(table, qkeys, counts > cap)
    if len(q) == 0:
        return []
    codes = q * (1 << BIN_BITS) + (h >> _SHIFT).astype(np.int64)

    def make(m):
        uc, n = np.unique(codes[m], return_counts=True)
        return QueryStats(uc, n.astype(np.int64))

    return _by_bucket(q, n_buckets, make)


def boundaries(parts, n_queries: int, cap: int) -> dict[str, np.ndarray]:
    """From the merged histograms: per query over the cap, the bin that holds its t-th
    smallest pair (``bin``, -1 elsewhere) and that pair's rank inside the bin (``need``)."""
    codes = np.concatenate([cq for cq, *_ in parts] or [np.zeros(0, np.int64)])
    cn = np.concatenate([c for _, c, *_ in parts] or [np.zeros(0, np.int64)])
    bins = np.full(n_queries, -1, np.int64)
    need = np.zeros(n_queries, np.int64)
    if len(codes):
        order = np.argsort(codes, kind="stable")
        codes, cn = codes[order], cn[order]
        q, b = codes >> BIN_BITS, codes & ((1 << BIN_BITS) - 1)
        starts = np.r_[0, np.flatnonzero(np.diff(q)) + 1]
        cum = np.cumsum(cn)
        before = np.repeat(np.r_[0, cum[starts[1:] - 1]], np.diff(np.r_[starts, len(q)]))
        within = cum - before  # pairs of this query up to and including this bin
        crossing = (within >= cap) & (within - cn < cap)
        bins[q[crossing]] = b[crossing]
        need[q[crossing]] = cap - (within - cn)[crossing]
    return {"bin": bins, "need": need}


def table_boundary_pairs(
    table: pa.Table, qkeys: np.ndarray, bounds: dict, cap: int, n_buckets: int
) -> list[tuple[int, QueryStats]]:
    """Pass 2b partials: the pairs in each heavy query's boundary bin (about 1/4096 of its
    pairs), at most t per query."""
    q, h, hi = _heavy_pairs(table, qkeys, bounds["bin"] >= 0)
    if len(q) == 0:
        return []
    m = (h >> _SHIFT).astype(np.int64) == bounds["bin"][q]
    q, h, hi = q[m], h[m], hi[m]
    if len(q) == 0:
        return []

    def make(k):
        uq, n = np.unique(q[k], return_counts=True)
        return QueryStats(uq, n.astype(np.int64), q[k], h[k], hi[k]).compact(cap)

    return _by_bucket(q, n_buckets, make)


class QueryStatsFn(beam.CombineFn):
    """Lifted combiner: partials merge before the shuffle, each kept to t pairs per query."""

    def __init__(self, mode: str, cap: int, raw: bool = False):
        if mode not in MODES:
            raise ValueError(f"unknown --balance mode {mode!r}")
        self.cap = cap if mode == "exact" else None
        self.raw = raw  # the merged QueryStats itself (pass 2b), not thresholds

    def create_accumulator(self):
        return []  # QueryStats parts, merged once they hold many pairs

    def add_input(self, acc, part):
        acc.append(part)
        if len(acc) > 64 or sum(len(p.q) for p in acc) > COMPACT_AT:
            acc[:] = [QueryStats.merge(acc, self.cap)]
        return acc

    def merge_accumulators(self, accs):
        return [QueryStats.merge([p for acc in accs for p in acc], self.cap)]

    def compact(self, acc):
        return [QueryStats.merge(acc, self.cap)]

    def extract_output(self, acc):
        stats = QueryStats.merge(acc, self.cap)
        if self.raw:
            return stats
        tq, th, thi = stats.thresholds(self.cap) if self.cap is not None else (None,) * 3
        return stats.cq, stats.cn, tq, th, thi


def dense_counts(parts) -> np.ndarray:
    """Pass 1 result: match count per query id, one compact array (the side input)."""
    n_queries = max((int(cq.max()) + 1 for cq, *_ in parts if len(cq)), default=0)
    counts = np.zeros(n_queries, np.int64)
    for cq, cn, *_ in parts:
        counts[cq] += cn
    return counts


def dense_thresholds(parts: list[QueryStats], bounds: dict) -> dict[str, np.ndarray]:
    """Pass 2 result: per query id, its t-th smallest (hash, hi): the ``need``-th pair of
    its boundary bin; the maximum (select all) for queries at or under the cap."""
    n = len(bounds["bin"])
    thr_h = np.full(n, _MAX, np.uint64)
    thr_hi = np.full(n, _MAX, np.uint64)
    q = np.concatenate([p.q for p in parts] or [np.zeros(0, np.int64)])
    h = np.concatenate([p.h for p in parts] or [np.zeros(0, np.uint64)])
    hi = np.concatenate([p.hi for p in parts] or [np.zeros(0, np.uint64)])
    if len(q):
        order = np.lexsort((hi, h, q))
        q, h, hi = q[order], h[order], hi[order]
        starts = np.r_[0, np.flatnonzero(np.diff(q)) + 1]
        heads = q[starts]
        pick = starts + bounds["need"][heads] - 1
        thr_h[heads], thr_hi[heads] = h[pick], hi[pick]
    return {"thr_h": thr_h, "thr_hi": thr_hi}


def select_candidates(
    table: pa.Table, qkeys: np.ndarray, stats: dict, mode: str, cap: int
) -> pa.Table:
    """Set ``sel`` and ``status`` (kept / not_selected) from the per-query numbers.

    A pure per-candidate map: ``exact`` selects a pair when its query has at most t pairs
    or when (hash, hi) is at or below the query's t-th smallest; ``metaclip`` when the
    hash, read as a number in [0, 1), is below min(1, t / count).
    """
    if mode not in MODES:
        raise ValueError(f"unknown --balance mode {mode!r}")
    n = table.num_rows
    q, h, hi, parents = candidate_pairs(table, qkeys)
    counts = stats["counts"][q] if len(q) else np.zeros(0, np.int64)
    if mode == "exact":
        th, thi = stats["thr_h"][q], stats["thr_hi"][q]
        chosen = (counts <= cap) | (h < th) | ((h == th) & (hi <= thi))
    else:
        p = np.minimum(1.0, cap / np.maximum(counts, 1))
        u = (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
        chosen = u < p
    per_row = np.bincount(parents[chosen], minlength=n)
    offsets = np.zeros(n + 1, np.int32)
    np.cumsum(per_row, out=offsets[1:])
    picked = per_row > 0
    values = pa.array(q[chosen].astype(np.int32), pa.int32())
    sel = pa.ListArray.from_arrays(pa.array(offsets), values, mask=pa.array(~picked))
    why = "cap_reached" if mode == "exact" else "not_drawn"
    for name, col in (
        ("sel", sel),
        ("status", pc.if_else(pa.array(picked), KEPT, NOT_SELECTED)),
        ("reason", pc.if_else(pa.array(picked), pa.scalar(None, pa.string()), why)),
    ):
        i = table.schema.get_field_index(name)
        table = table.set_column(i, WORK_SCHEMA.field(name), col)
    return table


# --- Beam -----------------------------------------------------------------------


class _WithKeys(WithQueries):
    """The query list plus its per-seed keys, computed once per worker process."""

    def __init__(self, handle, querylist, seed, beam_args=()):
        super().__init__(handle, querylist, beam_args)
        self.seed = seed

    def setup(self):
        super().setup()
        attr = f"_keys_{self.seed}"
        if getattr(self.q, attr, None) is None:
            setattr(self.q, attr, query_keys(self.q.queries, self.seed))
        self.qkeys = getattr(self.q, attr)


SPILL_DIR = "_work"


def _read_spilled(out_dir, table):
    """A table, or a spilled table's name read back."""
    if not isinstance(table, str):
        return table
    from pipeline import fsio

    return fsio.read_parquet(fsio.join(out_dir, SPILL_DIR, table)).cast(WORK_SCHEMA)


class _CountFn(beam.DoFn):
    """Pass 1: partial match counts of a table; with ``out_dir`` the table itself is spilled
    to a file and only its name goes on, so the runner does not hold every candidate while
    the combiners finish (the later steps wait for their side inputs)."""

    def __init__(self, n_buckets, out_dir=None, beam_args=(), progress=True):
        self.n_buckets, self.out_dir, self.beam_args = n_buckets, out_dir, tuple(beam_args)
        self.progress_on = progress

    def setup(self):
        from pipeline.fsio import ensure_options
        from pipeline.progress import Reporter

        ensure_options(self.beam_args)
        # rows through the text stages
        self.progress = Reporter(self.out_dir if self.progress_on else None, "text")

    def finish_bundle(self):
        self.progress.flush()

    def process(self, table):
        self.progress.add(table.num_rows)
        for part in table_counts(table, self.n_buckets):
            yield beam.pvalue.TaggedOutput("counts", part)
        if self.out_dir is None:
            yield table
            return
        from pipeline import fsio

        # uids are unique after dedup, so the first uid and the size name the table
        name = f"sel-{table['uid'][0].as_py()[-32:]}-{table.num_rows}.parquet"
        fsio.publish(fsio.join(self.out_dir, SPILL_DIR, name), fsio.parquet_bytes(table))
        yield name


class _HistogramFn(_WithKeys):
    """Pass 2a (``exact``): hash histograms of the queries over the cap."""

    def __init__(self, handle, querylist, seed, cap, n_buckets, beam_args=(), out_dir=None):
        super().__init__(handle, querylist, seed, beam_args)
        self.cap, self.n_buckets, self.out_dir = cap, n_buckets, out_dir

    def process(self, table, counts):
        table = _read_spilled(self.out_dir, table)
        yield from table_histogram(table, self.qkeys, counts, self.cap, self.n_buckets)


class _BoundaryFn(_HistogramFn):
    """Pass 2b (``exact``): the pairs in each heavy query's boundary bin."""

    def process(self, table, bounds):
        table = _read_spilled(self.out_dir, table)
        yield from table_boundary_pairs(table, self.qkeys, bounds, self.cap, self.n_buckets)


class _SelectFn(_WithKeys):
    def __init__(self, handle, querylist, seed, mode, cap, beam_args=(), out_dir=None):
        super().__init__(handle, querylist, seed, beam_args)
        self.mode, self.cap, self.out_dir = mode, cap, out_dir
        self.elements = Metrics.distribution("wit.units", "select_rows")

    def process(self, table, counts, thresholds):
        table = _read_spilled(self.out_dir, table)
        self.elements.update(table.num_rows)
        stats = {"counts": counts, **(thresholds or {})}
        yield select_candidates(table, self.qkeys, stats, self.mode, self.cap)


_STATS_BUCKETS = Metrics.counter("wit.units", "query_stat_buckets")


def _count_stats_bucket(kv):
    _STATS_BUCKETS.inc()
    return kv[1]


class BalancePerQuery(beam.PTransform):
    """Candidate tables in, the same tables with status kept/not_selected and ``sel`` out.

    Pass 1 counts matches per query (a lifted combiner keyed by query bucket); for
    ``exact``, pass 2 finds the t-th smallest pair of each query over the cap by radix
    select (hash histograms, then the pairs of one bin; the same lifted combiner);
    selection is a map with the counts and thresholds as side inputs.
    ``n_buckets`` grows with the input, so no constant bounds the combiners' parallelism.
    With ``out_dir`` the candidate tables wait in spill files under ``OUT/_work``, not in
    the runner.
    """

    def __init__(self, handle, querylist, mode, cap, seed, n_buckets=1, beam_args=(),
                 out_dir=None, progress=True):  # fmt: skip
        super().__init__()
        self.out_dir, self.progress = out_dir, progress
        if mode not in MODES:
            raise ValueError(f"unknown --balance mode {mode!r}")
        self.handle, self.querylist, self.beam_args = handle, querylist, tuple(beam_args)
        self.mode, self.cap, self.seed, self.n_buckets = mode, cap, seed, max(1, n_buckets)

    def _combine(self, parts, label: str, mode: str):
        return (
            parts
            | f"{label}PerQueryBucket" >> beam.CombinePerKey(QueryStatsFn(mode, self.cap))
            | f"{label}Values" >> beam.Map(_count_stats_bucket)
            | f"{label}AllBuckets" >> beam.combiners.ToList()
        )

    def expand(self, matched):
        args = (self.handle, self.querylist, self.seed)
        split = matched | "CountMatches" >> beam.ParDo(
            _CountFn(self.n_buckets, self.out_dir, self.beam_args, self.progress)
        ).with_outputs("counts", main="tables")
        counts = self._combine(split.counts, "Counts", "metaclip") | "DenseCounts" >> beam.Map(
            dense_counts
        )
        counts_side = beam.pvalue.AsSingleton(counts)
        thresholds = None
        if self.mode == "exact":
            fns = (*args, self.cap, self.n_buckets, self.beam_args, self.out_dir)
            hist = split.tables | "Histograms" >> beam.ParDo(_HistogramFn(*fns), counts_side)
            bounds = self._combine(hist, "Histogram", "metaclip") | "Boundaries" >> beam.Map(
                lambda parts, counts, cap: boundaries(parts, len(counts), cap),
                counts_side,
                self.cap,
            )
            pairs = split.tables | "BoundaryPairs" >> beam.ParDo(
                _BoundaryFn(*fns), beam.pvalue.AsSingleton(bounds)
            )
            thresholds = (
                pairs
                | "BoundaryPerQueryBucket"
                >> beam.CombinePerKey(QueryStatsFn("exact", self.cap, raw=True))
                | "BoundaryValues" >> beam.Map(_count_stats_bucket)
                | "BoundaryAll" >> beam.combiners.ToList()
                | "DenseThresholds" >> beam.Map(dense_thresholds, beam.pvalue.AsSingleton(bounds))
            )
        fn = _SelectFn(*args, self.mode, self.cap, self.beam_args, self.out_dir)
        if thresholds is None:
            return split.tables | "Select" >> beam.ParDo(fn, counts_side, None)
        return split.tables | "Select" >> beam.ParDo(
            fn, counts_side, beam.pvalue.AsSingleton(thresholds)
        )
