"""Synthetic shards for the trainer tests, written per docs/shard-format.md.

Images are coloured shapes on a noisy background with captions like "a red circle".
Some (colour, shape) pairs can be held out of training so that zero-shot accuracy on
them measures generalisation rather than memorisation.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import tarfile

import webdataset as wds
from PIL import Image, ImageDraw

COLORS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 70, 220),
    "yellow": (230, 210, 40),
    "purple": (150, 50, 190),
    "orange": (245, 140, 30),
}
SHAPES = ("circle", "square", "triangle", "cross")
ALL_COMBOS = [(c, s) for c in COLORS for s in SHAPES]
#: One held-out shape per colour, and each shape held out for some colour.
HELD_OUT = [(c, SHAPES[i % len(SHAPES)]) for i, c in enumerate(COLORS)]
TRAIN_COMBOS = [cs for cs in ALL_COMBOS if cs not in HELD_OUT]
CAPTION_FORMS = (
    "a {c} {s}",
    "a photo of a {c} {s}.",
    "{c} {s} on a grey background",
    "the {s} is {c}",
)


def draw_shape(color: str, shape: str, rng: random.Random, size: int = 64) -> Image.Image:
    noise = rng.randint(90, 150)
    img = Image.new("RGB", (size, size), (noise, noise, noise))
    d = ImageDraw.Draw(img)
    r = rng.randint(size // 5, size // 3)
    cx, cy = rng.randint(r, size - r), rng.randint(r, size - r)
    fill = tuple(min(255, max(0, v + rng.randint(-20, 20))) for v in COLORS[color])
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "triangle":
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    else:
        w = max(2, r // 3)
        d.rectangle([cx - r, cy - w, cx + r, cy + w], fill=fill)
        d.rectangle([cx - w, cy - r, cx + w, cy + r], fill=fill)
    return img


def jpeg_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    tar.addfile(info, io.BytesIO(data))


def write_tar(path: str, samples: list[dict]) -> None:
    """One shard: each sample dict has `key` and any of `jpg`, `txt` (bytes), `json` (dict)."""
    tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".tmp")
    with tarfile.open(tmp, "w") as tar:
        for s in samples:
            for ext in ("jpg", "txt"):
                if ext in s:
                    _add(tar, f"{s['key']}.{ext}", s[ext])
            if "json" in s:
                _add(tar, f"{s['key']}.json", json.dumps(s["json"]).encode())
    os.replace(tmp, path)


def make_samples(n: int, seed: int = 0, combos=None, size: int = 64) -> list[dict]:
    rng = random.Random(seed)
    combos = combos or TRAIN_COMBOS
    out = []
    for i in range(n):
        color, shape = combos[i % len(combos)]
        caption = rng.choice(CAPTION_FORMS).format(c=color, s=shape)
        url = f"http://example.invalid/{seed}/{i}.jpg"
        uid = hashlib.sha256(f"{url}\n{caption}".encode()).hexdigest()
        img = draw_shape(color, shape, rng, size)
        out.append(
            {
                "key": uid[:16],
                "jpg": jpeg_bytes(img),
                "txt": caption.encode(),
                "json": {"uid": uid, "url": url, "caption": caption, "width": size, "height": size},
                "label": (color, shape),
            }
        )
    return out


def write_corpus(out_dir: str, samples: list[dict], shard_size: int) -> list[str]:
    """OUT/shards/NNNNN.tar + OUT/sizes.json, as wit-build lays them out."""
    shard_dir = os.path.join(out_dir, "shards")
    os.makedirs(shard_dir, exist_ok=True)
    sizes, paths = {}, []
    for i in range(0, len(samples), shard_size):
        name = f"{i // shard_size:05d}.tar"
        chunk = samples[i : i + shard_size]
        write_tar(os.path.join(shard_dir, name), chunk)
        sizes[name] = len(chunk)
        paths.append(os.path.join(shard_dir, name))
    with open(os.path.join(out_dir, "sizes.json"), "w") as f:
        json.dump(sizes, f)
    return paths


def write_class_folders(
    out_dir: str, per_combo: int, combos, by: str = "color", seed: int = 7
) -> None:
    """A class-per-folder evaluation set (folder = colour or shape name)."""
    rng = random.Random(seed)
    for color, shape in combos:
        label = color if by == "color" else shape
        os.makedirs(os.path.join(out_dir, label), exist_ok=True)
        for i in range(per_combo):
            draw_shape(color, shape, rng).save(
                os.path.join(out_dir, label, f"{shape}_{color}_{i}.jpg")
            )


def test_corpus_follows_the_shard_format(tmp_path):
    paths = write_corpus(str(tmp_path), make_samples(10), shard_size=4)
    assert [os.path.basename(p) for p in paths] == ["00000.tar", "00001.tar", "00002.tar"]
    assert json.loads((tmp_path / "sizes.json").read_text()) == {
        "00000.tar": 4,
        "00001.tar": 4,
        "00002.tar": 2,
    }
    pairs = list(wds.WebDataset(paths, shardshuffle=False).decode("pil").to_tuple("jpg", "txt"))
    assert len(pairs) == 10
    assert pairs[0][0].size == (64, 64) and isinstance(pairs[0][1], str)
    assert not [p for p in os.listdir(tmp_path / "shards") if p.endswith(".tmp")]


def test_held_out_combinations_cover_every_colour_and_shape():
    assert {c for c, _ in HELD_OUT} == set(COLORS)
    assert {s for _, s in HELD_OUT} == set(SHAPES)
    assert not set(HELD_OUT) & set(TRAIN_COMBOS)
