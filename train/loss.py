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


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward gives each rank the sum, over all ranks, of the gradient
    of its own slice (every rank's loss uses every rank's features).

    Written here because torch.distributed.nn.functional.all_gather, which does the same,
    is deprecated in torch 2.14 and warns on every run. Gloo has no reduce_scatter, so
    the backward all-reduces the whole gradient and keeps this rank's rows.
    """

    @staticmethod
    def forward(ctx, features, rank, world_size):
        import torch.distributed as dist

        parts = [torch.empty_like(features) for _ in range(world_size)]
        dist.all_gather(parts, features.contiguous())
        ctx.rank, ctx.rows = rank, features.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad):
        import torch.distributed as dist

        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows], None, None


def gather_features(
    features: torch.Tensor, rank: int, world_size: int, with_grad: bool = False
) -> torch.Tensor:
    """Concatenate `features` from all ranks in rank order."""
    import torch.distributed as dist

    if with_grad:
        return _GatherWithGrad.apply(features, rank, world_size)
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
