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

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

MODES = ("exact", "metaclip")
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
PAIR_SCHEMA = pa.schema([pa.field("qid", pa.int32()), pa.field("uid", pa.string())])


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


def pairs_by_query_bucket(table: pa.Table, n_buckets: int) -> list[tuple[int, pa.Table]]:
    """Explode candidates (uid, qids) into (qid, uid) pairs grouped by query bucket."""
    qids = table["qids"].combine_chunks()
    flat = pc.list_flatten(qids).to_numpy(zero_copy_only=False).astype(np.int64)
    if len(flat) == 0:
        return []
    parents = pc.list_parent_indices(qids).to_numpy(zero_copy_only=False)
    uids = pc.take(table["uid"], pa.array(parents))
    buckets = flat % n_buckets
    order = np.argsort(buckets, kind="stable")
    sb = buckets[order]
    cuts = np.flatnonzero(np.diff(sb)) + 1
    out = []
    for s, e in zip(np.concatenate(([0], cuts)), np.concatenate((cuts, [len(order)])), strict=True):
        idx = pa.array(order[s:e])
        out.append((int(sb[s]), pa.table({"qid": pa.array(flat[order[s:e]], pa.int32()),
                                          "uid": pc.take(uids, idx)}, schema=PAIR_SCHEMA)))  # fmt: skip
    return out


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
    ukeys = uid_keys(pairs["uid"])
    uniq, inverse, counts = np.unique(qid, return_inverse=True, return_counts=True)
    qkeys = np.array([query_keys[int(q)] for q in uniq], np.uint64)[inverse]
    h = pair_hashes(qkeys, ukeys)
    if mode == "exact":
        tie = uid_keys(pairs["uid"], first=True)  # other uid bits break 64-bit hash ties
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


def apply_selection(candidates: pa.Table, selected: pa.Table, mode: str = "exact") -> pa.Table:
    """Set ``sel`` and ``status`` (kept / not_selected) on candidates from selected pairs."""
    from pipeline.schema import KEPT, NOT_SELECTED
    from pipeline.status_io import WORK_SCHEMA

    why = "cap_reached" if mode == "exact" else "not_drawn"
    n = candidates.num_rows
    where = pc.index_in(selected["uid"], value_set=candidates["uid"].combine_chunks())
    if where.null_count:
        raise ValueError("selected pairs name uids that are not among the candidates")
    row = where.to_numpy(zero_copy_only=False).astype(np.int64)
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
