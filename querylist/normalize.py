"""Query-string normalisation shared by every source and by the merge.

The pipeline matches queries case-folded with whitespace collapsed (DESIGN.md), so two
entries that fold to the same key are the same query; the merge keeps one of them.
"""

from __future__ import annotations

import re
import unicodedata

_SPACES = re.compile(r"\s+")


def normalize_query(text: str) -> str:
    """NFC, strip, and collapse every run of whitespace to one space."""
    return _SPACES.sub(" ", unicodedata.normalize("NFC", text)).strip()


def fold_key(query: str) -> str:
    """The dedup key: the normalised query, case-folded (what the matcher compares)."""
    return normalize_query(query).casefold()


def has_word_character(query: str) -> bool:
    """False for empty strings and lone punctuation/symbols, which can never be a query."""
    return any(ch.isalnum() for ch in query)
