"""Checkpoint files of wit-train: atomic writes, `weights_only=True` loading, exact resume.

A checkpoint is a plain dict: model, optimizer and scaler state, step, model config,
tokenizer spec, RNG states and the run's arguments. Only tensors and plain Python values
go in, so `torch.load(path, weights_only=True)` reads it without executing any code.
"""

from __future__ import annotations

import os
import pathlib
import random
import tempfile

import numpy as np
import torch

CHECKPOINT_DIR = "checkpoints"
LATEST = "latest.pt"


def step_name(step: int) -> str:
    return f"step_{step:06d}.pt"


def rng_state() -> dict:
    """Python, NumPy, torch and CUDA RNG states, as tensors and ints only."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": {
            "version": py_version,
            "state": torch.tensor(py_state, dtype=torch.int64),
            "gauss": py_gauss,
        },
        "numpy": {
            "name": np_name,
            "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Inverse of `rng_state`; missing parts (e.g. CUDA on a CPU machine) are left alone."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    npst = state["numpy"]
    np.random.set_state(
        (
            npst["name"],
            npst["keys"].numpy().astype(np.uint32),
            npst["pos"],
            npst["has_gauss"],
            npst["gauss"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_atomic(obj: dict, path: str | os.PathLike) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over `path`.

    A reader (or a resume after a kill) sees either the old file or the complete new one,
    never a torn write.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_checkpoint(run_dir: str | os.PathLike, state: dict, keep_step_file: bool = True) -> str:
    """Write RUN/checkpoints/step_XXXXXX.pt and latest.pt; return the step file's path."""
    ckpt_dir = pathlib.Path(run_dir) / CHECKPOINT_DIR
    step_path = ckpt_dir / step_name(int(state["step"]))
    if keep_step_file:
        save_atomic(state, step_path)
    save_atomic(state, ckpt_dir / LATEST)
    return str(step_path)


def resolve(path: str | os.PathLike) -> pathlib.Path:
    """A checkpoint file, or RUN/checkpoints/latest.pt for a run folder."""
    p = pathlib.Path(path)
    if p.is_dir():
        for candidate in (p / CHECKPOINT_DIR / LATEST, p / LATEST):
            if candidate.is_file():
                return candidate
        raise FileNotFoundError(f"no {CHECKPOINT_DIR}/{LATEST} in run folder {p}")
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    return p


def load_checkpoint(path: str | os.PathLike, map_location: str = "cpu") -> dict:
    """Read a checkpoint (file or run folder) with `weights_only=True`."""
    p = resolve(path)
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as exc:
        first = " ".join(str(exc).split())[:160]
        raise ValueError(f"unreadable checkpoint {p}: {type(exc).__name__}: {first}") from exc
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise ValueError(f"{p} is not a wit-train checkpoint (no 'model' entry)")
    return ckpt


def strip_ddp_prefix(state_dict: dict) -> dict:
    """Drop the `module.` prefix that DDP-wrapped models add, if every key has it."""
    if state_dict and all(k.startswith("module.") for k in state_dict):
        return {k[len("module.") :]: v for k, v in state_dict.items()}
    return state_dict


def load_model(path: str | os.PathLike, model=None, map_location: str = "cpu"):
    """(model, tokenizer) from one of our checkpoints or run folders.

    Without `model`, the architecture is rebuilt from the stored config; the tokenizer
    from the stored spec (or OpenAI's when the checkpoint has none).
    """
    from train import create_model, get_tokenizer  # lazy: keeps this module light

    ckpt = load_checkpoint(path, map_location=map_location)
    if model is None:
        config = ckpt.get("config")
        if not config:
            raise ValueError(f"{resolve(path)} holds no model config; pass model=")
        model = create_model(config)
    model.load_state_dict(strip_ddp_prefix(ckpt["model"]), strict=True)
    model.eval()
    tokenizer = get_tokenizer(ckpt.get("tokenizer") or "openai")
    return model, tokenizer
