"""BalancePerQuery: exact caps, MetaCLIP probabilities, determinism, and the Beam stage.

The job balances with a lifted combiner (per-query counts and t-th smallest hashes) and a
per-candidate map. ``_select_reference`` is the shuffle-and-sort path it replaced
(tests/balance_reference.py, the functions as they were); both must select the same pairs.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections import Counter

import apache_beam as beam
import balance_reference as reference
import numpy as np
import pyarrow as pa
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.utils import shared

from pipeline import balance, status_io

QUERIES = [f"query{i}" for i in range(60)]


def _uid(i: int) -> str:
    return hashlib.sha256(f"candidate {i}".encode()).hexdigest()


def _candidates(n: int, seed: int = 1) -> pa.Table:
    """Candidates matching 1-4 queries, with Zipf-like query popularity."""
    rng = random.Random(seed)
    weights = [1 / (i + 1) for i in range(len(QUERIES))]
    qids = [
        sorted(set(rng.choices(range(len(QUERIES)), weights, k=rng.randint(1, 4))))
        for _ in range(n)
    ]
    return status_io.work_table({"uid": [_uid(i) for i in range(n)], "qids": qids,
                                 "source": ["s"] * n, "row": list(range(n))})  # fmt: skip


def _keys(seed: int) -> dict[int, int]:
    return {i: balance.query_key(seed, q) for i, q in enumerate(QUERIES)}


def _select_reference(
    table: pa.Table, mode: str, cap: int, seed: int = 0, n_buckets: int = 7
) -> pa.Table:
    chosen = [
        reference.select_pairs(pairs, _keys(seed), mode, cap)
        for _, pairs in reference.pairs_by_query_bucket(table, n_buckets)
    ]
    return reference.apply_selection(table, pa.concat_tables(chosen), mode)


def _chunks(table: pa.Table, size: int) -> list[pa.Table]:
    return [table.slice(i, size) for i in range(0, table.num_rows, size)]


def _combine(fn, partials):
    """The combiner's own methods, two levels deep as when lifted: one accumulator per
    table (a bundle), merged per query bucket after the shuffle."""
    per_bucket: dict[int, list] = {}
    for parts in partials:
        for b, stats in parts:
            acc = fn.compact(fn.add_input(fn.create_accumulator(), stats))
            per_bucket.setdefault(b, []).append(acc)
    return [fn.extract_output(fn.merge_accumulators(accs)) for accs in per_bucket.values()]


def _thresholds(parts, qkeys, counts, cap, n_buckets):
    """Pass 2 as the job runs it: histograms, boundary bins, the boundary bins' pairs."""
    hist = _combine(balance.QueryStatsFn("metaclip", cap),
                    [balance.table_histogram(t, qkeys, counts, cap, n_buckets) for t in parts])  # fmt: skip
    bounds = balance.boundaries(hist, len(counts), cap)
    pairs = _combine(balance.QueryStatsFn("exact", cap, raw=True),
                     [balance.table_boundary_pairs(t, qkeys, bounds, cap, n_buckets)
                      for t in parts])  # fmt: skip
    return balance.dense_thresholds(pairs, bounds)


def _select_all(
    table: pa.Table, mode: str, cap: int, seed: int = 0, n_buckets: int = 7, chunk: int = 700
) -> pa.Table:
    """The job's path without Beam: pass 1 counts, pass 2 (exact) thresholds of the queries
    over the cap, then the per-candidate map with both as side inputs."""
    qkeys = balance.query_keys(QUERIES, seed)
    parts = _chunks(table, chunk)
    counts = balance.dense_counts(
        _combine(
            balance.QueryStatsFn("metaclip", cap),
            [balance.table_counts(t, n_buckets) for t in parts],
        )  # fmt: skip
    )
    stats = {"counts": counts}
    if mode == "exact":
        stats.update(_thresholds(parts, qkeys, counts, cap, n_buckets))
    return pa.concat_tables(
        balance.select_candidates(part, qkeys, stats, mode, cap) for part in parts
    )


