"""WordNet reader: real database lines, the published WordNet 3.0 statistics, and the source."""

from __future__ import annotations

import os
import pathlib
from collections import Counter

import pytest

from querylist import wordnet
from querylist.source import QueryListError, SourceUnavailable

SYSTEM_DIR = pathlib.Path(wordnet.DEFAULT_DIR)

# Synsets and unique strings per part of speech in WordNet 3.0 (Princeton's wnstats(7WN)).
WNSTATS_3_0 = {
    "noun": (82_115, 117_798),
    "verb": (13_767, 11_529),
    "adj": (18_156, 21_479),
    "adv": (3_621, 4_481),
}


def system_wordnet() -> pathlib.Path:
    if not (SYSTEM_DIR / "data.noun").is_file():
        pytest.skip(f"WordNet not installed in {SYSTEM_DIR} (apt-get install wordnet-base)")
    return SYSTEM_DIR


def real_lines(path: pathlib.Path, starts: tuple[str, ...], header: int = 29) -> list[str]:
    """The license header and the lines of `path` that start with one of `starts`."""
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    return lines[:header] + [ln for ln in lines[header:] if ln.startswith(starts)]


@pytest.fixture
def small_wordnet(tmp_path):
    """A WordNet folder holding a handful of real synsets (dog, galore) and their index lines."""
    src = system_wordnet()
    (tmp_path / "data.noun").write_text("".join(real_lines(src / "data.noun", ("02084071 ",))))
    (tmp_path / "data.adj").write_text("".join(real_lines(src / "data.adj", ("00014358 ",))))
    index_noun = real_lines(src / "index.noun", ("dog ", "domestic_dog ", "canis_familiaris "))
    (tmp_path / "index.noun").write_text("".join(index_noun))
    (tmp_path / "index.adj").write_text(
        "".join(real_lines(src / "index.adj", ("abounding ", "galore ")))
    )
    return tmp_path


def test_parse_data_line_reads_hex_word_count_and_strips_adjective_markers():
    # A synset line in the data.* format with w_cnt 0x0b = 11 words; one carries "(ip)".
    words = " ".join(f"w{i} 0" for i in range(10))
    line = f"00000001 00 s 0b {words} new_york(ip) 0 000 | gloss"
    names = wordnet.parse_data_line(line)
    assert len(names) == 11
    assert names[-1] == "new york"
    assert wordnet.parse_data_line("  1 This software and database is being provided") is None
    with pytest.raises(ValueError):
        wordnet.parse_data_line("00000001 00 n 03 only_one 0 000 | gloss")


def test_parse_index_line_finds_tagsense_after_pointer_symbols():
    assert wordnet.parse_index_line("golden_retriever n 1 3 @ ~ + 1 0 02099029  ") == (
        "golden retriever",
        0,
    )
    assert wordnet.parse_index_line("dog n 7 5 @ ~ #m #p %p 7 1 02084071 10114209") == ("dog", 1)


def test_small_database_of_real_lines(small_wordnet):
    result = wordnet.load(str(small_wordnet))
    queries = dict(result.entries)
    assert set(queries) == {"dog", "domestic dog", "Canis familiaris", "abounding", "galore"}
    assert queries["dog"] >= 1  # dog's first sense is SemCor-tagged
    assert queries["Canis familiaris"] == 0
    assert result.version == "WordNet 3.0"
    assert result.rejected == {}


def test_malformed_line_is_counted_not_fatal(small_wordnet):
    with open(small_wordnet / "data.noun", "a", encoding="utf-8") as f:
        f.write("12345678 05 n zz broken\n")
    result = wordnet.load(str(small_wordnet))
    assert result.rejected == {"malformed data line": 1}
    assert "dog" in dict(result.entries)


def test_whole_database_matches_published_statistics():
    src = system_wordnet()
    for pos, (synsets, strings) in WNSTATS_3_0.items():
        rejected: Counter = Counter()
        lines = 0
        lemmas: set[str] = set()
        with open(src / f"data.{pos}", encoding="utf-8") as f:
            for line in f:
                names = wordnet.parse_data_line(line.rstrip("\n"))
                if names:
                    lines += 1
                    lemmas.update(n.lower() for n in names)
        index = wordnet.read_tag_counts([str(src / f"index.{pos}")], rejected)
        assert lines == synsets, pos
        assert len(index) == strings, pos
        assert lemmas == set(index), pos  # every synset member is indexed and vice versa
        assert not rejected


def test_missing_default_names_the_package(monkeypatch, tmp_path):
    monkeypatch.setattr(wordnet, "DEFAULT_DIR", str(tmp_path / "absent"))
    with pytest.raises(SourceUnavailable, match="apt-get install wordnet-base"):
        wordnet.load(None)


def test_explicit_folder_without_database_is_an_error(tmp_path):
    os.makedirs(tmp_path / "empty")
    with pytest.raises(QueryListError, match="--wordnet"):
        wordnet.load(str(tmp_path / "empty"))
