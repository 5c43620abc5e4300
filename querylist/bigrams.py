"""Bigram source: word pairs with the highest pointwise mutual information.

CLIP augments its list with "bi-grams with high pointwise mutual information"; MetaCLIP
sets the PMI threshold so that about 100k bigrams pass. We compute
PMI = ln(c(w1 w2) * N / (c(w1) * c(w2))) from a bigram counts file and a unigram counts
file of the same corpus, rank, and keep the top `--bigram-budget`; the PMI of the last
one kept is recorded as the threshold. Offline, the default is the Google Web 1T
counts that ship with wordsegment (Peter Norvig's count_1w/count_2w): web text, not
Wikipedia.
"""

from __future__ import annotations

import importlib.metadata
import math
from collections import Counter

from .normalize import normalize_query
from .source import QueryListError, SourceResult, SourceUnavailable, sort_best_first
from .textfiles import read_counts

DEFAULT_BUDGET = 100_000
DEFAULT_MIN_COUNT = 100
#: Tokens in Google Web 1T, the corpus behind wordsegment's truncated count files.
WEB1T_TOKENS = 1_024_908_267_229


def pmi_ranked(
    bigrams: dict[tuple[str, str], int],
    unigrams: dict[str, int],
    total_tokens: int,
    min_count: int,
    rejected: Counter,
) -> list[tuple[str, float]]:
    """("w1 w2", PMI) for every usable bigram, highest PMI first.

    Pairs below `min_count`, pairs with a sentence marker such as `<s>`, and pairs with a
    word absent from the unigram counts are counted in `rejected` and skipped.
    """
    scored = []
    for (w1, w2), count in bigrams.items():
        if count < min_count:
            rejected["below min bigram count"] += 1
        elif w1.startswith("<") or w2.startswith("<"):
            rejected["sentence marker"] += 1
        elif w1 not in unigrams or w2 not in unigrams or not unigrams[w1] or not unigrams[w2]:
            rejected["word missing from unigram counts"] += 1
        else:
            pmi = math.log(count * total_tokens / (unigrams[w1] * unigrams[w2]))
            scored.append((normalize_query(f"{w1} {w2}"), pmi))
    return sort_best_first(scored)


def wordsegment_files() -> tuple[str, str, str]:
    """(unigrams.txt, bigrams.txt, version) of the installed wordsegment package."""
    try:
        from wordsegment import Segmenter
    except ImportError as e:
        raise SourceUnavailable(
            "wordsegment is not installed; pip install wordsegment, or pass "
            "--bigrams FILE --bigram-unigrams FILE"
        ) from e
    version = importlib.metadata.version("wordsegment")
    return Segmenter.UNIGRAMS_FILENAME, Segmenter.BIGRAMS_FILENAME, version


def load(
    bigram_path: str | None,
    unigram_path: str | None,
    budget: int,
    min_count: int,
) -> SourceResult:
    """The `budget` highest-PMI bigrams from the given files, or from wordsegment's."""
    if bigram_path:
        if not unigram_path:
            raise QueryListError(
                "--bigrams needs unigram counts of the same corpus: pass --bigram-unigrams FILE"
            )
        version, total = "user files", None
    else:
        unigram_path, bigram_path, ws_version = wordsegment_files()
        version, total = f"wordsegment {ws_version} (Google Web 1T)", WEB1T_TOKENS
    unigrams, rejected_uni = read_counts(unigram_path, 1)
    bigrams, rejected = read_counts(bigram_path, 2)
    for reason, n in rejected_uni.items():
        rejected[f"unigram file: {reason}"] += n
    total = total or sum(unigrams.values())
    ranked = pmi_ranked(bigrams, unigrams, total, min_count, rejected)
    kept = ranked[:budget]
    thresholds: dict[str, float | int | str] = {
        "budget": budget,
        "min_bigram_count": min_count,
        "corpus_tokens": total,
        "pmi_threshold": round(kept[-1][1], 4) if kept else float("nan"),
    }
    note = "PMI threshold chosen to fill the budget"
    if version.startswith("wordsegment"):
        note += "; offline default: Google Web 1T counts (web text, not Wikipedia)"
    return SourceResult(
        name="bigrams",
        entries=kept,
        read=len(bigrams),
        thresholds=thresholds,
        paths=[unigram_path, bigram_path],
        version=version,
        note=note,
        rejected=dict(rejected),
    )
