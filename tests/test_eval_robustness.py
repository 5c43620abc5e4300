"""`wit-eval robustness`: synthetic shifts, the baseline line, and CIFAR-10 end to end.

The end-to-end tests use the micro CLIP trained on CIFAR-10 in test_eval_fewshot (once
per session) and its `random:` twin.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image
from test_eval_fewshot import one_thread, trained_cifar_checkpoint  # noqa: F401

from train.eval.robustness import fit_line, logit, predicted, sigmoid
from train.eval.shifts import (
    FAMILIES,
    ShiftedTransform,
    apply_shift,
    parse_families,
    parse_severities,
    shifted_transform,
)
from train.transforms import image_transform


@pytest.fixture(scope="module")
def cifar_micro(tmp_path_factory):
    from conftest import shared_path

    return trained_cifar_checkpoint(tmp_path_factory, shared_path)


def _cifar_images(shared_data, n=3):
    root = shared_data("cifar10-test")
    return [Image.open(root / c / "0000.jpg").convert("RGB") for c in ("cat", "ship", "truck")][:n]


def _diff(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(np.asarray(a, float) - np.asarray(b, float)).mean())


# ---------------------------------------------------------------- shifts


def test_parse_families_and_severities():
    assert parse_families("all") == list(FAMILIES)
    assert parse_families("none") == [] and parse_families("") == []
    assert parse_families("Blur, noise,blur") == ["blur", "noise"]
    assert parse_severities("5,0,3,3") == [0, 3, 5]
    for bad in ("6", "-1", "x", ""):
        with pytest.raises(ValueError):
            parse_severities(bad)
    with pytest.raises(ValueError, match="unknown shift"):
        parse_families("noise,snow")


def test_every_family_grows_with_severity_and_zero_is_the_image_itself():
    img = Image.open(io.BytesIO(_photo_bytes())).convert("RGB")
    for family in FAMILIES:
        assert apply_shift(img, family, 0) is img
        d = [_diff(img, apply_shift(img, family, s)) for s in range(1, 6)]
        assert d[0] > 0, family
        assert d[-1] > d[0], (family, d)  # severity 5 moves the image further than 1


def test_shifts_are_deterministic_and_seeded_by_content():
    img = Image.open(io.BytesIO(_photo_bytes())).convert("RGB")
    for family in FAMILIES:
        a = apply_shift(img, family, 4, seed=0)
        b = apply_shift(img.copy(), family, 4, seed=0)
        assert a.tobytes() == b.tobytes(), family
        c = apply_shift(img, family, 4, seed=1)
        random_family = family in ("noise", "haze")
        assert (a.tobytes() != c.tobytes()) == random_family, family
    # two different images get different noise, not one pattern stamped on both
    other = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    noise_a = np.asarray(apply_shift(img, "noise", 3), float) - np.asarray(img, float)
    noise_b = np.asarray(apply_shift(other, "noise", 3), float) - np.asarray(other, float)
    assert np.abs(noise_a - noise_b).mean() > 1


def test_severity_zero_transform_equals_the_plain_one(shared_data):
    base = image_transform(64, is_train=False)
    for img in _cifar_images(shared_data):
        want = base(img)
        for family in FAMILIES:
            assert shifted_transform(base, 64, family, 0) is base
            assert torch.equal(ShiftedTransform(base, 64, family, 0)(img), want)
            assert not torch.equal(ShiftedTransform(base, 64, family, 5)(img), want)


def test_shifted_transform_is_picklable_for_loader_workers():
    t = ShiftedTransform(image_transform(32, is_train=False), 32, "haze", 3, seed=7)
    img = Image.open(io.BytesIO(_photo_bytes())).convert("RGB")
    assert torch.equal(pickle.loads(pickle.dumps(t))(img), t(img))


def _photo_bytes() -> bytes:
    """A 96x72 picture with edges, gradients and texture (deterministic)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:72, 0:96]
    a = np.stack([x * 2.5, y * 3.0, (x + y) * 1.5], -1) % 256
    a[20:50, 30:70] = [200, 40, 40]
    a += rng.normal(0, 8, a.shape)
    buf = io.BytesIO()
    Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


# ---------------------------------------------------------------- the baseline line


def test_line_fit_in_logit_space_and_effective_robustness():
    slope, intercept = 0.8, -0.5
    pts = [(p, sigmoid(slope * logit(p) + intercept)) for p in (0.2, 0.4, 0.7)]
    line = fit_line(pts)
    assert line["slope"] == pytest.approx(slope) and line["intercept"] == pytest.approx(intercept)
    assert predicted(line, 0.4) == pytest.approx(pts[1][1])
    assert fit_line(pts[:1]) is None and fit_line([(0.3, 0.2), (0.3, 0.25)]) is None
    assert predicted(None, 0.4) is None


# ---------------------------------------------------------------- CIFAR-10 end to end


def _folder_of_links(src, dst, files: slice):
    for cls in sorted(os.listdir(src)):
        (dst / cls).mkdir(parents=True)
        for f in sorted(os.listdir(src / cls))[files]:
            (dst / cls / f).symlink_to(src / cls / f)


