"""Robustness to distribution shift (CLIP paper, section 3.3 and Figure 13).

For every model: zero-shot accuracy and the accuracy of a linear probe fitted on the
in-distribution training data, on the in-distribution test set and on shifted versions
of it. Shifts are natural sets the user has (any folder-per-class dataset or labelled
shards whose class names are all in-distribution classes, e.g. ImageNet-R's 200 of
ImageNet's 1000; scores are then restricted to those classes, as in the paper) and the
synthetic ImageNet-C-style families of `train.eval.shifts` at chosen severities.

Effective robustness (Taori et al., 2020) is the shifted accuracy above what a baseline
family predicts from the in-distribution accuracy. The baseline is a line fitted, in
logit space, through the (in-distribution, shifted) accuracies of the linear probes of
the `--compare` models (probes are the "fitted to the training distribution" models); with
fewer than two compare models it is fitted through the probes of every model given. Each
shift has its own line; the mean over shifts has one too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from train.eval.datasets import ClassificationSet, deterministic_split
from train.eval.load import eval_transform, image_features, model_image_size
from train.eval.probe import choose_l2, fit_logistic_regression, predict_scores
from train.eval.shifts import shift_name, shifted_transform

LOGIT_CLIP = 1e-3
PLOT_TICKS = (
    0.01,
    0.02,
    0.05,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.6,
    0.7,
    0.8,
    0.85,
    0.9,
    0.95,
    0.98,
    0.99,
)
KINDS = ("zeroshot", "probe")


@dataclass
class Shift:
    """One shifted evaluation set: synthetic (family@severity of the ID test set) or natural."""

    name: str
    kind: str  # "synthetic" | "natural"
    family: str | None = None
    severity: int | None = None
    dataset: ClassificationSet | None = None
    classes: list[int] = field(default_factory=list)  # ID class index of each of its classes

    def describe(self) -> dict:
        if self.kind == "synthetic":
            return {"name": self.name, "kind": self.kind, "family": self.family,
                    "severity": self.severity}  # fmt: skip
        return {"name": self.name, "kind": self.kind, "path": self.dataset.source,
                "classes": len(self.classes)}  # fmt: skip

    @property
    def group(self) -> str:
        """Severities of one family share a panel in the plot."""
        return self.family if self.kind == "synthetic" else self.name


def synthetic_shifts(families: Sequence[str], severities: Sequence[int]) -> list[Shift]:
    return [
        Shift(shift_name(f, s), "synthetic", family=f, severity=s)
        for f in families
        for s in severities
    ]


def natural_shift(name: str, dataset: ClassificationSet, id_classnames: Sequence[str]) -> Shift:
    """A user's shifted set; its classes are matched to the in-distribution ones by name."""
    index = {c: i for i, c in enumerate(id_classnames)}
    missing = [c for c in dataset.classnames if c not in index]
    if missing:
        raise ValueError(
            f"shifted set {name}: class {missing[0]!r} is not an in-distribution class"
        )
    return Shift(name, "natural", dataset=dataset, classes=[index[c] for c in dataset.classnames])


# ---------------------------------------------------------------- per model


def _top1(scores: torch.Tensor, labels: torch.Tensor, classes: Sequence[int] | None) -> float:
    """Top-1 over all classes, or over the shifted set's subset (labels index the subset)."""
    if len(labels) == 0:
        return float("nan")
    if classes:
        scores = scores[:, list(classes)]
    return (scores.argmax(1) == labels).double().mean().item()


