"""The BPE tokenizer: ids equal open_clip's SimpleTokenizer; the learned vocabulary works."""

from __future__ import annotations

import csv
import json

import pyarrow.parquet as pq
import pytest
import torch
from conftest import shared_path

import train
from train.tokenizer import (
    PIECE_RE,
    BPETokenizer,
    clean_text,
    find_openai_bpe,
    learn_tokenizer,
    split_pieces,
)

open_clip = pytest.importorskip("open_clip")

EDGE_CASES = [
    "",
    "   ",
    "A Photo of a CAT.",
    "emoji 😀🐶👍🏽 family 👨‍👩‍👧 flags 🇫🇷",
    "accents: café naïve Ångström São Paulo résumé Zürich",
    "entities &amp; &amp;amp; &lt;b&gt;bold&lt;/b&gt; &#39;quoted&#39; &quot;x&quot; &nbsp;gap",
    "CJK 東京の夜景 北京 서울의 거리 ひらがな",
    "Arabic العربية and Hebrew עברית and Devanagari हिन्दी",
    "mojibake cafÃ© and â€œquotesâ€\x9d",
    "tabs\tand\nnewlines\r\nand  many   spaces",
    "control\x00chars\x07here\x1b[31mred\x7f",
    "numbers 1234567890 and 3.14 and 1st 2nd 10,000",
    "contractions it's don't we're they've I'm we'll he'd",
    "UPPER İstanbul ǅ ß ﬁ ligature",
    "literal <start_of_text> and <end_of_text> in text",
    "punctuation!!! ... ??? --- *** ((( )))",
    "zero\u200bwidth\u200djoiner and \ufeffbom",
    "x" * 5000,
    "a photo of a dog. " * 300,
]


@pytest.fixture(scope="module")
def ours():
    return train.get_tokenizer("openai")


@pytest.fixture(scope="module")
def ref():
    return open_clip.tokenizer.SimpleTokenizer()


def shared_captions() -> dict[str, list[str]]:
    cc3m = shared_path("captions", "cc3m-validation.tsv")
    flickr = shared_path("flickr8k-1k", "captions.csv")
    laion = shared_path("captions", "img2dataset-test_10000.parquet")
    with open(cc3m, encoding="utf-8", newline="") as f:
        cc = [line.rstrip("\r\n").split("\t")[0] for line in f if line.strip()]
    with open(flickr, encoding="utf-8", newline="") as f:
        fl = [row["caption"] for row in csv.DictReader(f)]
    la = [
        t
        for t in pq.read_table(laion, columns=["TEXT"]).column("TEXT").to_pylist()
        if t is not None
    ]
    return {"cc3m": cc, "flickr8k": fl, "laion": la}


def test_ids_equal_open_clip_on_every_shared_caption(ours, ref):
    sources = shared_captions()
    assert len(sources["cc3m"]) == 15833 and len(sources["flickr8k"]) == 5000
    assert len(sources["laion"]) > 9000
    for name, captions in sources.items():
        a, b = ours(captions), ref(captions)
        assert a.shape == b.shape == (len(captions), 77)
        bad = (a != b).any(dim=1).nonzero().flatten().tolist()
        assert not bad, f"{name}: {len(bad)} captions differ, first: {captions[bad[0]]!r}"


@pytest.mark.parametrize("context_length", [77, 16, 2])
def test_ids_equal_open_clip_on_edge_cases(ours, ref, context_length):
    a = ours(EDGE_CASES, context_length=context_length)
    b = ref(EDGE_CASES, context_length=context_length)
    for i, text in enumerate(EDGE_CASES):
        assert a[i].tolist() == b[i].tolist(), repr(text[:60])
    # Truncation keeps the end token, so every row has one.
    assert (a == ours.eot_id).sum(dim=1).ge(1).all()
    assert (a[:, 0] == ours.sot_id).all()


def test_fast_ascii_path_equals_the_full_cleaning():
    import html

    import ftfy

    for text in ["Plain ASCII caption, with (punctuation)!", "UPPER lower 123", "  spaced  out  "]:
        full = " ".join(html.unescape(html.unescape(ftfy.fix_text(text))).split()).lower()
        assert clean_text(text) == full


def test_long_text_stops_early_but_matches(ours, ref):
    text = "word " * 100_000
    assert ours([text]).tolist() == ref([text]).tolist()
    assert len(ours.encode(text, max_tokens=10)) == 10


def test_bad_input_gives_clear_errors(ours, tmp_path):
    with pytest.raises(TypeError, match="text 1 is NoneType, not str"):
        ours(["ok", None])
    with pytest.raises(ValueError, match="context_length must be >= 2"):
        ours(["ok"], context_length=1)
    assert ours([]).shape == (0, 77)
    with pytest.raises(ValueError, match="neither 'openai' nor an existing file"):
        train.get_tokenizer(str(tmp_path / "missing.json"))
    with pytest.raises(ValueError, match="not a tokenizer spec"):
        train.get_tokenizer({"type": "sentencepiece"})
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(ValueError, match="cannot read tokenizer file"):
        train.get_tokenizer(broken)


