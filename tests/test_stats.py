"""wit-stats against an OUT folder built here from real captions and real images.

The folder follows docs/shard-format.md exactly (pipeline/schema.py's Arrow schemas). The
expected numbers are computed in plain Python from the rows this file wrote, never with
the report's SQL, so a wrong query shows up as a mismatch.
"""

from __future__ import annotations

import collections
import csv
import hashlib
import io
import json
import math
import pathlib
import re
import shutil
import struct
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import shared_path
from PIL import Image

from pipeline.schema import (
    PAGE_SCHEMA,
    QUERY_COUNTS_SCHEMA,
    SAMPLE_SCHEMA,
    STATUS_SCHEMA,
    STATUSES,
    key_for_uid,
    shard_name,
)
from pipeline.stats.cli import main

CAP = 25
ROWS = 3000
SHARD_SIZE = 60
QUERIES = [
    "man", "woman", "dog", "people", "city", "tree", "water", "car", "beach", "actor",
    "house", "flowers", "street", "christmas tree", "football player", "zebra",
    "xylophone quartet", "quixotic marmoset",
]  # fmt: skip
FETCH_REASONS = [
    "404",
    "403",
    "500",
    "502",
    "503",
    "ConnectTimeout",
    "ReadTimeout",
    "SSLError",
    "TooManyRedirects",
    "ContentTooLarge",
    "bad_content_type",
    "ConnectionError",
]
SOURCES = ["cc3m-validation.tsv#a", "cc3m-validation.tsv#b"]


def _matches(caption: str) -> list[str]:
    folded = " ".join(caption.casefold().split())
    return [q for q in QUERIES if re.search(r"(?<![^\W_])" + re.escape(q) + r"(?![^\W_])", folded)]


def _rank(query: str, uid: str) -> str:
    return hashlib.sha256(f"0\n{query}\n{uid}".encode()).hexdigest()


def _quantile(values: list, q: float):
    """The inverted-CDF quantile: the smallest value with at least q of the data at or below."""
    s = sorted(values)
    return s[max(0, math.ceil(len(s) * q) - 1)]