def robustness_split(
    dataset: ClassificationSet,
    train_set: ClassificationSet | None,
    val_fraction: float,
    test_fraction: float,
    seed: int,
) -> tuple[ClassificationSet, ClassificationSet, ClassificationSet, str]:
    """(probe train, probe validation, in-distribution test, description)."""
    if train_set is None:
        fr = (1 - val_fraction - test_fraction, val_fraction, test_fraction)
        tr, va, te = deterministic_split(dataset.items, dataset.labels, fr, seed)
        split = (
            f"single dataset split per class by sha256(seed={seed}:class/file): "
            f"{fr[0]:.0%} probe train, {fr[1]:.0%} validation, {fr[2]:.0%} test "
            "(zero-shot, probe and every synthetic shift use the test part)"
        )
        return dataset.subset(tr), dataset.subset(va), dataset.subset(te), split
    if train_set.classnames != dataset.classnames:
        raise ValueError("the training and in-distribution test sets have different classes")
    fr = (1 - val_fraction, val_fraction)
    tr, va = deterministic_split(train_set.items, train_set.labels, fr, seed)
    split = (
        f"probe trained on the training set, {fr[1]:.0%} of it held out for validation by "
        f"sha256(seed={seed}:class/file); the whole in-distribution set is the test set"
    )
    return train_set.subset(tr), train_set.subset(va), dataset, split


def evaluate_model_robustness(
    model,
    tokenizer: Callable,
    train: ClassificationSet,
    val: ClassificationSet,
    test: ClassificationSet,
    shifts: Sequence[Shift],
    templates: str | Sequence[str] = "single",
    ensemble: str = "embedding",
    shift_seed: int = 0,
    batch_size: int = 64,
    device: str = "cpu",
    workers: int = 0,
    cache_dir: str | None = None,
    transform: Callable | None = None,
    progress: bool = False,
) -> dict:
    """Zero-shot and probe top-1 of one model on the test set and on every shift.

    Returns `{"zeroshot": {"in_distribution": a, "shifts": {name: a}}, "probe": {... ,
    "l2", "val_top1"}, "n": {"in_distribution": n, name: n}, "skipped": [...]}`.
    """
    from train.eval.zeroshot import class_text_embeddings, load_templates, zeroshot_scores

    templates = load_templates(templates)
    base = transform or eval_transform(model)
    size = model_image_size(model)
    failures: list = []
    num_classes = len(test.classnames)

    def feats(ds: ClassificationSet, tf: Callable, label: str):
        X, kept = image_features(
            model, ds.items, tf, batch_size, device, workers, failures, progress, label=label
        )
        return X, torch.tensor([ds.labels[i] for i in kept])

    was_training = model.training
    model.eval()
    try:
        emb = class_text_embeddings(model, tokenizer, test.classnames, templates, device, cache_dir)
        Xtr, ytr = feats(train, base, "probe train images")
        Xva, yva = feats(val, base, "probe validation images")
        l2, sweep = choose_l2(Xtr, ytr, Xva, yva, num_classes)
        W, b = fit_logistic_regression(
            torch.cat([Xtr, Xva]), torch.cat([ytr, yva]), num_classes, l2
        )
        out = {
            "zeroshot": {"shifts": {}},
            "probe": {"shifts": {}, "l2": l2,
                      "val_top1": max(s["val_top1"] for s in sweep if s["l2"] == l2)},
            "n": {},
        }  # fmt: skip
        sets = [("in_distribution", test, base, None)]
        for sh in shifts:
            if sh.kind == "synthetic":
                tf = shifted_transform(base, size, sh.family, sh.severity, shift_seed)
                sets.append((sh.name, test, tf, None))
            else:
                sets.append((sh.name, sh.dataset, base, sh.classes))
        for name, ds, tf, classes in sets:
            X, y = feats(ds, tf, f"{name} images")
            zs = _top1(zeroshot_scores(X, emb, ensemble), y, classes)
            pr = _top1(predict_scores(W, b, X), y, classes)
            if name == "in_distribution":
                out["zeroshot"][name], out["probe"][name] = zs, pr
            else:
                out["zeroshot"]["shifts"][name], out["probe"]["shifts"][name] = zs, pr
            out["n"][name] = len(y)
    finally:
        model.train(was_training)
    out["skipped"] = [{"image": n, "reason": r} for n, r in failures]
    return out


