r"""Words and word pairs of a text, by the matcher's own rules.

A counted word must be exactly a query that can match. The text is case-folded and its
whitespace collapsed by the matcher's own `pipeline.match.normalize_for_match`, imported,
not copied. A word is a maximal run of letters and digits (`str.isalnum`), the matcher's
word boundary: the matcher finds query `w` at exactly the places where `w` is such a run,
so the count of `w` here is the number of places the matcher would match it. A pair
`"w1 w2"` is counted where two runs are separated by whitespace alone, which after
collapsing is the one space of the two-word query "w1 w2" (a hyphen, an apostrophe or a
dropped piece of markup between them breaks the pair).

The runs are cut with `[^\W_]+` rather than with `pipeline.match.split_runs`: Python's
`\w` is `str.isalnum()` plus "_", so the two split every string identically (a test runs
both over every code point), but `re` compiles `\w` to a table lookup, while the
matcher's generated character class is a list of ~700 ranges that `re` scans one by one:
on Wikipedia text the class made splitting 9x slower and a sixth of the whole count.

Importing `pipeline.match` imports Apache Beam, which logs a warning about optional GCP
libraries through the root logger on import; that line is kept off the terminal here.
`pipeline` never imports `querylist`, so there is no import cycle.
"""

from __future__ import annotations

import logging
import re
from collections import Counter

from .wikitext import BREAK  # noqa: F401 - re-exported: what breaks a pair


def _import_matcher_rules():
    root = logging.getLogger()
    quiet = logging.NullHandler()
    added = not root.handlers  # logging.warning() would install a stderr handler
    if added:
        root.addHandler(quiet)
    try:
        from pipeline.match import normalize_for_match
    finally:
        if added:
            root.removeHandler(quiet)
    return normalize_for_match


normalize_for_match = _import_matcher_rules()
_RUNS = re.compile(r"([^\W_]+)")


def split_runs(text: str) -> list[str]:
    """`[sep0, run0, sep1, run1, ..., sepN]`, as `pipeline.match.split_runs` returns."""
    return _RUNS.split(text)


def words_and_pairs(text: str) -> tuple[list[str], list[str]]:
    """(words, pairs) of `text` in order of occurrence; pairs as "w1 w2" strings."""
    parts = split_runs(normalize_for_match(text))
    runs = parts[1::2]
    seps = parts[2:-1:2]  # seps[i] lies between runs[i] and runs[i + 1]
    pairs = [f"{a} {b}" for a, b, s in zip(runs, runs[1:], seps, strict=False) if s == " "]
    return runs, pairs


def count_into(text: str, unigrams: Counter, bigrams: Counter) -> int:
    """Add the words and pairs of `text` to the two counters; returns its word count."""
    runs, pairs = words_and_pairs(text)
    unigrams.update(runs)  # Counter.update over a list counts in C
    bigrams.update(pairs)
    return len(runs)
