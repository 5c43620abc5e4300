"""Opening plain, gzip or bzip2 input by its magic bytes, and reading `words... count` files.

Public count lists and page-view dumps come in all three forms; sniffing the content
instead of trusting the file name keeps `--unigrams counts.txt.gz` and friends working.
"""

from __future__ import annotations

import bz2
import gzip
import io
import zlib
from collections import Counter

from .source import QueryListError


def open_binary(path: str) -> io.BufferedIOBase:
    """A binary reader over `path`, decompressing gzip/bzip2 transparently.

    Raises QueryListError (one line, naming the file) when it cannot be opened.
    """
    try:
        with open(path, "rb") as f:
            magic = f.read(3)
        if magic[:2] == b"\x1f\x8b":
            return gzip.open(path, "rb")
        if magic == b"BZh":
            return bz2.open(path, "rb")
        return open(path, "rb")
    except OSError as e:
        raise QueryListError(f"cannot read {path}: {e.strerror or e}") from e


def read_counts(path: str, words_per_line: int) -> tuple[Counter, Counter]:
    """Counts from lines of `w1 [w2 ...] count` (space or tab separated).

    Returns (counts keyed by the word, or by a tuple of words when words_per_line > 1,
    repeated keys summed; rejected-line reasons). Blank lines are ignored.
    """
    counts: Counter = Counter()
    rejected: Counter = Counter()
    want = words_per_line + 1
    get = counts.get
    try:
        with io.TextIOWrapper(open_binary(path), encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.split()
                if not fields:
                    continue
                if len(fields) != want or not fields[-1].isdecimal():
                    rejected["malformed line"] += 1
                    continue
                key = fields[0] if words_per_line == 1 else tuple(fields[:-1])
                counts[key] = get(key, 0) + int(fields[-1])
    except (OSError, EOFError, zlib.error) as e:
        raise QueryListError(f"cannot read {path}: {e}") from e
    return counts, rejected