# ---------------------------------------------------------------- across models


def logit(p: float) -> float:
    p = min(max(p, LOGIT_CLIP), 1 - LOGIT_CLIP)
    return math.log(p / (1 - p))


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def fit_line(points: Sequence[tuple[float, float]]) -> dict | None:
    """Least squares `logit(y) = slope * logit(x) + intercept`; None with < 2 distinct x."""
    xs = [logit(x) for x, _ in points]
    ys = [logit(y) for _, y in points]
    if len(xs) < 2:
        return None
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx < 1e-12:
        return None
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    return {"slope": slope, "intercept": my - slope * mx, "points": len(xs)}


def predicted(line: dict | None, id_acc: float) -> float | None:
    if line is None:
        return None
    return sigmoid(line["slope"] * logit(id_acc) + line["intercept"])


def summarize(per_model: dict[str, dict], shifts: Sequence[Shift], compare: Sequence[str]) -> dict:
    """Drops, means and effective robustness for every model, and the fitted lines.

    Returns `{"line_fit": {...}, "results": [...]}` in the JSON layout of docs/evaluation.md.
    """
    names = [s.name for s in shifts]
    baseline = [c for c in compare if c in per_model]
    fit_on = "compare" if len(baseline) >= 2 else "all"
    if fit_on == "all":
        baseline = list(per_model)

    def mean_of(res: dict, kind: str, subset: Sequence[str]) -> float | None:
        vals = [res[kind]["shifts"][n] for n in subset if not math.isnan(res[kind]["shifts"][n])]
        return sum(vals) / len(vals) if vals else None

    groups: dict[str, list[str]] = {}
    for s in shifts:
        groups.setdefault(s.group, []).append(s.name)

    def points(target: str) -> list[tuple[float, float]]:
        pts = []
        for m in baseline:
            r = per_model[m]["probe"]
            y = (
                r["shifts"][target]
                if target in names
                else mean_of(per_model[m], "probe", groups.get(target, names))
            )
            if y is not None and not math.isnan(y):
                pts.append((r["in_distribution"], y))
        return pts

    lines = {n: fit_line(points(n)) for n in names}
    group_lines = {g: fit_line(points(g)) for g in groups if len(groups[g]) > 1}
    mean_line = fit_line(points("__mean__")) if names else None
    results = []
    for path, res in per_model.items():
        row: dict = {"checkpoint": path}
        for kind in KINDS:
            r = res[kind]
            id_acc = r["in_distribution"]
            per_shift = {}
            for n in names:
                acc = r["shifts"][n]
                pred = predicted(lines[n], id_acc)
                per_shift[n] = {
                    "top1": acc,
                    "drop": id_acc - acc,
                    "effective_robustness": None if pred is None else acc - pred,
                }
            mean = mean_of(res, kind, names)
            pred = predicted(mean_line, id_acc) if mean is not None else None
            row[kind] = {
                "in_distribution": id_acc,
                "shifts": per_shift,
                "mean_shifted": mean,
                "mean_drop": None if mean is None else id_acc - mean,
                "mean_effective_robustness": None if pred is None else mean - pred,
            }
            if kind == "probe":
                row[kind].update(l2=r["l2"], val_top1=r["val_top1"])
        row["n"] = res["n"]
        row["skipped"] = res.get("skipped", [])
        results.append(row)
    return {
        "line_fit": {
            "space": "logit",
            "on": fit_on,
            "models": baseline,
            "per_shift": lines,
            "per_group": group_lines,
            "mean": mean_line,
        },
        "results": results,
    }


# ---------------------------------------------------------------- plot


def _short(path: str) -> str:
    import os

    prefix = "random:" if path.startswith("random:") else ""
    rest = path.removeprefix(prefix)
    return prefix + (os.path.basename(os.path.normpath(rest)) or rest)


