"""Build CLIP models from JSON configs: a name in train/configs/, a JSON path, or a dict.

A config is one flat dict, so that an override such as `vocab_size=8192` (a learned
vocabulary) is a plain key; open_clip's nested `vision_cfg`/`text_cfg` files are
accepted too and flattened.
"""

from __future__ import annotations

import json
import pathlib

from .model import CLIP

CONFIG_DIR = pathlib.Path(__file__).resolve().parent / "configs"

# Every field a config may hold, with the value used when a config leaves it out.
DEFAULTS: dict = {
    "embed_dim": None,
    "quick_gelu": True,
    "image_size": None,
    "vision_layers": None,
    "vision_width": None,
    "vision_patch_size": None,
    "vision_heads": None,
    "context_length": 77,
    "vocab_size": 49408,
    "text_width": None,
    "text_heads": None,
    "text_layers": None,
    "tokenizer": "openai",
    "name": None,
}


def list_models() -> list[str]:
    """Names accepted by create_model."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def _from_open_clip(cfg: dict) -> dict:
    """Flatten an open_clip config (vision_cfg / text_cfg) into our keys."""
    v, t = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
    width = v.get("width", 768)
    resnet = isinstance(v.get("layers"), (list, tuple))
    heads = width * 32 // 64 if resnet else width // v.get("head_width", 64)
    return {
        "embed_dim": cfg["embed_dim"],
        "quick_gelu": bool(cfg.get("quick_gelu", False)),
        "image_size": v.get("image_size", 224),
        "vision_layers": v.get("layers", 12),
        "vision_width": width,
        "vision_patch_size": None if resnet else v.get("patch_size", 16),
        "vision_heads": heads,
        "context_length": t.get("context_length", 77),
        "vocab_size": t.get("vocab_size", 49408),
        "text_width": t.get("width", 512),
        "text_heads": t.get("heads", 8),
        "text_layers": t.get("layers", 12),
    }


def load_config(name_or_path: str | pathlib.Path | dict, **overrides) -> dict:
    """The full config dict for a model name, a JSON file or a dict, with overrides applied."""
    if isinstance(name_or_path, dict):
        cfg = dict(name_or_path)
    else:
        text = str(name_or_path)
        path = CONFIG_DIR / f"{text}.json"
        if not path.is_file():
            path = pathlib.Path(text)
        if not path.is_file():
            raise ValueError(
                f"unknown model {text!r}: not a file; known names: {', '.join(list_models())}"
            )
        try:
            cfg = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot read model config {path}: {e}") from None
        if not isinstance(cfg, dict):
            raise ValueError(f"model config {path} is not a JSON object")
        cfg.setdefault("name", path.stem)
    if "vision_cfg" in cfg or "text_cfg" in cfg:
        cfg = {**_from_open_clip(cfg), "name": cfg.get("name")}
    unknown = sorted(set(cfg) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown model config field(s): {', '.join(unknown)}")
    bad = sorted(set(overrides) - set(DEFAULTS))
    if bad:
        raise ValueError(
            f"unknown model override(s): {', '.join(bad)}; fields: {', '.join(DEFAULTS)}"
        )
    cfg = {**DEFAULTS, **cfg, **overrides}
    _validate(cfg)
    return cfg


def _validate(cfg: dict) -> None:
    required = [
        "embed_dim",
        "image_size",
        "vision_layers",
        "vision_width",
        "text_width",
        "text_layers",
    ]
    missing = [k for k in required if cfg[k] is None]
    if missing:
        raise ValueError(f"model config lacks {', '.join(missing)}")
    resnet = isinstance(cfg["vision_layers"], (list, tuple))
    if cfg["vision_heads"] is None:
        cfg["vision_heads"] = (
            cfg["vision_width"] * 32 // 64 if resnet else max(1, cfg["vision_width"] // 64)
        )
    if cfg["text_heads"] is None:
        cfg["text_heads"] = max(1, cfg["text_width"] // 64)
    if not resnet and not cfg["vision_patch_size"]:
        raise ValueError(
            "a ViT config needs vision_patch_size (or give vision_layers as 4 ResNet stages)"
        )
    if cfg["text_width"] % cfg["text_heads"]:
        raise ValueError(
            f"text_width {cfg['text_width']} is not divisible by text_heads {cfg['text_heads']}"
        )
    if not resnet and cfg["vision_width"] % cfg["vision_heads"]:
        raise ValueError(
            f"vision_width {cfg['vision_width']} is not divisible by vision_heads {cfg['vision_heads']}"
        )
    if int(cfg["vocab_size"]) < 3 or int(cfg["context_length"]) < 2:
        raise ValueError("vocab_size must be >= 3 and context_length >= 2")


def create_model(name_or_path: str | pathlib.Path | dict, **overrides) -> CLIP:
    """A randomly initialised CLIP in fp32; `model.config` reproduces it via create_model(config)."""
    return CLIP(load_config(name_or_path, **overrides))
