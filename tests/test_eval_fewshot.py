"""`wit-eval fewshot`: the prior-regularized solver, the draws, the curve, and CIFAR-10 end to end.

The CIFAR-10 tests use a micro CLIP trained here for a few seconds on CIFAR-10 images
captioned "a photo of a {class}." (files 0400..0999 of each class; the tests evaluate on
earlier files only), and its `random:` twin.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

from train.eval.fewshot import (
    draw_shots,
    fewshot_curves,
    fit_temperature,
    parse_shots,
    zeroshot_worth,
)
from train.eval.probe import fit_logistic_regression, logistic_objective

# ---------------------------------------------------------------- the trained micro model

CIFAR_MICRO = {
    "embed_dim": 64,
    "image_size": 32,
    "vision_layers": 2,
    "vision_width": 64,
    "vision_patch_size": 8,
    "vision_heads": 2,
    "context_length": 12,
    "text_width": 64,
    "text_heads": 2,
    "text_layers": 2,
    "vocab_size": 49408,
}
TRAIN_FILES_FROM = 400  # files 0400..0999 of each class train the model; tests use 0000..
_TRAINED: dict[str, str] = {}


def train_cifar_micro(cifar, out_path, steps: int = 300, batch: int = 64) -> str:
    """A micro CLIP trained on CIFAR-10 captions, saved as one of our checkpoints."""
    import torch.nn.functional as F
    from PIL import Image

    from train import create_model, get_tokenizer
    from train.eval.load import eval_transform

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = create_model(CIFAR_MICRO)
        classes = sorted(p.name for p in cifar.iterdir() if p.is_dir())
        tf = eval_transform(model)
        images, labels = [], []
        for c, name in enumerate(classes):
            files = sorted(os.listdir(cifar / name))[TRAIN_FILES_FROM:]
            images += [tf(Image.open(cifar / name / f)) for f in files]
            labels += [c] * len(files)
        X, y = torch.stack(images), torch.tensor(labels)
        tok = get_tokenizer("openai")
        texts = tok([f"a photo of a {c}." for c in classes], context_length=12)
        model.token_embedding.weight.requires_grad_(False)  # 49k rows, 10 of them used
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=2e-3, weight_decay=0.1)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=steps, pct_start=0.1)
        g = torch.Generator().manual_seed(0)
        for _ in range(steps):
            idx = torch.randint(0, len(y), (batch,), generator=g)
            flip = torch.rand(batch, generator=g) < 0.5
            xb = torch.where(flip[:, None, None, None], X[idx].flip(-1), X[idx])
            # CLIP's image-to-text loss over the batch's distinct captions (the 10 classes):
            # no false negatives from repeated captions, and 10 texts to encode, not 64
            img = model.encode_image(xb, normalize=True)
            txt = model.encode_text(texts, normalize=True)
            loss = F.cross_entropy(model.logit_scale.exp() * img @ txt.T, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            model.clamp_logit_scale()
        state = {"model": model.state_dict(), "config": model.config,
                 "tokenizer": tok.spec(), "step": steps}  # fmt: skip
        torch.save(state, out_path)
    finally:
        torch.set_num_threads(threads)
    return str(out_path)


def trained_cifar_checkpoint(tmp_path_factory, shared_path) -> str:
    """Trained once per test session and shared by the few-shot and robustness tests."""
    cifar = shared_path("cifar10-test")
    if "path" not in _TRAINED:
        d = tmp_path_factory.mktemp("cifar-micro")
        _TRAINED["path"] = train_cifar_micro(cifar, d / "micro.pt")
    return _TRAINED["path"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Micro models and small solves: thread hand-offs cost more than the arithmetic, and
    on a busy machine far more."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cifar_micro(tmp_path_factory):
    from conftest import shared_path

    return trained_cifar_checkpoint(tmp_path_factory, shared_path)


# ---------------------------------------------------------------- the solver


def _blobs(n_per_class, dim, classes, spread, seed):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g) * 2
    y = torch.arange(classes).repeat_interleave(n_per_class)
    X = centres[y] + spread * torch.randn(len(y), dim, generator=g)
    return X, y


def test_prior_fit_matches_scipy_reference():
    """The L2-to-prior objective, minimized by ours and by scipy's L-BFGS-B on NumPy code."""
    scipy_opt = pytest.importorskip("scipy.optimize")
    X, y = _blobs(6, 5, 3, 2.0, 5)
    D, C, l2 = 5, 3, 0.3
    W0 = torch.randn(D, C, generator=torch.Generator().manual_seed(6)) * 2
    W, b = fit_logistic_regression(X, y, C, l2, prior=W0)

    Xn, yn, W0n = X.double().numpy(), y.numpy(), W0.double().numpy()

    def f(theta):
        Wr, br = theta[: D * C].reshape(D, C), theta[D * C :]
        z = Xn @ Wr + br
        z -= z.max(1, keepdims=True)
        p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
        penalty = ((Wr - W0n) ** 2).sum() + (br**2).sum()
        loss = -np.log(p[np.arange(len(yn)), yn]).mean() + 0.5 * l2 * penalty
        p[np.arange(len(yn)), yn] -= 1
        gW = Xn.T @ p / len(yn) + l2 * (Wr - W0n)
        return loss, np.concatenate([gW.ravel(), p.mean(0) + l2 * br])

    res = scipy_opt.minimize(
        f, np.zeros(D * C + C), jac=True, method="L-BFGS-B",
        options={"gtol": 1e-10, "ftol": 1e-14, "maxiter": 5000},
    )  # fmt: skip
    ours = logistic_objective(W, b, X.double(), y, l2, prior=W0.double()).item()
    assert ours == pytest.approx(res.fun, abs=1e-8)
    assert np.allclose(W.numpy(), res.x[: D * C].reshape(D, C), atol=1e-4)
    assert np.allclose(b.numpy(), res.x[D * C :], atol=1e-4)  # penalized: no shift freedom


