"""ReadCandidates: tabular formats, splitting, WARC/WAT/HTML pages, and damaged input."""

from __future__ import annotations

import gzip
import html.parser
import io
import json
from urllib.parse import urljoin

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to
from conftest import shared_path
from warcio.archiveiterator import ArchiveIterator
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from pipeline import read_tabular
from pipeline.read import ReadCandidates, detect_format, plan_inputs, read_unit


def rows_of(plan, on_error=None):
    tables = [t for u in plan.units for t in read_unit(u, on_error)]
    return pa.concat_tables(tables).to_pylist() if tables else []


@pytest.mark.parametrize(
    ("name", "fmt"),
    [("a.parquet", "parquet"), ("a.tsv", "tsv"), ("a.tsv.gz", "tsv"), ("a.csv", "csv"), ("a.jsonl", "jsonl"),
     ("x.warc.gz", "warc"), ("x.warc.wat.gz", "wat"), ("p.html", "html"), ("a.bin", None)],
)  # fmt: skip
def test_detect_format(name, fmt):
    assert detect_format(name) == fmt


def test_cc3m_headerless_tsv_detects_columns():
    path = shared_path("captions", "cc3m-validation.tsv")
    plan = plan_inputs([str(path)])
    rows = rows_of(plan)
    n_lines = sum(1 for line in open(path, encoding="utf-8") if line.strip())
    assert len(rows) == n_lines
    assert rows[0]["caption"] == "author : a life in photography -- in pictures"
    assert rows[0]["url"].startswith("https://i.pinimg.com/")
    assert all(r["error"] is None for r in rows)


def test_byte_range_splits_read_every_line_once(tmp_path, monkeypatch):
    path = shared_path("captions", "cc3m-validation.tsv")
    monkeypatch.setattr(read_tabular, "SPLIT_BYTES", 100_003)
    plan = plan_inputs([str(path)])
    assert len(plan.units) > 20
    split_rows = rows_of(plan)
    monkeypatch.setattr(read_tabular, "SPLIT_BYTES", 1 << 40)
    whole = rows_of(plan_inputs([str(path)]))
    assert split_rows == whole


def test_parquet_row_groups_are_units(tmp_path):
    src = pq.read_table(shared_path("captions", "img2dataset-test_10000.parquet"))
    path = tmp_path / "c.parquet"
    pq.write_table(src, path, row_group_size=3000)
    plan = plan_inputs([str(path)])
    assert [u["first_row"] for u in plan.units] == [0, 3000, 6000, 9000]
    rows = rows_of(plan)
    assert [r["row"] for r in rows] == list(range(src.num_rows))
    assert [r["url"] for r in rows] == src["URL"].to_pylist()


def test_explicit_columns_and_missing_column(tmp_path):
    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"link": ["http://a.org/1.jpg"], "words": ["a red bus"]}), path)
    plan = plan_inputs([str(path)], url_col="link", caption_col="words")
    assert rows_of(plan)[0]["caption"] == "a red bus"
    bad = plan_inputs([str(path)])  # no known column names: reported, not raised
    assert bad.units == [] and "caption column" in bad.unreadable[0]["error"]


def test_bad_rows_become_unreadable_rows(tmp_path):
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_bytes(
        b'{"url": "http://a.org/1.jpg", "caption": "a red bus"}\n{not json\n[1, 2]\n'
        b'\xff\xfe bad utf8\n{"url": "http://a.org/2.jpg", "text": "x"}\n'
    )
    rows = rows_of(plan_inputs([str(jsonl)]))
    assert [r["error"] for r in rows] == [
        None,
        "unreadable_row",
        "unreadable_row",
        "unreadable_row",
        None,
    ]
    assert rows[4]["caption"] is None  # the caption column is "caption"; "text" is not read
    csv_path = tmp_path / "c.csv"
    csv_path.write_text(
        'url,caption\nhttp://a.org/1.jpg,"a, quoted\nnewline"\nonly-one-field\n', encoding="utf-8"
    )
    rows = rows_of(plan_inputs([str(csv_path)]))
    assert rows[0]["caption"] == "a, quoted\nnewline"
    assert rows[1]["error"] == "unreadable_row"


