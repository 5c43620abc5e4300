"""Bigram source: PMI from `word count` / `w1 w2 count` files, the budget, and wordsegment."""

from __future__ import annotations

import math
from collections import Counter

import pytest
from wordsegment import Segmenter

from querylist import bigrams
from querylist.source import QueryListError

UNIGRAMS = "new 1000\nyork 50\nthe 5000\nof 4000\ngolden 200\nretriever 20\n"
BIGRAMS = (
    "new york\t40\n"
    "of the\t900\n"
    "golden retriever\t15\n"
    "<s> the\t300\n"  # sentence marker
    "york zebra\t30\n"  # zebra is not in the unigram counts
    "new the\t1\n"  # below the minimum count
    "a b c 5\n"  # not a bigram line
)


@pytest.fixture
def corpus(tmp_path):
    (tmp_path / "uni.txt").write_text(UNIGRAMS)
    (tmp_path / "bi.txt").write_text(BIGRAMS)
    return str(tmp_path / "uni.txt"), str(tmp_path / "bi.txt")


def test_pmi_values_budget_and_threshold(corpus):
    uni, bi = corpus
    n = 1000 + 50 + 5000 + 4000 + 200 + 20  # total of the unigram file
    result = bigrams.load(bi, uni, budget=2, min_count=10)
    pmi = {
        "golden retriever": math.log(15 * n / (200 * 20)),
        "new york": math.log(40 * n / (1000 * 50)),
        "of the": math.log(900 * n / (5000 * 4000)),
    }
    assert [q for q, _ in result.entries] == ["golden retriever", "new york"]
    for query, score in result.entries:
        assert score == pytest.approx(pmi[query])
    assert result.thresholds["pmi_threshold"] == pytest.approx(pmi["new york"], abs=1e-4)
    assert result.thresholds["corpus_tokens"] == n
    assert result.rejected == {
        "malformed line": 1,
        "sentence marker": 1,
        "word missing from unigram counts": 1,
        "below min bigram count": 1,
    }


def test_budget_larger_than_supply_keeps_all(corpus):
    uni, bi = corpus
    result = bigrams.load(bi, uni, budget=100, min_count=10)
    assert len(result.entries) == 3


def test_user_bigrams_need_their_unigram_counts(corpus):
    with pytest.raises(QueryListError, match="--bigram-unigrams"):
        bigrams.load(corpus[1], None, budget=10, min_count=0)


def test_wordsegment_default_matches_an_independent_pmi():
    result = bigrams.load(None, None, budget=bigrams.DEFAULT_BUDGET, min_count=100)
    assert len(result.entries) == bigrams.DEFAULT_BUDGET
    scores = dict(result.entries)
    # Reference: wordsegment's own parse of the same files, and its corpus total.
    uni = Segmenter.parse(Segmenter.UNIGRAMS_FILENAME)
    bi = Segmenter.parse(Segmenter.BIGRAMS_FILENAME)
    for pair in ("golden retriever", "hong kong", "los angeles"):
        w1, w2 = pair.split()
        expected = math.log(bi[pair] * Segmenter.TOTAL / (uni[w1] * uni[w2]))
        assert scores[pair] == pytest.approx(expected)
    assert "new york" in scores
    threshold = result.thresholds["pmi_threshold"]
    assert min(scores.values()) == pytest.approx(threshold, abs=1e-4)
    # The kept set is exactly the reference pairs above the threshold. Pairs listed twice
    # in the file (case variants) are summed by us but overwritten by wordsegment: skip them.
    with open(Segmenter.BIGRAMS_FILENAME, encoding="utf-8") as f:
        listed = Counter(line.split("\t")[0] for line in f)
    checked = 0
    for pair, count in bi.items():
        w1, w2 = pair.split()
        if listed[pair] > 1 or w1 == "<s>" or w1 not in uni or w2 not in uni:
            continue
        ref = math.log(count * Segmenter.TOTAL / (uni[w1] * uni[w2]))
        if abs(ref - threshold) > 1e-3:
            assert (pair in scores) == (ref > threshold), pair
            checked += 1
    assert checked > 200_000
    assert result.rejected["sentence marker"] > 0
    assert "not Wikipedia" in result.note