def test_strong_prior_keeps_the_prior_and_weak_prior_fits_the_data():
    X, y = _blobs(4, 6, 3, 0.5, 7)
    W0 = torch.randn(6, 3, generator=torch.Generator().manual_seed(8))
    W_strong, b_strong = fit_logistic_regression(X, y, 3, 1e4, prior=W0)
    assert torch.allclose(W_strong, W0.double(), atol=1e-3)
    assert b_strong.abs().max() < 1e-3
    W_weak, b_weak = fit_logistic_regression(X, y, 3, 1e-3, prior=W0)
    assert ((X.double() @ W_weak + b_weak).argmax(1) == y).all()


def test_temperature_fit_finds_the_cross_entropy_minimum():
    g = torch.Generator().manual_seed(0)
    cos = torch.rand(50, 4, generator=g) * 0.2
    y = torch.randint(0, 4, (50,), generator=g)
    cos[torch.arange(50)[:25], y[:25]] += 0.15  # half of the rows lean the right way
    s = fit_temperature(cos, y)
    grid = torch.linspace(1, 100, 2000)
    logits = grid[:, None, None] * cos  # [grid, rows, classes]
    losses = (logits.logsumexp(-1) - logits[:, torch.arange(50), y]).mean(-1)
    assert s == pytest.approx(grid[losses.argmin()].item(), abs=0.1)


# ---------------------------------------------------------------- draws and curves


