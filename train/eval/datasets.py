"""Evaluation datasets: class folders, image-caption CSVs and WebDataset shards.

Every loader returns plain lists of `ImageItem`s so that the metrics code never cares
where an image came from. An image that cannot be read is dropped with a recorded
reason (see `encode_batches`), never silently and never with a crash.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import os
import re
import sys
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from PIL import Image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class DatasetError(ValueError):
    """A dataset that cannot be used at all (missing folder, empty, malformed file)."""


@dataclass(frozen=True)
class ImageItem:
    """One image: a file on disk, or bytes read from a tar (then `name` is `tar/member`)."""

    name: str
    data: bytes | None = None

    def open(self) -> Image.Image:
        if self.data is not None:
            img = Image.open(io.BytesIO(self.data))
        else:
            img = Image.open(self.name)
        img.load()
        return img


@dataclass
class ClassificationSet:
    """Images with integer labels into `classnames`."""

    classnames: list[str]
    items: list[ImageItem]
    labels: list[int]
    source: str

    def subset(self, indices: Sequence[int], source: str | None = None) -> ClassificationSet:
        return ClassificationSet(
            self.classnames,
            [self.items[i] for i in indices],
            [self.labels[i] for i in indices],
            source or self.source,
        )


@dataclass
class CaptionSet:
    """Unique images and their captions; `text_to_image[j]` is the image of caption j."""

    images: list[ImageItem]
    captions: list[str]
    text_to_image: list[int]
    source: str
    skipped: list[tuple[str, str]] = field(default_factory=list)


# ---------------------------------------------------------------- class names


def folder_to_classname(folder: str) -> str:
    return folder.replace("_", " ").strip()


def read_classnames(path: str, folders: Sequence[str] | None = None) -> list[str]:
    """Class names from a file: one name a line in sorted folder order, or `folder<TAB>name`."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.rstrip("\n") for line in f if line.strip()]
    except OSError as e:
        raise DatasetError(f"cannot read class names file {path}: {e.strerror}") from e
    if lines and all("\t" in line for line in lines):
        mapping = dict(line.split("\t", 1) for line in lines)
        if folders is None:
            return [mapping[k].strip() for k in sorted(mapping)]
        missing = [f for f in folders if f not in mapping]
        if missing:
            raise DatasetError(f"class names file {path} has no entry for folder {missing[0]!r}")
        return [mapping[f].strip() for f in folders]
    names = [line.strip() for line in lines]
    if folders is not None and len(names) != len(folders):
        raise DatasetError(
            f"class names file {path} has {len(names)} names for {len(folders)} class folders"
        )
    return names


# ---------------------------------------------------------------- folder per class


def load_image_folder(
    root: str, classnames_file: str | None = None, limit_per_class: int | None = None
) -> ClassificationSet:
    """A folder with one sub-folder of images per class; classes in sorted folder order."""
    if not os.path.isdir(root):
        raise DatasetError(f"dataset folder not found: {root}")
    folders = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if not folders:
        raise DatasetError(f"{root} has no class sub-folders")
    if classnames_file:
        classnames = read_classnames(classnames_file, folders)
    else:
        classnames = [folder_to_classname(f) for f in folders]
    items, labels = [], []
    for label, folder in enumerate(folders):
        d = os.path.join(root, folder)
        files = sorted(f for f in os.listdir(d) if f.lower().endswith(IMAGE_EXTENSIONS))
        if limit_per_class is not None:
            files = files[:limit_per_class]
        items += [ImageItem(os.path.join(d, f)) for f in files]
        labels += [label] * len(files)
    if not items:
        raise DatasetError(f"{root} has class folders but no image files")
    return ClassificationSet(classnames, items, labels, root)


# ---------------------------------------------------------------- caption CSV


