"""Few-shot linear probes against zero-shot (CLIP paper, section 3.1.5 and Figures 6-7).

For each k in `shots`, a logistic-regression probe (`train.eval.probe`) is fitted on k
labelled images per class of frozen image features, over several seeded draws of the k
images, and scored on a fixed test set; the result is the mean and standard deviation
over draws. Draws are nested (the 1-shot images of a draw are among its 2-shot images,
and so on), which makes the curve over k less noisy. The zero-shot accuracy on the same
test set sits beside it, with the number of shots it is worth: where the mean curve
crosses it, interpolated linearly in log2(k) as in the paper's Figure 7.

The L2 strength of every fit is chosen on a validation split: a fixed number of images
per class held out of the pool the shots are drawn from, the same for every draw, k and
method. With `zeroshot_prior`, a second probe starts from the zero-shot classifier and
is penalized by its distance to it (`l2 / 2 * (||W - W0||^2 + ||b||^2)`), the paper's
suggested fix for few-shot falling below zero-shot at k = 1. W0 is the zero-shot class
embeddings (embedding ensemble) times a temperature fitted to the shots; the strongest
penalties give back the zero-shot classifier itself, so the chosen strength moves toward
the labelled data only when the validation split says it helps.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from train.eval.datasets import ClassificationSet, deterministic_split
from train.eval.load import _progress, image_features, progress_done
from train.eval.probe import predict_scores, small_problem_threads, sweep_l2

DEFAULT_SHOTS = (1, 2, 4, 8, 16)
#: `wit-eval probe`'s grid without 1e-6 and 1e-5: with a few images per class, those
#: strengths fit the shots exactly, as 1e-4 nearly does, and they take most of the
#: solver's time.
FEWSHOT_L2_GRID = tuple(10.0**e for e in range(-4, 3))
#: The prior's grid reaches further up: at 1e4 the fit stays on the zero-shot weights.
PRIOR_L2_GRID = tuple(10.0**e for e in range(-4, 5))
TEMPERATURE_RANGE = (1.0, 100.0)


def parse_shots(spec: str | Sequence[int]) -> list[int]:
    """`1,2,4,8,16` -> [1, 2, 4, 8, 16]: positive, sorted, unique."""
    try:
        values = [int(v) for v in (spec.split(",") if isinstance(spec, str) else spec)]
    except ValueError as e:
        raise ValueError(f"shots must be positive integers: {spec!r}") from e
    if not values or min(values) < 1:
        raise ValueError(f"shots must be positive integers: {spec!r}")
    return sorted(set(values))


def _key(seed: str, name: str) -> str:
    tail = "/".join(name.replace(os.sep, "/").split("/")[-2:])
    return hashlib.sha256(f"{seed}:{tail}".encode()).hexdigest()


def order_per_class(
    names: Sequence[str], labels: Sequence[int], indices: Sequence[int], seed: str
) -> dict[int, list[int]]:
    """`indices` grouped by class, each group in a seeded hash order of the file names.

    As with `deterministic_split`, only `class/file` is hashed, so the order does not
    depend on where the dataset lives or on the order it was listed in.
    """
    by_class: dict[int, list[int]] = {}
    for i in indices:
        by_class.setdefault(labels[i], []).append(i)
    for idx in by_class.values():
        idx.sort(key=lambda i: _key(seed, names[i]))
    return dict(sorted(by_class.items()))


def draw_shots(
    names: Sequence[str],
    labels: Sequence[int],
    pool: Sequence[int],
    k_max: int,
    draws: int,
    seed: int = 0,
) -> list[dict[int, list[int]]]:
    """Per draw, per class, the first `k_max` pool indices in that draw's seeded order.

    The k-shot training set of a draw is the first k of each class's list (nested draws).
    """
    out = []
    for d in range(draws):
        order = order_per_class(names, labels, pool, f"shots:{seed}:{d}")
        out.append({c: idx[:k_max] for c, idx in order.items()})
    return out


def fit_temperature(cosines: torch.Tensor, y: torch.Tensor) -> float:
    """The scale s in TEMPERATURE_RANGE minimizing the cross-entropy of `s * cosines`.

    The loss is convex in s, so a ternary search finds the minimum.
    """
    z, y = cosines.double(), y.long()
    lo, hi = TEMPERATURE_RANGE
    for _ in range(40):  # (2/3)^40 of the range: well under 0.01
        a, b = lo + (hi - lo) / 3, hi - (hi - lo) / 3
        if F.cross_entropy(a * z, y) <= F.cross_entropy(b * z, y):
            hi = b
        else:
            lo = a
    return (lo + hi) / 2


def zeroshot_worth(shots: Sequence[int], means: Sequence[float], zeroshot: float) -> dict:
    """How many shots per class the zero-shot classifier is worth on the mean curve.

    The first crossing of the zero-shot accuracy by the mean few-shot accuracy, linear in
    log2(k) between the shot counts around it. Outside the measured range the value is
    None and `note` says on which side.
    """
    pts = list(zip(shots, means, strict=True))
    if not pts or zeroshot is None or math.isnan(zeroshot):
        return {"shots": None, "note": "no curve"}
    if zeroshot < pts[0][1]:
        return {"shots": None, "note": f"below the {pts[0][0]}-shot probe"}
    for (k0, a0), (k1, a1) in zip(pts, pts[1:], strict=False):
        if a0 <= zeroshot <= a1 and a1 > a0:
            t = (zeroshot - a0) / (a1 - a0)
            value = 2 ** (math.log2(k0) + t * (math.log2(k1) - math.log2(k0)))
            return {"shots": value, "note": f"interpolated between {k0} and {k1} shots"}
        if a0 == zeroshot:
            return {"shots": float(k0), "note": f"equal to the {k0}-shot probe"}
    if zeroshot == pts[-1][1]:
        return {"shots": float(pts[-1][0]), "note": f"equal to the {pts[-1][0]}-shot probe"}
    return {"shots": None, "note": f"above the {pts[-1][0]}-shot probe"}


def _std(values: Sequence[float]) -> float:
    if len(values) < 2:
        return 0.0
    return torch.tensor(values, dtype=torch.float64).std(unbiased=True).item()


def _summary(k: int, rows: list[dict]) -> dict:
    top1 = [r["top1"] for r in rows]
    out = {
        "k": k,
        "top1_mean": sum(top1) / len(top1),
        "top1_std": _std(top1),
        "top1": top1,
        "l2": [r["l2"] for r in rows],
    }
    if "temperature" in rows[0]:
        out["temperature"] = [r["temperature"] for r in rows]
    return out


def fewshot_curves(
    pool_feats: dict[int, torch.Tensor],
    labels: Sequence[int],
    draws: list[dict[int, list[int]]],
    val: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    shots: Sequence[int],
    num_classes: int,
    class_weights: torch.Tensor | None = None,
    grid: Sequence[float] = FEWSHOT_L2_GRID,
    prior_grid: Sequence[float] = PRIOR_L2_GRID,
    progress: bool = False,
) -> dict:
    """The few-shot curve (and with `class_weights` [C, D], the zero-shot-prior curve).

    `pool_feats` maps a dataset index to its feature vector; `draws` come from
    `draw_shots`. Returns `{"fewshot": [...], "zeroshot_prior": [...]}` with one summary
    per k (see `_summary`).
    """
    plain: dict[int, list[dict]] = {k: [] for k in shots}
    prior: dict[int, list[dict]] = {k: [] for k in shots}
    total = len(draws) * len(shots) * (2 if class_weights is not None else 1)
    done, started = 0, time.monotonic()
    Xte, yte = test
    # small problems: one thread (see probe.small_problem_threads)
    with small_problem_threads(len(yte) * Xte.shape[1] * num_classes):
        for draw in draws:
            for k in shots:
                idx = [i for c in sorted(draw) for i in draw[c][:k]]
                X = torch.stack([pool_feats[i] for i in idx])
                y = torch.tensor([labels[i] for i in idx])
                l2, _, (W, b) = sweep_l2(X, y, *val, num_classes, grid)
                acc = (predict_scores(W, b, Xte).argmax(1) == yte).double().mean().item()
                plain[k].append({"top1": acc, "l2": l2})
                done += 1
                if progress:
                    _progress("few-shot fits", done, total, started)
                if class_weights is None:
                    continue
                cw = class_weights.double()
                s = fit_temperature(X.double() @ cw.T, y)
                W0 = s * cw.T
                l2, _, (W, b) = sweep_l2(X, y, *val, num_classes, prior_grid, prior=W0)
                acc = (predict_scores(W, b, Xte).argmax(1) == yte).double().mean().item()
                prior[k].append({"top1": acc, "l2": l2, "temperature": s})
                done += 1
                if progress:
                    _progress("few-shot fits", done, total, started)
    if progress:
        progress_done()
    out = {"fewshot": [_summary(k, plain[k]) for k in shots]}
    if class_weights is not None:
        out["zeroshot_prior"] = [_summary(k, prior[k]) for k in shots]
    return out


def plan_fewshot(
    train_set: ClassificationSet,
    test_set: ClassificationSet | None,
    shots: Sequence[int],
    draws: int,
    val_per_class: int,
    test_fraction: float,
    seed: int,
) -> dict:
    """Which images play which part: test, validation, and the shots of every draw.

    Only names are read here; no image is decoded. Shot counts larger than the smallest
    class's pool are dropped (and listed in `dropped_shots`).
    """
    names = [it.name for it in train_set.items]
    labels = train_set.labels
    if test_set is None:
        pool, test_idx = deterministic_split(
            train_set.items, labels, (1 - test_fraction, test_fraction), seed
        )
        split = (
            f"single dataset split per class by sha256(seed={seed}:class/file): "
            f"{1 - test_fraction:.0%} pool, {test_fraction:.0%} test; "
        )
        test_set = train_set.subset(test_idx)
    else:
        if test_set.classnames != train_set.classnames:
            raise ValueError("train and test datasets have different classes")
        pool = list(range(len(labels)))
        split = "test set given separately; "
    by_class = order_per_class(names, labels, pool, f"val:{seed}")
    missing = [
        train_set.classnames[c] for c in range(len(train_set.classnames)) if c not in by_class
    ]
    if missing:
        raise ValueError(f"class {missing[0]!r} has no training images")
    val = [i for idx in by_class.values() for i in idx[:val_per_class]]
    rest = [i for idx in by_class.values() for i in idx[val_per_class:]]
    smallest = min(len(idx) - val_per_class for idx in by_class.values())
    kept = [k for k in shots if k <= smallest]
    dropped = [k for k in shots if k > smallest]
    if not kept:
        raise ValueError(
            f"after {val_per_class} validation images per class, the smallest class has "
            f"{max(smallest, 0)} left for shots; use more images per class or --val-per-class"
        )
    drawn = draw_shots(names, labels, rest, max(kept), draws, seed)
    split += (
        f"{val_per_class} validation images per class held out of the pool; "
        f"shots drawn from the other {len(rest)} by sha256(seed:draw:class/file)"
    )
    return {
        "val": sorted(val),
        "draws": drawn,
        "shots": kept,
        "dropped_shots": dropped,
        "test_set": test_set,
        "split": split,
    }


def evaluate_fewshot(
    model,
    tokenizer: Callable,
    train_set: ClassificationSet,
    test_set: ClassificationSet | None = None,
    shots: Sequence[int] = DEFAULT_SHOTS,
    draws: int = 5,
    seed: int = 0,
    templates: str | Sequence[str] = "single",
    ensemble: str = "embedding",
    zeroshot_prior: bool = False,
    val_per_class: int = 10,
    test_fraction: float = 0.2,
    batch_size: int = 64,
    device: str = "cpu",
    workers: int = 0,
    cache_dir: str | None = None,
    transform: Callable | None = None,
    progress: bool = False,
) -> dict:
    """Few-shot probes at each k, zero-shot on the same test set, and what zero-shot is worth.

    Without `test_set`, `train_set` is split per class into a pool (shots and validation)
    and a test part (`test_fraction`), as `wit-eval probe` splits a single dataset.
    """
    from train.eval.zeroshot import (
        class_text_embeddings,
        embedding_ensemble,
        load_templates,
        zeroshot_scores,
    )

    if draws < 1:
        raise ValueError("draws must be at least 1")
    if val_per_class < 1:
        raise ValueError("val-per-class must be at least 1 (the L2 strength is chosen on it)")
    shots = parse_shots(shots)
    templates = load_templates(templates)
    plan = plan_fewshot(train_set, test_set, shots, draws, val_per_class, test_fraction, seed)
    test_set = plan["test_set"]
    if not test_set.items:
        raise ValueError("the test split is empty: use more images per class")
    needed = sorted(
        set(plan["val"]) | {i for d in plan["draws"] for idx in d.values() for i in idx}
    )
    failures: list = []
    was_training = model.training
    model.eval()
    try:
        emb = class_text_embeddings(
            model, tokenizer, train_set.classnames, templates, device, cache_dir
        )
        Xp, kept = image_features(
            model,
            [train_set.items[i] for i in needed],
            transform,
            batch_size,
            device,
            workers,
            failures,
            progress,
            label="pool images",
        )
        Xte, kept_te = image_features(
            model, test_set.items, transform, batch_size, device, workers, failures, progress,
            label="test images",
        )  # fmt: skip
    finally:
        model.train(was_training)
    feats = {needed[j]: Xp[r] for r, j in enumerate(kept)}
    # an unreadable image drops out of validation and out of every draw it was in
    draws_ok = [{c: [i for i in idx if i in feats] for c, idx in d.items()} for d in plan["draws"]]
    val_ok = [i for i in plan["val"] if i in feats]
    if not val_ok:
        raise ValueError("no validation image could be read")
    val = (
        torch.stack([feats[i] for i in val_ok]),
        torch.tensor([train_set.labels[i] for i in val_ok]),
    )
    yte = torch.tensor([test_set.labels[i] for i in kept_te])
    zs = zeroshot_scores(Xte, emb, ensemble)
    zs_top1 = (zs.argmax(1) == yte).double().mean().item()
    curves = fewshot_curves(
        feats,
        train_set.labels,
        draws_ok,
        val,
        (Xte, yte),
        plan["shots"],
        len(train_set.classnames),
        class_weights=embedding_ensemble(emb) if zeroshot_prior else None,
        progress=progress,
    )
    worth = zeroshot_worth(plan["shots"], [r["top1_mean"] for r in curves["fewshot"]], zs_top1)
    out = {
        "classes": len(train_set.classnames),
        "templates": len(templates),
        "ensemble": ensemble,
        "shots": plan["shots"],
        "draws": draws,
        "seed": seed,
        "n_val": len(val_ok),
        "n_test": len(kept_te),
        "zeroshot_top1": zs_top1,
        **curves,
        "zeroshot_equivalent_shots": worth["shots"],
        "zeroshot_equivalent": worth["note"],
        "split": plan["split"],
        "skipped": [{"image": n, "reason": r} for n, r in failures],
    }
    if plan["dropped_shots"]:
        out["dropped_shots"] = plan["dropped_shots"]
    return out
