"""ClipLoss: equals open_clip's on one process; on 2 gloo processes equals the global-batch loss."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from train import ClipLoss
from train.distributed import exit_rank

GLOBAL_BATCH, DIM, WORLD = 8, 16, 2


def batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "img": torch.randn(GLOBAL_BATCH, DIM, generator=g),
        "txt": torch.randn(GLOBAL_BATCH, DIM, generator=g),
        "scale": torch.tensor(1 / 0.07),
    }


def loss_and_grads(data, rank=0, world_size=1, gather_with_grad=False):
    """Loss on this rank's rows of `data`, and the gradients w.r.t. its raw features and scale."""
    n = data["img"].shape[0] // world_size
    img = data["img"][rank * n : (rank + 1) * n].clone().requires_grad_()
    txt = data["txt"][rank * n : (rank + 1) * n].clone().requires_grad_()
    scale = data["scale"].clone().requires_grad_()
    loss_fn = ClipLoss(rank=rank, world_size=world_size, gather_with_grad=gather_with_grad)
    loss = loss_fn(F.normalize(img, dim=-1), F.normalize(txt, dim=-1), scale)
    loss.backward()
    return {"loss": loss.detach(), "img": img.grad, "txt": txt.grad, "scale": scale.grad}


def _worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"  # stay on loopback
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size
    )
    try:
        data = batch()
        results = {
            flag: loss_and_grads(data, rank, world_size, gather_with_grad=flag)
            for flag in (False, True)
        }
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()  # destroy the group together, no rank with gloo work in flight
    finally:
        dist.destroy_process_group()
    exit_rank(0)  # the work is saved: leave before a C++ teardown abort (see exit_rank)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_single_process_loss_equals_open_clip():
    open_clip_loss = pytest.importorskip("open_clip.loss")
    data = batch(1)
    img = F.normalize(data["img"], dim=-1).requires_grad_()
    txt = F.normalize(data["txt"], dim=-1).requires_grad_()
    ours = ClipLoss()(img, txt, data["scale"])
    ref = open_clip_loss.ClipLoss()(img, txt, data["scale"])
    torch.testing.assert_close(ours, ref)
    g_ours = torch.autograd.grad(ours, (img, txt))
    g_ref = torch.autograd.grad(ref, (img, txt))
    for a, b in zip(g_ours, g_ref, strict=True):
        torch.testing.assert_close(a, b)
    # Matching pairs lower the loss: aligned features give a near-zero loss at scale 100.
    aligned = ClipLoss()(img.detach(), img.detach(), torch.tensor(100.0))
    assert aligned < ours and aligned < 0.1


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="differ in shape"):
        ClipLoss()(torch.zeros(4, 8), torch.zeros(3, 8), torch.tensor(1.0))


def test_two_process_gloo_loss_and_gradients_equal_the_global_batch(tmp_path):
    mp.spawn(_worker, args=(WORLD, free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    whole = loss_and_grads(batch())
    n = GLOBAL_BATCH // WORLD
    for flag in (False, True):
        mean_loss = sum(r[flag]["loss"] for r in ranks) / WORLD
        torch.testing.assert_close(mean_loss, whole["loss"])
    # With gather_with_grad, each rank's feature gradients are those of the sum of all ranks'
    # losses; DDP divides by the world size, which gives the global-batch gradient.
    for r, result in enumerate(ranks):
        grads = result[True]
        rows = slice(r * n, (r + 1) * n)
        torch.testing.assert_close(grads["img"] / WORLD, whole["img"][rows])
        torch.testing.assert_close(grads["txt"] / WORLD, whole["txt"][rows])
    scale_grad = sum(r[True]["scale"] for r in ranks) / WORLD
    torch.testing.assert_close(scale_grad, whole["scale"])
