"""Two CPU processes under torchrun (gloo): DDP with gathered features, and wit-train itself."""

from __future__ import annotations

import ast
import json
import os
import pathlib
import socket
import subprocess
import sys
import textwrap

import torch
from test_train_fixtures import make_samples, write_corpus
from test_train_resume import MICRO

ROOT = pathlib.Path(__file__).resolve().parents[1]

# One DDP step on half batches must equal one single-process step on the whole batch:
# the loss gathers every rank's features, and DDP averages the ranks' gradients.
DDP_STEP = textwrap.dedent(
    """
    import copy, sys, torch
    from train import ClipLoss, create_model
    from train.distributed import init_distributed, cleanup, exit_rank
    from train.trainer import train_step
    info = init_distributed("cpu")
    torch.manual_seed(0)
    model = create_model({**MICRO, "vocab_size": 300})
    reference = copy.deepcopy(model)
    g = torch.Generator().manual_seed(1)
    images = torch.randn(8, 3, 32, 32, generator=g)
    texts = torch.randint(1, 298, (8, 12), generator=g)
    texts[:, -1] = 299
    lo, hi = info.rank * 4, info.rank * 4 + 4
    ref_opt = torch.optim.SGD(reference.parameters(), lr=1.0)
    train_step(reference, images, texts, ref_opt, ClipLoss())
    worst = []
    for accum in (1, 2):
        local = copy.deepcopy(model)
        ddp = torch.nn.parallel.DistributedDataParallel(local)
        opt = torch.optim.SGD(ddp.parameters(), lr=1.0)
        loss_fn = ClipLoss(info.rank, info.world_size, gather_with_grad=True)
        train_step(ddp, images[lo:hi], texts[lo:hi], opt, loss_fn, accum_steps=accum)
        worst.append(max((a - b).abs().max().item() for a, b in
                         zip(local.state_dict().values(), reference.state_dict().values())))
    if info.rank == 0:
        with open(sys.argv[1], "w") as f:
            f.write(repr(worst))
    cleanup(info)
    exit_rank(0)
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", NO_ALBUMENTATIONS_UPDATE="1")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
        "--master_addr=127.0.0.1", f"--master_port={free_port()}", *args,
    ]  # fmt: skip
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_ddp_step_equals_the_single_process_global_batch_step(tmp_path):
    script = tmp_path / "ddp_step.py"
    script.write_text(f"MICRO = {MICRO!r}\n" + DDP_STEP)
    out = tmp_path / "worst.txt"
    res = torchrun(str(script), str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    worst_plain, worst_accum = ast.literal_eval(out.read_text())
    assert worst_plain < 1e-5 and worst_accum < 1e-5


def test_wit_train_runs_in_two_processes(tmp_path):
    write_corpus(str(tmp_path), make_samples(64, seed=8, size=32), shard_size=16)
    config = tmp_path / "micro.json"
    config.write_text(json.dumps(MICRO))
    run = tmp_path / "run"
    res = torchrun(
        "-m", "train.cli_train",
        "--shards", str(tmp_path / "shards" / "{00000..00003}.tar"),
        "--model", str(config), "--out", str(run),
        "--steps", "6", "--batch-size", "8", "--workers", "1", "--threads", "1",
        "--log-every", "2", "--save-every", "3", "--tokenizer", "learn:600",
        "--no-progress", "--no-tensorboard",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    ckpt = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)
    assert ckpt["step"] == 6 and ckpt["world_size"] == 2
    assert len(ckpt["data"]) == 2  # each rank's data position, for an exact resume
    assert not any(k.startswith("module.") for k in ckpt["model"])
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 4, 6]  # only rank 0 writes
    assert all(r["loss"] > 0 for r in rows)
