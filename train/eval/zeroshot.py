"""Zero-shot classification: classifier weights from class names x prompt templates.

Ensembling over the embedding space (the default) averages the normalized text
embeddings of a class over its templates and re-normalizes, giving one weight vector per
class. Ensembling over the probability space keeps one classifier per template and
averages their softmax outputs. Class embeddings are cached in memory (and on disk when
a cache folder is given), keyed by a hash of the text tower's weights, the tokenizer,
the class names and the templates, so a changed model never reuses stale weights.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from train.eval.datasets import ClassificationSet, load_classification
from train.eval.load import image_features, text_features, text_tower_fingerprint
from train.eval.metrics import classification_metrics

NAMED_TEMPLATE_SETS = ("single", "cifar10", "cifar100", "imagenet")
LOGIT_SCALE = 100.0  # CLIP's fixed evaluation temperature
ENSEMBLES = ("embedding", "probability")
_MEMORY_CACHE: OrderedDict[str, torch.Tensor] = OrderedDict()
_MEMORY_CACHE_SIZE = 8


def load_templates(spec: str | Sequence[str]) -> list[str]:
    """Templates from a named set, a file (one a line), a literal string with `{}`, or a list."""
    if not isinstance(spec, str):
        templates = [str(t) for t in spec]
    elif spec in NAMED_TEMPLATE_SETS:
        text = importlib.resources.files("train").joinpath("templates", f"{spec}.txt").read_text()
        templates = [line.strip() for line in text.splitlines() if line.strip()]
    elif os.path.isfile(spec):
        with open(spec, encoding="utf-8") as f:
            templates = [line.strip() for line in f if line.strip()]
    elif "{}" in spec:
        templates = [spec]
    else:
        raise ValueError(
            f"templates {spec!r}: not a named set ({', '.join(NAMED_TEMPLATE_SETS)}), "
            "not a file, and no {} placeholder"
        )
    bad = [t for t in templates if "{}" not in t]
    if not templates or bad:
        raise ValueError(f"every template needs a {{}} placeholder: {bad[:1] or 'none given'}")
    return templates


def _cache_key(model, tokenizer, classnames: Sequence[str], templates: Sequence[str]) -> str:
    spec = tokenizer.spec() if hasattr(tokenizer, "spec") else type(tokenizer).__name__
    payload = json.dumps(
        [text_tower_fingerprint(model), spec, list(classnames), list(templates)],
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def class_text_embeddings(
    model,
    tokenizer: Callable,
    classnames: Sequence[str],
    templates: Sequence[str],
    device: str = "cpu",
    cache_dir: str | None = None,
    use_cache: bool = True,
) -> torch.Tensor:
    """Normalized text embeddings [classes, templates, D] of every template filled with every
    class name."""
    key = _cache_key(model, tokenizer, classnames, templates) if use_cache else None
    if key in _MEMORY_CACHE:
        _MEMORY_CACHE.move_to_end(key)
        return _MEMORY_CACHE[key]
    disk = os.path.join(cache_dir, f"classes-{key}.pt") if key and cache_dir else None
    if disk and os.path.isfile(disk):
        emb = torch.load(disk, map_location="cpu", weights_only=True)
    else:
        texts = [t.format(c) for c in classnames for t in templates]
        emb = text_features(model, tokenizer, texts, device=device)
        emb = emb.reshape(len(classnames), len(templates), -1)
        if disk:
            os.makedirs(cache_dir, exist_ok=True)
            tmp = f"{disk}.{os.getpid()}.tmp"
            torch.save(emb, tmp)
            os.replace(tmp, disk)
    if key:
        _MEMORY_CACHE[key] = emb
        while len(_MEMORY_CACHE) > _MEMORY_CACHE_SIZE:
            _MEMORY_CACHE.popitem(last=False)
    return emb


def embedding_ensemble(class_embeddings: torch.Tensor) -> torch.Tensor:
    """One weight vector per class [C, D]: mean of normalized template embeddings, re-normalized."""
    return F.normalize(class_embeddings.mean(dim=1), dim=-1)


def zeroshot_scores(
    image_feats: torch.Tensor,
    class_embeddings: torch.Tensor,
    ensemble: str = "embedding",
    logit_scale: float = LOGIT_SCALE,
) -> torch.Tensor:
    """Scores [N, C] for normalized image features.

    `embedding`: logits `scale * image @ class_weights`. `probability`: the mean over
    templates of each template's softmax; the arg-sort, hence every metric, is what counts.
    """
    if ensemble == "embedding":
        return logit_scale * image_feats @ embedding_ensemble(class_embeddings).T
    if ensemble == "probability":
        per_template = logit_scale * torch.einsum("nd,ctd->tnc", image_feats, class_embeddings)
        return per_template.softmax(dim=-1).mean(dim=0)
    raise ValueError(f"ensemble must be one of {ENSEMBLES}, not {ensemble!r}")


def evaluate_classification(
    model,
    tokenizer: Callable,
    dataset: ClassificationSet,
    templates: str | Sequence[str] = "a photo of a {}.",
    ensemble: str = "embedding",
    batch_size: int = 64,
    device: str = "cpu",
    workers: int = 0,
    cache_dir: str | None = None,
    transform: Callable | None = None,
    progress: bool = False,
    keep_scores: bool = False,
) -> dict:
    """Metrics plus details (classes, templates, skipped images) for one labelled dataset.

    With `keep_scores`, the result also holds `scores` [n, C], `labels` and `indices` (the
    dataset positions of the rows), for metrics on subsets without a second pass.
    """
    templates = load_templates(templates)
    was_training = model.training
    model.eval()
    try:
        emb = class_text_embeddings(
            model, tokenizer, dataset.classnames, templates, device, cache_dir
        )
        failures: list = []
        feats, kept = image_features(
            model, dataset.items, transform, batch_size, device, workers, failures, progress
        )
    finally:
        model.train(was_training)
    labels = torch.tensor([dataset.labels[i] for i in kept])
    scores = zeroshot_scores(feats, emb, ensemble)
    out = classification_metrics(scores, labels)
    out.update(
        classes=len(dataset.classnames),
        templates=len(templates),
        ensemble=ensemble,
        skipped=[{"image": n, "reason": r} for n, r in failures],
    )
    if keep_scores:
        out.update(scores=scores, labels=labels, indices=kept)
    return out


def evaluate(
    model,
    tokenizer: Callable,
    dataset_dir: str,
    templates: str | Sequence[str] = "a photo of a {}.",
    batch_size: int = 64,
    device: str = "cpu",
    ensemble: str = "embedding",
    limit_per_class: int | None = None,
    classnames_file: str | None = None,
    workers: int = 0,
) -> dict:
    """Zero-shot top1, top5 (with >= 5 classes), mean per-class recall and n, for the trainer.

    The model is put back into its previous train/eval mode afterwards.
    """
    dataset = load_classification(dataset_dir, classnames_file, limit_per_class)
    res = evaluate_classification(
        model, tokenizer, dataset, templates, ensemble, batch_size, device, workers
    )
    return {k: res[k] for k in ("top1", "top5", "mean_per_class_recall", "n") if k in res}