@pytest.mark.parametrize("mode", ["exact", "metaclip"])
@pytest.mark.parametrize("cap", [1, 25, 400, 10_000])
def test_combiner_selection_equals_the_replaced_sort_per_query(mode, cap):
    table = _candidates(6000, seed=3)
    for seed in (0, 5):
        new = _select_all(table, mode, cap, seed=seed, n_buckets=5, chunk=911)
        old = _select_reference(table, mode, cap, seed=seed)
        for col in ("uid", "status", "reason", "sel"):
            assert new[col].to_pylist() == old[col].to_pylist(), (mode, cap, seed, col)


def test_accumulators_hold_at_most_t_pairs_per_query():
    """A heavy-hitter query (every candidate) never needs all its pairs in one place, and
    the pairs of queries under the cap never cross the shuffle."""
    table = _candidates(5000, seed=4)
    table = table.set_column(
        table.schema.get_field_index("qids"),
        status_io.WORK_SCHEMA.field("qids"),
        pa.array([sorted({0, *q}) for q in table["qids"].to_pylist()], pa.list_(pa.int32())),
    )
    cap = 30
    qkeys = balance.query_keys(QUERIES, 0)
    counts = balance.dense_counts(
        _combine(
            balance.QueryStatsFn("metaclip", cap),
            [balance.table_counts(t, 1) for t in _chunks(table, 500)],
        )  # fmt: skip
    )
    assert counts[0] == 5000
    parts = _chunks(table, 500)
    hist = _combine(balance.QueryStatsFn("metaclip", cap),
                    [balance.table_histogram(t, qkeys, counts, cap, 1) for t in parts])  # fmt: skip
    bounds = balance.boundaries(hist, len(counts), cap)
    assert bounds["bin"][0] >= 0 and 1 <= bounds["need"][0] <= cap
    assert all(bounds["bin"][q] == -1 for q in range(len(counts)) if counts[q] <= cap)
    for part in parts:
        for _b, stats in balance.table_boundary_pairs(part, qkeys, bounds, cap, 1):
            assert max(Counter(stats.q.tolist()).values()) <= cap
            assert all(counts[q] > cap for q in set(stats.q.tolist()))
    pairs = _combine(balance.QueryStatsFn("exact", cap, raw=True),
                     [balance.table_boundary_pairs(t, qkeys, bounds, cap, 1) for t in parts])  # fmt: skip
    # only the boundary bin's pairs are gathered: ~1/4096 of each query's pairs, at least 1
    heavy = int((counts > cap).sum())
    gathered = Counter(q for p in pairs for q in p.q.tolist())
    assert gathered[0] <= 8 and sum(gathered.values()) <= 3 * heavy


def test_pair_hash_vectorized_equals_scalar_and_is_stable():
    uids = [_uid(i) for i in range(50)]
    vec = balance.pair_hashes(
        np.array([balance.query_key(3, "cat")] * 50, np.uint64), balance.uid_keys(pa.array(uids))
    )
    assert [int(v) for v in vec] == [balance.pair_hash(3, "cat", u) for u in uids]
    assert balance.pair_hash(3, "cat", uids[0]) == balance.pair_hash(3, "cat", uids[0])
    assert len({balance.pair_hash(s, q, uids[0]) for s in (0, 1) for q in ("cat", "dog")}) == 4


