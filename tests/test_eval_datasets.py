"""Evaluation datasets: class folders, the Flickr8k caption CSV, shards, unreadable images."""

import io
import tarfile

import pytest
import torch
from PIL import Image

from train.eval.datasets import (
    DatasetError,
    encode_batches,
    expand_braces,
    load_caption_csv,
    load_captions,
    load_classification,
    load_image_folder,
    shard_paths,
)


def _png_bytes(colour=(10, 20, 30), size=(8, 8)):
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


def _write_tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_cifar_folder_classes_and_limit(shared_data):
    root = shared_data("cifar10-test")
    ds = load_image_folder(str(root), limit_per_class=3)
    assert ds.classnames[:3] == ["airplane", "automobile", "bird"] and len(ds.classnames) == 10
    assert len(ds.items) == 30 and ds.labels[:4] == [0, 0, 0, 1]
    assert all(
        f"/{ds.classnames[lab]}/" in it.name for it, lab in zip(ds.items, ds.labels, strict=True)
    )


def test_folder_names_and_classnames_file(tmp_path):
    for folder in ("sea_lion", "zebra"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "a.png").write_bytes(_png_bytes())
    assert load_image_folder(str(tmp_path)).classnames == ["sea lion", "zebra"]
    names = tmp_path.parent / "names.txt"
    names.write_text("California sea lion\nplains zebra\n")
    assert load_image_folder(str(tmp_path), str(names)).classnames[0] == "California sea lion"
    names.write_text("zebra\tstriped horse\nsea_lion\tseal\n")  # folder<TAB>name, any order
    assert load_image_folder(str(tmp_path), str(names)).classnames == ["seal", "striped horse"]
    names.write_text("only one\n")
    with pytest.raises(DatasetError, match="1 names for 2 class folders"):
        load_image_folder(str(tmp_path), str(names))
    with pytest.raises(DatasetError, match="not found"):
        load_image_folder(str(tmp_path / "missing"))


def test_flickr_caption_csv_groups_captions(shared_data):
    csv_path = shared_data("flickr8k-1k", "captions.csv")
    ds = load_caption_csv(str(csv_path))
    assert len(ds.images) == 1000 and len(ds.captions) == 5000
    counts = torch.bincount(torch.tensor(ds.text_to_image))
    assert counts.min().item() == 5 and counts.max().item() == 5
    assert ds.captions[0].startswith("A child in a pink dress")
    small = load_captions(str(csv_path), limit_images=7)
    assert len(small.images) == 7 and len(small.captions) == 35


def test_caption_csv_missing_images_are_recorded(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(_png_bytes())
    (tmp_path / "c.csv").write_text("image,caption\na.png,one\na.png,two\nb.png,gone\na.png,\n")
    ds = load_caption_csv(str(tmp_path / "c.csv"))
    assert ds.captions == ["one", "two"] and ds.text_to_image == [0, 0]
    assert ("b.png", "image file missing") in ds.skipped and (
        "a.png",
        "empty caption",
    ) in ds.skipped
    (tmp_path / "bad.csv").write_text("file,text\nx,y\n")
    with pytest.raises(DatasetError, match="image,caption"):
        load_caption_csv(str(tmp_path / "bad.csv"))


def test_braces_and_shards(tmp_path):
    assert expand_braces("s/{00000..00002}.tar") == ["s/00000.tar", "s/00001.tar", "s/00002.tar"]
    assert expand_braces("{a,b}-{1..2}") == ["a-1", "a-2", "b-1", "b-2"]
    _write_tar(
        tmp_path / "00000.tar",
        [
            ("k1.jpg", _png_bytes()),
            ("k1.txt", b"a red square"),
            ("k2.txt", b"caption without image"),
            ("k3.png", _png_bytes((1, 2, 3))),
            ("k3.txt", b"dark"),
        ],
    )
    _write_tar(
        tmp_path / "00001.tar", [("k4.jpg", _png_bytes()), ("k4.txt", b"x"), ("k4.cls", b"1")]
    )
    assert len(shard_paths(str(tmp_path / "{00000..00001}.tar"))) == 2
    assert len(shard_paths(str(tmp_path))) == 2
    ds = load_captions(str(tmp_path / "*.tar"))
    assert ds.captions == ["a red square", "dark", "x"] and ds.text_to_image == [0, 1, 2]
    assert [r for _, r in ds.skipped] == ["no image member"]
    (tmp_path / "names.txt").write_text("zero\none\n")
    cls = load_classification(str(tmp_path / "00001.tar"), str(tmp_path / "names.txt"))
    assert cls.labels == [1] and cls.classnames == ["zero", "one"]
    with pytest.raises(DatasetError, match="no shards"):
        shard_paths(str(tmp_path / "nothing-*.tar"))


def test_unreadable_images_are_reported_not_fatal(tmp_path):
    for name in ("ok", "bad"):
        (tmp_path / "c" / name).mkdir(parents=True)
    (tmp_path / "c" / "ok" / "1.png").write_bytes(_png_bytes())
    (tmp_path / "c" / "bad" / "2.png").write_bytes(b"\x89PNG truncated")
    ds = load_image_folder(str(tmp_path / "c"))
    failures = []
    to_tensor = lambda im: torch.zeros(3, 4, 4)  # noqa: E731
    batches = list(encode_batches(ds.items, to_tensor, batch_size=4, failures=failures))
    assert len(batches) == 1 and batches[0][1] == [1]  # items sorted: bad/2.png, ok/1.png
    assert failures[0][0].endswith("2.png") and "UnidentifiedImageError" in failures[0][1]
