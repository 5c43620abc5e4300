"""Unigram source: every word seen at least `--min-count` times in a reference corpus.

CLIP's base list is every word occurring at least 100 times in English Wikipedia. Given
`--unigrams FILE` (`word count` lines, like the public Wikipedia word-frequency lists)
we threshold those counts. Offline, the default is wordfreq's large English list: its
frequencies blend Wikipedia, subtitles, news, books, web text, Twitter and Reddit, and
we turn them into counts for a corpus of DEFAULT_CORPUS_TOKENS tokens so that the
threshold still reads as "occurrences".
"""

from __future__ import annotations

import importlib.metadata
import re
from collections import Counter

from .normalize import normalize_query
from .source import SourceResult, SourceUnavailable, sort_best_first
from .textfiles import read_counts

DEFAULT_MIN_COUNT = 100
#: Roughly the size of English Wikipedia in word tokens (about 3e9 as of the CLIP paper).
DEFAULT_CORPUS_TOKENS = 3_000_000_000
# wordfreq replaces the digits of multi-digit numbers by zeros ("00th", "0,000"): those
# tokens stand for a whole class of numbers, not a word anyone wrote.
_SMASHED_NUMBER = re.compile(r"\d[\d.,]+")


def threshold(counts: dict[str, int], min_count: int) -> list[tuple[str, float]]:
    """(word, count) for words with count >= min_count, normalised; best first."""
    return sort_best_first(
        [(normalize_query(w), float(c)) for w, c in counts.items() if c >= min_count]
    )


def wordfreq_counts(corpus_tokens: int, rejected: Counter) -> tuple[dict[str, int], str, str]:
    """wordfreq's large English list as integer counts over `corpus_tokens` tokens.

    Returns (counts, package version, path of the list file).
    """
    try:
        import wordfreq
    except ImportError as e:
        raise SourceUnavailable(
            "wordfreq is not installed; pip install wordfreq, or pass --unigrams FILE"
        ) from e
    counts: dict[str, int] = {}
    for word, freq in wordfreq.get_frequency_dict("en", "large").items():
        if _SMASHED_NUMBER.search(word):
            rejected["wordfreq number placeholder"] += 1
            continue
        counts[word] = round(freq * corpus_tokens)
    path = wordfreq.available_languages("large").get("en", "")
    return counts, importlib.metadata.version("wordfreq"), path


def load(path: str | None, min_count: int, corpus_tokens: int) -> SourceResult:
    """Words at or above `min_count` from `path`, or from wordfreq when no path is given."""
    rejected: Counter = Counter()
    thresholds: dict[str, float | int | str] = {"min_count": min_count}
    if path:
        counts, rejected = read_counts(path, 1)
        version, paths = "user file", [path]
        note = "counts from --unigrams"
    else:
        counts, wf_version, wf_path = wordfreq_counts(corpus_tokens, rejected)
        thresholds["corpus_tokens"] = corpus_tokens
        version, paths = f"wordfreq {wf_version} (large_en)", [wf_path]
        note = (
            "offline default: wordfreq 'large' English frequencies x corpus_tokens; a blend "
            "of Wikipedia, subtitles, news, books, web, Twitter and Reddit, not Wikipedia alone"
        )
    return SourceResult(
        name="unigrams",
        entries=threshold(counts, min_count),
        read=len(counts),
        thresholds=thresholds,
        paths=paths,
        version=version,
        note=note,
        rejected=dict(rejected),
    )
