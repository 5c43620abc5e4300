"""Checkpoint files: atomic replacement, weights_only loading, RNG round trips, clear errors."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

from train import checkpoint as ckpt_io


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path):
    path = tmp_path / "c" / "latest.pt"
    ckpt_io.save_atomic({"model": {"w": torch.ones(2)}, "step": 1}, path)
    with pytest.raises(Exception):  # noqa: B017 - whatever torch.save raises for a lambda
        ckpt_io.save_atomic({"model": {}, "step": 2, "bad": lambda: 0}, path)
    # the failed write neither replaced nor corrupted the previous file
    assert torch.load(path, weights_only=True)["step"] == 1
    assert os.listdir(path.parent) == ["latest.pt"]


def test_step_and_latest_files(tmp_path):
    state = {"model": {"w": torch.zeros(1)}, "step": 7}
    written = ckpt_io.save_checkpoint(tmp_path, state)
    assert written.endswith("checkpoints/step_000007.pt")
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["latest.pt", "step_000007.pt"]
    assert ckpt_io.load_checkpoint(tmp_path)["step"] == 7  # a run folder resolves to latest.pt


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.standard_normal()  # leaves a cached gaussian in NumPy's state
    ckpt_io.save_atomic({"model": {}, "rng": ckpt_io.rng_state()}, tmp_path / "r.pt")
    expected = (random.random(), np.random.standard_normal(), torch.rand(3))
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    ckpt_io.set_rng_state(torch.load(tmp_path / "r.pt", weights_only=True)["rng"])
    got = (random.random(), np.random.standard_normal(), torch.rand(3))
    assert got[0] == expected[0] and got[1] == expected[1]
    assert torch.equal(got[2], expected[2])


def test_unreadable_or_missing_checkpoints_give_one_line_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoints/latest.pt"):
        ckpt_io.load_checkpoint(tmp_path)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"this is not a torch file")
    with pytest.raises(ValueError, match="unreadable checkpoint"):
        ckpt_io.load_checkpoint(bad)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.ones(1)}, other)
    with pytest.raises(ValueError, match="not a wit-train checkpoint"):
        ckpt_io.load_checkpoint(other)


def test_ddp_prefix_is_stripped():
    sd = {"module.a": 1, "module.b": 2}
    assert ckpt_io.strip_ddp_prefix(sd) == {"a": 1, "b": 2}
    assert ckpt_io.strip_ddp_prefix({"module.a": 1, "c": 2}) == {"module.a": 1, "c": 2}