def test_merges_file_lookup_env_and_explicit_path(ours, tmp_path, monkeypatch):
    found = find_openai_bpe()
    assert found.name == "bpe_simple_vocab_16e6.txt.gz"
    copy = tmp_path / "merges.txt.gz"
    copy.write_bytes(found.read_bytes())
    monkeypatch.setenv("WIT_BPE_PATH", str(copy))
    assert find_openai_bpe() == copy
    assert train.get_tokenizer("openai")(["a dog"]).tolist() == ours(["a dog"]).tolist()
    monkeypatch.setenv("WIT_BPE_PATH", str(tmp_path / "nope.gz"))
    with pytest.raises(ValueError, match="BPE merges file not found"):
        train.get_tokenizer("openai")
    monkeypatch.delenv("WIT_BPE_PATH")
    assert train.get_tokenizer("openai", bpe_path=copy).vocab_size == 49408


def test_openai_spec_round_trip(ours):
    spec = ours.spec()
    assert json.loads(json.dumps(spec)) == spec
    again = train.get_tokenizer(spec)
    assert again.vocab_size == 49408 and again.sot_id == 49406 and again.eot_id == 49407
    assert again(EDGE_CASES).tolist() == ours(EDGE_CASES).tolist()


@pytest.fixture(scope="module")
def flickr_captions():
    path = shared_path("flickr8k-1k", "captions.csv")
    with open(path, encoding="utf-8", newline="") as f:
        return [row["caption"] for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def learned(flickr_captions):
    return learn_tokenizer(flickr_captions, vocab_size=2000)


def test_learned_vocabulary_layout_and_compression(learned, flickr_captions, ours):
    assert 600 < learned.vocab_size <= 2000
    assert learned.eot_id == learned.vocab_size - 1 and learned.sot_id == learned.vocab_size - 2
    tokens = learned(flickr_captions)
    assert tokens.max().item() == learned.eot_id
    # Frequent words are single tokens, and captions take a handful of tokens, not bytes.
    for word in ("dog", "man", "water", "the"):
        assert len(learned.encode(word)) == 1, word
    lengths = (tokens != 0).sum(dim=1).float()
    chars = torch.tensor([len(c) for c in flickr_captions], dtype=torch.float)
    assert lengths.mean() < chars.mean() / 3
    assert lengths.mean() < 1.5 * (ours(flickr_captions) != 0).sum(dim=1).float().mean()


def test_learned_tokenizer_decodes_back_to_the_cleaned_pieces(learned, flickr_captions):
    for caption in flickr_captions[:300] + EDGE_CASES:
        if "_of_text>" in caption:
            continue  # literal special tokens encode to the special ids, by OpenAI's rules
        ids = learned.encode(caption)
        assert max(ids, default=0) < learned.sot_id
        assert learned.decode(ids) == " ".join(PIECE_RE.findall(clean_text(caption)))


def test_learned_merges_apply_like_the_tokenizers_library(learned, flickr_captions):
    """Our BPE loop against the Rust BPE model built from the same merges."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {s: i for s, i in learned.encoder.items()}
    merges = [tuple(m) for m in learned.merges]
    hf = Tokenizer(models.BPE(vocab=vocab, merges=merges, end_of_word_suffix="</w>"))
    hf.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    for caption in flickr_captions[:500] + EDGE_CASES[:-2]:
        text = clean_text(caption)
        pieces = split_pieces(text)
        if not pieces or any(p in ("<start_of_text>", "<end_of_text>") for p in pieces):
            continue
        assert hf.encode(" ".join(pieces)).ids == learned.encode(caption), caption


def test_learned_spec_round_trips_through_json_and_file(learned, flickr_captions, tmp_path):
    spec = learned.spec()
    assert spec["type"] == "bpe" and all(isinstance(m, str) for m in spec["merges"])
    again = train.get_tokenizer(json.loads(json.dumps(spec)))
    assert again(flickr_captions[:200]).tolist() == learned(flickr_captions[:200]).tolist()
    path = tmp_path / "tok.json"
    learned.save(path)
    from_file = train.get_tokenizer(path)
    assert from_file.vocab_size == learned.vocab_size
    assert from_file(EDGE_CASES).tolist() == learned(EDGE_CASES).tolist()


def test_learned_vocabulary_feeds_a_tiny_model(learned, flickr_captions):
    model = train.create_model("tiny-vit", vocab_size=learned.vocab_size)
    img, txt, _ = model(torch.randn(2, 3, 64, 64), learned(flickr_captions[:2]))
    assert txt.shape == (2, 128) and torch.isfinite(txt).all()


def test_vocab_size_too_small_is_rejected():
    with pytest.raises(ValueError, match="at least 514"):
        learn_tokenizer(["a dog"], vocab_size=100)
    tok = learn_tokenizer(["a dog", "a dog"], vocab_size=600)
    assert tok.vocab_size >= 514 and isinstance(tok, BPETokenizer)
