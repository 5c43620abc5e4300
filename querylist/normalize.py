"""Query-string normalisation shared by every source and by the merge.

The pipeline matches queries case-folded with runs of whitespace collapsed (DESIGN.md,
`" ".join(text.casefold().split())`), so two entries that fold to the same key are the
same query and the merge keeps one of them.
"""

from __future__ import annotations

import re
import unicodedata

# Python's \w is str.isalnum() plus "_"; without "_" it is exactly "a letter or digit",
# the characters the matcher treats as word boundaries.
_LETTER_OR_DIGIT = re.compile(r"[^\W_]")


def normalize_query(text: str) -> str:
    """NFC, strip, and collapse every run of whitespace to one space."""
    if not text.isascii():
        text = unicodedata.normalize("NFC", text)
    return " ".join(text.split())


def fold_key(query: str) -> str:
    """The dedup key: the normalised query, case-folded (what the matcher compares)."""
    return normalize_query(query).casefold()


def has_word_character(query: str) -> bool:
    """False for empty strings and lone punctuation/symbols, which can never be a query."""
    return _LETTER_OR_DIGIT.search(query) is not None
