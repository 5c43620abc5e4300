"""Merge, dedup, cap and outputs; the CLI on small real-format inputs; the default build."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import unicodedata

import pyarrow.parquet as pq
import pytest

from querylist import build, cli, wordnet
from querylist.normalize import fold_key, has_word_character, normalize_query
from querylist.source import SourceResult, SourceUnavailable


def result(name, entries):
    return SourceResult(name, entries, len(entries), {}, [], "test")


def test_normalize_and_fold():
    decomposed = unicodedata.normalize("NFD", "  Café \t de\n Flore ")
    assert normalize_query(decomposed) == "Café de Flore"
    assert fold_key("Golden  RETRIEVER") == "golden retriever"
    assert fold_key("Straße") == fold_key("STRASSE")  # case-folding, not lower()
    assert not has_word_character(" -- ") and not has_word_character("")
    assert has_word_character("C++") and has_word_character("3")


def test_merge_keeps_first_source_in_paper_order_and_best_display_form():
    rows, stats = build.merge(
        [
            result("unigrams", [("Dog", 20.0), ("dog", 10.0), ("...", 5.0), ("", 1.0)]),
            result("bigrams", [("new  york", 3.0)]),
            result("wordnet", [("DOG", 1.0), ("New York", 0.0), ("golden retriever", 0.0)]),
        ]
    )
    assert rows == [
        ("Dog", "unigrams", 20.0),
        ("new york", "bigrams", 3.0),
        ("golden retriever", "wordnet", 0.0),
    ]
    assert (stats["unigrams"].duplicates, stats["unigrams"].invalid) == (1, 2)
    assert (stats["wordnet"].duplicates, stats["wordnet"].entries) == (2, 1)


def test_cap_drops_lowest_priority_then_lowest_score():
    rows, stats = build.merge(
        [result("unigrams", [("a", 3.0), ("b", 2.0)]), result("wordnet", [("c", 5), ("d", 1)])]
    )
    kept = build.cap(rows, 3, stats)
    assert [r[0] for r in kept] == ["a", "b", "c"]
    assert (stats["wordnet"].capped, stats["wordnet"].entries) == (1, 1)


def fake_loaders(missing: str | None = None):
    def unavailable():
        raise SourceUnavailable("install something")

    loaders = {
        "unigrams": lambda: result("unigrams", [("dog", 9.0), ("bicycle", 8.0)]),
        "bigrams": lambda: result("bigrams", [("new york", 4.0)]),
        "titles": unavailable,
        "wordnet": lambda: result("wordnet", [("dog", 1.0), ("golden retriever", 0.0)]),
    }
    if missing:
        loaders[missing] = unavailable
    return loaders


def test_outputs_agree_with_each_other(tmp_path):
    logs: list[str] = []
    report = build.build(fake_loaders(), str(tmp_path), 500_000, log=logs.append)
    table = pq.read_table(tmp_path / "querylist.parquet")
    assert table.schema.equals(build.QUERYLIST_SCHEMA)
    queries = table.column("query").to_pylist()
    assert queries == ["dog", "bicycle", "new york", "golden retriever"]
    assert table.column("source").to_pylist() == ["unigrams", "unigrams", "bigrams", "wordnet"]
    assert (tmp_path / "querylist.txt").read_text(encoding="utf-8").splitlines() == queries
    saved = json.loads((tmp_path / "querylist.json").read_text())
    assert saved["counts"] == {"unigrams": 2, "bigrams": 1, "titles": 0, "wordnet": 1}
    assert saved["sources"]["titles"]["note"] == "titles: 0 — install something"
    assert saved["sources"]["wordnet"]["duplicates"] == 1
    assert saved["total"] == report["total"] == 4
    assert "titles: 0 — install something" in logs
    table_text = build.summary_table(report)
    assert "titles: 0 — install something" in table_text
    assert table_text.splitlines()[0].split() == [
        "source",
        "read",
        "passed",
        "invalid",
        "dupes",
        "capped",
        "entries",
        "paper",
    ]


def test_nothing_written_when_every_source_is_missing(tmp_path):
    loaders = {name: fake_loaders(name)[name] for name in build.SOURCE_ORDER}
    report = build.build(loaders, str(tmp_path / "out"), 10, log=lambda m: None)
    assert report["total"] == 0 and not (tmp_path / "out").exists()


@pytest.fixture
def small_inputs(tmp_path):
    """Unigram, bigram and page-view files in their real formats."""
    (tmp_path / "uni.txt").write_text("dog 500\nbicycle 300\nthe 9000\nnew 800\nyork 60\nzz 3\n")
    (tmp_path / "bi.txt").write_text("new york 50\nthe dog 40\n")
    with gzip.open(tmp_path / "pageviews-20240101-000000.gz", "wt") as f:
        f.write("en New_York 75 0\nen Golden_retriever 80 0\nen File:Dog.jpg 900 0\n")
    return tmp_path


def test_cli_on_small_inputs_with_missing_default_wordnet(small_inputs, monkeypatch, capsys):
    monkeypatch.setattr(wordnet, "DEFAULT_DIR", str(small_inputs / "no-wordnet"))
    out = small_inputs / "out"
    rc = cli.main(
        [
            "build", "--out", str(out),
            "--unigrams", str(small_inputs / "uni.txt"),
            "--bigrams", str(small_inputs / "bi.txt"),
            "--bigram-budget", "1", "--min-bigram-count", "1",
            "--pageviews", str(small_inputs / "pageviews-20240101-000000.gz"),
        ]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert rc == 0
    assert "wordnet: 0 — no WordNet database" in captured.err
    assert "apt-get install wordnet-base" in captured.err
    assert (out / "querylist.txt").read_text().splitlines() == [
        "the", "new", "dog", "bicycle", "new york", "Golden retriever"
    ]  # fmt: skip
    report = json.loads((out / "querylist.json").read_text())
    assert report["counts"] == {"unigrams": 4, "bigrams": 1, "titles": 1, "wordnet": 0}
    assert report["sources"]["titles"]["duplicates"] == 1  # "New York" came with bigrams
    assert report["sources"]["wordnet"]["status"] == "unavailable"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--unigrams", "/nonexistent/uni.txt"], "no such file: /nonexistent/uni.txt"),
        (["--wordnet", "/nonexistent/wn"], "--wordnet /nonexistent/wn: no such folder"),
        (["--bigrams", "{uni}"], "--bigram-unigrams"),
    ],
)
def test_cli_bad_input_is_one_line_and_non_zero(small_inputs, capsys, args, message):
    args = [a.format(uni=small_inputs / "uni.txt") for a in args]
    rc = cli.main(["build", "--out", str(small_inputs / "out"), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err[-1].startswith("wit-querylist: error:") and message in err[-1]


def test_cli_rejects_negative_threshold(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["build", "--out", str(tmp_path), "--min-count", "-1"])
    assert e.value.code == 2


@pytest.mark.slow
def test_default_build_meets_the_done_when(tmp_path):
    if not (wordnet.database_files(wordnet.DEFAULT_DIR, "data")):
        pytest.skip(f"WordNet not in {wordnet.DEFAULT_DIR} (apt-get install wordnet-base)")
    out = tmp_path / "ql"
    proc = subprocess.run(
        [sys.executable, "-m", "querylist.cli", "build", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    table = pq.read_table(out / "querylist.parquet")
    queries = table.column("query").to_pylist()
    assert len(queries) >= 300_000
    assert len({q.casefold() for q in queries}) == len(queries)
    assert all(q == normalize_query(q) and has_word_character(q) for q in queries)
    report = json.loads((out / "querylist.json").read_text())
    assert sum(1 for n in report["counts"].values() if n > 0) >= 3
    assert report["counts"]["titles"] == 0
    assert "no page-view files given" in report["sources"]["titles"]["note"]
    assert "--pageviews" in proc.stdout + proc.stderr
    assert sum(report["counts"].values()) == len(queries) == report["total"]
    folded = {q.casefold() for q in queries}
    for query in ("dog", "golden retriever", "bicycle", "new york"):
        assert query in folded, query
    assert report["sources"]["wordnet"]["version"] == "WordNet 3.0"
    assert report["sources"]["unigrams"]["version"].startswith("wordfreq ")
    assert report["sources"]["bigrams"]["version"].startswith("wordsegment ")
    txt = (out / "querylist.txt").read_text(encoding="utf-8").splitlines()
    assert txt == queries
