"""AdamW parameter groups, the paper's betas/eps, and the warmup + cosine schedule."""

from __future__ import annotations

import math

import pytest
import torch

from train import create_model
from train.optim import create_optimizer, lr_at, param_groups, tower_type


@pytest.fixture(scope="module", params=["tiny-vit", "tiny-rn"])
def model(request):
    torch.manual_seed(0)
    return create_model(request.param, vocab_size=600)


def names_of(model, group):
    ids = {id(p) for p in group["params"]}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def test_no_decay_on_gains_biases_and_logit_scale(model):
    no_decay, decay = param_groups(model, 0.2)
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.2
    skip, keep = names_of(model, no_decay), names_of(model, decay)
    everything = {n for n, _ in model.named_parameters()}
    assert skip | keep == everything and not skip & keep
    assert "logit_scale" in skip
    for n, p in model.named_parameters():
        if p.ndim < 2 or n.endswith(".bias") or "ln_" in n or ".bn" in n:
            assert n in skip, n
    # matrices and embeddings are decayed
    assert {"text_projection", "token_embedding.weight", "positional_embedding"} <= keep
    assert any(n.endswith("attn.in_proj_weight") for n in keep)
    assert any(n.startswith("visual.") and n.endswith("weight") for n in keep)


def test_paper_betas_and_eps_follow_the_vision_tower(model):
    opt = create_optimizer(model, lr=1e-3, weight_decay=0.1)
    group = opt.param_groups[0]
    if tower_type(model.config) == "vit":
        assert model.config["name"] == "tiny-vit"
        assert group["betas"] == (0.9, 0.98) and group["eps"] == 1e-6
    else:
        assert model.config["name"] == "tiny-rn"
        assert group["betas"] == (0.9, 0.999) and group["eps"] == 1e-8
    custom = create_optimizer(model, 1e-3, 0.1, betas=(0.8, 0.9), eps=1e-5)
    assert custom.param_groups[1]["betas"] == (0.8, 0.9) and custom.param_groups[1]["eps"] == 1e-5


def test_weight_decay_is_decoupled():
    """With a zero gradient Adam's update is zero, so only decoupled decay moves weights."""
    torch.manual_seed(0)
    m = create_model("tiny-vit", vocab_size=600)
    opt = create_optimizer(m, lr=0.01, weight_decay=0.5)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    for p in m.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    torch.testing.assert_close(m.text_projection, before["text_projection"] * (1 - 0.01 * 0.5))
    assert torch.equal(m.logit_scale, before["logit_scale"])
    assert torch.equal(m.ln_final.weight, before["ln_final.weight"])


def test_schedule_matches_open_clip_cosine_lr():
    from open_clip_train.scheduler import cosine_lr

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    adjust = cosine_lr(opt, 5e-4, 50, 400)
    for step in range(0, 420):
        expected = adjust(step) if step < 400 else 0.0
        assert lr_at(step, 5e-4, 50, 400) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_schedule_shape_and_purity():
    lrs = [lr_at(s, 1.0, 10, 110, min_lr=0.1) for s in range(110)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(lrs[:9], lrs[1:10], strict=True))
    assert all(a >= b for a, b in zip(lrs[10:-1], lrs[11:], strict=True))
    assert lrs[60] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(500, 1.0, 10, 110, min_lr=0.1) == pytest.approx(0.1)
    # a pure function: the same value in any order, as a resumed run needs
    assert [lr_at(s, 1.0, 10, 110, min_lr=0.1) for s in reversed(range(110))][::-1] == lrs
