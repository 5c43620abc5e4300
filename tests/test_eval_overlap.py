"""Overlap check: planted near-duplicates in shards are found, and nothing else is."""

import hashlib
import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from train.eval.datasets import load_image_folder
from train.eval.overlap import _DCT32, dhash, hamming, overlap_report, phash


def _jpeg(img, size, quality):
    buf = io.BytesIO()
    img.convert("RGB").resize((size, size), Image.Resampling.BICUBIC).save(
        buf, "JPEG", quality=quality
    )
    return buf.getvalue()


def _write_shard(path, samples):
    """A shard as wit-build writes it: <key>.jpg, <key>.txt, <key>.json per sample."""
    with tarfile.open(path, "w") as tar:
        for key, jpg, caption in samples:
            for ext, data in (
                ("jpg", jpg),
                ("txt", caption.encode()),
                ("json", json.dumps({"caption": caption}).encode()),
            ):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def _key(text):
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def test_dct_matches_scipy():
    fft = pytest.importorskip("scipy.fft")
    x = np.random.default_rng(0).normal(size=(32, 32))
    assert np.allclose(_DCT32 @ x @ _DCT32.T, fft.dctn(x, norm="ortho"))


def test_hashes_survive_resize_and_jpeg_but_separate_different_images(shared_data):
    files = sorted(shared_data("flickr8k-1k", "images").iterdir())[:20]
    for fn in (phash, dhash):
        orig = np.array([fn(Image.open(f)) for f in files], dtype=np.uint64)
        recoded = np.array(
            [fn(Image.open(io.BytesIO(_jpeg(Image.open(f), 256, 70)))) for f in files],
            dtype=np.uint64,
        )
        same = np.diag(hamming(orig, recoded))
        cross = hamming(orig, orig)[~np.eye(len(files), dtype=bool)]
        assert same.max() <= 6 and cross.min() > 10, fn.__name__


def test_planted_duplicates_are_found(tmp_path, shared_data):
    cifar = shared_data("cifar10-test")
    flickr = sorted(shared_data("flickr8k-1k", "images").iterdir())[:25]
    eval_set = load_image_folder(str(cifar), limit_per_class=4)  # 40 images
    planted = [0, 5, 13, 22, 39]  # eval indices copied into the training shards, re-encoded
    first, second = [], []
    for i in planted:
        img = Image.open(eval_set.items[i].name)
        first.append((_key(f"p{i}"), _jpeg(img, 96, 85), f"planted {i}"))
    for n, f in enumerate(flickr):
        second.append((_key(f"f{n}"), _jpeg(Image.open(f), 96, 85), f"flickr {n}"))
    others = sorted((cifar / "cat").iterdir())[100:115]  # same classes, other images
    for n, f in enumerate(others):
        second.append((_key(f"o{n}"), _jpeg(Image.open(f), 96, 85), f"other cat {n}"))
    second.append((_key("broken"), b"not a jpeg", "broken"))
    _write_shard(tmp_path / "00000.tar", first)
    _write_shard(tmp_path / "00001.tar", second)

    rep = overlap_report(
        eval_set.items,
        str(tmp_path / "{00000..00001}.tar"),
        eval_labels=eval_set.labels,
        classnames=eval_set.classnames,
    )
    assert rep["train_images"] == 5 + 25 + 15 and rep["train_unreadable"] == 1
    assert rep["eval_with_near_duplicate"] == len(planted)
    assert sorted(rep["overlap_indices"]) == planted
    assert rep["overlap_fraction"] == pytest.approx(5 / 40)
    assert {ex["caption"] for ex in rep["examples"]} == {f"planted {i}" for i in planted}
    assert all(ex["distance"] <= 4 and ex["shard"].endswith("00000.tar") for ex in rep["examples"])
    expected = {name: 0 for name in eval_set.classnames}
    for i in planted:
        expected[eval_set.classnames[eval_set.labels[i]]] += 1
    assert rep["per_class"] == expected


def test_damaged_shard_keeps_what_was_read(tmp_path, shared_data):
    files = sorted(shared_data("flickr8k-1k", "images").iterdir())[:6]
    _write_shard(
        tmp_path / "00000.tar", [(_key(str(f)), _jpeg(Image.open(f), 64, 90), "x") for f in files]
    )
    data = (tmp_path / "00000.tar").read_bytes()
    (tmp_path / "00000.tar").write_bytes(data[: len(data) * 2 // 3])  # cut mid-archive
    eval_set = load_image_folder(str(shared_data("cifar10-test")), limit_per_class=1)
    rep = overlap_report(eval_set.items, str(tmp_path / "00000.tar"))
    assert 0 < rep["train_images"] < 6 and rep["eval_with_near_duplicate"] == 0
