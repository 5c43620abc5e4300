"""Classification and retrieval metrics on score matrices.

Ties are counted against the model: a wrong item whose score equals the best right one
ranks ahead of it. A collapsed model that scores everything alike then gets no credit,
instead of a perfect score from an optimistic tie-break.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def rank_of_target(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """For each row, how many other columns score at least as high as the target column."""
    if scores.ndim != 2 or targets.ndim != 1 or scores.shape[0] != targets.shape[0]:
        raise ValueError(f"scores {tuple(scores.shape)} and targets {tuple(targets.shape)} differ")
    targets = targets.long()
    target_scores = scores.gather(1, targets[:, None])
    ahead = (scores >= target_scores).sum(dim=1) - 1  # the target itself always counts once
    return ahead


def topk_accuracy(scores: torch.Tensor, targets: torch.Tensor, k: int) -> float:
    """Fraction of rows whose target column is among the k best."""
    if scores.shape[0] == 0:
        return float("nan")
    return (rank_of_target(scores, targets) < k).double().mean().item()


def mean_per_class_recall(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """Average over the classes present in `targets` of the top-1 recall within that class."""
    if scores.shape[0] == 0:
        return float("nan")
    hit = (rank_of_target(scores, targets) == 0).double()
    recalls = [hit[targets == c].mean() for c in torch.unique(targets)]
    return torch.stack(recalls).mean().item()


def classification_metrics(scores: torch.Tensor, targets: torch.Tensor) -> dict:
    """top1, top5 (only with at least 5 classes), mean per-class recall and the sample count."""
    out = {
        "top1": topk_accuracy(scores, targets, 1),
        "mean_per_class_recall": mean_per_class_recall(scores, targets),
        "n": int(scores.shape[0]),
    }
    if scores.shape[1] >= 5:
        out["top5"] = topk_accuracy(scores, targets, 5)
    return out


def retrieval_metrics(
    similarity: torch.Tensor, text_to_image: torch.Tensor, ks: Sequence[int] = (1, 5, 10)
) -> dict:
    """Image->text and text->image recall@K from an [images, texts] similarity matrix.

    `text_to_image[j]` is the image that caption j describes; an image may have several.
    Image->text counts a hit when any of the image's captions is within the top K texts;
    text->image when the caption's own image is within the top K images.
    """
    n_img, n_txt = similarity.shape
    text_to_image = text_to_image.long()
    if text_to_image.shape != (n_txt,):
        raise ValueError(f"text_to_image has {text_to_image.shape[0]} entries for {n_txt} texts")
    if n_txt and (text_to_image.min() < 0 or text_to_image.max() >= n_img):
        raise ValueError("text_to_image points outside the image range")
    positive = torch.zeros(n_img, n_txt, dtype=torch.bool)
    positive[text_to_image, torch.arange(n_txt)] = True
    has_caption = positive.any(dim=1)

    # image -> text: wrong texts scoring >= the best right text rank ahead of it
    best_right = similarity.masked_fill(~positive, float("-inf")).max(dim=1, keepdim=True).values
    i2t_rank = ((similarity >= best_right) & ~positive).sum(dim=1)[has_caption]
    # text -> image
    t2i_rank = rank_of_target(similarity.T, text_to_image)

    out = {}
    for k in ks:
        out[f"image_to_text_R@{k}"] = (
            (i2t_rank < k).double().mean().item() if len(i2t_rank) else float("nan")
        )
    for k in ks:
        out[f"text_to_image_R@{k}"] = (
            (t2i_rank < k).double().mean().item() if n_txt else float("nan")
        )
    out["n_images"] = int(has_caption.sum())
    out["n_texts"] = int(n_txt)
    return out