def plot_robustness(summary: dict, shifts: Sequence[Shift], path: str) -> str:
    """In-distribution against shifted top-1 on logit axes, like the paper's Figure 13.

    One panel for the mean over all shifts, then one per natural set or synthetic family
    (mean over its severities). Stars are zero-shot, circles the linear probes, an arrow
    goes from a model's zero-shot point to its probe ("adapting to the training
    distribution"); the dashed diagonal is no drop, the grey line the fitted baseline.
    """
    import os

    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, NullFormatter

    groups: dict[str, list[str]] = {}
    for s in shifts:
        groups.setdefault(s.group, []).append(s.name)
    panels = [("mean over all shifts", [s.name for s in shifts], summary["line_fit"]["mean"])]
    if len(groups) > 1 or any(len(v) > 1 for v in groups.values()):
        for g, members in groups.items():
            line = (
                summary["line_fit"]["per_shift"][members[0]]
                if len(members) == 1
                else summary["line_fit"]["per_group"].get(g)
            )
            title = g if len(members) == 1 else f"{g} (mean of {len(members)} severities)"
            panels.append((title, members, line))
    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(4 * cols, 4 * rows), dpi=100)
    FigureCanvasAgg(fig)
    colours = [f"C{i}" for i in range(10)]
    lo_c, hi_c = 0.01, 0.99
    for p, (title, members, line) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, p + 1)
        xs_all, ys_all = [], []
        for m, row in enumerate(summary["results"]):
            colour = colours[m % len(colours)]
            pts = {}
            for kind in KINDS:
                r = row[kind]
                vals = [r["shifts"][n]["top1"] for n in members]
                vals = [v for v in vals if v is not None and not math.isnan(v)]
                if not vals:
                    continue
                x = min(max(r["in_distribution"], lo_c), hi_c)
                y = min(max(sum(vals) / len(vals), lo_c), hi_c)
                pts[kind] = (x, y)
                xs_all.append(x)
                ys_all.append(y)
                label = (
                    f"{_short(row['checkpoint'])} {'zero-shot' if kind == 'zeroshot' else 'probe'}"
                )
                ax.scatter([x], [y], marker="*" if kind == "zeroshot" else "o",
                           s=120 if kind == "zeroshot" else 50, color=colour, label=label,
                           zorder=3)  # fmt: skip
            if len(pts) == 2:
                ax.annotate("", xy=pts["probe"], xytext=pts["zeroshot"],
                            arrowprops={"arrowstyle": "->", "color": colour, "alpha": 0.6})  # fmt: skip
        if not xs_all:
            continue
        lo = max(lo_c, min(xs_all + ys_all) * 0.7)
        hi = min(hi_c, 1 - (1 - max(xs_all + ys_all)) * 0.7)
        ax.set_xscale("logit")
        ax.set_yscale("logit")
        grid = np.linspace(logit(lo), logit(hi), 50)
        g = 1 / (1 + np.exp(-grid))
        ax.plot(g, g, "k--", lw=1, label="no drop (y = x)")
        if line is not None:
            fitted = 1 / (1 + np.exp(-(line["slope"] * grid + line["intercept"])))
            ax.plot(g, fitted, color="grey", lw=1.5, label="fitted baseline (probes)")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ticks, gap = [], (logit(hi) - logit(lo)) / 7  # at most ~8 labels an axis
        for t in (t for t in PLOT_TICKS if lo <= t <= hi):
            if not ticks or logit(t) - logit(ticks[-1]) >= gap:
                ticks.append(t)
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_ticks(ticks)
            axis.set_major_formatter(FuncFormatter(lambda v, _: f"{100 * v:.3g}%"))
            axis.set_minor_formatter(NullFormatter())
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("in-distribution top-1")
        ax.set_ylabel("shifted top-1")
        ax.grid(True, alpha=0.3)
        if p == 0:
            ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, format="png")
    return path