def test_shots_parse_and_draws_are_nested_seeded_and_order_free():
    assert parse_shots("16,1,4,4") == [1, 4, 16]
    for bad in ("0,1", "", "a"):
        with pytest.raises(ValueError):
            parse_shots(bad)
    names = [f"/data/c{c}/{i:03d}.jpg" for c in range(3) for i in range(20)]
    labels = [c for c in range(3) for _ in range(20)]
    pool = list(range(60))
    a = draw_shots(names, labels, pool, 8, draws=3, seed=0)
    assert len(a) == 3 and all(len(d[c]) == 8 for d in a for c in range(3))
    assert all(labels[i] == c for d in a for c, idx in d.items() for i in idx)
    assert a[0] != a[1]  # draws differ
    assert draw_shots(names, labels, pool, 8, 3, seed=0) == a  # deterministic
    assert draw_shots(names, labels, pool, 8, 3, seed=1) != a
    # the same files elsewhere and listed backwards give the same images
    moved = [n.replace("/data/", "/mnt/other/") for n in reversed(names)]
    b = draw_shots(moved, list(reversed(labels)), pool, 8, 3, seed=0)
    to_name = lambda d, ns: {c: [ns[i].split("/")[-2:] for i in v] for c, v in d.items()}  # noqa: E731
    assert [to_name(d, moved) for d in b] == [to_name(d, names) for d in a]


def test_zeroshot_worth_interpolates_in_log_k():
    shots, means = [1, 2, 4, 8, 16], [0.2, 0.3, 0.4, 0.5, 0.6]
    assert zeroshot_worth(shots, means, 0.35)["shots"] == pytest.approx(2 * 2**0.5)
    assert zeroshot_worth(shots, means, 0.4)["shots"] == pytest.approx(4.0)
    below = zeroshot_worth(shots, means, 0.1)
    assert below["shots"] is None and below["note"] == "below the 1-shot probe"
    above = zeroshot_worth(shots, means, 0.9)
    assert above["shots"] is None and above["note"] == "above the 16-shot probe"
    # a dip: the first crossing counts
    assert zeroshot_worth([1, 2, 4], [0.2, 0.4, 0.3], 0.3)["shots"] == pytest.approx(2**0.5)


def test_curve_on_separable_features_and_a_good_prior():
    """Blobs: accuracy rises with k; an exact zero-shot classifier as prior wins at k = 1."""
    C, D = 4, 8
    g = torch.Generator().manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(C, D, generator=g), dim=-1)

    def sample(n):
        y = torch.arange(C).repeat_interleave(n)
        X = torch.nn.functional.normalize(
            centres[y] + 0.9 * torch.randn(len(y), D, generator=g), dim=-1
        )
        return X, y

    Xp, yp = sample(20)
    pool = dict(enumerate(Xp))
    names = [f"c{int(c)}/{i}.jpg" for i, c in enumerate(yp)]
    draws = draw_shots(names, yp.tolist(), list(range(len(yp))), 16, draws=2, seed=0)
    out = fewshot_curves(pool, yp.tolist(), draws, sample(5), sample(50), [1, 4, 16], C,
                         class_weights=centres)  # fmt: skip
    plain = [r["top1_mean"] for r in out["fewshot"]]
    prior = [r["top1_mean"] for r in out["zeroshot_prior"]]
    assert plain[-1] > plain[0]
    assert prior[0] > plain[0]
    assert all(len(r["top1"]) == 2 and r["top1_std"] >= 0 for r in out["fewshot"])
    assert all(len(r["temperature"]) == 2 for r in out["zeroshot_prior"])


# ---------------------------------------------------------------- CIFAR-10 end to end


def _rises(curve: list[dict]) -> bool:
    ks = [math.log2(r["k"]) for r in curve]
    ms = [r["top1_mean"] for r in curve]
    mk, mm = sum(ks) / len(ks), sum(ms) / len(ms)
    slope = sum((k - mk) * (m - mm) for k, m in zip(ks, ms, strict=True))
    return slope > 0 and ms[-1] > ms[0] + 0.03


