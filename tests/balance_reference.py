"""Today's (before the scale-out) balancing functions, kept verbatim as the reference.

The job now balances with lifted combiners and a per-candidate map (pipeline.balance);
these are the functions it replaced: a shuffle of every pair by query bucket, a full
sort per query, and a join back onto the candidates. tests/test_balance.py checks that
the new path selects exactly what these did, for the same seed and input.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.balance import MODES, pair_hashes, uid_keys

PAIR_SCHEMA = pa.schema(
    [pa.field("qid", pa.int32()), pa.field("lo", pa.uint64()), pa.field("hi", pa.uint64())]
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
