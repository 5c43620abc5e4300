"""CLIP's contrastive loss: symmetric cross-entropy over the batch's image-text similarities.

Across processes each rank gathers every rank's features but computes only its own rows
(its images against all texts, its texts against all images), with labels offset by
rank * local_batch. The mean of the ranks' losses is then the loss over the global batch.
Without `gather_with_grad` the gathered copies carry no gradient (the local slot is the
local tensor, so its own block does); with it, all_gather is differentiable and the
gradients, averaged by DDP, equal those of the single-process global-batch loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def gather_features(
    features: torch.Tensor, rank: int, world_size: int, with_grad: bool = False
) -> torch.Tensor:
    """Concatenate `features` from all ranks in rank order."""
    import torch.distributed as dist

    if with_grad:
        import torch.distributed.nn.functional as dist_fn

        return torch.cat(dist_fn.all_gather(features), dim=0)
    parts = [torch.empty_like(features) for _ in range(world_size)]
    dist.all_gather(parts, features.detach().contiguous())
    parts[rank] = features
    return torch.cat(parts, dim=0)


class ClipLoss(nn.Module):
    """loss(image_features, text_features, logit_scale_exp) -> scalar; features L2-normalized."""

    def __init__(self, rank: int = 0, world_size: int = 1, gather_with_grad: bool = False):
        super().__init__()
        self.rank = rank
        self.world_size = world_size
        self.gather_with_grad = gather_with_grad

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale_exp: torch.Tensor,
    ) -> torch.Tensor:
        if image_features.shape != text_features.shape:
            raise ValueError(
                f"image and text features differ in shape: {tuple(image_features.shape)} "
                f"vs {tuple(text_features.shape)}"
            )
        n = image_features.shape[0]
        if self.world_size > 1:
            all_images = gather_features(
                image_features, self.rank, self.world_size, self.gather_with_grad
            )
            all_texts = gather_features(
                text_features, self.rank, self.world_size, self.gather_with_grad
            )
        else:
            all_images, all_texts = image_features, text_features
        logits_per_image = logit_scale_exp * image_features @ all_texts.T
        logits_per_text = logit_scale_exp * text_features @ all_images.T
        labels = torch.arange(n, device=image_features.device) + n * self.rank
        return (
            F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)
        ) / 2
