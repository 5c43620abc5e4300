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
    "embed_dim": None,  # width of the shared image-text embedding
    "quick_gelu": True,  # x * sigmoid(1.702 x), as OpenAI trained; False = exact GELU
    "image_size": None,  # square input side in pixels
    "vision_layers": None,  # int: ViT depth; list of 4: ModifiedResNet stage depths
    "vision_width": None,  # ViT width, or the ResNet stem width (features are 32x that)
    "vision_patch_size": None,  # ViT only
    "vision_heads": None,  # default: width / 64 (ViT), 32 * width / 64 (ResNet attention pool)
    "context_length": 77,  # text positions
    "vocab_size": 49408,  # OpenAI's; a learned tokenizer passes its own
    "text_width": None,
    "text_heads": None,  # default: text_width / 64
    "text_layers": None,
    "tokenizer": "openai",  # the vocabulary the config is meant for: "openai" or "learned"
    "name": None,  # filled in from the file name
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


# Entries OpenAI's TorchScript checkpoints keep next to the weights; not parameters.
OPENAI_METADATA_KEYS = ("input_resolution", "context_length", "vocab_size")


def clean_state_dict(state_dict: dict) -> dict:
    """A foreign state dict in our layout: OpenAI's metadata entries and DDP's `module.` dropped.

    Accepts open_clip training checkpoints too (`{"state_dict": {...}}`).
    """
    if "state_dict" in state_dict and isinstance(state_dict["state_dict"], dict):
        state_dict = state_dict["state_dict"]
    out = {}
    for key, value in state_dict.items():
        if key in OPENAI_METADATA_KEYS:
            continue
        out[key.removeprefix("module.")] = value
    return out


def config_from_state_dict(state_dict: dict, quick_gelu: bool = True) -> dict:
    """Infer the architecture from parameter shapes, as OpenAI's `build_model` does.

    Lets a released checkpoint load without naming its config. Two things cannot be seen in
    the weights: QuickGELU (OpenAI's models use it, the default here) and the number of
    heads, taken as width / 64 as in every CLIP model (the tiny configs follow that too).
    """
    sd = clean_state_dict(state_dict)
    try:
        text_width = sd["ln_final.weight"].shape[0]
        text_layers = len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")})
        cfg = {
            "embed_dim": sd["text_projection"].shape[1],
            "quick_gelu": quick_gelu,
            "context_length": sd["positional_embedding"].shape[0],
            "vocab_size": sd["token_embedding.weight"].shape[0],
            "text_width": text_width,
            "text_heads": text_width // 64,
            "text_layers": text_layers,
        }
        if "visual.proj" in sd:  # ViT
            width = sd["visual.conv1.weight"].shape[0]
            patch = sd["visual.conv1.weight"].shape[-1]
            grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
            cfg.update(
                image_size=patch * grid,
                vision_layers=len(
                    {k.split(".")[3] for k in sd if k.startswith("visual.transformer.resblocks.")}
                ),
                vision_width=width,
                vision_patch_size=patch,
                vision_heads=width // 64,
            )
        else:  # ModifiedResNet
            layers = [
                len({k.split(".")[2] for k in sd if k.startswith(f"visual.layer{i}.")})
                for i in (1, 2, 3, 4)
            ]
            width = sd["visual.layer1.0.conv1.weight"].shape[0]
            grid = round((sd["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
            cfg.update(
                image_size=grid * 32,
                vision_layers=layers,
                vision_width=width,
                vision_patch_size=None,
                vision_heads=width * 32 // 64,
            )
    except (KeyError, IndexError, AttributeError) as e:
        raise ValueError(
            f"state dict is not a CLIP model in OpenAI's layout (missing {e})"
        ) from None
    return load_config(cfg)


def create_model_from_state_dict(state_dict: dict, quick_gelu: bool = True) -> CLIP:
    """A CLIP with the state dict's architecture, its weights loaded strictly (as fp32)."""
    sd = clean_state_dict(state_dict)
    model = CLIP(config_from_state_dict(sd, quick_gelu))
    model.load_state_dict(sd, strict=True)
    return model
