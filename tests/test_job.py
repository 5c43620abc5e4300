"""The whole wit-build job (--no-fetch) on the fixture corpus: invariants, labels, reruns."""

from __future__ import annotations

import json
from collections import Counter

import pyarrow.parquet as pq
import pytest

from pipeline import cli
from pipeline.fixtures.candidates import KIND_STATUS, write_candidates
from pipeline.fixtures.corpus import demo_queries, generate_images
from pipeline.schema import QUERY_COUNTS_SCHEMA, STATUS_SCHEMA, STATUSES
from pipeline.status_io import read_status

IN_PROCESS = ["--direct_num_workers=1", "--direct_running_mode=in_memory"]
BAD_TSV = (
    "url\tcaption\n"
    "http://127.0.0.1:9/x/1.jpg\ta small red circle on a white background\n"
    "only one field\n"
    "\n"
    "http://127.0.0.1:9/x/2.jpg\tun petit circle orange sur un fond blanc, dessiné à la main avec amour\n"
    "http://127.0.0.1:9/x/3.jpg\t\xff\n"
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("job")
    generate_images(root / "corpus", n=120, size=24)
    counts = write_candidates(root / "corpus", "http://127.0.0.1:9", root / "cands")
    (root / "queries.txt").write_text("\n".join(demo_queries()) + "\n", encoding="utf-8")
    (root / "cands" / "extra.tsv").write_text(BAD_TSV, encoding="utf-8")
    (root / "cands" / "broken.parquet").write_bytes(b"PAR1 this is not parquet")
    n_rows = counts["parquet_rows"] + counts["page_images"] + 4  # 4 tsv rows (blank line is none)
    return root, counts, n_rows


def _run(root, out, *extra) -> int:
    return cli.main([
        "--querylist", str(root / "queries.txt"), "--out", str(out), "--no-fetch",
        "--input", str(root / "cands" / "candidates.parquet"), "--input", str(root / "cands" / "pages"),
        "--input", str(root / "cands" / "extra.tsv"), "--input", str(root / "cands" / "broken.parquet"),
        *extra,
    ])  # fmt: skip


def _sorted_status(out):
    return read_status(str(out)).sort_by("uid")


@pytest.fixture(scope="module")
def default_run(corpus):
    root, _, _ = corpus
    out = root / "out-default"
    assert _run(root, out) == 0  # the default runner: multi-process FnApiRunner
    return out


def test_every_input_row_has_exactly_one_status(corpus, default_run):
    _, _, n_rows = corpus
    status = read_status(str(default_run))
    assert status.schema == STATUS_SCHEMA
    assert status.num_rows == n_rows
    assert len(set(status["uid"].to_pylist())) == n_rows
    assert set(status["status"].to_pylist()) <= set(STATUSES)


def test_statuses_follow_the_fixture_labels(corpus, default_run):
    root, counts, _ = corpus
    labels = pq.read_table(root / "cands" / "labels.parquet").to_pylist()
    status = read_status(str(default_run)).to_pylist()
    source = str(root / "cands" / "candidates.parquet")
    got = Counter(r["status"] for r in status if r["source"] == source)
    want = Counter(KIND_STATUS.get(r["kind"], "kept") for r in labels)  # bad endpoints: selected
    assert got == want
    dups = [r for r in status if r["status"] == "duplicate"]
    winners = {r["uid"] for r in status}
    assert dups and all(r["reason"] in winners and r["uid"].startswith("row:") for r in dups)
    pages = [r for r in status if "/pages/" in r["source"]]
    assert len(pages) == counts["page_images"]
    assert Counter(r["status"] for r in pages) == {"kept": counts["page_images"] - counts["page_junk_alt"],
                                                   "caption_rejected": counts["page_junk_alt"]}  # fmt: skip
    assert all(
        r["url"].startswith("http://127.0.0.1:9/images/") for r in pages
    )  # base href resolved


def test_bad_rows_and_unreadable_files_are_recorded(corpus, default_run):
    root, _, _ = corpus
    rows = {
        r["url"]: r
        for r in read_status(str(default_run)).to_pylist()
        if r["source"].endswith("extra.tsv")
    }
    assert len(rows) == 4
    assert rows[None]["reason"] == "unreadable_row" and rows[None]["uid"].startswith("row:")
    assert rows["http://127.0.0.1:9/x/1.jpg"]["status"] == "kept"
    assert rows["http://127.0.0.1:9/x/2.jpg"]["status"] == "language_rejected"
    assert rows["http://127.0.0.1:9/x/3.jpg"]["reason"] == "too_short"
    manifest = json.loads((default_run / "manifest.json").read_text())
    assert [u["path"] for u in manifest["inputs"]["unreadable"]] == [
        str(root / "cands" / "broken.parquet")
    ]


def test_manifest_counts_and_metrics(corpus, default_run):
    _, _, n_rows = corpus
    manifest = json.loads((default_run / "manifest.json").read_text())
    status = read_status(str(default_run))
    assert manifest["rows"] == n_rows and manifest["shards"] == []
    assert manifest["totals"] == {s: status["status"].to_pylist().count(s) for s in STATUSES}
    assert {k: v for k, v in manifest["metrics"].items() if v} == {
        k: v for k, v in manifest["totals"].items() if v
    }
    assert manifest["versions"]["apache-beam"] and manifest["parameters"]["per_query_cap"] == 20000
    counts = pq.read_table(default_run / "counts" / "query_counts.parquet")
    assert counts.schema == QUERY_COUNTS_SCHEMA
    assert sorted(counts["query"].to_pylist()) == sorted(demo_queries())
    kept_rows = [r for r in status.to_pylist() if r["status"] == "kept"]
    for row in counts.to_pylist():
        assert row["selected"] <= row["matched"]
        assert row["kept"] == sum(row["query"] in r["matched_queries"] for r in kept_rows)
    # the pipeline's combiner gives what the old launcher computed from every status row
    from pipeline.status_io import query_counts

    reference = query_counts(status, counts["query"].to_pylist())
    assert counts.equals(reference)
    assert manifest["input_rows"] == n_rows


def test_rerun_on_another_runner_gives_identical_tables(corpus, default_run):
    root, _, _ = corpus
    out = root / "out-rerun"
    assert _run(root, out, *IN_PROCESS) == 0
    assert _sorted_status(out).equals(_sorted_status(default_run))
    assert pq.read_table(out / "counts" / "query_counts.parquet").equals(
        pq.read_table(default_run / "counts" / "query_counts.parquet"))  # fmt: skip
    assert _run(root, out, *IN_PROCESS) == 0  # rerun into the same OUT: no leftovers
    assert _sorted_status(out).equals(_sorted_status(default_run))


@pytest.mark.parametrize("mode", ["exact", "metaclip"])
def test_small_cap(corpus, mode):
    root, _, n_rows = corpus
    out = root / f"out-cap-{mode}"
    assert _run(root, out, "--per-query-cap", "3", "--balance", mode, *IN_PROCESS) == 0
    status = read_status(str(out))
    assert status.num_rows == n_rows
    counts = pq.read_table(out / "counts" / "query_counts.parquet").to_pylist()
    statuses = Counter(status["status"].to_pylist())
    assert statuses["not_selected"] > 0
    if mode == "exact":
        assert max(c["selected"] for c in counts) == 3
    for r in status.to_pylist():
        assert set(r["selected_by"]) <= set(r["matched_queries"])
        assert (r["status"] == "kept") == bool(r["selected_by"])


def test_command_line_errors_are_one_line(corpus, tmp_path, capsys):
    root, _, _ = corpus
    rc = cli.main(["--querylist", str(tmp_path / "missing.txt"), "--input", str(root / "cands" / "extra.tsv"),
                   "--out", str(tmp_path / "o"), "--no-fetch"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "missing.txt" in err and len(err.splitlines()) == 1
    rc = cli.main(["--querylist", str(root / "queries.txt"), "--input", str(tmp_path / "none-*.tsv"),
                   "--out", str(tmp_path / "o"), "--no-fetch"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "matches no file" in err and len(err.splitlines()) == 1
    rc = cli.main(["--querylist", str(root / "queries.txt"), "--input", str(root / "cands" / "broken.parquet"),
                   "--out", str(tmp_path / "o"), "--no-fetch"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        rc == 2
        and "broken.parquet" in err[0]
        and err[-1] == "wit-build: none of the 1 input files can be read"
    )
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--querylist", "q", "--input", "x", "--out", "o", "--per-query-cap", "lots"])
    assert exit_.value.code == 2


@pytest.mark.slow
def test_fetching_job_on_the_fixture_web(tmp_path):
    """With fetching: every row still ends once, and kept rows are exactly the shard samples."""
    from pipeline.fixtures.candidates import ENDPOINT_STATUS
    from pipeline.fixtures.web import FixtureWeb

    generate_images(tmp_path / "corpus", n=40, size=24)
    (tmp_path / "queries.txt").write_text("\n".join(demo_queries()) + "\n", encoding="utf-8")
    with FixtureWeb(image_dir=tmp_path / "corpus" / "images") as web:
        base = web.base_url.rstrip("/")
        write_candidates(tmp_path / "corpus", web.base_url, tmp_path / "cands")
        rc = cli.main([
            "--querylist", str(tmp_path / "queries.txt"), "--out", str(tmp_path / "out"),
            "--input", str(tmp_path / "cands" / "candidates.parquet"), "--allow-private-addresses",
            "--shard-size", "16", "--image-size", "32", *IN_PROCESS,
        ])  # fmt: skip
    assert rc == 0
    labels = pq.read_table(tmp_path / "cands" / "labels.parquet").to_pylist()
    status = read_status(str(tmp_path / "out"))
    assert status.num_rows == len(labels) == len(set(status["uid"].to_pylist()))
    kept = {r["uid"]: r for r in status.to_pylist() if r["status"] == "kept"}
    samples = pq.ParquetDataset(sorted((tmp_path / "out" / "shards").glob("*.parquet"))).read()
    assert sorted(samples["uid"].to_pylist()) == sorted(kept)
    assert all(r["shard"] and r["key"] for r in kept.values())
    by_url = {r["url"]: r["status"] for r in status.to_pylist()}
    for path, expected in ENDPOINT_STATUS.items():
        assert by_url[base + path] == expected, path
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert sum(s["samples"] for s in manifest["shards"]) == len(kept) == manifest["totals"]["kept"]


def test_dedup_winner_does_not_depend_on_arrival_order():
    import random

    import pyarrow as pa

    from pipeline.dedup import resolve_duplicates
    from pipeline.status_io import work_table

    rows = [("u1", "b.tsv", 5), ("u1", "a.tsv", 9), ("u1", "a.tsv", 2), ("u2", "c.tsv", 0)]
    outcomes = set()
    for seed in range(6):
        shuffled = random.Random(seed).sample(rows, len(rows))
        table = work_table({"uid": [r[0] for r in shuffled], "source": [r[1] for r in shuffled],
                            "row": [r[2] for r in shuffled]})  # fmt: skip
        winners, dups = resolve_duplicates(pa.concat_tables([table]))
        outcomes.add((
            tuple(zip(winners["uid"].to_pylist(), winners["source"].to_pylist(), winners["row"].to_pylist(), strict=True)),
            tuple(sorted(zip(dups["reason"].to_pylist(), dups["status"].to_pylist(), strict=True))),
        ))  # fmt: skip
    assert outcomes == {(
        (("u1", "a.tsv", 2), ("u2", "c.tsv", 0)),
        (("u1", "duplicate"), ("u1", "duplicate")),
    )}  # fmt: skip


@pytest.mark.parametrize("n_buckets", [1, 3])
def test_dedup_stage_in_beam(n_buckets, tmp_path):
    """Copies inside one table and across tables; the first (source, row) wins."""
    import apache_beam as beam
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner
    from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
    from apache_beam.testing.util import assert_that, equal_to

    from pipeline.dedup import Dedup
    from pipeline.normalize import candidate_uid
    from pipeline.status_io import FINAL, work_table

    uid = candidate_uid("http://a.org/1.jpg", "a red bus")
    other = candidate_uid("http://a.org/2.jpg", "a red bus")
    first = work_table({"uid": [uid, other, uid], "source": ["b.tsv"] * 3, "row": [1, 2, 3]})
    second = work_table({"uid": [uid], "source": ["a.tsv"], "row": [7]})
    with BeamTestPipeline(runner=FnApiRunner()) as p:
        out = p | beam.Create([first, second]) | Dedup(str(tmp_path), n_buckets)
        unique = out["unique"] | "u" >> beam.FlatMap(
            lambda t: zip(t["uid"].to_pylist(), t["source"].to_pylist(), strict=True)
        )
        dups = (
            (out[FINAL], out["late"])
            | beam.Flatten()
            | "d"
            >> beam.FlatMap(
                lambda t: zip(
                    t["status"].to_pylist(),
                    t["reason"].to_pylist(),
                    t["source"].to_pylist(),
                    strict=True,
                )
            )
        )
        assert_that(unique, equal_to([(uid, "a.tsv"), (other, "b.tsv")]), label="unique")
        expected_dups = [("duplicate", uid, "b.tsv"), ("duplicate", uid, "b.tsv")]
        assert_that(dups, equal_to(expected_dups), label="dups")


@pytest.mark.slow
def test_page_list_input_crawls_pages_into_candidates(tmp_path):
    """--input-format pages: listed pages are crawled; their images flow through the stages."""
    from pipeline.fixtures.web import FixtureWeb

    (tmp_path / "queries.txt").write_text("red\nblue\ncircle\n", encoding="utf-8")
    pages = {
        "a": [("/images/1.jpg", "a red circle on grey"), ("/images/2.jpg", "IMG_0042.jpg")],
        "b": [("/images/3.jpg", "a blue square"), ("/images/4.jpg", "a green star")],
    }
    with FixtureWeb(pages=pages) as web:
        image_1 = web.url("/images/1.jpg")
        listed = [
            web.url("/pages/a.html"),
            web.url("/pages/b.html"),
            web.url("/pages/missing.html"),
        ]
        (tmp_path / "pages.txt").write_text("\n".join(listed) + "\n", encoding="utf-8")
        rc = cli.main([
            "--querylist", str(tmp_path / "queries.txt"), "--out", str(tmp_path / "out"),
            "--input", str(tmp_path / "pages.txt"), "--input-format", "pages", "--no-fetch",
            "--allow-private-addresses", *IN_PROCESS,
        ])  # fmt: skip
    assert rc == 0
    rows = {r["caption"]: r for r in read_status(str(tmp_path / "out")).to_pylist()}
    assert len(rows) == 4
    assert rows["a red circle on grey"]["status"] == "kept"
    assert rows["a red circle on grey"]["url"] == image_1
    assert rows["IMG_0042.jpg"]["reason"] == "filename_like"
    assert rows["a green star"]["status"] == "no_match"
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["pages"]["fetched"] == 2 and sum(manifest["pages"].values()) == 3
