"""BalancePerQuery: exact caps, MetaCLIP probabilities, determinism, and the Beam stage."""

from __future__ import annotations

import hashlib
import math
import random
from collections import Counter

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.utils import shared

from pipeline import balance, status_io
from pipeline.status_io import split_by_bucket

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


def _select_all(
    table: pa.Table, mode: str, cap: int, seed: int = 0, n_buckets: int = 7
) -> pa.Table:
    chosen = [
        balance.select_pairs(pairs, _keys(seed), mode, cap)
        for _, pairs in balance.pairs_by_query_bucket(table, n_buckets)
    ]
    return balance.apply_selection(table, pa.concat_tables(chosen), mode)


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
        balance.select_pairs(balance.PAIR_SCHEMA.empty_table(), {}, "random", 1)


@pytest.mark.parametrize("mode", ["exact", "metaclip"])
def test_balance_stage_in_beam_equals_plain_functions(tmp_path, mode):
    qpath = tmp_path / "q.txt"
    qpath.write_text("\n".join(QUERIES), encoding="utf-8")
    table = _candidates(2000)
    expected = _select_all(table, mode, 30)
    expected_rows = sorted(
        (u, st, tuple(s or ())) for u, st, s in
        zip(expected["uid"].to_pylist(), expected["status"].to_pylist(), expected["sel"].to_pylist(), strict=True)
    )  # fmt: skip
    keyed = split_by_bucket(table)
    with BeamTestPipeline(runner=FnApiRunner()) as p:
        out = (
            p
            | beam.Create(keyed)
            | balance.BalancePerQuery(shared.Shared(), str(qpath), mode, 30, 0)
            | beam.FlatMap(lambda kv: list(zip(kv[1]["uid"].to_pylist(), kv[1]["status"].to_pylist(),
                                               [tuple(s or ()) for s in kv[1]["sel"].to_pylist()], strict=True)))
        )  # fmt: skip
        assert_that(out, equal_to(expected_rows))
