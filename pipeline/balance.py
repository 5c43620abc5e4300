"""BalancePerQuery: at most t candidates per query (``exact``) or MetaCLIP-style sampling.

Both modes decide per (query, candidate) pair from ``pair_hash(seed, query, uid)``, a stable
64-bit hash, so a rerun with the same seed selects the same pairs on any runner:

- ``exact``: per query, rank its candidates by the hash and select the first t;
- ``metaclip``: select the pair when hash / 2**64 < min(1, t / count(query)); a candidate
  that matched queries q1..qk is then kept with probability 1 - prod(1 - min(1, t/count(q))).

A candidate is kept when at least one of its queries selects it; ``selected_by`` lists them.
Pairs are shuffled by query bucket so each query's pairs meet in one place.
"""

from __future__ import annotations

import hashlib

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import status_io
from pipeline.match import WithQueries

MODES = ("exact", "metaclip")
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
PAIR_SCHEMA = pa.schema(
    [pa.field("qid", pa.int32()), pa.field("lo", pa.uint64()), pa.field("hi", pa.uint64())]
)


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


_HEX_VALUE = np.full(256, 0, np.uint64)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX_VALUE[_c] = _i
_POWERS = np.array([1 << (4 * (15 - i)) for i in range(16)], np.uint64)


def uid_keys(uids: pa.ChunkedArray | pa.Array, first: bool = False) -> np.ndarray:
    """``uid_key`` for a whole column (``first``: the leading 16 hex digits instead)."""
    sliced = (
        pc.utf8_slice_codeunits(uids, start=0, stop=16)
        if first
        else pc.utf8_slice_codeunits(uids, start=-16)
    )
    arr = sliced.combine_chunks() if isinstance(sliced, pa.ChunkedArray) else sliced
    offsets = np.frombuffer(arr.buffers()[1], np.int32)[arr.offset : arr.offset + len(arr) + 1]
    if len(arr) and (np.any(np.diff(offsets) != 16)):
        return np.fromiter((int(u, 16) for u in arr.to_pylist()), np.uint64, len(arr))
    raw = np.frombuffer(arr.buffers()[2], np.uint8)[offsets[0] : offsets[0] + 16 * len(arr)]
    nibbles = _HEX_VALUE[raw.reshape(-1, 16)]
    return (nibbles * _POWERS).sum(axis=1, dtype=np.uint64)


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


def _group(keys: np.ndarray, columns: dict[str, np.ndarray]) -> list[tuple[int, pa.Table]]:
    """Rows of ``columns`` grouped by ``keys``, as (key, PAIR_SCHEMA table)."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    cuts = np.flatnonzero(np.diff(sorted_keys)) + 1
    out = []
    for s, e in zip(np.r_[0, cuts], np.r_[cuts, len(order)], strict=True):
        part = order[s:e]
        out.append(
            (
                int(sorted_keys[s]),
                pa.table({k: v[part] for k, v in columns.items()}, schema=PAIR_SCHEMA),
            )
        )
    return out


def pairs_by_query_bucket(table: pa.Table, n_buckets: int) -> list[tuple[int, pa.Table]]:
    """Explode candidates (uid, qids) into (qid, uid bits) pairs grouped by query bucket.

    A pair carries the uid as two 64-bit halves (``lo`` = last 16 hex digits, ``hi`` =
    first 16) instead of the 64-character string: with millions of pairs in the shuffle
    this is a quarter of the bytes, and 128 bits still identify a SHA-256 uid.
    """
    qids = table["qids"].combine_chunks()
    flat = pc.list_flatten(qids).to_numpy(zero_copy_only=False).astype(np.int64)
    if len(flat) == 0:
        return []
    parents = pc.list_parent_indices(qids).to_numpy(zero_copy_only=False)
    lo, hi = uid_keys(table["uid"])[parents], uid_keys(table["uid"], first=True)[parents]
    return _group(flat % n_buckets, {"qid": flat.astype(np.int32), "lo": lo, "hi": hi})


def pairs_by_uid_bucket(pairs: pa.Table, n_buckets: int) -> list[tuple[int, pa.Table]]:
    """Selected pairs grouped by their candidate's uid bucket (``status_io.uid_bucket``)."""
    if pairs.num_rows == 0:
        return []
    lo = pairs["lo"].to_numpy()
    cols = {"qid": pairs["qid"].to_numpy(), "lo": lo, "hi": pairs["hi"].to_numpy()}
    return _group(((lo & np.uint64(0xFF)) % np.uint64(n_buckets)).astype(np.int64), cols)


