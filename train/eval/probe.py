"""Linear probe: L2-regularized multinomial logistic regression on frozen image features.

Plain torch with full-batch L-BFGS (no scikit-learn needed). The regularization strength
is chosen on a validation split carved from the training data, then the classifier is
refit on train + validation with that strength and scored once on the test split.

With a `prior` (weights W0, e.g. the zero-shot classifier) the penalty is on W - W0 and
on the bias instead of on W, and the fit starts from W0: a strong penalty keeps the
zero-shot classifier, a weak one lets the labelled examples move it (`wit-eval fewshot
--zeroshot-prior`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from train.eval.datasets import ClassificationSet, deterministic_split
from train.eval.load import image_features
from train.eval.metrics import classification_metrics

DEFAULT_L2_GRID = tuple(10.0**e for e in range(-6, 3))  # 1e-6 ... 1e2


def logistic_objective(
    W: torch.Tensor,
    b: torch.Tensor,
    X: torch.Tensor,
    y: torch.Tensor,
    l2: float,
    prior: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean cross-entropy plus `l2 / 2 * ||W||^2`; the bias is not penalized.

    With a `prior` W0 the penalty is `l2 / 2 * (||W - W0||^2 + ||b||^2)`: the pull is toward
    the classifier (W0, 0), so a strong penalty gives back W0 itself, not W0 with a bias
    fitted to a handful of examples.
    """
    if prior is None:
        return F.cross_entropy(X @ W + b, y) + 0.5 * l2 * (W * W).sum()
    d = W - prior
    return F.cross_entropy(X @ W + b, y) + 0.5 * l2 * ((d * d).sum() + (b * b).sum())


