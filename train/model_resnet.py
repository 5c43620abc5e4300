"""CLIP's ModifiedResNet image tower.

Three changes from torchvision's ResNet, as in the CLIP paper: a stem of three 3x3
convolutions with an average pool instead of one 7x7 conv and a max pool; anti-aliased
strided convolutions (an average pool before the stride, so every stride-2 step is a
blur then a subsample); and attention pooling (one multi-head attention query from the
mean feature) in place of global average pooling.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> (avgpool if strided) -> 1x1 bottleneck; the shortcut pools then projects."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.act3 = nn.ReLU(inplace=True)
        self.downsample = None
        if stride > 1 or inplanes != planes * self.expansion:
            self.downsample = nn.Sequential(
                OrderedDict(
                    [
                        ("-1", nn.AvgPool2d(stride)),
                        (
                            "0",
                            nn.Conv2d(inplanes, planes * self.expansion, 1, stride=1, bias=False),
                        ),
                        ("1", nn.BatchNorm2d(planes * self.expansion)),
                    ]
                )
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.act2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.avgpool(out)))
        return self.act3(out + identity)


class AttentionPool2d(nn.Module):
    """Pool a [N, C, H, W] map with one attention query: the mean of the map plus its position."""

    def __init__(self, spatial_dim: int, embed_dim: int, num_heads: int, output_dim: int):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(
                f"attention pool width {embed_dim} is not divisible by {num_heads} heads"
            )
        self.positional_embedding = nn.Parameter(
            torch.randn(spatial_dim * spatial_dim + 1, embed_dim) / embed_dim**0.5
        )
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, output_dim)
        self.num_heads = num_heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        x = x.flatten(2).transpose(1, 2)  # [N, HW, C]
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)  # [N, HW+1, C]
        x = x + self.positional_embedding.to(x.dtype)
        h = self.num_heads

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(n, t.shape[1], h, c // h).transpose(1, 2)

        q = heads(self.q_proj(x[:, :1]))
        k = heads(self.k_proj(x))
        v = heads(self.v_proj(x))
        out = F.scaled_dot_product_attention(q, k, v)  # [N, h, 1, C/h]
        return self.c_proj(out.transpose(1, 2).reshape(n, c))


@contextlib.contextmanager
def _frozen_batchnorm_stats(module: nn.Module):
    """While checkpointed blocks are recomputed in backward, leave BN running stats untouched.

    Recomputation runs the forward a second time in train mode; without this the running
    mean/var would take two momentum steps per batch. Momentum 0 keeps them, and the
    batch counter is restored on exit. Outputs are unchanged (train-mode BN uses batch stats).
    """
    saved = []
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            counter = None if m.num_batches_tracked is None else m.num_batches_tracked.clone()
            saved.append((m, m.momentum, counter))
            m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum, counter in saved:
            m.momentum = momentum
            if counter is not None:
                m.num_batches_tracked.copy_(counter)


class ModifiedResNet(nn.Module):
    """Images [N, 3, S, S] -> features [N, output_dim]; S must be a multiple of 32."""

    def __init__(
        self, layers: list[int], output_dim: int, heads: int, image_size: int, width: int = 64
    ):
        super().__init__()
        if len(layers) != 4:
            raise ValueError(f"ModifiedResNet needs 4 stage depths, got {layers}")
        if image_size % 32:
            raise ValueError(
                f"ModifiedResNet image_size must be a multiple of 32, got {image_size}"
            )
        self.image_size = image_size
        self.grad_checkpointing = False
        half = width // 2
        self.conv1 = nn.Conv2d(3, half, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(half, half, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.act2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(half, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.act3 = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(2)

        self._inplanes = width
        self.layer1 = self._make_layer(width, layers[0])
        self.layer2 = self._make_layer(width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(width * 8, layers[3], stride=2)

        embed_dim = width * 32  # the ResNet feature width
        self.attnpool = AttentionPool2d(image_size // 32, embed_dim, heads, output_dim)
        self.init_parameters()

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        layers = [Bottleneck(self._inplanes, planes, stride)]
        self._inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self._inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def init_parameters(self) -> None:
        """OpenAI's init: attention-pool projections scaled by fan-in, last BN of each block at 0."""
        std = self.attnpool.c_proj.in_features**-0.5
        for proj in (
            self.attnpool.q_proj,
            self.attnpool.k_proj,
            self.attnpool.v_proj,
            self.attnpool.c_proj,
        ):
            nn.init.normal_(proj.weight, std=std)
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in stage:
                nn.init.zeros_(block.bn3.weight)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.bn2(self.conv2(x)))
        x = self.act3(self.bn3(self.conv3(x)))
        return self.avgpool(x)

    def _run(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(
                block,
                x,
                use_reentrant=False,
                context_fn=lambda: (contextlib.nullcontext(), _frozen_batchnorm_stats(block)),
            )
        return block(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(
                f"expected images of {self.image_size}x{self.image_size}, got {tuple(x.shape[-2:])}"
            )
        x = x.to(self.conv1.weight.dtype)
        x = self._stem(x)
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in stage:
                x = self._run(block, x)
        return self.attnpool(x)
