"""`wit-eval` end to end on the real CIFAR-10 folder and Flickr8k pairs, with tiny random models."""

import json

import pytest
import torch

from train.cli_eval import main


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Two of our checkpoints (a file and a run folder) and one plain state dict."""
    from train import create_model, get_tokenizer

    d = tmp_path_factory.mktemp("ckpts")
    tok = get_tokenizer("openai").spec()
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        m = create_model("tiny-vit")
        state = {"model": m.state_dict(), "config": m.config, "tokenizer": tok, "step": 0}
        if seed == 0:
            path = d / "a.pt"
        else:
            (d / "run" / "checkpoints").mkdir(parents=True)
            path = d / "run" / "checkpoints" / "latest.pt"
        torch.save(state, path)
        paths.append(path)
    torch.save(m.state_dict(), d / "plain.pt")
    return str(paths[0]), str(d / "run"), str(d / "plain.pt")


def test_zeroshot_compare_on_cifar10(checkpoints, shared_data, tmp_path, capsys):
    _, run, plain = checkpoints
    out = tmp_path / "zs.json"
    argv = [
        "zeroshot",
        "--checkpoint",
        run,
        "--compare",
        plain,
        "--model",
        "tiny-vit",
        "--dataset",
        str(shared_data("cifar10-test")),
        "--limit-per-class",
        "4",
        "--templates",
        "cifar10",
        "--out",
        str(out),
        "--quiet",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert (
        "top1" in printed
        and "plain.pt" in printed
        and "run" in printed
        and "chance top-1 10.00%" in printed
    )
    res = json.loads(out.read_text())
    assert [r["checkpoint"] for r in res["results"]] == [run, plain]
    for r in res["results"]:
        assert r["n"] == 40 and r["templates"] == 18
        assert 0.0 <= r["top1"] <= 0.35 and 0.0 <= r["mean_per_class_recall"] <= 0.35
        assert r["top1"] <= r["top5"]
    # the plain state dict holds the run's weights, so the two columns agree exactly
    assert res["results"][0]["top1"] == res["results"][1]["top1"]
    assert res["results"][0]["top5"] == res["results"][1]["top5"]


def test_retrieval_on_flickr8k(checkpoints, shared_data, tmp_path, capsys):
    out = tmp_path / "ret.json"
    argv = [
        "retrieval",
        "--checkpoint",
        checkpoints[0],
        "--quiet",
        "--dataset",
        str(shared_data("flickr8k-1k", "captions.csv")),
        "--limit-images",
        "40",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    assert "image_to_text_R@5" in capsys.readouterr().out
    res = json.loads(out.read_text())
    assert res["n_images"] == 40 and res["n_texts"] == 200
    for d in ("image_to_text", "text_to_image"):
        r1, r5, r10 = (res[f"{d}_R@{k}"] for k in (1, 5, 10))
        assert 0.0 <= r1 <= r5 <= r10 <= 1.0
    # chance: a caption's image in the top 10 of 40 is 25%; an image's 5 captions in the
    # top 10 of 200 texts is about 23%
    assert res["text_to_image_R@10"] < 0.6 and res["image_to_text_R@10"] < 0.6


def test_probe_on_single_cifar10_folder(checkpoints, shared_data, tmp_path, capsys):
    out = tmp_path / "probe.json"
    argv = [
        "probe",
        "--checkpoint",
        checkpoints[0],
        "--quiet",
        "--limit-per-class",
        "10",
        "--dataset",
        str(shared_data("cifar10-test")),
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    assert "60% train, 20% validation, 20% test" in capsys.readouterr().out
    res = json.loads(out.read_text())
    assert (res["n_train"], res["n_val"], res["n_test"]) == (60, 20, 20)
    assert 0.0 <= res["top1"] <= 0.7 and res["l2"] > 0


def test_overlap_with_clean_and_overlap_zero_shot(checkpoints, shared_data, tmp_path, capsys):
    import io
    import tarfile

    from PIL import Image

    cifar = shared_data("cifar10-test")
    with tarfile.open(tmp_path / "00000.tar", "w") as tar:
        for i, cls in enumerate(("cat", "dog")):
            buf = io.BytesIO()
            Image.open(cifar / cls / "0000.jpg").resize((64, 64)).save(buf, "JPEG", quality=90)
            for ext, data in (("jpg", buf.getvalue()), ("txt", f"a {cls}".encode())):
                info = tarfile.TarInfo(f"{i:016x}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    out = tmp_path / "ov.json"
    argv = [
        "overlap",
        "--shards",
        str(tmp_path / "*.tar"),
        "--dataset",
        str(cifar),
        "--limit-per-class",
        "2",
        "--checkpoint",
        checkpoints[0],
        "--quiet",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "2 eval images (10.00%)" in printed
    res = json.loads(out.read_text())
    assert res["eval_with_near_duplicate"] == 2 and res["per_class"]["cat"] == 1
    row = res["zeroshot"][checkpoints[0]]
    assert (row["n_clean"], row["n_overlap"]) == (18, 2)
    assert row["top1_all"] == pytest.approx((18 * row["top1_clean"] + 2 * row["top1_overlap"]) / 20)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["zeroshot", "--checkpoint", "/nonexistent.pt", "--dataset", "."], "not found"),
        (["zeroshot", "--checkpoint", "PLAIN", "--dataset", "CIFAR"], "--model CONFIG"),
        (
            ["zeroshot", "--checkpoint", "A", "--dataset", "CIFAR", "--templates", "nope"],
            "templates",
        ),
        (["retrieval", "--checkpoint", "A", "--dataset", "/nonexistent.csv"], "not found"),
        (["zeroshot", "--dataset", "CIFAR"], "--checkpoint"),
    ],
)
def test_bad_input_gives_one_line_and_exit_2(argv, message, checkpoints, shared_data, capsys):
    cifar = str(shared_data("cifar10-test"))
    names = {"A": checkpoints[0], "PLAIN": checkpoints[2], "CIFAR": cifar}
    assert main([names.get(a, a) for a in argv] + ["--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("wit-eval: error:") and message in err[-1]


def test_overlap_against_a_caption_csv(shared_data, tmp_path, capsys):
    import io
    import tarfile

    from PIL import Image

    csv_path = shared_data("flickr8k-1k", "captions.csv")
    first = sorted(shared_data("flickr8k-1k", "images").iterdir())[0]
    buf = io.BytesIO()
    Image.open(first).resize((256, 192)).save(buf, "JPEG", quality=75)
    with tarfile.open(tmp_path / "00000.tar", "w") as tar:
        for ext, data in (("jpg", buf.getvalue()), ("txt", b"a copy")):
            info = tarfile.TarInfo(f"{0:016x}.{ext}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    out = tmp_path / "ov.json"
    argv = [
        "overlap",
        "--shards",
        str(tmp_path),
        "--dataset",
        str(csv_path),
        "--quiet",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    res = json.loads(out.read_text())
    assert res["eval_images"] == 1000 and res["eval_with_near_duplicate"] == 1
    assert res["examples"][0]["eval_image"].endswith(first.name)
    assert "zeroshot" not in res and "per_class" not in res


def test_random_prefix_is_a_fresh_model_with_the_checkpoints_architecture(checkpoints):
    """`random:RUN` keeps RUN's config and tokenizer but none of its weights (seed 0)."""
    from train import create_model
    from train.eval.load import load_for_eval

    _, run, _ = checkpoints
    trained = load_for_eval(run)
    fresh = load_for_eval("random:" + run)
    assert fresh.path.startswith("random:") and fresh.source == "random_init"
    assert fresh.model.config == trained.model.config
    assert fresh.tokenizer.spec() == trained.tokenizer.spec()
    torch.manual_seed(0)
    reference = create_model(trained.model.config).state_dict()
    fresh_sd, trained_sd = fresh.model.state_dict(), trained.model.state_dict()
    assert all(torch.equal(fresh_sd[k], reference[k]) for k in reference)
    assert not torch.equal(fresh_sd["text_projection"], trained_sd["text_projection"])


def test_random_prefix_in_the_table_header(checkpoints, shared_data, capsys):
    _, run, _ = checkpoints
    argv = ["zeroshot", "--checkpoint", run, "random:" + run, "--quiet",
            "--dataset", str(shared_data("cifar10-test")), "--limit-per-class", "2"]  # fmt: skip
    assert main(argv) == 0
    header = next(line for line in capsys.readouterr().out.splitlines() if "metric" in line)
    assert header.split() == ["metric", "run", "random:run"]
