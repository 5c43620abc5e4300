"""MatchQueries: equal to the naive reference matcher on real captions, and fast paths exact."""

from __future__ import annotations

import importlib.util

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.utils import shared
from conftest import NAIVE_MATCHER, shared_path

from pipeline import status_io
from pipeline.match import MatchQueries, QueryMatcher, alnum_runs, read_querylist
from pipeline.status_io import FINAL

TRICKY_QUERIES = [
    "c++",
    ".net",
    "u.s.",
    "new york",
    "cat's",
    "a dog",
    "-",
    "&",
    "straße",
    "é",
    "x²",
    "#metoo",
    "rock 'n' roll",
    "don't",
    "©",
    "😂",
    "  Big   Dog ",
    "CAT",
    "cat",
    "at&t",
    "e-mail",
]
TRICKY_CAPTIONS = [
    "A cat.",
    "concatenate",
    "C++ and .NET in the U.S.!",
    "Straße STRASSE strasse",
    "x² x2 x²y",
    "café",
    "#MeToo rally",
    "naïve ĳ test",
    "\x01cat\x01",
    "a\u0301 cat\u0301s",
    "big dog",
    "a big  dog",
    "AT&T's e-mail",
    "Rock 'n' Roll hall",
    "© 2019 😂😂",
    "don't stop",
    "",
    "cat's-eye",
    "a dog-a dog",
    "ǅ dž",
    "١٢٣ cat٣",
    "rock 'n'roll",
    "newyork new  york",
]


@pytest.fixture(scope="module")
def naive():
    if not NAIVE_MATCHER.exists():
        pytest.skip(f"reference matcher not present: {NAIVE_MATCHER}")
    spec = importlib.util.spec_from_file_location("naive_matcher", NAIVE_MATCHER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _reference(naive, queries, captions):
    normalized = [naive.normalize(q) for q in queries]
    return [naive.match(c, normalized) for c in captions]


def test_tricky_cases_equal_reference(naive):
    matcher = QueryMatcher(TRICKY_QUERIES)
    assert [matcher.match(c) for c in TRICKY_CAPTIONS] == _reference(
        naive, TRICKY_QUERIES, TRICKY_CAPTIONS
    )


def test_word_boundaries():
    m = QueryMatcher(["cat", "new york"])
    assert m.match("A cat.") == [0]
    assert m.match("the cat's toy") == [0]
    assert m.match("concatenate") == []
    assert m.match("NEW   York city") == [1]
    assert m.match("newyork") == []


def test_real_captions_equal_reference(naive):
    import wordfreq

    queries = wordfreq.top_n_list("en", 4000) + TRICKY_QUERIES
    cc3m = shared_path("captions", "cc3m-validation.tsv")
    captions = [line.split("\t")[0] for line in open(cc3m, encoding="utf-8")][:1500]
    texts = pq.read_table(shared_path("captions", "img2dataset-test_10000.parquet"))["TEXT"]
    captions += [t for t in texts.to_pylist()[:1500] if t]  # many non-ASCII captions
    matcher = QueryMatcher(queries)
    got = [matcher.match(c) for c in captions]
    assert got == _reference(naive, queries, captions)
    assert sum(map(len, got)) > 10_000  # the comparison is not vacuous


def test_alnum_runs_follow_str_isalnum():
    text = "ab²-c_d ١٢ é\u0301"
    runs = alnum_runs(text)
    flags = [any(s <= i < e for s, e in runs) for i in range(len(text))]
    assert flags == [ch.isalnum() for ch in text]


def test_read_querylist_txt_and_parquet(tmp_path):
    (tmp_path / "q.txt").write_text("cat\n\ndog\ncat\n  bird  \n", encoding="utf-8")
    assert read_querylist(str(tmp_path / "q.txt")) == ["cat", "dog", "bird"]
    pq.write_table(pa.table({"query": ["a b", None, "c"]}), tmp_path / "q.parquet")
    assert read_querylist(str(tmp_path / "q.parquet")) == ["a b", "c"]


@pytest.mark.parametrize("content", [None, b"\n\n", b"\xff\xfe\x00bad"])
def test_read_querylist_errors_are_one_line(tmp_path, content):
    path = tmp_path / "q.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ValueError) as err:
        read_querylist(str(path))
    assert "\n" not in str(err.value)


def test_match_stage_in_beam(tmp_path):
    qpath = tmp_path / "q.txt"
    qpath.write_text("dog\nred car\n", encoding="utf-8")
    table = status_io.work_table({
        "uid": ["u1", "u2", "u3"], "caption": ["A dog on a red car", "a cat", "hotdog"],
        "source": ["s"] * 3, "row": [0, 1, 2],
    })  # fmt: skip
    with BeamTestPipeline(runner=FnApiRunner()) as p:
        out = p | beam.Create([table]) | MatchQueries(shared.Shared(), str(qpath))
        matched = out.matched | "m" >> beam.FlatMap(
            lambda t: [
                (u, tuple(q))
                for u, q in zip(t["uid"].to_pylist(), t["qids"].to_pylist(), strict=True)
            ]
        )
        final = out[FINAL] | "f" >> beam.FlatMap(
            lambda t: list(zip(t["uid"].to_pylist(), t["status"].to_pylist(), strict=True))
        )
        assert_that(matched, equal_to([("u1", (0, 1))]), label="matched")
        assert_that(final, equal_to([("u2", "no_match"), ("u3", "no_match")]), label="final")