def test_exact_selects_the_first_t_by_hash_per_query():
    table = _candidates(4000)
    cap = 40
    result = _select_all(table, "exact", cap)
    # reference: a plain loop over (query, uid) with the scalar hash
    by_query: dict[int, list[tuple[int, str]]] = {}
    for uid, qids in zip(table["uid"].to_pylist(), table["qids"].to_pylist(), strict=True):
        for q in qids:
            by_query.setdefault(q, []).append((balance.pair_hash(0, QUERIES[q], uid), uid))
    expected: dict[str, list[int]] = {}
    for q, items in by_query.items():
        for _h, uid in sorted(items)[:cap]:
            expected.setdefault(uid, []).append(q)
    got = {
        u: s for u, s in zip(result["uid"].to_pylist(), result["sel"].to_pylist(), strict=True) if s
    }
    assert got == {u: sorted(qs) for u, qs in expected.items()}
    per_query = Counter(q for s in got.values() for q in s)
    assert max(per_query.values()) == cap  # popular queries are capped ...
    assert all(
        per_query[q] == min(cap, len(items)) for q, items in by_query.items()
    )  # ... rare ones not
    statuses = Counter(result["status"].to_pylist())
    assert statuses["kept"] == len(got) and statuses["not_selected"] == 4000 - len(got)


def test_exact_is_independent_of_bucketing_and_deterministic_per_seed():
    table = _candidates(3000)
    a = _select_all(table, "exact", 25, seed=0, n_buckets=1)
    b = _select_all(table, "exact", 25, seed=0, n_buckets=13)
    c = _select_all(table, "exact", 25, seed=1, n_buckets=13)
    assert a["sel"].to_pylist() == b["sel"].to_pylist()
    assert a["sel"].to_pylist() != c["sel"].to_pylist()


def test_metaclip_kept_count_matches_expectation():
    n, cap = 60_000, 300
    table = _candidates(n, seed=7)
    counts = Counter(q for qs in table["qids"].to_pylist() for q in qs)
    probs = []
    for qs in table["qids"].to_pylist():
        miss = math.prod(1 - min(1.0, cap / counts[q]) for q in qs)
        probs.append(1 - miss)
    expected = sum(probs)
    sigma = math.sqrt(sum(p * (1 - p) for p in probs))
    kept = Counter(_select_all(table, "metaclip", cap)["status"].to_pylist())["kept"]
    assert 0.05 * n < expected < 0.95 * n  # the test has room to fail both ways
    assert abs(kept - expected) < 4 * sigma, (kept, expected, sigma)
    # each query selects about min(count, cap) pairs
    result = _select_all(table, "metaclip", cap)
    per_query = Counter(q for s in result["sel"].to_pylist() if s for q in s)
    top = max(counts, key=counts.get)
    assert abs(per_query[top] - cap) < 5 * math.sqrt(cap)


def test_metaclip_deterministic_per_seed():
    table = _candidates(5000)
    assert (_select_all(table, "metaclip", 50, seed=2)["sel"].to_pylist()
            == _select_all(table, "metaclip", 50, seed=2)["sel"].to_pylist())  # fmt: skip


def test_unknown_mode():
    with pytest.raises(ValueError, match="--balance"):
        balance.QueryStatsFn("random", 1)
    with pytest.raises(ValueError, match="--balance"):
        balance.select_candidates(_candidates(3), balance.query_keys(QUERIES, 0), {}, "x", 1)


@pytest.mark.parametrize("mode", ["exact", "metaclip"])
def test_balance_stage_in_beam_equals_plain_functions(tmp_path, mode):
    qpath = tmp_path / "q.txt"
    qpath.write_text("\n".join(QUERIES), encoding="utf-8")
    table = _candidates(2000)
    expected = _select_reference(table, mode, 30)
    expected_rows = sorted(
        (u, st, tuple(s or ())) for u, st, s in
        zip(expected["uid"].to_pylist(), expected["status"].to_pylist(), expected["sel"].to_pylist(), strict=True)
    )  # fmt: skip
    with BeamTestPipeline(runner=FnApiRunner()) as p:
        out = (
            p
            | beam.Create(_chunks(table, 300))
            | balance.BalancePerQuery(shared.Shared(), str(qpath), mode, 30, 0, n_buckets=4)
            | beam.FlatMap(lambda t: list(zip(t["uid"].to_pylist(), t["status"].to_pylist(),
                                              [tuple(s or ()) for s in t["sel"].to_pylist()], strict=True)))
        )  # fmt: skip
        assert_that(out, equal_to(expected_rows))
