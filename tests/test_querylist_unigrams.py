"""Unigram source: `word count` files (plain and gzip) and the wordfreq offline default."""

from __future__ import annotations

import gzip

import pytest
import wordfreq

from querylist import unigrams
from querylist.normalize import normalize_query
from querylist.source import QueryListError

# The layout of the public Wikipedia word-frequency lists: `word count`, most frequent first.
WIKI_LIST = """the 181220535
of 83364637
dog 250314
bicycle 40120
café 150
rare 100
rarer 99

broken-line-without-count
also broken 12
squared ²
"""


def test_counts_file_threshold_and_rejected_lines(tmp_path):
    path = tmp_path / "enwiki-words.txt"
    path.write_text(WIKI_LIST, encoding="utf-8")
    result = unigrams.load(str(path), min_count=100, corpus_tokens=1)
    assert result.entries[:2] == [("the", 181220535.0), ("of", 83364637.0)]
    assert {q for q, _ in result.entries} == {"the", "of", "dog", "bicycle", "café", "rare"}
    assert result.read == 7
    assert result.rejected == {"malformed line": 3}
    assert result.thresholds == {"min_count": 100}


def test_gzip_and_tab_separated_counts_are_read_and_duplicates_summed(tmp_path):
    path = tmp_path / "counts.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("dog\t60\ncat\t99\ndog\t40\n")
    result = unigrams.load(str(path), min_count=100, corpus_tokens=1)
    assert result.entries == [("dog", 100.0)]


def test_missing_file_is_a_one_line_error(tmp_path):
    with pytest.raises(QueryListError, match="cannot read"):
        unigrams.load(str(tmp_path / "nope.txt"), 100, 1)


def test_wordfreq_default_counts_are_frequency_times_corpus_size():
    n = unigrams.DEFAULT_CORPUS_TOKENS
    result = unigrams.load(None, min_count=100, corpus_tokens=n)
    counts = dict(result.entries)
    for word in ("dog", "bicycle", "york", "retriever"):
        # word_frequency rounds to three significant digits
        assert counts[word] == pytest.approx(
            wordfreq.word_frequency(word, "en", "large") * n, rel=2e-3
        )
    # every kept word has at least 100 occurrences, and nothing at 100 was left out
    assert min(counts.values()) >= 100
    big = wordfreq.get_frequency_dict("en", "large")
    placeholders = {w for w in big if unigrams._SMASHED_NUMBER.search(w)}
    expected = {
        normalize_query(w) for w, f in big.items() if round(f * n) >= 100 and w not in placeholders
    }
    assert set(counts) == expected
    # wordfreq writes multi-digit numbers as zeros ("00th"); those are not words
    assert "00th" not in counts and result.rejected["wordfreq number placeholder"] > 0
    assert "not Wikipedia alone" in result.note


def test_higher_threshold_keeps_a_subset():
    low = {q for q, _ in unigrams.load(None, 100, unigrams.DEFAULT_CORPUS_TOKENS).entries}
    high = {q for q, _ in unigrams.load(None, 10_000, unigrams.DEFAULT_CORPUS_TOKENS).entries}
    assert high < low and "dog" in high
