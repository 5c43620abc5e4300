"""Metrics against hand-computed tiny cases."""

import math

import pytest
import torch

from train.eval.metrics import (
    classification_metrics,
    mean_per_class_recall,
    rank_of_target,
    retrieval_metrics,
    topk_accuracy,
)


def test_topk_hand_computed():
    scores = torch.tensor(
        [
            [0.9, 0.1, 0.0, 0.2],  # target 0: rank 0
            [0.3, 0.1, 0.5, 0.4],  # target 1: 3 classes above -> rank 3
            [0.2, 0.6, 0.1, 0.7],  # target 1: class 3 above -> rank 1
        ]
    )
    targets = torch.tensor([0, 1, 1])
    assert rank_of_target(scores, targets).tolist() == [0, 3, 1]
    assert topk_accuracy(scores, targets, 1) == pytest.approx(1 / 3)
    assert topk_accuracy(scores, targets, 2) == pytest.approx(2 / 3)
    assert topk_accuracy(scores, targets, 4) == pytest.approx(1.0)


def test_ties_count_against_the_model():
    scores = torch.zeros(4, 10)  # a collapsed model: every class scores alike
    targets = torch.tensor([0, 3, 5, 9])
    m = classification_metrics(scores, targets)
    assert m["top1"] == 0.0 and m["top5"] == 0.0 and m["mean_per_class_recall"] == 0.0


def test_mean_per_class_recall_differs_from_top1_on_imbalance():
    # class 0: three samples, all right; class 1: one sample, wrong
    scores = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    targets = torch.tensor([0, 0, 0, 1])
    assert topk_accuracy(scores, targets, 1) == pytest.approx(0.75)
    assert mean_per_class_recall(scores, targets) == pytest.approx(0.5)


def test_top5_only_with_five_classes():
    m4 = classification_metrics(torch.eye(4), torch.arange(4))
    assert "top5" not in m4 and m4["top1"] == 1.0 and m4["n"] == 4
    m5 = classification_metrics(torch.eye(5), torch.arange(5))
    assert m5["top5"] == 1.0


def test_retrieval_several_captions_per_image():
    # images 0, 1, 2; captions 0,1 -> image 0; 2,3 -> image 1; 4 -> image 2
    t2i = torch.tensor([0, 0, 1, 1, 2])
    sim = torch.tensor(
        [
            [0.9, 0.1, 0.8, 0.0, 0.0],  # image 0: best caption 0 is first -> rank 0
            [0.7, 0.6, 0.5, 0.65, 0.1],  # image 1: best right 0.65 below 0.7 -> rank 1
            [0.1, 0.2, 0.3, 0.4, 0.05],  # image 2: caption 4 is last -> rank 4
        ]
    )
    m = retrieval_metrics(sim, t2i, ks=(1, 2, 5))
    assert m["image_to_text_R@1"] == pytest.approx(1 / 3)
    assert m["image_to_text_R@2"] == pytest.approx(2 / 3)
    assert m["image_to_text_R@5"] == pytest.approx(1.0)
    # text -> image, column by column: caption 0 -> image 0 (0.9 best) rank 0;
    # caption 1 -> image 0 (0.1; 0.6 and 0.2 above) rank 2; caption 2 -> image 1 (0.5 < 0.8) rank 1;
    # caption 3 -> image 1 (0.65 best) rank 0; caption 4 -> image 2 (0.05; only 0.1 above) rank 1
    assert m["text_to_image_R@1"] == pytest.approx(2 / 5)
    assert m["text_to_image_R@2"] == pytest.approx(4 / 5)
    assert m["text_to_image_R@5"] == pytest.approx(1.0)
    assert m["n_images"] == 3 and m["n_texts"] == 5


def test_retrieval_ties_and_bad_input():
    m = retrieval_metrics(torch.ones(3, 3), torch.tensor([0, 1, 2]), ks=(1,))
    assert m["image_to_text_R@1"] == 0.0 and m["text_to_image_R@1"] == 0.0
    with pytest.raises(ValueError):
        retrieval_metrics(torch.ones(2, 3), torch.tensor([0, 1]))
    with pytest.raises(ValueError):
        retrieval_metrics(torch.ones(2, 2), torch.tensor([0, 2]))


def test_empty_input_is_nan_not_crash():
    assert math.isnan(topk_accuracy(torch.empty(0, 3), torch.empty(0, dtype=torch.long), 1))