class _ImgCollector(html.parser.HTMLParser):
    """An independent reading of <base href> and <img src alt> (stdlib parser)."""

    def __init__(self):
        super().__init__()
        self.base, self.imgs = None, []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "base" and a.get("href") and self.base is None:
            self.base = a["href"]
        if tag == "img" and a.get("src") and a["src"].strip():
            self.imgs.append((a["src"].strip(), a.get("alt")))


def test_warc_yields_resolved_urls():
    path = shared_path("warc", "resiliparse-warcfile.warc.gz")
    expected = []
    with open(path, "rb") as f:
        for rec in ArchiveIterator(f):
            ctype = rec.http_headers.get_header("Content-Type") if rec.http_headers else None
            if rec.rec_type != "response" or "html" not in (ctype or "").lower():
                continue
            page = rec.rec_headers.get_header("WARC-Target-URI")
            parser = _ImgCollector()
            parser.feed(rec.content_stream().read().decode("utf-8", errors="replace"))
            base = urljoin(page, parser.base) if parser.base else page
            expected += [urljoin(base, src) for src, _alt in parser.imgs]
    rows = rows_of(plan_inputs([str(path)]))
    assert len(expected) > 20
    assert sorted(r["url"] for r in rows) == sorted(expected)
    assert all(r["url"].startswith(("http://", "https://")) for r in rows)
    assert all(r["source"] == str(path) for r in rows)


def _warc_bytes(page: str, body: bytes, damaged: bool = False) -> bytes:
    buf = io.BytesIO()
    writer = WARCWriter(buf, gzip=True)
    headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html")], protocol="HTTP/1.1")
    writer.write_record(
        writer.create_warc_record(page, "response", payload=io.BytesIO(body), http_headers=headers)
    )
    data = buf.getvalue()
    return data + b"garbage that is not a WARC record\r\n\r\n" if damaged else data


def test_base_href_and_relative_urls(tmp_path):
    body = (b'<html><head><base href="/static/"></head><body><img src="a.jpg" alt="A red bus">'
            b'<img src="../b.png" alt="B"><img src="//cdn.org/c.jpg"><img alt="no src"></body></html>')  # fmt: skip
    (tmp_path / "p.warc.gz").write_bytes(_warc_bytes("https://site.org/dir/page.html", body))
    rows = rows_of(plan_inputs([str(tmp_path / "p.warc.gz")]))
    assert [(r["url"], r["caption"]) for r in rows] == [
        ("https://site.org/static/a.jpg", "A red bus"),
        ("https://site.org/b.png", "B"),
        ("https://cdn.org/c.jpg", None),
    ]


def test_damaged_warc_keeps_rows_and_reports(tmp_path):
    body = b'<img src="a.jpg" alt="A red bus">'
    (tmp_path / "d.warc.gz").write_bytes(_warc_bytes("https://s.org/", body, damaged=True))
    errors = []
    rows = rows_of(plan_inputs([str(tmp_path / "d.warc.gz")]), lambda p, m: errors.append((p, m)))
    assert rows and rows[0]["url"] == "https://s.org/a.jpg"
    assert errors and errors[0][0].endswith("d.warc.gz")


def test_clipped_real_warc_does_not_crash():
    rows = rows_of(
        plan_inputs([str(shared_path("warc", "resiliparse-clipped.warc.gz"))]), lambda p, m: None
    )
    assert all(r["url"].startswith("http") for r in rows)


def test_wat_img_links(tmp_path):
    meta = {"Envelope": {"WARC-Header-Metadata": {"WARC-Target-URI": "https://s.org/a/page"},
            "Payload-Metadata": {"HTTP-Response-Metadata": {"HTML-Metadata": {
                "Head": {"Base": "https://img.s.org/base/"},
                "Links": [{"path": "IMG@/src", "url": "x.jpg", "alt": "A red bus"},
                          {"path": "A@/href", "url": "/next"},
                          {"path": "IMG@/src", "url": "/y.jpg"}]}}}}}  # fmt: skip
    buf = io.BytesIO()
    writer = WARCWriter(buf, gzip=True)
    writer.write_record(writer.create_warc_record(
        "https://s.org/a/page", "metadata", payload=io.BytesIO(json.dumps(meta).encode()),
        warc_content_type="application/json"))  # fmt: skip
    (tmp_path / "x.warc.wat.gz").write_bytes(buf.getvalue())
    rows = rows_of(plan_inputs([str(tmp_path / "x.warc.wat.gz")]))
    assert [(r["url"], r["caption"]) for r in rows] == [
        ("https://img.s.org/base/x.jpg", "A red bus"),
        ("https://img.s.org/y.jpg", None),
    ]