def load_caption_csv(
    csv_path: str, images_dir: str | None = None, limit_images: int | None = None
) -> CaptionSet:
    """A CSV with columns `image,caption`, several rows per image, images under `images_dir`.

    `images_dir` defaults to an `images` folder next to the CSV. Rows whose image file is
    missing or whose caption is empty are skipped and listed in `skipped`.
    """
    if images_dir is None:
        images_dir = os.path.join(os.path.dirname(os.path.abspath(csv_path)), "images")
    if not os.path.isdir(images_dir):
        raise DatasetError(f"images folder not found: {images_dir} (give --images DIR)")
    try:
        f = open(csv_path, encoding="utf-8", newline="")
    except OSError as e:
        raise DatasetError(f"cannot read caption file {csv_path}: {e.strerror}") from e
    with f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"image", "caption"} <= set(reader.fieldnames):
            raise DatasetError(f"{csv_path} needs a header with columns image,caption")
        index: dict[str, int] = {}
        images, captions, text_to_image, skipped = [], [], [], []
        for row in reader:
            name, caption = (row["image"] or "").strip(), (row["caption"] or "").strip()
            if not caption:
                skipped.append((name, "empty caption"))
                continue
            if name not in index:
                if limit_images is not None and len(index) >= limit_images:
                    continue
                path = os.path.join(images_dir, name)
                if not os.path.isfile(path):
                    skipped.append((name, "image file missing"))
                    continue
                index[name] = len(images)
                images.append(ImageItem(path))
            captions.append(caption)
            text_to_image.append(index[name])
    if not captions:
        raise DatasetError(f"{csv_path} gave no usable image-caption rows")
    return CaptionSet(images, captions, text_to_image, csv_path, skipped)


# ---------------------------------------------------------------- WebDataset shards


def expand_braces(pattern: str) -> list[str]:
    """Expand `{00000..00012}` ranges and `{a,b}` lists the way WebDataset URLs do."""
    m = re.search(r"\{([^{}]*)\}", pattern)
    if not m:
        return [pattern]
    body, head, tail = m.group(1), pattern[: m.start()], pattern[m.end() :]
    r = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if r:
        lo, hi, width = int(r.group(1)), int(r.group(2)), len(r.group(1))
        choices = [str(i).zfill(width) for i in range(lo, hi + 1)]
    else:
        choices = body.split(",")
    return [p for c in choices for p in expand_braces(head + c + tail)]


def shard_paths(pattern: str) -> list[str]:
    """Tar files named by a brace pattern, a glob, a single file or a folder of tars."""
    if os.path.isdir(pattern):
        pattern = os.path.join(pattern, "*.tar")
    paths: list[str] = []
    for p in expand_braces(pattern):
        hits = sorted(glob.glob(p)) if glob.has_magic(p) else ([p] if os.path.isfile(p) else [])
        paths += hits
    if not paths:
        raise DatasetError(f"no shards match {pattern}")
    return paths


def iter_shard_samples(paths: Sequence[str]) -> Iterator[dict]:
    """Samples from WebDataset tars as dicts: `__key__`, `__url__` and one entry per extension.

    A member's key is its name up to the first dot of the base name, as in WebDataset.
    A damaged tar ends its own iteration with a message on stderr; the others go on.
    """
    for path in paths:
        current: dict | None = None
        try:
            with tarfile.open(path, "r") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    base = os.path.basename(member.name)
                    if "." not in base:
                        continue
                    stem, ext = base.split(".", 1)
                    key = os.path.join(os.path.dirname(member.name), stem)
                    if current is not None and current["__key__"] != key:
                        yield current
                        current = None
                    if current is None:
                        current = {"__key__": key, "__url__": path}
                    current[ext.lower()] = tar.extractfile(member).read()
        except (tarfile.TarError, OSError, EOFError) as e:
            print(f"wit-eval: shard {path} unreadable after some samples: {e}", file=sys.stderr)
        if current is not None:
            yield current


def _image_member(sample: dict) -> str | None:
    for ext in ("jpg", "jpeg", "png", "webp"):
        if ext in sample:
            return ext
    return None


def load_shard_captions(pattern: str, limit_images: int | None = None) -> CaptionSet:
    """One image and one caption (`.txt`) per shard sample, for retrieval."""
    images, captions, t2i, skipped = [], [], [], []
    for s in iter_shard_samples(shard_paths(pattern)):
        if limit_images is not None and len(images) >= limit_images:
            break
        ext = _image_member(s)
        name = f"{s['__url__']}/{s['__key__']}"
        text = s.get("txt", b"").decode("utf-8", "replace").strip()
        if ext is None or not text:
            skipped.append((name, "no image member" if ext is None else "no caption"))
            continue
        t2i.append(len(images))
        images.append(ImageItem(f"{name}.{ext}", s[ext]))
        captions.append(text)
    if not images:
        raise DatasetError(f"shards {pattern} hold no image-caption samples")
    return CaptionSet(images, captions, t2i, pattern, skipped)


