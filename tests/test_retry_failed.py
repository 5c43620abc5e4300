"""`wit-build --retry-failed OUT`: only retryable failures are fetched again, only the shards
that change are rewritten, and status/, counts/, sizes.json and the manifest follow.

The fixture web's ``/e/429-once/<token>.jpg`` answers 429 the first time and an image
after, like a host that recovered; ``/e/500`` keeps failing; ``/e/404`` is never retried.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow.parquet as pq
from reliability_helpers import build, candidates_parquet, noise_jpegs, sorted_status, write_queries

from pipeline import cli
from pipeline.fixtures.web import FixtureWeb
from pipeline.retry import is_retryable
from pipeline.status_io import query_counts

FETCH = ["--allow-private-addresses", "--shard-size", "4", "--image-size", "32", "--retries", "0"]


def _hashes(out: Path) -> dict[str, str]:
    shards = out / "shards"
    return {
        str(p.relative_to(shards)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(shards.rglob("*.*"))
        if p.suffix in (".tar", ".parquet")
    }


def test_retry_refetches_only_retryable_failures_and_rewrites_only_their_shards(tmp_path):
    names = noise_jpegs(tmp_path / "images", 12, side=40, seed=6)
    with FixtureWeb(image_dir=tmp_path / "images") as web:
        urls = [web.url(f"/images/{n}") for n in names]
        flaky = [web.url(f"/e/429-once/t{i}.jpg") for i in range(2)]
        u404, u500 = web.url("/e/404"), web.url("/e/500")
        urls += flaky + [u404, u500]
        cands = candidates_parquet(tmp_path / "cands.parquet", urls)
        out = tmp_path / "out"
        assert build(write_queries(tmp_path), out, [cands], *FETCH, fetch=True) == 0
        before = sorted_status(out)
        by_url = {r["url"]: r for r in before.to_pylist()}
        assert all(by_url[u]["status"] == "fetch_failed" for u in flaky)
        assert is_retryable("fetch_failed", by_url[flaky[0]]["reason"])
        assert not is_retryable("fetch_failed", by_url[u404]["reason"])
        hashes = _hashes(out)
        kept_before = before["status"].to_pylist().count("kept")

        assert cli.main(["--retry-failed", str(out)]) == 0
        assert web.hits(u404) == 1  # never asked again
        assert web.hits(u500) == 2  # asked again, failed again

    after = sorted_status(out)
    rows = {r["url"]: r for r in after.to_pylist()}
    assert after.num_rows == before.num_rows == len(urls)
    assert len(set(after["uid"].to_pylist())) == len(urls)  # each uid exactly once
    assert all(rows[u]["status"] == "kept" and rows[u]["shard"] for u in flaky)
    assert rows[u500]["status"] == "fetch_failed"
    assert rows[u404] == by_url[u404]
    assert after["status"].to_pylist().count("kept") == kept_before + 2

    changed = {rows[u]["shard"] for u in flaky}
    failed_500 = by_url[u500]
    new_hashes = _hashes(out)
    for name, digest in hashes.items():
        shard = name.split("/")[-1].split(".")[0]
        touched = shard in changed or _holds(out, shard, failed_500["uid"])
        if not touched:
            assert new_hashes[name] == digest, f"{name} changed but holds nothing retried"
        elif shard in changed and not name.startswith("_status"):
            assert new_hashes[name] != digest, f"{name} gained a sample but did not change"
    # kept rows == samples in the shards; counts and sizes follow
    sizes = json.loads((out / "sizes.json").read_text())
    assert sum(sizes.values()) == kept_before + 2
    counts = pq.read_table(out / "counts" / "query_counts.parquet")
    assert counts.equals(query_counts(after, counts["query"].to_pylist()))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["totals"]["kept"] == kept_before + 2
    assert manifest["retries"][-1]["recovered"] == 2


def _holds(out: Path, shard: str, uid: str) -> bool:
    marker = out / "shards" / "_status" / f"{shard}.parquet"
    return marker.exists() and uid in pq.read_table(marker)["uid"].to_pylist()


def test_retry_needs_a_fetched_output(tmp_path, capsys):
    assert cli.main(["--retry-failed", str(tmp_path / "nothing")]) == 2
    assert "no manifest.json" in capsys.readouterr().err