def test_fewshot_on_cifar10_trained_and_random(cifar_micro, shared_data, tmp_path, capsys):
    from train.cli_eval import main

    cifar = str(shared_data("cifar10-test"))
    out = tmp_path / "fs.json"
    argv = ["fewshot", "--checkpoint", cifar_micro, "--dataset", cifar,
            "--limit-per-class", "50", "--test-fraction", "0.4", "--draws", "3",
            "--zeroshot-prior", "--quiet", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "1-shot + prior" in printed and "zero-shot = k shots" in printed
    res = json.loads(out.read_text())
    assert res["checkpoint"] == cifar_micro and res["shots"] == [1, 2, 4, 8, 16]
    assert (res["n_test"], res["n_val"], res["draws"]) == (200, 100, 3)
    assert [r["k"] for r in res["fewshot"]] == [1, 2, 4, 8, 16]
    assert all(len(r["top1"]) == 3 for r in res["fewshot"] + res["zeroshot_prior"])
    assert res["zeroshot_top1"] > 0.2  # chance is 10%
    assert _rises(res["fewshot"])
    # the paper's fix: a zero-shot prior lifts the 1-shot probe
    assert res["zeroshot_prior"][0]["top1_mean"] > res["fewshot"][0]["top1_mean"] + 0.03
    assert res["zeroshot_equivalent"]  # a number or a side, always said

    # the random twin: features without training still gain from more shots
    argv = ["fewshot", "--checkpoint", "random:" + cifar_micro, "--dataset", cifar,
            "--limit-per-class", "50", "--test-fraction", "0.4", "--draws", "3",
            "--shots", "1,4,16", "--quiet", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    rnd = json.loads(out.read_text())
    assert "zeroshot_prior" not in rnd and rnd["zeroshot_top1"] < 0.2
    assert _rises(rnd["fewshot"])


def test_fewshot_is_deterministic_for_a_seed(cifar_micro, shared_data):
    from train.eval.datasets import load_image_folder
    from train.eval.fewshot import evaluate_fewshot
    from train.eval.load import load_for_eval

    m = load_for_eval(cifar_micro)
    data = load_image_folder(str(shared_data("cifar10-test")), limit_per_class=20)
    kw = {"shots": [1], "draws": 2, "val_per_class": 4, "test_fraction": 0.3}
    a = evaluate_fewshot(m.model, m.tokenizer, data, seed=3, zeroshot_prior=True, **kw)
    b = evaluate_fewshot(m.model, m.tokenizer, data, seed=3, zeroshot_prior=True, **kw)
    assert a == b
    c = evaluate_fewshot(m.model, m.tokenizer, data, seed=4, **kw)
    assert c["fewshot"][0]["top1"] != a["fewshot"][0]["top1"]


def test_fewshot_on_labelled_shards(cifar_micro, shared_data, tmp_path):
    """The clip_benchmark layout: .jpg + .cls per sample, classnames.txt beside the tars."""
    import io
    import tarfile

    from train.cli_eval import main

    cifar = shared_data("cifar10-test")
    classes = sorted(p.name for p in cifar.iterdir())
    with tarfile.open(tmp_path / "test-000.tar", "w") as tar:
        for c, name in enumerate(classes):
            for f in sorted(os.listdir(cifar / name))[:12]:
                for ext, data in (
                    ("jpg", (cifar / name / f).read_bytes()),
                    ("cls", str(c).encode()),
                ):
                    info = tarfile.TarInfo(f"{name}_{f[:-4]}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    (tmp_path / "classnames.txt").write_text("\n".join(classes) + "\n")
    out = tmp_path / "fs.json"
    argv = ["fewshot", "--checkpoint", cifar_micro, "--dataset", str(tmp_path / "test-000.tar"),
            "--shots", "1,2,4", "--draws", "2", "--val-per-class", "3", "--test-fraction", "0.25",
            "--quiet", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    res = json.loads(out.read_text())
    assert res["n_test"] == 30 and res["classes"] == 10 and res["shots"] == [1, 2, 4]


def test_too_few_images_for_the_shots(cifar_micro, shared_data, capsys):
    from train.cli_eval import main

    argv = ["fewshot", "--checkpoint", cifar_micro, "--dataset", str(shared_data("cifar10-test")),
            "--limit-per-class", "5", "--quiet"]  # fmt: skip
    assert main(argv) == 2
    assert "validation" in capsys.readouterr().err.strip().splitlines()[-1]