def fit_logistic_regression(
    X: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    l2: float,
    max_iter: int = 500,
    tol: float = 1e-8,
    prior: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights [D, C] and bias [C] minimizing `logistic_objective`, in float64 for stability.

    The objective is strictly convex for l2 > 0, so the starting point (zeros, or `prior`
    when given) only affects speed, and the result is deterministic.
    """
    X, y = X.double(), y.long()
    if prior is not None:
        prior = prior.detach().double()
        if prior.shape != (X.shape[1], num_classes):
            raise ValueError(f"prior {tuple(prior.shape)} is not [{X.shape[1]}, {num_classes}]")
    W = (
        prior.clone(memory_format=torch.contiguous_format)
        if prior is not None
        else torch.zeros(X.shape[1], num_classes, dtype=torch.float64)
    )
    b = torch.zeros(num_classes, dtype=torch.float64)
    opt = torch.optim.LBFGS(
        [W, b],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=tol,
        tolerance_change=tol * 1e-3,
        history_size=20,
        line_search_fn="strong_wolfe",
    )
    rows = torch.arange(len(y))
    onehot = torch.zeros(len(y), num_classes, dtype=torch.float64)
    onehot[rows, y] = 1.0

    def closure():
        # The gradient in closed form (softmax minus one-hot): on the small problems of a
        # few-shot sweep, autograd's bookkeeping would cost more than the arithmetic.
        Z = torch.addmm(b, X, W)
        lse = torch.logsumexp(Z, dim=1)
        d = W if prior is None else W - prior
        loss = (lse - Z[rows, y]).mean() + 0.5 * l2 * (d * d).sum()
        G = (torch.exp(Z - lse[:, None]) - onehot) / len(y)
        W.grad = X.T @ G + l2 * d
        b.grad = G.sum(dim=0)
        if prior is not None:
            loss = loss + 0.5 * l2 * (b * b).sum()
            b.grad += l2 * b
        return loss

    with small_problem_threads(X.numel() * num_classes), torch.no_grad():
        opt.step(closure)
    return W, b


@contextlib.contextmanager
def small_problem_threads(size: int, limit: int = 5_000_000):
    """Run small problems single-threaded: on a busy machine the thread hand-offs of each
    tiny L-BFGS step cost far more than the arithmetic."""
    threads = torch.get_num_threads()
    if size < limit:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def predict_scores(W: torch.Tensor, b: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    return X.double() @ W + b


def sweep_l2(
    X_train: torch.Tensor,
    y_train: torch.Tensor,
    X_val: torch.Tensor,
    y_val: torch.Tensor,
    num_classes: int,
    grid: Sequence[float] = DEFAULT_L2_GRID,
    prior: torch.Tensor | None = None,
) -> tuple[float, list[dict], tuple[torch.Tensor, torch.Tensor]]:
    """`choose_l2`, also returning the weights fitted on the training part at the best strength."""
    tried: dict[float, float] = {}
    fits: dict[float, tuple[torch.Tensor, torch.Tensor]] = {}

    def score(l2: float) -> float:
        if l2 not in tried:
            W, b = fit_logistic_regression(X_train, y_train, num_classes, l2, prior=prior)
            fits[l2] = (W, b)
            pred = predict_scores(W, b, X_val).argmax(dim=1)
            tried[l2] = (pred == y_val).double().mean().item()
        return tried[l2]

    for l2 in grid:
        score(l2)
    best = max(tried, key=lambda l2: (tried[l2], l2))
    for l2 in (best / 10**0.5, best * 10**0.5):
        score(l2)
    best = max(tried, key=lambda l2: (tried[l2], l2))
    sweep = [{"l2": l2, "val_top1": acc} for l2, acc in sorted(tried.items())]
    return best, sweep, fits[best]


def choose_l2(
    X_train: torch.Tensor,
    y_train: torch.Tensor,
    X_val: torch.Tensor,
    y_val: torch.Tensor,
    num_classes: int,
    grid: Sequence[float] = DEFAULT_L2_GRID,
    prior: torch.Tensor | None = None,
) -> tuple[float, list[dict]]:
    """The strength with the best validation top-1 (ties go to the stronger one), and the sweep.

    After the coarse grid, the two half-decade neighbours of the best value are tried too.
    With `prior`, each fit is pulled toward it (see `fit_logistic_regression`).
    """
    best, sweep, _ = sweep_l2(X_train, y_train, X_val, y_val, num_classes, grid, prior)
    return best, sweep


def linear_probe(
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    num_classes: int,
    grid: Sequence[float] = DEFAULT_L2_GRID,
) -> dict:
    """Choose the strength on `val`, refit on train + val, report test metrics."""
    l2, sweep = choose_l2(*train, *val, num_classes, grid)
    X = torch.cat([train[0], val[0]])
    y = torch.cat([train[1], val[1]])
    W, b = fit_logistic_regression(X, y, num_classes, l2)
    out = classification_metrics(predict_scores(W, b, test[0]), test[1])
    out.update(
        l2=l2,
        val_top1=max(s["val_top1"] for s in sweep if s["l2"] == l2),
        n_train=len(train[1]),
        n_val=len(val[1]),
        n_test=len(test[1]),
        sweep=sweep,
    )
    return out


def evaluate_probe(
    model,
    train_set: ClassificationSet,
    test_set: ClassificationSet | None = None,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    seed: int = 0,
    batch_size: int = 64,
    device: str = "cpu",
    workers: int = 0,
    transform: Callable | None = None,
    progress: bool = False,
) -> dict:
    """Linear probe on frozen image features of `model`.

    Without `test_set`, `train_set` is split deterministically per class (by a seeded
    hash of each file name) into train / validation / test, and the result says so.
    With it, only the validation split is carved from `train_set`.
    """
    if test_set is None:
        fr = (1 - val_fraction - test_fraction, val_fraction, test_fraction)
        tr, va, te = deterministic_split(train_set.items, train_set.labels, fr, seed)
        split = (
            f"single dataset split per class by sha256(seed={seed}:class/file): "
            f"{fr[0]:.0%} train, {fr[1]:.0%} validation, {fr[2]:.0%} test"
        )
        test_set = train_set.subset(te)
    else:
        if test_set.classnames != train_set.classnames:
            raise ValueError("train and test datasets have different classes")
        fr = (1 - val_fraction, val_fraction)
        tr, va = deterministic_split(train_set.items, train_set.labels, fr, seed)
        split = (
            f"validation carved from the training set per class by sha256(seed={seed}:class/file): "
            f"{fr[1]:.0%}; test set given separately"
        )
    failures: list = []
    was_training = model.training
    model.eval()
    try:
        feats = {}
        for name, ds in (
            ("train", train_set.subset(tr)),
            ("val", train_set.subset(va)),
            ("test", test_set),
        ):
            if not ds.items:
                raise ValueError(f"the {name} split is empty: use more images per class")
            X, kept = image_features(
                model, ds.items, transform, batch_size, device, workers, failures, progress
            )
            feats[name] = (X, torch.tensor([ds.labels[i] for i in kept]))
    finally:
        model.train(was_training)
    out = linear_probe(feats["train"], feats["val"], feats["test"], len(train_set.classnames))
    out["split"] = split
    out["skipped"] = [{"image": n, "reason": r} for n, r in failures]
    return out
