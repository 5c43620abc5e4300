"""What a user sees: progress bars with a total and a rate, and no library log lines.

The job runs as a real `wit-build` process (so the worker processes' own stderr is what
is checked, not a capture inside pytest), on the fixture web with fetching.
"""

from __future__ import annotations

import re

import pytest
from reliability_helpers import (
    build_command,
    candidates_parquet,
    noise_jpegs,
    run_build_process,
    write_queries,
)

from pipeline import fsio
from pipeline.fixtures.web import FixtureWeb
from pipeline.progress import Reporter, done_rows, record

FETCH = ["--allow-private-addresses", "--shard-size", "4", "--image-size", "32"]


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    root = tmp_path_factory.mktemp("progress")
    names = noise_jpegs(root / "images", 10, side=40, seed=3)
    with FixtureWeb(image_dir=root / "images") as web:
        urls = [web.url(f"/images/{n}") for n in names] + [web.url("/e/404")]
        cands = candidates_parquet(root / "cands.parquet", urls)
        yield root, write_queries(root), cands, len(urls)


def _run(job, name: str, *extra: str):
    root, queries, cands, n = job
    argv = build_command(queries, root / name, [cands], *FETCH, *extra)
    result = run_build_process(argv, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result, n


@pytest.mark.slow
def test_default_run_shows_bars_with_totals_and_rates_and_no_log_lines(job):
    result, n = _run(job, "quiet")
    err = result.stderr
    for label in ("reading", "text stages", "fetching"):
        bars = [line for line in re.split(r"[\r\n]", err) if line.startswith(label)]
        assert bars, (label, err[-2000:])
        last = bars[-1]
        assert re.search(rf"\b{n}(\.0)?/{n}(\.0)?\b", last), last  # done / planned total
        assert re.search(r"[\d.]+(k|M)?( rows/s|s/ rows)", last), last  # a rate
    assert not re.search(r"^(INFO|DEBUG|WARNING):", err, re.M), err[-3000:]
    assert "apitools" not in err and "semi_persistent_directory" not in err
    assert "kept" in result.stdout and "total" in result.stdout  # the summary table stays


@pytest.mark.slow
def test_verbose_shows_beams_log_lines(job):
    result, _n = _run(job, "verbose", "--verbose")
    assert re.search(r"^(INFO|WARNING):", result.stderr, re.M), result.stderr[-2000:]


@pytest.mark.slow
def test_no_progress_draws_no_bars_and_keeps_the_outputs(job):
    quiet, n = _run(job, "bars")
    plain, _ = _run(job, "nobars", "--no-progress")
    for label in ("reading", "text stages", "fetching"):
        assert not any(line.startswith(label) for line in re.split(r"[\r\n]", plain.stderr))
    assert "kept" in plain.stdout and "total" in plain.stdout  # the summary table stays
    root = job[0]
    assert fsio.read_json(str(root / "nobars" / "counts" / "totals.json")) == fsio.read_json(
        str(root / "bars" / "counts" / "totals.json")
    )


def test_progress_markers_sum_by_name_and_reporters_throttle(tmp_path):
    out = str(tmp_path)
    record(out, "read", "a", 5)
    record(out, "read", "a", 5)  # a retried bundle rewrites the same name
    record(out, "read", "b", 7)
    assert done_rows(out, "read") == 12
    reporter = Reporter(out, "text")
    for _ in range(1000):
        reporter.add(3)
    reporter.flush()
    assert done_rows(out, "text") == 3000
    files = fsio.list_files(fsio.join(out, "_progress", "text", "*"))
    assert 1 <= len(files) <= 2  # not one file per add()