def load_shard_classification(pattern: str, classnames_file: str | None) -> ClassificationSet:
    """Shard samples with an image and an integer `.cls` label (the clip_benchmark layout).

    Class names come from `classnames_file` or a `classnames.txt` beside the shards.
    """
    paths = shard_paths(pattern)
    if classnames_file is None:
        guess = os.path.join(os.path.dirname(paths[0]), "classnames.txt")
        if not os.path.isfile(guess):
            raise DatasetError("class names for shards: give --classnames FILE")
        classnames_file = guess
    classnames = read_classnames(classnames_file)
    items, labels = [], []
    for s in iter_shard_samples(paths):
        ext = _image_member(s)
        try:
            label = int(s.get("cls", b"").decode().strip())
        except ValueError:
            label = -1
        if ext is None or not 0 <= label < len(classnames):
            print(f"wit-eval: skipped {s['__key__']}: no image or no valid .cls", file=sys.stderr)
            continue
        items.append(ImageItem(f"{s['__url__']}/{s['__key__']}.{ext}", s[ext]))
        labels.append(label)
    if not items:
        raise DatasetError(f"shards {pattern} hold no labelled images")
    return ClassificationSet(classnames, items, labels, pattern)


def is_shard_spec(spec: str) -> bool:
    return spec.endswith(".tar") or "{" in spec or (glob.has_magic(spec) and ".tar" in spec)


def load_classification(
    spec: str, classnames_file: str | None = None, limit_per_class: int | None = None
) -> ClassificationSet:
    """A folder per class, or labelled WebDataset shards."""
    if is_shard_spec(spec):
        return load_shard_classification(spec, classnames_file)
    return load_image_folder(spec, classnames_file, limit_per_class)


def load_captions(
    spec: str, images_dir: str | None = None, limit_images: int | None = None
) -> CaptionSet:
    """An `image,caption` CSV (with its images folder), or WebDataset shards."""
    if is_shard_spec(spec):
        return load_shard_captions(spec, limit_images)
    if not os.path.isfile(spec):
        raise DatasetError(f"caption file not found: {spec}")
    return load_caption_csv(spec, images_dir, limit_images)


# ---------------------------------------------------------------- splits


def _split_key(seed: int, name: str) -> str:
    tail = "/".join(name.replace(os.sep, "/").split("/")[-2:])
    return hashlib.sha256(f"{seed}:{tail}".encode()).hexdigest()


def deterministic_split(
    items: Sequence[ImageItem], labels: Sequence[int], fractions: Sequence[float], seed: int = 0
) -> list[list[int]]:
    """Split indices into len(fractions) parts, per class, by a seeded hash of each name.

    Only the last two parts of a name are hashed (`class/file.jpg`, `shard.tar/key.jpg`),
    so the same files give the same split wherever the dataset lives and in any order.
    Each class is cut in the given proportions (the last part takes the remainder).
    """
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    parts: list[list[int]] = [[] for _ in fractions]
    total = sum(fractions)
    for idx in by_class.values():
        idx.sort(key=lambda i: _split_key(seed, items[i].name))
        start = 0
        for p, frac in enumerate(fractions):
            end = len(idx) if p == len(fractions) - 1 else start + round(len(idx) * frac / total)
            parts[p] += idx[start:end]
            start = end
    return [sorted(p) for p in parts]


# ---------------------------------------------------------------- batching


class _TransformedImages(torch.utils.data.Dataset):
    def __init__(self, items: Sequence[ImageItem], transform: Callable):
        self.items, self.transform = items, transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        try:
            return self.transform(self.items[i].open()), i, None
        except Exception as e:  # noqa: BLE001 - any decode failure becomes a recorded reason
            return None, i, f"{type(e).__name__}: {e}"


def _collate(batch):
    ok = [(x, i) for x, i, _ in batch if x is not None]
    failed = [(i, r) for x, i, r in batch if x is None]
    images = torch.stack([x for x, _ in ok]) if ok else None
    return images, [i for _, i in ok], failed


def encode_batches(
    items: Sequence[ImageItem],
    transform: Callable,
    batch_size: int = 64,
    workers: int = 0,
    failures: list | None = None,
) -> Iterator[tuple[torch.Tensor, list[int]]]:
    """Yield (image batch, item indices); unreadable images go to `failures` as (name, reason)."""
    loader = torch.utils.data.DataLoader(
        _TransformedImages(items, transform),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_collate,
    )
    for images, indices, failed in loader:
        if failures is not None:
            failures += [(items[i].name, reason) for i, reason in failed]
        if images is not None:
            yield images, indices
