"""Models for evaluation: our checkpoints, OpenAI / open_clip state dicts, and the encoders.

Files are always read with `torch.load(..., weights_only=True)`, so a checkpoint can
never run code. A run folder means RUN/checkpoints/latest.pt.
"""

from __future__ import annotations

import hashlib
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from train.eval.datasets import ImageItem, encode_batches

OPENAI_METADATA_KEYS = ("input_resolution", "context_length", "vocab_size")
RANDOM_PREFIX = "random:"


class LoadError(ValueError):
    """A checkpoint that cannot be turned into a model (one-line reason)."""


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: Callable
    source: str  # "wit-train" or "state_dict"
    path: str


def _unwrap_state_dict(obj) -> dict:
    """The tensor dict inside an open_clip training checkpoint, a plain state dict, or ours."""
    from train.checkpoint import strip_ddp_prefix

    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    elif isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise LoadError("file holds no state dict of tensors")
    # OpenAI's released models carry these as metadata entries, not parameters.
    obj = {k: v for k, v in obj.items() if k not in OPENAI_METADATA_KEYS}
    return strip_ddp_prefix(obj)


def load_for_eval(
    path: str,
    model_config: str | dict | None = None,
    tokenizer: str | dict | None = None,
    device: str = "cpu",
) -> LoadedModel:
    """A model in eval mode and its tokenizer from a checkpoint file or run folder.

    Our checkpoints carry their config and tokenizer spec. A foreign (OpenAI or open_clip)
    state dict needs `model_config` (a config name or JSON path) and uses OpenAI's
    tokenizer unless `tokenizer` says otherwise. `model_config` also overrides ours.

    `random:PATH` is the baseline every trained number needs: the same architecture and
    tokenizer as PATH, freshly initialised with seed 0, with none of PATH's weights.
    """
    from train import create_model, get_tokenizer
    from train.checkpoint import resolve

    random_init = path.startswith(RANDOM_PREFIX)
    if random_init:
        path = path[len(RANDOM_PREFIX) :]
    try:
        p = resolve(path)
    except FileNotFoundError as e:
        raise LoadError(str(e)) from e
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - pickle, zip and TorchScript errors all land here
        hint = ""
        if "TorchScript" in str(e) or "constants.pkl" in str(e):
            hint = " (a TorchScript archive: save its state_dict() to a plain file first)"
        raise LoadError(f"unreadable checkpoint {p}: {type(e).__name__}{hint}") from e
    ours = isinstance(obj, dict) and "model" in obj and isinstance(obj.get("config"), dict)
    state = _unwrap_state_dict(obj)
    if model_config is None and not ours:
        raise LoadError(f"{p} is a plain state dict: name its architecture with --model CONFIG")
    try:
        if random_init:
            torch.manual_seed(0)
        model = create_model(model_config if model_config is not None else obj["config"])
    except Exception as e:  # noqa: BLE001
        raise LoadError(f"cannot build model {model_config!r}: {e}") from e
    if not random_init:
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            first = str(e).strip().splitlines()
            raise LoadError(f"{p} does not fit the model: {' '.join(first[:2])[:300]}") from e
    tok_spec = tokenizer or (obj.get("tokenizer") if ours else None) or "openai"
    tok = get_tokenizer(tok_spec)
    model.to(device).eval()
    source = "random_init" if random_init else "wit-train" if ours else "state_dict"
    return LoadedModel(model, tok, source, (RANDOM_PREFIX if random_init else "") + str(p))


def model_image_size(model) -> int:
    """The square input resolution of the model's image tower."""
    size = getattr(model, "image_size", None)
    if size is None:
        size = model.visual.image_size
    if isinstance(size, (tuple, list)):
        size = size[0]
    return int(size)


def eval_transform(model) -> Callable:
    """The model's eval preprocessing: resize the short side, center crop, normalize."""
    from train import image_transform

    return image_transform(model_image_size(model), is_train=False)


def _progress(label: str, done: int, total: int, started: float) -> None:
    """A self-overwriting bar on a terminal (count, rate, ETA); in a log, only the last update."""
    tty = sys.stderr.isatty()
    if not tty and done < total:
        return
    elapsed = max(time.monotonic() - started, 1e-9)
    rate = done / elapsed
    width = 20
    filled = width * done // max(total, 1)
    bar = "#" * filled + "." * (width - filled)
    eta = (total - done) / rate if rate > 0 else float("inf")
    tail = f"ETA {eta:.0f}s" if done < total and math.isfinite(eta) else f"{elapsed:.1f}s"
    end = "" if tty else "\n"
    print(
        f"\r{label}: [{bar}] {done}/{total} ({rate:.0f}/s, {tail})",
        end=end,
        file=sys.stderr,
        flush=True,
    )


def progress_done() -> None:
    """End a self-overwriting progress line."""
    if sys.stderr.isatty():
        print(file=sys.stderr)


@torch.no_grad()
def image_features(
    model,
    items: Sequence[ImageItem],
    transform: Callable | None = None,
    batch_size: int = 64,
    device: str = "cpu",
    workers: int = 0,
    failures: list | None = None,
    progress: bool = False,
    label: str = "images",
) -> tuple[torch.Tensor, list[int]]:
    """L2-normalized image embeddings [n, D] and the indices of the items they belong to.

    Unreadable images are left out and appended to `failures` as (name, reason).
    """
    transform = transform or eval_transform(model)
    feats, kept, started = [], [], time.monotonic()
    for images, indices in encode_batches(items, transform, batch_size, workers, failures):
        feats.append(F.normalize(model.encode_image(images.to(device)).float(), dim=-1).cpu())
        kept += indices
        if progress:
            _progress(label, len(kept), len(items), started)
    if progress:
        progress_done()
    if not feats:
        raise LoadError("no image could be read")
    return torch.cat(feats), kept


@torch.no_grad()
def text_features(
    model,
    tokenizer: Callable,
    texts: Sequence[str],
    batch_size: int = 256,
    device: str = "cpu",
) -> torch.Tensor:
    """L2-normalized text embeddings [n, D], tokenized at the model's context length."""
    ctx = getattr(model, "context_length", 77)
    out = []
    for start in range(0, len(texts), batch_size):
        tokens = tokenizer(list(texts[start : start + batch_size]), context_length=ctx)
        out.append(F.normalize(model.encode_text(tokens.to(device)).float(), dim=-1).cpu())
    return torch.cat(out) if out else torch.empty(0)


def text_tower_fingerprint(model) -> str:
    """A hash of every parameter outside the image tower: it changes whenever the text
    embeddings could, so it keys the class-embedding cache."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if name.startswith("visual."):
            continue
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
