"""Linear probe: the L-BFGS fit against scipy's optimizer, the split, and the strength sweep."""

import numpy as np
import pytest
import torch

from train.eval.datasets import ImageItem, deterministic_split
from train.eval.probe import (
    choose_l2,
    fit_logistic_regression,
    linear_probe,
    logistic_objective,
)


def _blobs(n_per_class, dim, classes, spread, seed):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g) * 2
    y = torch.arange(classes).repeat_interleave(n_per_class)
    X = centres[y] + spread * torch.randn(len(y), dim, generator=g)
    return X, y


def test_fit_matches_scipy_reference():
    scipy_opt = pytest.importorskip("scipy.optimize")
    X, y = _blobs(15, 5, 3, 1.5, 0)
    l2 = 0.05
    W, b = fit_logistic_regression(X, y, 3, l2)

    Xn, yn, D, C = X.double().numpy(), y.numpy(), 5, 3

    def f(theta):  # the same objective, written independently in NumPy
        Wr, br = theta[: D * C].reshape(D, C), theta[D * C :]
        z = Xn @ Wr + br
        z -= z.max(1, keepdims=True)
        p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
        loss = -np.log(p[np.arange(len(yn)), yn]).mean() + 0.5 * l2 * (Wr**2).sum()
        p[np.arange(len(yn)), yn] -= 1
        gW = Xn.T @ p / len(yn) + l2 * Wr
        return loss, np.concatenate([gW.ravel(), p.mean(0)])

    res = scipy_opt.minimize(
        f,
        np.zeros(D * C + C),
        jac=True,
        method="L-BFGS-B",
        options={"gtol": 1e-10, "ftol": 1e-14, "maxiter": 5000},
    )
    ref_W, ref_b = res.x[: D * C].reshape(D, C), res.x[D * C :]
    ours = logistic_objective(W, b, X.double(), y, l2).item()
    assert ours == pytest.approx(res.fun, abs=1e-8)
    assert np.allclose(W.numpy(), ref_W, atol=1e-4)
    # the softmax is shift-invariant in b; compare centred biases
    assert np.allclose(b.numpy() - b.numpy().mean(), ref_b - ref_b.mean(), atol=1e-4)


def test_stronger_l2_shrinks_weights():
    X, y = _blobs(10, 4, 2, 0.5, 1)
    norms = [fit_logistic_regression(X, y, 2, l2)[0].norm().item() for l2 in (1e-3, 1e-1, 10.0)]
    assert norms[0] > norms[1] > norms[2]


def test_probe_separable_vs_random_labels():
    X, y = _blobs(40, 16, 4, 0.8, 2)
    parts = deterministic_split(
        [ImageItem(str(i)) for i in range(len(y))], y.tolist(), (0.6, 0.2, 0.2), seed=0
    )
    tr, va, te = ((X[p], y[p]) for p in parts)
    good = linear_probe(tr, va, te, 4, grid=(1e-4, 1e-2, 1.0))
    assert good["top1"] >= 0.9 and good["n_test"] == 32 and good["n_train"] == 96
    assert good["l2"] in {s["l2"] for s in good["sweep"]}
    y_random = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(3))]
    tr, va, te = ((X[p], y_random[p]) for p in parts)
    noise = linear_probe(tr, va, te, 4, grid=(1e-4, 1e-2, 1.0))
    assert noise["top1"] <= 0.55  # chance is 25%


def test_choose_l2_prefers_the_stronger_on_ties():
    X, y = _blobs(10, 3, 2, 0.1, 4)  # trivially separable: every strength scores 100%
    best, sweep = choose_l2(X, y, X, y, 2, grid=(1e-3, 1e-1))
    assert all(s["val_top1"] == 1.0 for s in sweep)
    assert best == max(s["l2"] for s in sweep)


def test_deterministic_split_is_stable_per_class_and_disjoint():
    items = [ImageItem(f"c{c}/{i:04d}.jpg") for c in range(3) for i in range(50)]
    labels = [c for c in range(3) for _ in range(50)]
    a = deterministic_split(items, labels, (0.6, 0.2, 0.2), seed=0)
    order = list(reversed(range(len(items))))
    b = deterministic_split([items[i] for i in order], [labels[i] for i in order], (0.6, 0.2, 0.2))
    names = lambda part, its: sorted(its[i].name for i in part)  # noqa: E731
    rev = [items[i] for i in order]
    assert [names(p, items) for p in a] == [names(p, rev) for p in b]  # order-independent
    assert sorted(sum(a, [])) == list(range(150))  # a partition
    for part, share in zip(a, (30, 10, 10), strict=True):
        for c in range(3):
            assert sum(labels[i] == c for i in part) == share
    c = deterministic_split(items, labels, (0.6, 0.2, 0.2), seed=1)
    assert c != a


def test_split_does_not_depend_on_where_the_dataset_lives():
    names = [f"c{c}/{i:04d}.jpg" for c in range(2) for i in range(20)]
    labels = [c for c in range(2) for _ in range(20)]
    here = deterministic_split([ImageItem(f"../data/{n}") for n in names], labels, (0.5, 0.5))
    there = deterministic_split([ImageItem(f"/mnt/x/data/{n}") for n in names], labels, (0.5, 0.5))
    assert here == there and here[0] != list(range(20))


class MeanColour(torch.nn.Module):
    """A frozen 'encoder' whose features are the mean RGB of the image."""

    image_size = 8

    def encode_image(self, x):
        return x.mean(dim=(2, 3))


def _colour_folder(root, shades):
    from PIL import Image

    for name, rgb in {"red": (220, 30, 30), "green": (30, 220, 30), "blue": (30, 30, 220)}.items():
        (root / name).mkdir(parents=True)
        for i in shades:
            Image.new("RGB", (8, 8), tuple(max(0, c - i) for c in rgb)).save(
                root / name / f"{i}.png"
            )


def test_evaluate_probe_with_a_separate_test_folder(tmp_path):
    import numpy as np

    from train.eval.datasets import load_image_folder
    from train.eval.probe import evaluate_probe

    _colour_folder(tmp_path / "train", range(0, 100, 10))
    _colour_folder(tmp_path / "test", range(5, 100, 30))
    to_tensor = lambda im: torch.from_numpy(  # noqa: E731
        np.asarray(im.convert("RGB"), dtype="float32") / 255
    ).permute(2, 0, 1)
    res = evaluate_probe(
        MeanColour(),
        load_image_folder(str(tmp_path / "train")),
        load_image_folder(str(tmp_path / "test")),
        transform=to_tensor,
    )
    assert "test set given separately" in res["split"]
    assert (res["n_train"], res["n_val"], res["n_test"]) == (24, 6, 12)
    assert res["top1"] == 1.0 and res["skipped"] == []