def test_real_wat_reads_without_error():
    errors = []
    rows_of(
        plan_inputs([str(shared_path("warc", "whirlwind.warc.wat.gz"))]),
        lambda p, m: errors.append(m),
    )
    assert errors == []


def test_html_folder(tmp_path):
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "a.html").write_text(
        '<link rel="canonical" href="https://s.org/x/a.html"><img src="i.jpg" alt="A red bus">',
        encoding="utf-8",
    )
    (tmp_path / "site" / "b.htm").write_text('<img src="/j.jpg" alt="B">', encoding="utf-8")
    rows = rows_of(plan_inputs([str(tmp_path / "site")]))
    # a page without a canonical URL resolves against its file URI (later rejected: bad_scheme)
    assert sorted(r["url"] for r in rows) == ["file:///j.jpg", "https://s.org/x/i.jpg"]


def test_unreadable_files_are_reported_not_fatal(tmp_path, capsys):
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    (tmp_path / "ok.tsv").write_text("http://a.org/1.jpg\ta red bus\n", encoding="utf-8")
    plan = plan_inputs([str(tmp_path / "*")])
    assert [u["path"] for u in plan.units] == [str(tmp_path / "ok.tsv")]
    assert plan.unreadable[0]["path"] == str(tmp_path / "bad.parquet")
    assert "bad.parquet" in capsys.readouterr().err
    with pytest.raises(ValueError, match="matches no file"):
        plan_inputs([str(tmp_path / "nothing-*.tsv")])


def test_gzip_tsv_is_one_unit(tmp_path):
    with gzip.open(tmp_path / "c.tsv.gz", "wt", encoding="utf-8") as f:
        f.write("caption\turl\na red bus\thttp://a.org/1.jpg\n")
    plan = plan_inputs([str(tmp_path / "c.tsv.gz")])
    assert len(plan.units) == 1
    assert [(r["url"], r["caption"]) for r in rows_of(plan)] == [
        ("http://a.org/1.jpg", "a red bus")
    ]


def test_read_stage_in_beam_spreads_units(tmp_path):
    src = pq.read_table(shared_path("captions", "img2dataset-test_10000.parquet"))
    path = tmp_path / "c.parquet"
    pq.write_table(src, path, row_group_size=2500)
    plan = plan_inputs([str(path)])
    with BeamTestPipeline(runner=FnApiRunner()) as p:
        rows = p | ReadCandidates(plan.units) | beam.FlatMap(lambda t: t["row"].to_pylist())
        assert_that(rows, equal_to(list(range(src.num_rows))))


def test_truncated_and_garbage_gzip_warcs_are_reported(tmp_path):
    one = _warc_bytes("https://s.org/", b'<img src="a.jpg" alt="A red bus">')
    (tmp_path / "cut.warc.gz").write_bytes(one * 3 + one[: len(one) // 2])
    (tmp_path / "text.warc.gz").write_bytes(b"WARC/1.0\r\nthis is not a record\r\n" * 20)
    errors = {}
    plan = plan_inputs([str(tmp_path / "*.warc.gz")])
    rows = rows_of(plan, lambda p, m: errors.setdefault(p.rsplit("/", 1)[-1], m))
    assert len(rows) == 3  # what precedes the damage is kept
    assert set(errors) == {"cut.warc.gz", "text.warc.gz"}
    assert all("damaged gzip" in m for m in errors.values())


def test_read_error_messages_are_one_printable_line(tmp_path, capsys):
    from pipeline.read import record_read_error

    record_read_error(str(tmp_path), "x.warc.gz", "ArchiveLoadFailed: bad\r\nrecord \x0b\x85 bytes")
    line = capsys.readouterr().err
    assert line.count("\n") == 1 and line.strip().isprintable()
    saved = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert saved["error"] == "ArchiveLoadFailed: bad record bytes"