def select_pairs(pairs: pa.Table, query_keys: dict[int, int], mode: str, cap: int) -> pa.Table:
    """The selected (qid, uid) pairs among all pairs of some queries.

    ``pairs`` must hold every pair of each query it contains (one query bucket).
    ``query_keys`` maps qid -> query_key(seed, query).
    """
    if mode not in MODES:
        raise ValueError(f"unknown --balance mode {mode!r}")
    if pairs.num_rows == 0:
        return pairs
    qid = pairs["qid"].to_numpy().astype(np.int64)
    ukeys = pairs["lo"].to_numpy()
    uniq, inverse, counts = np.unique(qid, return_inverse=True, return_counts=True)
    qkeys = np.array([query_keys[int(q)] for q in uniq], np.uint64)[inverse]
    h = pair_hashes(qkeys, ukeys)
    if mode == "exact":
        tie = pairs["hi"].to_numpy()  # other uid bits break 64-bit hash ties
        order = np.lexsort((tie, h, qid))
        sorted_q = qid[order]
        group_start = np.r_[0, np.flatnonzero(np.diff(sorted_q)) + 1]
        sizes = np.diff(np.r_[group_start, len(order)])
        rank = np.arange(len(order)) - np.repeat(group_start, sizes)
        chosen = np.sort(order[rank < cap])
    else:
        p = np.minimum(1.0, cap / counts[inverse])
        u = (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
        chosen = np.flatnonzero(u < p)
    return pairs.take(pa.array(chosen))


def _rows_of(candidates: pa.Table, pairs: pa.Table) -> np.ndarray:
    """For each pair, the index of its candidate (matched on both uid halves)."""
    lo_c, hi_c = uid_keys(candidates["uid"]), uid_keys(candidates["uid"], first=True)
    lo_p, hi_p = pairs["lo"].to_numpy(), pairs["hi"].to_numpy()
    order = np.argsort(lo_c, kind="stable")
    pos = np.minimum(np.searchsorted(lo_c[order], lo_p), len(order) - 1)
    row = order[pos] if len(order) else np.zeros(0, np.int64)
    if len(row) and np.all(lo_c[row] == lo_p) and np.all(hi_c[row] == hi_p):
        return row.astype(np.int64)
    index = {(int(h), int(lo)): i for i, (h, lo) in enumerate(zip(hi_c, lo_c, strict=True))}
    try:  # equal low halves within one bucket (or a bug): match on the full 128 bits
        return np.array(
            [index[(int(h), int(lo))] for h, lo in zip(hi_p, lo_p, strict=True)], np.int64
        )
    except KeyError:
        raise ValueError("selected pairs name uids that are not among the candidates") from None


def apply_selection(candidates: pa.Table, selected: pa.Table, mode: str = "exact") -> pa.Table:
    """Set ``sel`` and ``status`` (kept / not_selected) on candidates from selected pairs."""
    from pipeline.schema import KEPT, NOT_SELECTED
    from pipeline.status_io import WORK_SCHEMA

    why = "cap_reached" if mode == "exact" else "not_drawn"
    n = candidates.num_rows
    row = _rows_of(candidates, selected)
    qid = selected["qid"].to_numpy().astype(np.int32)
    order = np.lexsort((qid, row))
    counts = np.bincount(row, minlength=n)
    offsets = np.zeros(n + 1, np.int32)
    np.cumsum(counts, out=offsets[1:])
    picked = counts > 0
    sel = pa.ListArray.from_arrays(pa.array(offsets), pa.array(qid[order], pa.int32()),
                                   mask=pa.array(~picked))  # fmt: skip
    table = candidates
    for name, values in (
        ("sel", sel),
        ("status", pc.if_else(pa.array(picked), KEPT, NOT_SELECTED)),
        ("reason", pc.if_else(pa.array(picked), pa.scalar(None, pa.string()), why)),
    ):
        i = table.schema.get_field_index(name)
        table = table.set_column(i, WORK_SCHEMA.field(name), values)
    return table


# --- Beam -----------------------------------------------------------------------


class _SelectFn(WithQueries):
    def __init__(self, handle, querylist, mode, cap, seed):
        super().__init__(handle, querylist)
        self.mode, self.cap, self.seed = mode, cap, seed
        self._keys: dict[int, int] = {}

    def _key(self, qid: int) -> int:
        if qid not in self._keys:
            self._keys[qid] = query_key(self.seed, self.q.queries[qid])
        return self._keys[qid]

    def process(self, kv):
        _bucket, tables = kv
        pairs = pa.concat_tables(list(tables))
        keys = {int(q): self._key(int(q)) for q in pc.unique(pairs["qid"]).to_pylist()}
        chosen = select_pairs(pairs, keys, self.mode, self.cap)
        if chosen.num_rows == 0:
            return
        yield from pairs_by_uid_bucket(chosen, status_io.N_BUCKETS)


def _join_selection(kv, mode):
    bucket, grouped = kv
    candidates = list(grouped["candidates"])
    if not candidates:
        return
    table = pa.concat_tables(candidates)
    chosen = list(grouped["selected"])
    selected = pa.concat_tables(chosen) if chosen else PAIR_SCHEMA.empty_table()
    yield bucket, apply_selection(table, selected, mode)


class BalancePerQuery(beam.PTransform):
    """Count per query and select <= t per query; emits candidates with status kept/not_selected."""

    def __init__(self, handle, querylist, mode, cap, seed):
        super().__init__()
        self.args = (handle, querylist, mode, cap, seed)
        self.mode = mode

    def expand(self, matched):
        selected = (
            matched
            | "Pairs" >> beam.FlatMap(lambda kv: pairs_by_query_bucket(kv[1], status_io.N_BUCKETS))
            | "ByQueryBucket" >> beam.GroupByKey()
            | "Select" >> beam.ParDo(_SelectFn(*self.args))
        )
        mode = self.mode
        return (
            {"candidates": matched, "selected": selected}
            | "JoinSelection" >> beam.CoGroupByKey()
            | "Apply" >> beam.FlatMap(_join_selection, mode)
        )
