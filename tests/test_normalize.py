"""NormalizeCaptions: repair, rules with named reasons, uids, and the Beam stage."""

from __future__ import annotations

import html

import apache_beam as beam
import ftfy
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to
from conftest import shared_path

from pipeline.normalize import (
    NormalizeCaptions,
    candidate_uid,
    caption_rule,
    fix_caption,
    normalize_row,
    url_rule,
)
from pipeline.read_tabular import RAW_SCHEMA
from pipeline.status_io import FINAL


def _slow_reference(raw: str) -> str:
    """What fix_caption promises, without its fast path."""
    text = ftfy.fix_text(raw, unescape_html=False)
    text = ftfy.fix_text(html.unescape(text), unescape_html=False)
    return " ".join(text.split())


def test_fast_path_equals_full_repair_on_real_captions():
    texts = pq.read_table(shared_path("captions", "img2dataset-test_10000.parquet"))[
        "TEXT"
    ].to_pylist()
    cc3m = shared_path("captions", "cc3m-validation.tsv")
    texts += [line.split("\t")[0] for line in open(cc3m, encoding="utf-8")][:3000]
    texts = [t for t in texts if t]
    assert sum(not t.isascii() or "&" in t for t in texts) > 100  # the slow path is exercised
    assert [fix_caption(t) for t in texts] == [_slow_reference(t) for t in texts]


@pytest.mark.parametrize(
    ("raw", "fixed"),
    [
        ("  A   dog\n\ton grass ", "A dog on grass"),
        ("Fish &amp; chips", "Fish & chips"),
        ("caf\u00c3\u00a9 terrace", "café terrace"),  # mojibake repaired by ftfy
        ("&lt;b&gt;bold&lt;/b&gt; text", "<b>bold</b> text"),
        ("tab\x00bed", "tabbed"),
    ],
)
def test_fix_caption(raw, fixed):
    assert fix_caption(raw) == fixed


@pytest.mark.parametrize(
    ("caption", "reason"),
    [
        ("", "empty"), ("abc", "too_short"), ("x" * 1001, "too_long"), ("IMG_1234.jpg", "filename_like"),
        ("DSC01234", "filename_like"), ("photo-01.png", "filename_like"), ("20190612_101503", "filename_like"),
        ("Click here!", "boilerplate"), ("Image", "boilerplate"), ("[thumbnail]", "boilerplate"),
        ("A dog running on the beach", None), ("Image of a dog", None),
    ],
)  # fmt: skip
def test_caption_rules(caption, reason):
    assert caption_rule(caption) == reason


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("", "missing_url"), ("data:image/png;base64,AAAA", "data_uri"), ("ftp://x.org/a.jpg", "bad_scheme"),
        ("/relative/a.jpg", "bad_scheme"), ("https://x.org/" + "a" * 2100, "url_too_long"),
        ("http:///a.jpg", "missing_host"), ("https://x.org/a b.jpg", "whitespace_in_url"),
        ("HTTPS://x.org/a.jpg", None), ("http://x.org/a.jpg", None),
    ],
)  # fmt: skip
def test_url_rules(url, reason):
    assert url_rule(url) == reason


def test_uid_and_row_uid():
    ok = normalize_row(" https://x.org/a.jpg ", "A  dog", "f.tsv", 3)
    assert ok.reason is None
    assert ok.uid == candidate_uid("https://x.org/a.jpg", "A dog")
    bad1 = normalize_row("https://x.org/a.jpg", "Image", "f.tsv", 3)
    bad2 = normalize_row("https://x.org/a.jpg", "Image", "f.tsv", 4)
    assert bad1.reason == "boilerplate" and bad1.uid.startswith("row:") and bad1.uid != bad2.uid


@pytest.mark.parametrize("value", [None, 12, b"bytes"])
def test_bad_values_get_a_reason_not_a_crash(value):
    n = normalize_row(value, value, "f", 0)
    assert n.reason in {"missing_url", "empty"} and n.uid.startswith("row:")
    assert normalize_row(None, None, "f", 1, "unreadable_row").reason == "unreadable_row"


def test_normalize_stage_in_beam():
    raw = pa.table(
        {"url": ["http://x.org/1.jpg", "http://x.org/2.jpg", None], "caption": ["A red bus", "image", "x"],
         "source": ["s"] * 3, "row": [0, 1, 2], "error": [None, None, "unreadable_row"]},
        schema=RAW_SCHEMA,
    )  # fmt: skip
    with BeamTestPipeline(runner=FnApiRunner()) as p:
        out = p | beam.Create([raw]) | NormalizeCaptions()
        accepted = out.accepted | "a" >> beam.FlatMap(lambda t: t["caption"].to_pylist())
        rejected = out[FINAL] | "r" >> beam.FlatMap(
            lambda t: list(zip(t["status"].to_pylist(), t["reason"].to_pylist(), strict=True))
        )
        assert_that(accepted, equal_to(["A red bus"]), label="accepted")
        assert_that(
            rejected,
            equal_to([("caption_rejected", "boilerplate"), ("caption_rejected", "unreadable_row")]),
            label="rejected",
        )
