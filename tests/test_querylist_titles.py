"""Title source on small hourly page-view dumps written in the real format."""

from __future__ import annotations

import gzip

import pytest

from querylist import titles
from querylist.source import QueryListError, SourceUnavailable

# `project title views bytes`, as in pageviews-YYYYMMDD-HH0000.gz (bytes is 0 there).
HOUR_1 = [
    "en Main_Page 242332 0",
    "en New_York_City 40 0",
    "en Golden_retriever 35 0",
    "en Talk:Dog 500 0",  # namespace: dropped
    "en.m New_York_City 900 0",  # mobile project: not `en`
    "de Hund 800 0",
    "en Caf%C3%A9_de_Flore 50 0",  # percent-encoded UTF-8
    "en Bad%FF 90 0",  # invalid escape: kept as written
    "en broken line",
    "en Dog many 0",
]
HOUR_2 = [
    "en New_York_City 30 0",
    "en Golden_retriever 34 0",
    "en Café_de_Flore 25 0",
    "en Bicycle 69 0",
]


def write_hour(path, lines):
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture
def dumps(tmp_path):
    return [
        write_hour(tmp_path / "pageviews-20240101-000000.gz", HOUR_1),
        write_hour(tmp_path / "pageviews-20240101-010000.gz", HOUR_2),
    ]


def test_sums_over_files_keeps_en_drops_namespaces(dumps):
    result = titles.load(dumps, min_views=70, projects=("en",))
    assert result.entries == [
        ("Main Page", 242332.0),
        ("Bad%FF", 90.0),
        ("Café de Flore", 75.0),
        ("New York City", 70.0),
    ]
    assert result.rejected == {"malformed line": 2, "title contains ':'": 1}
    assert result.thresholds["files"] == 2


def test_threshold_is_inclusive_and_one_file_alone_is_not_enough(dumps):
    one = dict(titles.load(dumps[:1], min_views=70, projects=("en",)).entries)
    assert "New York City" not in one and "Golden retriever" not in one
    low = dict(titles.load(dumps, min_views=69, projects=("en",)).entries)
    assert low["Golden retriever"] == 69.0 and low["Bicycle"] == 69.0


def test_other_projects_can_be_chosen(dumps):
    result = titles.load(dumps, min_views=70, projects=("en.m", "de"))
    assert dict(result.entries) == {"New York City": 900.0, "Hund": 800.0}


def test_plain_text_dump_is_read_too(tmp_path):
    path = tmp_path / "pagecounts-20140101-000000"
    path.write_text("en Dog 100 123456\n")
    assert titles.load([str(path)], 70, ("en",)).entries == [("Dog", 100.0)]


def test_no_files_says_there_is_no_offline_default():
    with pytest.raises(SourceUnavailable, match="no page-view files given.*--pageviews"):
        titles.load([], 70, ("en",))


def test_truncated_gzip_is_a_one_line_error(tmp_path, dumps):
    data = open(dumps[0], "rb").read()
    cut = tmp_path / "cut.gz"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(QueryListError, match="cut.gz"):
        titles.load([str(cut)], 70, ("en",))
