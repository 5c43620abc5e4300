"""Bad input for wit-build and wit-train: every malformed file, row, URL, server answer and
image ends in a one-line error or a recorded status, never a crash, and the status
invariant (one row per input candidate, each uid once) still holds.

Two wit-build runs carry almost all cases, so the suite stays fast: one without fetching
over ~25 malformed input files, one with fetching against the misbehaving fixture web and a
folder of odd images. Each case is its own parametrized test against those runs.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from reliability_helpers import (
    IN_PROCESS,
    assert_status_invariant,
    build,
    manifest,
    odd_images,
    one_line,
    shard_samples,
    status_rows,
    write_queries,
)
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from pipeline.fixtures.candidates import ENDPOINT_STATUS
from pipeline.fixtures.web import FixtureWeb, render_page
from pipeline.schema import STATUSES

GOOD = "a small red circle on a white background"
HOST = "http://127.0.0.1:9"  # never contacted: these runs do not fetch


# --- archive builders --------------------------------------------------------------------------


def warc_bytes(pages: int = 6) -> bytes:
    """A gzipped WARC of HTML responses, each page with two captioned images."""
    buf = io.BytesIO()
    writer = WARCWriter(buf, gzip=True)
    for i in range(pages):
        html = render_page(f"p{i}", [(f"/img/{i}a.jpg", f"{GOOD} number {i}"),
                                      (f"/img/{i}b.jpg", f"a blue square drawing {i}")])  # fmt: skip
        headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html")], protocol="HTTP/1.1")
        record = writer.create_warc_record(
            f"http://site.example/p{i}.html", "response",
            payload=io.BytesIO(html.encode()), http_headers=headers)  # fmt: skip
        writer.write_record(record)
    return buf.getvalue()


def wat_bytes(bad_json_first: bool) -> bytes:
    """A gzipped WAT: one metadata record with broken JSON, one with an image link."""
    buf = io.BytesIO()
    writer = WARCWriter(buf, gzip=True)
    good = {"Envelope": {
        "WARC-Header-Metadata": {"WARC-Target-URI": "http://site.example/w.html"},
        "Payload-Metadata": {"HTTP-Response-Metadata": {"HTML-Metadata": {"Links": [
            {"path": "IMG@/src", "url": "/w/1.jpg", "alt": "a green triangle on a grey page"}]}}},
    }}  # fmt: skip
    payloads = [b'{"Envelope": {"broken', json.dumps(good).encode()]
    if not bad_json_first:
        payloads.reverse()
    for body in payloads:
        record = writer.create_warc_record(
            "http://site.example/w.html", "metadata", payload=io.BytesIO(body),
            warc_content_type="application/json")  # fmt: skip
        writer.write_record(record)
    return buf.getvalue()


def tsv(rows) -> bytes:
    return ("url\tcaption\n" + "".join(f"{u}\t{c}\n" for u, c in rows)).encode()


def parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


WARC = warc_bytes()


def cut_mid_record(data: bytes, fraction: float = 2 / 3) -> bytes:
    """The gzipped WARC cut inside a record, near `fraction` of its bytes.

    Each record is its own gzip member of nearly equal size, so a plain byte fraction often
    lands exactly on a member boundary, which leaves a valid, shorter WARC that no reader
    could tell from a complete one. Cutting halfway into the member holding that point
    always leaves damaged gzip data behind.
    """
    starts = [i for i in range(len(data)) if data.startswith(b"\x1f\x8b\x08", i)] + [len(data)]
    point = int(len(data) * fraction)
    member = max(i for i in range(len(starts) - 1) if starts[i] <= point)
    return data[: (starts[member] + starts[member + 1]) // 2]


HALF = len(WARC) // 2

#: name -> (file bytes, expectation). Expectations:
#:   ("unreadable", text)     the file is listed as unreadable with a one-line error naming text
#:   ("partial", n)           a damaged file: the n candidates before the damage get rows and
#:                            the damage is listed as unreadable
#:   ("rows", {status: n})    per-source counts of statuses (and, as `reason:X`, reasons)
CASES: dict[str, tuple[bytes, tuple]] = {
    # archives
    "truncated.warc.gz": (cut_mid_record(WARC), ("partial", None)),
    "garbage.warc.gz": (b"WARC/1.0\r\nthis is not a record\r\n" * 50, ("partial", 0)),
    "bad-gzip.warc.gz": (b"\x1f\x8b\x08\x00" + b"\x00" * 6 + b"not deflate" * 100, ("partial", 0)),
    "flipped.warc.gz": (
        WARC[:HALF] + bytes(b ^ 0x5A for b in WARC[HALF : HALF + 200]) + WARC[HALF + 200 :],
        ("partial", None),
    ),
    "empty.warc.gz": (b"", ("rows", {})),
    "bad-json-first.wat.gz": (wat_bytes(True), ("rows", {"no_match": 0, "total": 1})),
    "bad-json-last.wat.gz": (wat_bytes(False), ("rows", {"total": 1})),
    "bad-gzip.wat.gz": (gzip.compress(b"x" * 1000)[:30], ("partial", 0)),
    # tabular
    "no-url-column.parquet": (
        parquet_bytes(pa.table({"caption": [GOOD]})),
        ("unreadable", "url column"),
    ),
    "no-columns.parquet": (
        parquet_bytes(pa.table({"a": [1], "b": [2]})),
        ("unreadable", "column"),
    ),
    "int-columns.parquet": (
        parquet_bytes(pa.table({"url": [1, 2], "caption": [3, 4]})),
        ("rows", {"caption_rejected": 2}),
    ),
    "binary-caption.parquet": (
        parquet_bytes(
            pa.table({"url": [f"{HOST}/b.jpg"], "caption": pa.array([b"\xff\xfe" + GOOD.encode()])})
        ),
        ("rows", {"kept": 1}),
    ),
    "not-parquet.parquet": (b"PAR1" + b"\x00" * 64 + b"PAR1", ("unreadable", "")),
    "truncated.parquet": (
        parquet_bytes(
            pa.table({"url": [f"{HOST}/{i}.jpg" for i in range(50)], "caption": [GOOD] * 50})
        )[:-40],
        ("unreadable", ""),
    ),
    "broken-quoting.csv": (
        f'url,caption\n{HOST}/q1.jpg,"{GOOD}\n{HOST}/q2.jpg,"a blue ""square"" here\n'
        f"{HOST}/q3.jpg,a green star that is fine\n".encode(),
        ("rows", {"min_total": 1}),
    ),
    "non-utf8.csv": (
        f"url,caption\n{HOST}/n1.jpg,caf\xe9 red circle \xff\xfe photo\n".encode("latin-1"),
        ("rows", {"kept": 1}),
    ),
    "nul-bytes.csv": (
        f"url,caption\n{HOST}/z1.jpg,a red\x00 circle photo\n{HOST}/z2.jpg,{GOOD}\n".encode(),
        ("rows", {"total": 2}),
    ),
    "nul-bytes.tsv": (
        tsv([(f"{HOST}/t\x00.jpg", "a red circle\x00 photo"), (f"{HOST}/t2.jpg", GOOD)]),
        ("rows", {"total": 2}),
    ),
    "non-utf8-header.tsv": (b"\xff\xfeurl\tcaption\n", ("unreadable", "UTF-8")),
    "short-rows.tsv": (
        tsv([(f"{HOST}/s.jpg", GOOD)]) + b"only one field\n\t\n",
        ("rows", {"kept": 1, "reason:unreadable_row": 1, "total": 2}),
    ),
    "broken.jsonl": (
        b'{"url": "%s/j.jpg", "caption": "%s"}\n{"url": \n[1, 2]\n"text"\n'
        % (HOST.encode(), GOOD.encode()),
        ("rows", {"kept": 1, "total": 4}),
    ),
    "not-an-object.jsonl": (b"[1, 2, 3]\n", ("unreadable", "JSON object")),
    "empty.tsv": (b"", ("rows", {})),
    "header-only.csv": (b"url,caption\n", ("rows", {})),
    "unknown.xyz": (b"whatever", ("unreadable", "unknown format")),
    # text and URLs
    "text-and-urls.tsv": (
        tsv(
            [
                (f"{HOST}/big.jpg", "red circle " * 100_000),  # 1.1 MB caption
                (f"{HOST}/" + "a" * 10_000 + ".jpg", GOOD + " long url"),
                ("http://bücher.example/red.jpg", GOOD + " idn"),
                ("http://xn--bcher-kva.example/red.jpg", GOOD + " punycode"),
                ("http://[::1/red.jpg", GOOD + " broken ipv6"),
                ("http://exa mple.com/red.jpg", GOOD + " space"),
                ("not a url at all", GOOD + " nonsense"),
                ("http:///red.jpg", GOOD + " no host"),
                ("data:image/png;base64,iVBORw0KGgo=", GOOD + " data"),
                ("javascript:alert(1)", GOOD + " js"),
                ("//cdn.example/red.jpg", GOOD + " scheme-relative"),
                (f"{HOST}/\u202eevil.jpg", "a red circle with a bidi override \u202e in it"),
            ]
        ),
        (
            "rows",
            {
                "total": 12,
                "reason:too_long": 1,
                "reason:url_too_long": 1,
                "reason:data_uri": 1,
                "reason:bad_scheme": 3,
                "kept": 4,
            },
        ),
    ),
}


@pytest.fixture(scope="module")
def no_fetch_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad-inputs")
    queries = write_queries(root)
    folder = root / "inputs"
    folder.mkdir()
    for name, (data, _) in CASES.items():
        (folder / name).write_bytes(data)
    out = root / "out"
    rc = build(queries, out, [folder / "*"], *IN_PROCESS)
    return rc, out, folder


def by_source(out: Path) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for row in status_rows(out):
        found.setdefault(Path(row["source"]).name, []).append(row)
    return found


def test_run_over_every_bad_input_succeeds_and_keeps_the_invariant(no_fetch_run):
    rc, out, _ = no_fetch_run
    assert rc == 0
    rows = assert_status_invariant(out)
    assert rows and all(r["status"] in STATUSES for r in rows)


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_file(no_fetch_run, name):
    _rc, out, folder = no_fetch_run
    kind, expected = CASES[name][1]
    unreadable = {Path(u["path"]).name: u["error"] for u in manifest(out)["inputs"]["unreadable"]}
    rows = by_source(out).get(name, [])
    if name in unreadable:
        assert "\n" not in unreadable[name].strip() and "Traceback" not in unreadable[name]
    if kind == "unreadable":
        assert name in unreadable, f"{name} should be listed as unreadable"
        assert expected.lower() in unreadable[name].lower()
        assert rows == []
    elif kind == "partial":
        assert name in unreadable, f"damage in {name} must be reported, not dropped silently"
        if expected is not None:
            assert len(rows) == expected
        else:  # what precedes the damage is read
            assert 0 < len(rows) < 12
    else:
        assert name not in unreadable, unreadable.get(name)
        statuses = [r["status"] for r in rows]
        reasons = [r["reason"] for r in rows]
        for key, n in expected.items():
            if key == "total":
                assert len(rows) == n
            elif key == "min_total":
                assert len(rows) >= n
            elif key.startswith("reason:"):
                assert reasons.count(key[len("reason:") :]) == n, reasons
            else:
                assert statuses.count(key) == n, list(zip(statuses, reasons, strict=True))
        if not expected:
            assert rows == []


def test_read_errors_are_single_printable_lines(no_fetch_run):
    _rc, out, _ = no_fetch_run
    for bad in manifest(out)["inputs"]["unreadable"]:
        error = bad["error"].strip()
        assert error.isprintable(), f"{bad['path']}: {error[:200]!r}"


def test_every_rejected_row_names_its_rule(no_fetch_run):
    _rc, out, _ = no_fetch_run
    for row in status_rows(out):
        if row["status"] == "caption_rejected":
            assert row["reason"] and "\n" not in row["reason"]


def test_mistyped_parquet_values_are_kept_as_text_in_the_status(no_fetch_run):
    _rc, out, _ = no_fetch_run
    rows = by_source(out)["int-columns.parquet"]
    assert {r["reason"] for r in rows} <= {"bad_scheme", "too_short", "missing_url"}


# --- the network and images, with fetching -------------------------------------------------------

EXTRA_ENDPOINTS = {
    "/e/huge-no-length.jpg": "fetch_failed",
    "/e/slow.jpg?s=1": "kept",
    "/e/trickle.jpg?s=1": "kept",
    "/e/redirect/9.jpg": "fetch_failed",  # more hops than the redirect limit
    "/e/redirect/0.jpg": "kept",
    "/no/such/path.jpg": "fetch_failed",
    "/e/redirect-to?url=ftp://127.0.0.1/x.jpg": "fetch_failed",
}
#: Invalid URLs that pass the caption stage and must fail at fetching without a packet sent.
BAD_FETCH_URLS = ("http://[::1/red.jpg", "http://127.0.0.1:99999/x.jpg", "http://127.0.0.1:0/x.jpg")
IMAGE_STATUS = {
    "zero.jpg": ("image_rejected", "empty"),
    "one-pixel.png": ("image_rejected", "too_small"),
    "cmyk.jpg": ("kept", None),
    "sixteen-bit.png": ("kept", None),
    "palette.png": ("kept", None),
    "animated.gif": ("kept", None),
    "exif-rotated.jpg": ("kept", None),
    "grey.jpg": ("kept", None),
    "rgba.png": ("kept", None),
}


@pytest.fixture(scope="module")
def fetch_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad-network")
    images = root / "images"
    images.mkdir()
    for name, data in odd_images().items():
        (images / name).write_bytes(data)
    queries = write_queries(root)
    with FixtureWeb(image_dir=images) as web:
        urls = {web.url(p): p for p in [*ENDPOINT_STATUS, *EXTRA_ENDPOINTS]}
        urls.update({web.url(f"/images/{n}"): n for n in IMAGE_STATUS})
        urls.update({u: u for u in BAD_FETCH_URLS})
        table = pa.table({"url": list(urls), "caption": [f"{GOOD} {i}" for i in range(len(urls))]})
        pq.write_table(table, root / "cands.parquet")
        out = root / "out"
        rc = build(queries, out, [root / "cands.parquet"], "--allow-private-addresses",
                   "--shard-size", "8", "--image-size", "32", *IN_PROCESS, fetch=True)  # fmt: skip
    return rc, out, urls


def _row_for(fetch_run, path):
    _rc, out, urls = fetch_run
    url = next(u for u, p in urls.items() if p == path)
    return next(r for r in status_rows(out) if r["url"] == url)


def test_fetch_run_keeps_the_invariant(fetch_run):
    rc, out, urls = fetch_run
    assert rc == 0
    assert_status_invariant(out, len(urls))


@pytest.mark.parametrize("path", sorted({**ENDPOINT_STATUS, **EXTRA_ENDPOINTS}))
def test_misbehaving_endpoint(fetch_run, path):
    expected = {**ENDPOINT_STATUS, **EXTRA_ENDPOINTS}[path]
    row = _row_for(fetch_run, path)
    assert row["status"] == expected, row["reason"]
    if expected != "kept":
        assert row["reason"] and "\n" not in row["reason"]


@pytest.mark.parametrize("name", sorted(IMAGE_STATUS))
def test_odd_image(fetch_run, name):
    status, reason = IMAGE_STATUS[name]
    row = _row_for(fetch_run, name)
    assert row["status"] == status, row["reason"]
    if reason:
        assert row["reason"] == reason
        return
    sample = next(s for s in shard_samples(fetch_run[1]) if s["uid"] == row["uid"])
    assert (sample["original_width"], sample["original_height"]) == (64, 32) or name.startswith(
        "exif"
    )


def test_exif_rotated_jpeg_is_stored_upright(fetch_run):
    """img2dataset's Resizer decodes with OpenCV IMREAD_UNCHANGED, which ignores EXIF
    orientation; a JPEG stored 64x32 with Orientation=6 must still be kept upright."""
    row = _row_for(fetch_run, "exif-rotated.jpg")
    sample = next(s for s in shard_samples(fetch_run[1]) if s["uid"] == row["uid"])
    assert (sample["original_width"], sample["original_height"]) == (32, 64)


@pytest.mark.parametrize("url", BAD_FETCH_URLS)
def test_invalid_url_fails_at_fetching_with_a_reason(fetch_run, url):
    row = _row_for(fetch_run, url)
    assert row["status"] == "fetch_failed" and row["reason"]


def test_kept_images_decode_as_rgb_jpegs(fetch_run):
    _rc, out, _ = fetch_run
    for tar_path in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".jpg"):
                    with Image.open(tar.extractfile(member)) as img:
                        assert img.format == "JPEG" and img.mode in ("RGB", "L")
                        assert img.size == (32, 32)


# --- training inputs: corrupt shards and checkpoints ---------------------------------------------


def _tar(members) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture(scope="module")
def train_corpus(tmp_path_factory):
    from test_train_fixtures import make_samples, write_corpus
    from test_train_resume import MICRO

    root = tmp_path_factory.mktemp("train-inputs")
    write_corpus(str(root / "good"), make_samples(12, seed=1, size=32), shard_size=12)
    config = root / "micro.json"
    config.write_text(json.dumps(MICRO))
    return root, root / "good" / "shards" / "00000.tar", config


def wit_train(shards, config, out, *extra) -> int:
    from train import cli_train

    return cli_train.main([
        "--shards", str(shards), "--model", str(config), "--out", str(out),
        "--steps", "4", "--batch-size", "4", "--warmup", "1", "--workers", "0",
        "--threads", "1", "--shuffle-buffer", "1", "--tokenizer", "learn:600",
        "--no-progress", "--no-tensorboard", "--save-every", "2", "--seed", "1", *extra,
    ])  # fmt: skip


def test_corrupt_samples_in_a_shard_are_skipped_and_counted(train_corpus, tmp_path, capsys):
    _root, good, config = train_corpus
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "00000.tar").write_bytes(good.read_bytes())
    (shards / "00001.tar").write_bytes(_tar([
        ("k1.jpg", b"not a jpeg"), ("k1.txt", b"a red circle"),
        ("k2.jpg", good.read_bytes()[:100]),  # no caption
        ("k3.txt", b"a caption without an image"),
    ]))  # fmt: skip
    assert wit_train(shards / "*.tar", config, tmp_path / "run") == 0
    err = capsys.readouterr().err
    summary = [line for line in err.splitlines() if "skipped samples" in line]
    assert summary, err[-2000:]
    for reason in ("bad_image", "missing_text", "missing_image"):
        assert reason in summary[-1]
    assert (tmp_path / "run" / "checkpoints" / "latest.pt").is_file()


def _unreadable_shards(folder: Path, with_sizes: bool) -> Path:
    folder.mkdir()
    (folder / "00000.tar").write_bytes(b"this is not a tar file " * 40)
    (folder / "00001.tar").write_bytes(b"")
    if with_sizes:  # as wit-build wrote them, before the tars were damaged on disk
        (folder / "sizes.json").write_text('{"00000.tar": 12, "00001.tar": 12}')
    return folder / "*.tar"


def test_damaged_shards_listed_in_sizes_json_end_in_a_one_line_error(
    train_corpus, tmp_path, capsys
):
    _root, _good, config = train_corpus
    assert wit_train(_unreadable_shards(tmp_path / "s", True), config, tmp_path / "run") == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("wit-train: error:") and "no complete batch" in last


def test_unreadable_shards_without_sizes_json_end_in_a_one_line_error(
    train_corpus, tmp_path, capsys
):
    _root, _good, config = train_corpus
    assert wit_train(_unreadable_shards(tmp_path / "s", False), config, tmp_path / "run") == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("wit-train: error:") and "no complete batch" in last


def test_truncated_shard_is_skipped(train_corpus, tmp_path):
    _root, good, config = train_corpus
    shards = tmp_path / "shards"
    shards.mkdir()
    data = good.read_bytes()
    (shards / "00000.tar").write_bytes(data)
    (shards / "00001.tar").write_bytes(data[: len(data) // 2])
    assert wit_train(shards / "*.tar", config, tmp_path / "run") == 0


@pytest.fixture(scope="module")
def trained_run(train_corpus, tmp_path_factory):
    _root, good, config = train_corpus
    run = tmp_path_factory.mktemp("trained") / "run"
    assert wit_train(good, config, run, "--steps", "2") == 0
    return run


def corrupt_checkpoints(real: bytes) -> dict[str, bytes]:
    import torch

    not_a_dict = io.BytesIO()
    torch.save([1, 2, 3], not_a_dict)
    return {
        "empty": b"",
        "garbage": b"\x80\x04garbage that is not a checkpoint" * 10,
        "truncated": real[: len(real) // 2],
        "flipped": real[:200] + bytes(b ^ 0xFF for b in real[200:400]) + real[400:],
        "not-a-dict": not_a_dict.getvalue(),
    }


@pytest.mark.parametrize("kind", ["empty", "garbage", "truncated", "flipped", "not-a-dict"])
def test_corrupt_checkpoint_is_a_clear_error(trained_run, tmp_path, kind):
    from train.checkpoint import load_checkpoint

    real = (trained_run / "checkpoints" / "latest.pt").read_bytes()
    path = tmp_path / f"{kind}.pt"
    path.write_bytes(corrupt_checkpoints(real)[kind])
    with pytest.raises(ValueError) as err:
        load_checkpoint(path)
    assert str(path) in str(err.value)


def test_resume_from_a_corrupt_checkpoint_fails_cleanly(
    train_corpus, trained_run, tmp_path, capsys
):
    _root, good, config = train_corpus
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "latest.pt").write_bytes(b"garbage")
    assert wit_train(good, config, run, "--resume") == 1
    err = capsys.readouterr().err
    assert "wit-train: error: unreadable checkpoint" in err and "Traceback" not in err


def test_resume_error_for_a_corrupt_checkpoint_is_one_line(train_corpus, tmp_path, capsys):
    _root, good, config = train_corpus
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "latest.pt").write_bytes(b"garbage")
    assert wit_train(good, config, run, "--resume") == 1
    one_line(capsys.readouterr().err)
