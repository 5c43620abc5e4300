"""Exact resume: a wit-train run SIGKILLed mid-way and resumed ends with the same weights.

The runs are real subprocesses of `python -m train.cli_train` with two loader workers, so
the test covers the data order across worker processes, the skip of consumed batches,
optimizer state, the schedule and the atomic checkpoint writes.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest
import torch
from test_train_fixtures import make_samples, write_corpus

ROOT = pathlib.Path(__file__).resolve().parents[1]

MICRO = {
    "embed_dim": 32,
    "image_size": 32,
    "vision_layers": 2,
    "vision_width": 32,
    "vision_patch_size": 8,
    "vision_heads": 2,
    "context_length": 12,
    "text_width": 32,
    "text_heads": 2,
    "text_layers": 2,
}


def train_cmd(shards: str, config: str, out: str, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "train.cli_train",
        "--shards", shards, "--model", config, "--out", out,
        "--steps", "24", "--batch-size", "8", "--warmup", "4", "--lr", "2e-3",
        "--save-every", "6", "--log-every", "3", "--workers", "2", "--threads", "1",
        "--shuffle-buffer", "20", "--tokenizer", "learn:600", "--deterministic",
        "--no-progress", "--no-tensorboard", "--seed", "3", *extra,
    ]  # fmt: skip


def env() -> dict:
    e = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", OMP_NUM_THREADS="1")
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    return e


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("resume")
    # 3 shards over 2 workers: worker 0 reads two, worker 1 one, so the workers run out
    # at different times and epochs roll over several times within 24 steps.
    write_corpus(str(d), make_samples(90, seed=5, size=40), shard_size=30)
    config = d / "micro.json"
    config.write_text(json.dumps(MICRO))
    return d, str(d / "shards" / "{00000..00002}.tar"), str(config)


def load_weights(path: pathlib.Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_killed_and_resumed_run_matches_uninterrupted_run(corpus):
    d, shards, config = corpus
    full, broken = d / "full", d / "broken"
    subprocess.run(
        train_cmd(shards, config, str(full)), cwd=ROOT, env=env(), check=True, timeout=300
    )

    proc = subprocess.Popen(
        train_cmd(shards, config, str(broken)),
        cwd=ROOT,
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    target = broken / "checkpoints" / "step_000012.pt"
    deadline = time.time() + 240
    while not target.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert target.exists(), "the run never wrote its step-12 checkpoint"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (broken / "checkpoints" / "step_000024.pt").exists()
    killed_at = load_weights(broken / "checkpoints" / "latest.pt")["step"]
    assert 6 <= killed_at < 24  # latest.pt may still be step 6 if the kill fell between writes

    resumed = subprocess.run(
        train_cmd(shards, config, str(broken), "--resume"),
        cwd=ROOT,
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    for step in (18, 24):
        a = load_weights(full / "checkpoints" / f"step_{step:06d}.pt")
        b = load_weights(broken / "checkpoints" / f"step_{step:06d}.pt")
        assert a["step"] == b["step"] == step
        assert a["model"].keys() == b["model"].keys()
        for key in a["model"]:
            assert torch.equal(a["model"][key], b["model"][key]), f"{key} differs at step {step}"
        assert a["data"] == b["data"]
        exp_a = a["optimizer"]["state"][0]["exp_avg_sq"]
        assert torch.equal(exp_a, b["optimizer"]["state"][0]["exp_avg_sq"])

    # The log after the resume repeats the uninterrupted run's losses exactly.
    def losses(run):
        rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
        return {r["step"]: r["loss"] for r in rows if "loss" in r}

    full_losses, broken_losses = losses(full), losses(broken)
    for step in range(killed_at + 3, 25, 3):
        assert broken_losses[step] == full_losses[step]

    # Resuming a finished run (a second `make demo`) trains nothing and says so.
    before = load_weights(full / "checkpoints" / "latest.pt")
    again = subprocess.run(train_cmd(shards, config, str(full), "--resume"), cwd=ROOT, env=env(),
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert again.returncode == 0, again.stderr[-2000:]
    assert "already at step 24; nothing to train" in again.stderr
    after = load_weights(full / "checkpoints" / "latest.pt")
    assert after["step"] == 24
    assert all(torch.equal(before["model"][k], after["model"][k]) for k in before["model"])


def test_run_folder_with_checkpoints_needs_resume(corpus, tmp_path):
    d, shards, config = corpus
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    torch.save({"model": {}, "step": 1}, run / "checkpoints" / "latest.pt")
    res = subprocess.run(
        train_cmd(shards, config, str(run)), cwd=ROOT, env=env(), capture_output=True, text=True
    )
    assert res.returncode == 1
    assert "pass --resume" in res.stderr.strip().splitlines()[-1]