def _grey_shards(src, dst, classes, files: slice):
    """A 'natural' shifted set of some of the classes: greyscale photos, as labelled shards."""
    dst.mkdir()
    with tarfile.open(dst / "grey-000.tar", "w") as tar:
        for c, name in enumerate(classes):
            for f in sorted(os.listdir(src / name))[files]:
                buf = io.BytesIO()
                Image.open(src / name / f).convert("L").save(buf, "JPEG", quality=95)
                for ext, data in (("jpg", buf.getvalue()), ("cls", str(c).encode())):
                    info = tarfile.TarInfo(f"{name}_{f[:-4]}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    (dst / "classnames.txt").write_text("\n".join(classes) + "\n")
    return str(dst / "grey-000.tar")


def test_robustness_on_cifar10_trained_and_random(cifar_micro, shared_data, tmp_path, capsys):
    from train.cli_eval import main

    cifar = shared_data("cifar10-test")
    _folder_of_links(cifar, tmp_path / "id-train", slice(300, 340))
    grey = _grey_shards(cifar, tmp_path / "grey", ["cat", "dog", "ship"], slice(100, 110))
    out = tmp_path / "rb.json"
    argv = ["robustness", "--checkpoint", cifar_micro, "--compare", "random:" + cifar_micro,
            "--dataset", str(cifar), "--train-dataset", str(tmp_path / "id-train"),
            "--limit-per-class", "40", "--shifted", f"grey={grey}", "--severities", "0,5",
            "--quiet", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "in-distribution" in printed and "eff. robustness" in printed
    res = json.loads(out.read_text())

    names = ["grey"] + [f"{f}@{s}" for f in FAMILIES for s in (0, 5)]
    assert [s["name"] for s in res["shifts"]] == names
    assert res["shifts"][0] == {"name": "grey", "kind": "natural", "path": grey, "classes": 3}
    trained, rnd = res["results"]
    assert trained["checkpoint"] == cifar_micro and rnd["checkpoint"] == "random:" + cifar_micro
    assert trained["n"]["in_distribution"] == 400 and trained["n"]["grey"] == 30
    assert trained["zeroshot"]["in_distribution"] > 0.2 > rnd["zeroshot"]["in_distribution"]

    for row in (trained, rnd):
        for kind in ("zeroshot", "probe"):
            r = row[kind]
            for f in FAMILIES:  # severity 0 is no shift, exactly
                assert r["shifts"][f"{f}@0"]["top1"] == r["in_distribution"], (kind, f)
                assert r["shifts"][f"{f}@0"]["drop"] == 0
            s = r["shifts"]["noise@5"]
            assert s["drop"] == pytest.approx(r["in_distribution"] - s["top1"])
            means = [v["top1"] for v in r["shifts"].values()]
            assert r["mean_shifted"] == pytest.approx(sum(means) / len(means))
    zs = trained["zeroshot"]  # every shift hurts the trained model at severity 5
    for f in FAMILIES:
        assert zs["shifts"][f"{f}@5"]["top1"] < zs["in_distribution"], f
    assert trained["probe"]["mean_drop"] > 0

    # one compare model: the line goes through both probes, so theirs sit on it
    fit = res["line_fit"]
    assert fit["on"] == "all" and fit["models"] == [cifar_micro, "random:" + cifar_micro]
    assert fit["mean"]["points"] == 2
    for row in (trained, rnd):
        assert row["probe"]["mean_effective_robustness"] == pytest.approx(0, abs=1e-9)
        assert row["probe"]["shifts"]["noise@5"]["effective_robustness"] == pytest.approx(
            0, abs=1e-9
        )
        assert row["zeroshot"]["mean_effective_robustness"] is not None
    png = tmp_path / "rb.png"
    assert res["plot"] == str(png) and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert Image.open(png).size[0] >= 800


def test_robustness_is_deterministic_for_a_seed(cifar_micro, shared_data, tmp_path):
    from train.eval.datasets import load_image_folder
    from train.eval.load import load_for_eval
    from train.eval.robustness import (
        evaluate_model_robustness,
        robustness_split,
        synthetic_shifts,
    )

    m = load_for_eval(cifar_micro)
    data = load_image_folder(str(shared_data("cifar10-test")), limit_per_class=10)
    train, val, test, _ = robustness_split(data, None, 0.2, 0.4, seed=0)
    shifts = synthetic_shifts(["noise", "haze"], [3])
    a, b = (
        evaluate_model_robustness(m.model, m.tokenizer, train, val, test, shifts, shift_seed=5)
        for _ in range(2)
    )
    assert a == b


def test_bad_shift_arguments_fail_with_one_line(cifar_micro, shared_data, tmp_path, capsys):
    from train.cli_eval import main

    cifar = str(shared_data("cifar10-test"))
    (tmp_path / "odd" / "zebra").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "odd" / "zebra" / "a.png")
    cases = [
        (["--synthetic", "snow"], "unknown shift"),
        (["--severities", "7"], "severities"),
        (["--synthetic", "none"], "no shifts"),
        (["--synthetic", "none", "--shifted", str(tmp_path / "odd")], "not an in-distribution"),
    ]
    for extra, message in cases:
        argv = ["robustness", "--checkpoint", cifar_micro, "--dataset", cifar,
                "--limit-per-class", "5", "--quiet", *extra]  # fmt: skip
        assert main(argv) == 2
        assert message in capsys.readouterr().err.strip().splitlines()[-1]