def build_out(root: pathlib.Path) -> dict:
    """Write an OUT folder from real CC3M captions and Flickr8k images; return its rows."""
    tsv = shared_path("captions", "cc3m-validation.tsv")
    images = sorted(shared_path("flickr8k-1k", "images").glob("*.jpg"))[:200]
    with tsv.open(encoding="utf-8") as f:
        raw = [line.rstrip("\n").split("\t") for _, line in zip(range(ROWS), f, strict=False)]
    raw += raw[100:160]  # repeated (url, caption) pairs: duplicates
    raw += [["", "http://example.com/a.jpg"], ["ok", "http://example.com/b.jpg"]]
    rows, seen = [], {}
    for i, (caption, url) in enumerate(raw):
        uid = hashlib.sha256(f"{url}\n{caption}".encode()).hexdigest()
        row = dict(uid=uid, url=url, caption=caption, source=SOURCES[i % 2], reason=None)
        row.update(matched_queries=[], selected_by=[], shard=None, key=None)
        if uid in seen:
            row.update(status="duplicate", reason=seen[uid], uid=f"row:{i}")
        elif len(caption) < 5:
            row.update(status="caption_rejected", reason="empty" if not caption else "too_short")
        else:
            seen[uid] = uid
            row["matched_queries"] = _matches(caption)
            if not row["matched_queries"]:
                row["status"] = "no_match"
            elif i % 17 == 0:
                row.update(status="language_rejected", reason="de")
            else:
                row["status"] = "pending"
        rows.append(row)
    pending = [r for r in rows if r["status"] == "pending"]
    for q in QUERIES:
        ranked = sorted(
            (r for r in pending if q in r["matched_queries"]), key=lambda r: _rank(q, r["uid"])
        )
        for r in ranked[:CAP]:
            r["selected_by"].append(q)
    kept = []
    for n, r in enumerate(pending):
        if not r["selected_by"]:
            r["status"] = "not_selected"
        elif n % 11 == 0:
            r.update(status="fetch_failed", reason=FETCH_REASONS[n % len(FETCH_REASONS)])
        elif n % 13 == 0:
            r.update(status="blocked_address", reason="10.0.0.1")
        else:
            r.update(status="kept", key=key_for_uid(r["uid"]))
            kept.append(r)
    samples = []
    for j, r in enumerate(kept):
        r["shard"] = shard_name(j // SHARD_SIZE)
        image = images[j % 150]  # some samples share an image: repeated image hashes
        with Image.open(image) as im:
            ow, oh = im.size
        scale = 64 / min(ow, oh)
        samples.append(
            dict(key=r["key"], uid=r["uid"], url=r["url"], caption=r["caption"],
                 width=round(ow * scale), height=round(oh * scale), original_width=ow,
                 original_height=oh, sha256=hashlib.sha256(image.read_bytes()).hexdigest(),
                 matched_queries=r["matched_queries"], selected_by=r["selected_by"],
                 shard=r["shard"], image=image)
        )  # fmt: skip
    eligible = [r for r in rows if r["status"] in ("kept", "not_selected", "fetch_failed",
                                                   "blocked_address")]  # fmt: skip
    counts = [
        dict(query=q,
             matched=sum(q in r["matched_queries"] for r in eligible),
             selected=sum(q in r["selected_by"] for r in rows),
             kept=sum(q in r["matched_queries"] for r in kept))
        for q in QUERIES
    ]  # fmt: skip
    _write(root, rows, counts, samples)
    return dict(rows=rows, counts=counts, samples=samples, kept=kept)


def _write(root: pathlib.Path, rows: list, counts: list, samples: list) -> None:
    for sub in ("status", "counts", "shards"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    cols = STATUS_SCHEMA.names
    for k, src in enumerate(SOURCES):
        part = [{c: r[c] for c in cols} for r in rows if r["source"] == src]
        pq.write_table(
            pa.Table.from_pylist(part, STATUS_SCHEMA), root / f"status/part-{k:05d}.parquet"
        )
    pq.write_table(
        pa.Table.from_pylist(counts, QUERY_COUNTS_SCHEMA), root / "counts/query_counts.parquet"
    )
    by_shard = collections.defaultdict(list)
    for s in samples:
        by_shard[s["shard"]].append(s)
    sizes = {}
    for shard, group in sorted(by_shard.items()):
        table = pa.Table.from_pylist(
            [{c: s[c] for c in SAMPLE_SCHEMA.names} for s in group], SAMPLE_SCHEMA
        )
        pq.write_table(table, root / f"shards/{shard}.parquet")
        with tarfile.open(root / f"shards/{shard}.tar", "w") as tar:
            for s in group:
                tar.add(s["image"], arcname=f"{s['key']}.jpg")
        sizes[f"{shard}.tar"] = len(group)
    (root / "sizes.json").write_text(json.dumps(sizes))
    manifest = {"parameters": {"per_query_cap": CAP, "balance": "exact", "seed": 0},
                "totals": dict(collections.Counter(r["status"] for r in rows)),
                "shards": [{"name": k, "samples": v} for k, v in sizes.items()]}  # fmt: skip
    (root / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("out") / "OUT"
    data = build_out(root)
    data["root"] = root
    return data


@pytest.fixture
def out_copy(built, tmp_path):
    dst = tmp_path / "OUT"
    shutil.copytree(built["root"], dst)
    return dst


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def report_json(capsys, out, *extra) -> tuple[int, dict]:
    code, stdout, _ = run_cli(capsys, out, "--format", "json", *extra)
    return code, json.loads(stdout)


def _metric(tables: dict, name: str) -> dict:
    return {r["metric"]: r for r in tables[name]["rows"]}


def test_status_reason_and_source_totals_match_rows(built, capsys):
    code, data = report_json(capsys, built["root"])
    assert code == 0
    tables, rows = data["tables"], built["rows"]
    expected = collections.Counter(r["status"] for r in rows)
    got = {r["status"]: r["rows"] for r in tables["status"]["rows"]}
    assert got == {s: expected.get(s, 0) for s in STATUSES}
    assert math.isclose(sum(r["share"] for r in tables["status"]["rows"]), 1.0)
    got_reasons = {(r["status"], r["reason"]): r["rows"] for r in tables["reasons"]["rows"]}
    reasons = collections.Counter((r["status"], r["reason"] or "") for r in rows)
    for (status, reason), n in reasons.items():
        if status not in ("duplicate", "fetch_failed"):
            assert got_reasons[(status, reason)] == n
    # a duplicate's reason is the winner's uid: all folded into one line
    assert got_reasons[("duplicate", "(uid of the copy kept)")] == expected["duplicate"] == 60
    # fetch_failed has more reasons than are shown: the ten largest, then the rest summed
    fetch = collections.Counter(r["reason"] for r in rows if r["status"] == "fetch_failed")
    ranked = sorted(fetch.items(), key=lambda kv: (-kv[1], kv[0]))
    shown = [
        (r["reason"], r["rows"]) for r in tables["reasons"]["rows"] if r["status"] == "fetch_failed"
    ]
    rest = ranked[10:]
    assert shown == ranked[:10] + [(f"({len(rest)} other reasons)", sum(n for _, n in rest))]
    for src in tables["sources"]["rows"]:
        mine = [r for r in rows if r["source"] == src["source"]]
        kept = sum(r["status"] == "kept" for r in mine)
        assert (src["candidates"], src["kept"]) == (len(mine), kept)
        assert src["matched"] == sum(bool(r["matched_queries"]) for r in mine)
        assert math.isclose(src["yield"], kept / len(mine))
    summary = _metric(tables, "summary")
    assert summary["candidates"]["value"] == len(rows)
    assert summary["kept"]["value"] == len(built["kept"])


def test_query_distribution_before_and_after_balancing(built, capsys):
    _, data = report_json(capsys, built["root"], "--top", "5")
    counts = built["counts"]
    m = [c["matched"] for c in counts]
    s = [c["selected"] for c in counts]
    dist = _metric(data["tables"], "queries")
    assert dist["queries"]["before"] == len(QUERIES)
    assert dist["queries with no pair"]["before"] == m.count(0) >= 2
    assert dist["queries with no pair"]["after"] == s.count(0)
    assert dist["queries at the cap (>= t)"]["before"] == sum(x >= CAP for x in m) >= 3
    assert dist["queries at the cap (>= t)"]["after"] == sum(x >= CAP for x in s)
    assert dist["pairs (sum over queries)"]["before"] == sum(m)
    tail_before = sum(x for x in m if x < CAP) / sum(m)
    tail_after = sum(c["selected"] for c in counts if c["matched"] < CAP) / sum(s)
    tail = dist["tail share (queries with matched < t)"]
    assert math.isclose(tail["before"], tail_before) and math.isclose(tail["after"], tail_after)
    assert tail_after > tail_before  # balancing shifts weight to the tail
    assert dist["median per query"]["before"] == _quantile(m, 0.5)
    assert dist["max per query"]["after"] == max(s)
    top = data["tables"]["top_queries"]["rows"]
    want = sorted(counts, key=lambda c: (-c["matched"], c["query"]))[:5]
    assert top == want


def test_caption_image_shard_and_duplicate_numbers(built, capsys):
    _, data = report_json(capsys, built["root"])
    tables, rows, samples = data["tables"], built["rows"], built["samples"]
    caps = {r["rows"]: r for r in tables["caption_length"]["rows"]}
    lengths = [len(r["caption"]) for r in rows]
    kept_lengths = [len(r["caption"]) for r in built["kept"]]
    for name, vals in (("candidates", lengths), ("kept", kept_lengths)):
        got = caps[name]
        assert got["count"] == len(vals) and got["min"] == min(vals) and got["max"] == max(vals)
        assert got["median"] == _quantile(vals, 0.5) and got["p90"] == _quantile(vals, 0.9)
        assert math.isclose(got["mean"], sum(vals) / len(vals))
    sides = {r["side"]: r for r in tables["image_size"]["rows"]}
    for side in ("original_width", "original_height", "width", "height"):
        vals = [s[side] for s in samples]
        assert sides[side]["count"] == len(samples)
        assert (sides[side]["min"], sides[side]["p10"]) == (min(vals), _quantile(vals, 0.1))
        assert sides[side]["median"] == _quantile(vals, 0.5)
    shards = _metric(tables, "shards")
    per_shard = collections.Counter(s["shard"] for s in samples)
    assert shards["shards"]["value"] == len(per_shard)
    assert shards["samples (sizes.json)"]["value"] == len(samples)
    assert shards["samples (shard parquet rows)"]["value"] == len(samples)
    assert shards["max samples per shard"]["value"] == max(per_shard.values())
    assert shards["min samples per shard"]["value"] == min(per_shard.values())
    tar_bytes = sum(p.stat().st_size for p in (built["root"] / "shards").glob("*.tar"))
    assert shards["tar bytes"]["value"] == tar_bytes
    assert shards["shards without a tar"]["value"] == 0
    dup = _metric(tables, "duplicates")
    n_dup = sum(r["status"] == "duplicate" for r in rows)
    assert dup["duplicate candidates (same url + caption)"]["value"] == n_dup == 60
    assert math.isclose(dup["duplicate rate over candidates"]["value"], n_dup / len(rows))
    repeats = len(samples) - len({s["sha256"] for s in samples})
    assert dup["samples repeating an earlier image"]["value"] == repeats > 0


def test_formats_table_csv_json_agree(built, capsys):
    _, data = report_json(capsys, built["root"])
    code, text, err = run_cli(capsys, built["root"], "--format", "csv")
    assert code == 0
    blocks = [b for b in text.split("\n\n") if b.strip()]
    names = [b.splitlines()[0].split(":")[0].lstrip("# ") for b in blocks]
    assert names == list(data["tables"])
    status_block = blocks[names.index("status")].splitlines()[1:]
    parsed = list(csv.DictReader(io.StringIO("\n".join(status_block))))
    assert {r["status"]: int(r["rows"]) for r in parsed} == {
        r["status"]: r["rows"] for r in data["tables"]["status"]["rows"]
    }
    code, text, err = run_cli(capsys, built["root"])
    assert code == 0 and "== Candidates by status ==" in text and "== Cap compliance ==" in text
    kept = data["tables"]["status"]["rows"][0]["rows"]
    assert re.search(rf"^kept\s+{kept:,}\s", text, re.M)
    assert err.strip().startswith("wit-stats:") and f"{kept:,} kept" in err


def test_sql_over_views(built, capsys):
    sql = (
        "SELECT s.status, count(*) AS n, count(m.key) AS in_shards "
        "FROM status s LEFT JOIN samples m USING (uid) GROUP BY ALL ORDER BY n DESC"
    )
    code, out, _ = run_cli(capsys, built["root"], "--sql", sql, "--format", "json")
    assert code == 0
    got = {r["status"]: (r["n"], r["in_shards"]) for r in json.loads(out)}
    expected = collections.Counter(r["status"] for r in built["rows"])
    assert got == {s: (n, n if s == "kept" else 0) for s, n in expected.items()}
    sql = "SELECT shard, samples, parquet_rows FROM shards ORDER BY shard"
    code, out, _ = run_cli(capsys, built["root"], "--sql", sql, "--format", "csv")
    per_shard = collections.Counter(s["shard"] for s in built["samples"])
    assert list(csv.reader(io.StringIO(out)))[1:] == [
        [k, str(v), str(v)] for k, v in sorted(per_shard.items())
    ]
    sql = "SELECT query FROM query_counts WHERE matched = 0 ORDER BY query"
    code, out, _ = run_cli(capsys, built["root"], "--sql", sql, "--format", "json")
    assert [r["query"] for r in json.loads(out)] == sorted(
        c["query"] for c in built["counts"] if c["matched"] == 0
    )
    code, _, err = run_cli(capsys, built["root"], "--sql", "SELECT nope FROM status")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "SQL failed" in err


def _png_size(path: pathlib.Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def test_plots_are_pngs_of_fixed_size_and_index_embeds_them(built, capsys, tmp_path):
    plots = tmp_path / "plots"
    code, _, _ = run_cli(capsys, built["root"], "--plots", plots)
    assert code == 0
    pngs = sorted(p.name for p in plots.glob("*.png"))
    assert pngs == ["caption_length.png", "image_size.png", "query_counts.png", "status.png"]
    for name in pngs:
        assert _png_size(plots / name) == (1000, 600)
        with Image.open(plots / name) as im:
            im.verify()
    page = (plots / "index.html").read_text(encoding="utf-8")
    for name in pngs:
        assert f"src='{name}'" in page
    assert page.count("<table>") >= 10 and "Cap compliance" in page


def test_tampered_counts_over_cap_fails_compliance(out_copy, capsys):
    path = out_copy / "counts/query_counts.parquet"
    table = pq.read_table(path).to_pylist()
    table[0]["selected"] = CAP + 1
    pq.write_table(pa.Table.from_pylist(table, QUERY_COUNTS_SCHEMA), path)
    code, out, err = run_cli(capsys, out_copy, "--format", "json")
    assert code == 1
    assert "CAP COMPLIANCE FAILED" in err and f"t = {CAP}" in err
    data = json.loads(out)
    assert data["compliance"]["ok"] is False and data["compliance"]["over_cap_counts"] == 1
    assert data["tables"]["over_cap"]["rows"][0]["query"] == table[0]["query"]
    # the same overshoot under metaclip balancing is reported, not failed
    manifest = json.loads((out_copy / "manifest.json").read_text())
    manifest["parameters"]["balance"] = "metaclip"
    (out_copy / "manifest.json").write_text(json.dumps(manifest))
    code, _, err = run_cli(capsys, out_copy)
    assert code == 0 and "warning" in err and "metaclip" in err


def test_status_rows_over_cap_fail_even_when_counts_agree(out_copy, capsys):
    code, _, _ = run_cli(capsys, out_copy, "--cap", CAP - 1)
    assert code == 1  # several queries selected exactly CAP
    path = out_copy / "status/part-00000.parquet"
    rows = pq.read_table(path).to_pylist()
    extra = [r for r in rows if r["status"] == "not_selected" and "man" in r["matched_queries"]]
    for r in extra[:2]:
        r["selected_by"] = ["man"]
    pq.write_table(pa.Table.from_pylist(rows, STATUS_SCHEMA), path)
    code, out, err = run_cli(capsys, out_copy, "--format", "json")
    assert code == 1
    checks = {r["check"]: r["value"] for r in json.loads(out)["tables"]["cap_compliance"]["rows"]}
    assert checks["queries over t (status selected_by)"] == 1
    assert checks["queries over t (counts table)"] == 0
    assert checks["queries where counts and status disagree"] == 1


def _one_line_error(capsys, out, needle: str) -> None:
    code, stdout, err = run_cli(capsys, out)
    lines = err.strip().splitlines()
    assert code == 2 and stdout == ""
    assert len(lines) == 1 and lines[0].startswith("wit-stats: ") and needle in lines[0]


def test_corrupt_or_missing_files_give_one_line_error(out_copy, capsys):
    part = out_copy / "status/part-00001.parquet"
    part.write_bytes(part.read_bytes()[:-100])  # footer cut off
    _one_line_error(capsys, out_copy, str(part))
    part.write_bytes(b"not parquet at all")
    _one_line_error(capsys, out_copy, str(part))
    part.unlink()
    shard = out_copy / "shards/00001.parquet"
    shard.write_bytes(b"PAR1" + b"\0" * 64 + b"PAR1")
    _one_line_error(capsys, out_copy, str(shard))
    shard.unlink()
    (out_copy / "counts/query_counts.parquet").unlink()
    _one_line_error(capsys, out_copy, "query_counts.parquet")
    for p in (out_copy / "status").glob("*.parquet"):
        p.unlink()
    _one_line_error(capsys, out_copy, "part-*.parquet")
    _one_line_error(capsys, out_copy / "nowhere", "nowhere")


def test_damaged_column_data_behind_a_sound_footer_is_named(out_copy, capsys):
    part = out_copy / "status/part-00000.parquet"
    chunk = pq.read_metadata(part).row_group(0).column(STATUS_SCHEMA.names.index("caption"))
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    data = bytearray(part.read_bytes())
    mid = start + chunk.total_compressed_size // 2
    data[mid : mid + 200] = b"\xab" * 200  # the footer stays valid; the pages do not
    part.write_bytes(bytes(data))
    _one_line_error(capsys, out_copy, str(part))


def test_wrong_schema_and_manifest_problems_are_named(out_copy, capsys):
    (out_copy / "manifest.json").write_text("{not json")
    _one_line_error(capsys, out_copy, "manifest.json")
    (out_copy / "manifest.json").unlink()
    _one_line_error(capsys, out_copy, "manifest.json")
    code, _, _ = run_cli(capsys, out_copy, "--cap", CAP)
    assert code == 0  # --cap makes the manifest unnecessary
    (out_copy / "manifest.json").write_text(json.dumps({"parameters": {}}))
    _one_line_error(capsys, out_copy, "per_query_cap")
    part = out_copy / "status/part-00000.parquet"
    pq.write_table(pq.read_table(part).drop_columns(["reason"]), part)
    _one_line_error(capsys, out_copy, "'reason'")


def test_no_fetch_build_without_shards_and_with_pages(out_copy, capsys, tmp_path):
    shutil.rmtree(out_copy / "shards")
    (out_copy / "sizes.json").unlink()
    (out_copy / "pages").mkdir()
    pages = [
        dict(page_url=f"https://example.org/{i}", status=st, reason=None, images_found=n)
        for i, (st, n) in enumerate([("fetched", 5), ("fetched", 2), ("not_html", 0)])
    ]
    pq.write_table(pa.Table.from_pylist(pages, PAGE_SCHEMA), out_copy / "pages/part-00000.parquet")
    code, out, _ = run_cli(capsys, out_copy, "--format", "json", "--plots", tmp_path / "p")
    assert code == 0
    tables = json.loads(out)["tables"]
    assert _metric(tables, "shards")["shards"]["value"] == 0
    assert {r["side"]: r["count"] for r in tables["image_size"]["rows"]}["width"] == 0
    assert tables["pages"]["rows"] == [
        {"status": "fetched", "pages": 2, "images_found": 7},
        {"status": "not_html", "pages": 1, "images_found": 0},
    ]
    assert _png_size(tmp_path / "p/image_size.png") == (1000, 600)


def test_every_sql_example_in_the_docs_runs(built, capsys):
    doc = (pathlib.Path(__file__).resolve().parents[1] / "docs/sql-examples.md").read_text()
    blocks = re.findall(r"```sql\n(.*?)```", doc, re.S)
    assert len(blocks) >= 15
    results = {}
    for sql in blocks:
        code, out, err = run_cli(capsys, built["root"], "--sql", sql, "--format", "json")
        assert code == 0, (sql, err)
        results[sql] = json.loads(out)
    by_start = {sql.split("\n")[0]: rows for sql, rows in results.items()}
    # the checks the page says must come out empty or zero do so on a sound build
    assert (
        by_start["SELECT uid, count(*) AS n FROM status GROUP BY uid HAVING count(*) > 1 LIMIT 10"]
        == []
    )
    assert by_start["SELECT query, selected FROM query_counts"] == []
    consistency = next(r for s, r in results.items() if "kept_without_sample" in s)
    assert consistency == [{"kept_without_sample": 0, "sample_without_kept": 0}]
    statuses = by_start["SELECT status, count(*) AS n, round(100 * n / sum(n) OVER (), 2) AS pct"]
    assert {r["status"]: r["n"] for r in statuses} == collections.Counter(
        r["status"] for r in built["rows"]
    )
    dog = by_start["SELECT key, shard, caption, url FROM samples"]
    assert dog and all(re.search(r"\bdog\b", r["caption"].lower()) for r in dog)


def test_histogram_quantiles_equal_numpy_inverted_cdf():
    np = pytest.importorskip("numpy")
    from pipeline.stats.report import quantile_from_histogram

    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 100, 1001):
        values = rng.integers(0, 40, size=n)
        hist = list(collections.Counter(values.tolist()).items())
        for q in (0.0, 0.1, 0.5, 0.9, 0.99, 1.0):
            want = np.percentile(values, 100 * q, method="inverted_cdf")
            assert quantile_from_histogram(hist, q) == want
    assert quantile_from_histogram([], 0.5) is None


def test_command_line_entry_point(built, tmp_path):
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "pipeline.stats.cli"]
    ok = subprocess.run(cmd + [str(built["root"]), "--sql", "SELECT count(*) AS n FROM status",
                               "--format", "csv"], cwd=root, capture_output=True, text=True)  # fmt: skip
    assert ok.returncode == 0 and ok.stdout.splitlines() == ["n", str(len(built["rows"]))]
    bad = subprocess.run(
        cmd + [str(tmp_path / "missing")], cwd=root, capture_output=True, text=True
    )
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.strip().splitlines() == [
        f"wit-stats: OUT folder not found: {tmp_path / 'missing'}"
    ]
