"""WordNet source: the lemma names of every synset, read from the WordNet 3.0 database files.

CLIP adds "all WordNet synsets not already in the query list"; MetaCLIP uses the lemma
names of all synsets. We read `data.{noun,verb,adj,adv}` (one synset a line) for the
names and `index.*` for how many of its senses SemCor tagged, used as the score so a cap
drops the least-attested lemmas first.
"""

from __future__ import annotations

import os
import re
from collections import Counter

from .normalize import normalize_query
from .source import QueryListError, SourceResult, SourceUnavailable

DEFAULT_DIR = "/usr/share/wordnet"  # where Debian's wordnet-base installs the database
PARTS_OF_SPEECH = ("noun", "verb", "adj", "adv")
_ADJ_MARKER = re.compile(r"\((?:a|p|ip)\)$")  # syntactic markers on adjectives: galore(ip)
_VERSION = re.compile(r"WordNet (\d+(?:\.\d+)*) Copyright")


def parse_data_line(line: str) -> list[str] | None:
    """Lemma names of the synset on one `data.*` line; None for license/header lines.

    Format: `offset lex_filenum ss_type w_cnt word lex_id [word lex_id ...] p_cnt ...`
    with `w_cnt` in hexadecimal. Raises ValueError on a line that breaks the format.
    """
    if not line or line[0] == " ":
        return None
    fields = line.split(" ")
    if len(fields) < 6 or not fields[0].isdigit():
        raise ValueError("not a synset line")
    word_count = int(fields[3], 16)
    end = 4 + 2 * word_count
    words = fields[4:end:2]
    lex_ids = fields[5:end:2]
    if (
        word_count == 0
        or len(fields) <= end
        or not fields[end].isdigit()  # p_cnt follows the words
        or any(len(x) != 1 or x not in "0123456789abcdef" for x in lex_ids)
    ):
        raise ValueError("word count does not match the line")
    return [_ADJ_MARKER.sub("", w).replace("_", " ") for w in words]


def parse_index_line(line: str) -> tuple[str, int] | None:
    """(lemma, tagsense_cnt) from one `index.*` line; None for license/header lines.

    Format: `lemma pos synset_cnt p_cnt [ptr_symbol ...] sense_cnt tagsense_cnt offsets...`.
    """
    if not line or line[0] == " ":
        return None
    fields = line.split()
    pointer_count = int(fields[3])
    tagsense = int(fields[5 + pointer_count])
    return fields[0].replace("_", " "), tagsense


def database_files(directory: str, kind: str) -> list[str]:
    """The existing `kind.<pos>` files (kind is "data" or "index") in a WordNet folder."""
    paths = (os.path.join(directory, f"{kind}.{pos}") for pos in PARTS_OF_SPEECH)
    return [p for p in paths if os.path.isfile(p)]


def read_lemmas(paths: list[str], rejected: Counter) -> Counter:
    """How many synsets name each lemma (in its own case), over all `data.*` files."""
    lemmas: Counter = Counter()
    for path in paths:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    names = parse_data_line(line.rstrip("\n"))
                except (ValueError, IndexError):
                    rejected["malformed data line"] += 1
                    continue
                if names:
                    lemmas.update(set(names))
    return lemmas


def read_tag_counts(paths: list[str], rejected: Counter) -> Counter:
    """Senses tagged in SemCor (tagsense_cnt) per lower-case lemma, summed over parts of speech."""
    counts: Counter = Counter()
    for path in paths:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    parsed = parse_index_line(line.rstrip("\n"))
                except (ValueError, IndexError):
                    rejected["malformed index line"] += 1
                    continue
                if parsed:
                    counts[parsed[0]] += parsed[1]
    return counts


def database_version(data_paths: list[str]) -> str:
    """The version named in the license header of the first data file ("3.0")."""
    with open(data_paths[0], encoding="utf-8", errors="replace") as f:
        for _, line in zip(range(40), f, strict=False):
            m = _VERSION.search(line)
            if m:
                return m.group(1)
    return "unknown"


def load(directory: str | None) -> SourceResult:
    """Every lemma name of every synset in `directory` (default: Debian's location)."""
    explicit = directory is not None
    directory = directory or DEFAULT_DIR
    data_paths = database_files(directory, "data")
    if not data_paths:
        if explicit:
            raise QueryListError(f"--wordnet {directory}: no data.noun/verb/adj/adv files there")
        raise SourceUnavailable(
            f"no WordNet database in {DEFAULT_DIR}; install it "
            "(apt-get install wordnet-base) or pass --wordnet DIR"
        )
    index_paths = database_files(directory, "index")
    rejected: Counter = Counter()
    lemmas = read_lemmas(data_paths, rejected)
    tags = read_tag_counts(index_paths, rejected)
    entries = []
    for lemma in lemmas:
        query = normalize_query(lemma)
        entries.append((query, float(tags.get(query.lower(), 0))))
    result = SourceResult(
        name="wordnet",
        entries=entries,
        read=len(lemmas),
        thresholds={"rule": "all lemma names of all synsets"},
        paths=data_paths + index_paths,
        version=f"WordNet {database_version(data_paths)}",
        note="score = senses tagged in SemCor (index.* tagsense_cnt; 0 if none)",
        rejected=dict(rejected),
    )
    result.sort_best_first()
    return result
