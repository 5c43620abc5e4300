"""Image-text retrieval: recall@K in both directions, several captions per image."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from train.eval.datasets import CaptionSet
from train.eval.load import image_features, text_features
from train.eval.metrics import retrieval_metrics


def evaluate_retrieval(
    model,
    tokenizer: Callable,
    dataset: CaptionSet,
    ks: Sequence[int] = (1, 5, 10),
    batch_size: int = 64,
    device: str = "cpu",
    workers: int = 0,
    transform: Callable | None = None,
    progress: bool = False,
) -> dict:
    """R@K image->text and text->image over every image and caption of `dataset`.

    Captions of an image that cannot be decoded are dropped with it (and reported), so
    every remaining caption still has its image among the candidates.
    """
    was_training = model.training
    model.eval()
    failures: list = []
    try:
        img, kept = image_features(
            model, dataset.images, transform, batch_size, device, workers, failures, progress
        )
        position = {orig: new for new, orig in enumerate(kept)}
        pairs = [
            (c, position[i])
            for c, i in zip(dataset.captions, dataset.text_to_image, strict=True)
            if i in position
        ]
        txt = text_features(model, tokenizer, [c for c, _ in pairs], device=device)
    finally:
        model.train(was_training)
    out = retrieval_metrics(img @ txt.T, torch.tensor([i for _, i in pairs]), ks)
    out["skipped"] = [{"image": n, "reason": r} for n, r in dataset.skipped + failures]
    return out
