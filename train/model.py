"""CLIP: an image tower and a causal text transformer projected into one embedding space.

Module and parameter names follow OpenAI's released CLIP (`visual.*`,
`transformer.resblocks.N.attn.in_proj_weight`, `token_embedding`, `positional_embedding`,
`ln_final`, `text_projection`, `logit_scale`) so that OpenAI and open_clip state dicts
load with `strict=True`. The image towers live in model_vit.py and model_resnet.py.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

INIT_LOGIT_SCALE = math.log(1 / 0.07)
MAX_LOGIT_SCALE = math.log(100)


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 and cast back, so fp16/bf16 weights stay stable."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        out = F.layer_norm(
            x.float(), self.normalized_shape, self.weight.float(), self.bias.float(), self.eps
        )
        return out.to(dtype)


class QuickGELU(nn.Module):
    """The sigmoid approximation of GELU that OpenAI trained its models with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    """Pre-LN transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, width: int, heads: int, quick_gelu: bool = True):
        super().__init__()
        self.ln_1 = LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = LayerNorm(width)
        act = QuickGELU() if quick_gelu else nn.GELU()
        self.mlp = nn.Sequential(
            OrderedDict(
                [
                    ("c_fc", nn.Linear(width, width * 4)),
                    ("gelu", act),
                    ("c_proj", nn.Linear(width * 4, width)),
                ]
            )
        )

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        y = self.ln_1(x)
        if attn_mask is not None:
            attn_mask = attn_mask.to(y.dtype)
        x = x + self.attn(y, y, y, need_weights=False, attn_mask=attn_mask)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """A stack of residual attention blocks over [N, L, D] tokens, with optional checkpointing."""

    def __init__(self, width: int, layers: int, heads: int, quick_gelu: bool = True):
        super().__init__()
        self.width = width
        self.layers = layers
        self.grad_checkpointing = False
        self.resblocks = nn.ModuleList(
            [ResidualAttentionBlock(width, heads, quick_gelu) for _ in range(layers)]
        )

    def init_parameters(self) -> None:
        """OpenAI's init: residual projections shrink with depth so the stream starts near identity."""
        proj_std = (self.width**-0.5) * ((2 * self.layers) ** -0.5)
        attn_std = self.width**-0.5
        fc_std = (2 * self.width) ** -0.5
        for block in self.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.resblocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, attn_mask, use_reentrant=False)
            else:
                x = block(x, attn_mask)
        return x


def causal_mask(length: int) -> torch.Tensor:
    """Additive mask: token i attends to tokens 0..i only."""
    return torch.full((length, length), float("-inf")).triu_(1)


class CLIP(nn.Module):
    """Contrastive image-text model built from a config dict (see train/factory.py)."""

    def __init__(self, config: dict):
        super().__init__()
        # Imported here so the towers can import LayerNorm/Transformer from this module.
        from .model_resnet import ModifiedResNet
        from .model_vit import VisionTransformer

        self.config = dict(config)
        c = self.config
        self.embed_dim = c["embed_dim"]
        self.image_size = c["image_size"]
        self.context_length = c["context_length"]
        self.vocab_size = c["vocab_size"]
        quick_gelu = c.get("quick_gelu", True)

        if isinstance(c["vision_layers"], (list, tuple)):
            self.visual = ModifiedResNet(
                layers=list(c["vision_layers"]),
                output_dim=c["embed_dim"],
                heads=c["vision_heads"],
                image_size=c["image_size"],
                width=c["vision_width"],
            )
        else:
            self.visual = VisionTransformer(
                image_size=c["image_size"],
                patch_size=c["vision_patch_size"],
                width=c["vision_width"],
                layers=c["vision_layers"],
                heads=c["vision_heads"],
                output_dim=c["embed_dim"],
                quick_gelu=quick_gelu,
            )

        width = c["text_width"]
        self.transformer = Transformer(width, c["text_layers"], c["text_heads"], quick_gelu)
        self.token_embedding = nn.Embedding(self.vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(self.context_length, width))
        self.ln_final = LayerNorm(width)
        self.text_projection = nn.Parameter(torch.empty(width, self.embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(INIT_LOGIT_SCALE))
        # Not persistent: OpenAI's checkpoints do not carry it.
        self.register_buffer("attn_mask", causal_mask(self.context_length), persistent=False)
        self.init_parameters()

    def init_parameters(self) -> None:
        """OpenAI's initialisation for the text side; the towers init themselves."""
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        self.transformer.init_parameters()
        nn.init.normal_(self.text_projection, std=self.transformer.width**-0.5)
        with torch.no_grad():
            self.logit_scale.fill_(INIT_LOGIT_SCALE)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute activations in backward instead of storing them (less memory, ~30% slower)."""
        self.transformer.grad_checkpointing = enable
        self.visual.set_grad_checkpointing(enable)

    @torch.no_grad()
    def clamp_logit_scale(self) -> None:
        """Clamp the log temperature to [0, log 100] as OpenAI did; call after optimizer.step()."""
        self.logit_scale.clamp_(0, MAX_LOGIT_SCALE)

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        features = self.visual(images)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Features at the end-of-text token, which has the largest id in every vocabulary here."""
        if tokens.shape[1] > self.context_length:
            raise ValueError(
                f"text has {tokens.shape[1]} tokens but the model's context is {self.context_length}"
            )
        length = tokens.shape[1]
        x = self.token_embedding(tokens) + self.positional_embedding[:length]
        x = self.transformer(x, self.attn_mask[:length, :length])
        x = self.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
        features = x @ self.text_projection
        return F.normalize(features, dim=-1) if normalize else features

    def forward(
        self, images: torch.Tensor, texts: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(normalized image features, normalized text features, logit_scale.exp())."""
        image_features = self.encode_image(images, normalize=True)
        text_features = self.encode_text(texts, normalize=True)
        return image_features, text_features, self.logit_scale.exp()
