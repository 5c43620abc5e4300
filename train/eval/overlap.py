"""Train/eval overlap: perceptual-hash near-duplicates between training shards and an eval set.

In the spirit of the paper's data overlap analysis: hash every eval image and every
training image, call a pair a near-duplicate when the Hamming distance of their 64-bit
hashes is at most `max_distance`, and report how many eval images have one, with
examples. The hashes are small and self-written (PIL + NumPy):

- `dhash`: the signs of horizontal gradients of a 9x8 grey thumbnail;
- `phash`: the signs, against their median, of the 8x8 lowest frequencies of the DCT of
  a 32x32 grey thumbnail. It survives resizing and JPEG re-encoding, as the pipeline does.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Sequence

import numpy as np
from PIL import Image

from train.eval.datasets import ImageItem, iter_shard_samples, shard_paths

HASHES = ("phash", "dhash")
_BIT_WEIGHTS = (1 << np.arange(63, -1, -1, dtype=np.uint64)).astype(np.uint64)


def _pack(bits: np.ndarray) -> int:
    """64 booleans (row-major) to one unsigned 64-bit integer, first bit most significant."""
    return int((bits.reshape(-1).astype(np.uint64) * _BIT_WEIGHTS).sum(dtype=np.uint64))


def _grey(img: Image.Image, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(img.convert("L").resize(size, Image.Resampling.LANCZOS), dtype=np.float64)


def dhash(img: Image.Image) -> int:
    px = _grey(img, (9, 8))  # 8 rows of 9 columns
    return _pack(px[:, 1:] > px[:, :-1])


def _dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix: `M @ x` transforms a length-n signal."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    m = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    m[0] /= np.sqrt(2.0)
    return m


_DCT32 = _dct_matrix(32)


def phash(img: Image.Image) -> int:
    px = _grey(img, (32, 32))
    low = (_DCT32 @ px @ _DCT32.T)[:8, :8]
    median = np.median(low.reshape(-1)[1:])  # leave out the DC term, which only says brightness
    return _pack(low > median)


def image_hash(img: Image.Image, method: str = "phash") -> int:
    if method == "phash":
        return phash(img)
    if method == "dhash":
        return dhash(img)
    raise ValueError(f"hash must be one of {HASHES}, not {method!r}")


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise Hamming distances [len(a), len(b)] of uint64 hashes."""
    return np.bitwise_count(a[:, None] ^ b[None, :]).astype(np.int64)


def hash_items(
    items: Sequence[ImageItem], method: str = "phash"
) -> tuple[np.ndarray, list[int], list[tuple[str, str]]]:
    """Hashes of the readable items, their indices, and (name, reason) for the others."""
    hashes, kept, failures = [], [], []
    for i, item in enumerate(items):
        try:
            hashes.append(image_hash(item.open(), method))
            kept.append(i)
        except Exception as e:  # noqa: BLE001 - any decode failure is recorded, not fatal
            failures.append((item.name, f"{type(e).__name__}: {e}"))
    return np.array(hashes, dtype=np.uint64), kept, failures


class NearestTrain:
    """For each eval hash, the closest training sample seen so far (streamed in blocks)."""

    def __init__(self, eval_hashes: np.ndarray):
        self.eval_hashes = eval_hashes
        self.best = np.full(len(eval_hashes), 65, dtype=np.int64)
        self.best_ref: list[dict | None] = [None] * len(eval_hashes)
        self.matches = np.zeros(len(eval_hashes), dtype=np.int64)

    def add(self, train_hashes: np.ndarray, refs: Sequence[dict], max_distance: int) -> None:
        if len(train_hashes) == 0 or len(self.eval_hashes) == 0:
            return
        d = hamming(self.eval_hashes, train_hashes)
        self.matches += (d <= max_distance).sum(axis=1)
        j = d.argmin(axis=1)
        dmin = d[np.arange(len(d)), j]
        for e in np.nonzero(dmin < self.best)[0]:
            self.best[e] = dmin[e]
            self.best_ref[e] = refs[j[e]]


def scan_shards(
    paths: Sequence[str],
    nearest: NearestTrain,
    method: str,
    max_distance: int,
    block: int = 2048,
    progress: bool = False,
) -> dict:
    """Hash every image in the training shards and feed them to `nearest` block by block."""
    counts = {"train_images": 0, "train_unreadable": 0, "train_without_image": 0}
    hashes: list[int] = []
    refs: list[dict] = []
    started = time.monotonic()

    def flush():
        nearest.add(np.array(hashes, dtype=np.uint64), refs, max_distance)
        hashes.clear()
        refs.clear()

    for sample in iter_shard_samples(paths):
        ext = next((e for e in ("jpg", "jpeg", "png", "webp") if e in sample), None)
        if ext is None:
            counts["train_without_image"] += 1
            continue
        item = ImageItem(f"{sample['__url__']}/{sample['__key__']}.{ext}", sample[ext])
        try:
            h = image_hash(item.open(), method)
        except Exception:  # noqa: BLE001
            counts["train_unreadable"] += 1
            continue
        caption = sample.get("txt", b"").decode("utf-8", "replace").strip()
        hashes.append(h)
        refs.append({"shard": sample["__url__"], "key": sample["__key__"], "caption": caption})
        counts["train_images"] += 1
        if len(hashes) >= block:
            flush()
            if progress and sys.stderr.isatty():
                rate = counts["train_images"] / max(time.monotonic() - started, 1e-9)
                print(
                    f"\rtrain images hashed: {counts['train_images']} ({rate:.0f}/s)",
                    end="",
                    file=sys.stderr,
                    flush=True,
                )
    flush()
    if progress:
        print(f"\rtrain images hashed: {counts['train_images']}", file=sys.stderr)
    return counts


def overlap_report(
    eval_items: Sequence[ImageItem],
    train_shards: str,
    method: str = "phash",
    max_distance: int = 4,
    examples: int = 10,
    eval_labels: Sequence[int] | None = None,
    classnames: Sequence[str] | None = None,
    progress: bool = False,
) -> dict:
    """Counts of eval images with a near-duplicate in the training shards, and examples.

    `overlap_indices` lists the eval items (by position in `eval_items`) that have one, so
    callers can score the clean and overlapping subsets separately.
    """
    if method not in HASHES:
        raise ValueError(f"hash must be one of {HASHES}, not {method!r}")
    paths = shard_paths(train_shards)
    eval_hashes, kept, failures = hash_items(eval_items, method)
    nearest = NearestTrain(eval_hashes)
    counts = scan_shards(paths, nearest, method, max_distance, progress=progress)
    dup = nearest.best <= max_distance
    overlap = [kept[e] for e in np.nonzero(dup)[0]]
    order = sorted(np.nonzero(dup)[0], key=lambda e: (nearest.best[e], kept[e]))
    out = {
        "hash": method,
        "max_distance": max_distance,
        "eval_images": len(eval_items),
        "eval_hashed": len(kept),
        "shards": len(paths),
        **counts,
        "eval_with_near_duplicate": int(dup.sum()),
        "overlap_fraction": float(dup.mean()) if len(dup) else 0.0,
        "near_duplicate_pairs": int(nearest.matches.sum()),
        "nearest_distance_histogram": distance_histogram(nearest.best),
        "overlap_indices": overlap,
        "examples": [
            {
                "eval_image": eval_items[kept[e]].name,
                "distance": int(nearest.best[e]),
                **(nearest.best_ref[e] or {}),
            }
            for e in order[:examples]
        ],
        "skipped": [{"image": n, "reason": r} for n, r in failures],
    }
    if eval_labels is not None and classnames is not None:
        per_class = {name: 0 for name in classnames}
        for i in overlap:
            per_class[classnames[eval_labels[i]]] += 1
        out["per_class"] = per_class
    return out


def distance_histogram(distances: Iterable[int]) -> dict[int, int]:
    hist: dict[int, int] = {}
    for d in distances:
        hist[int(d)] = hist.get(int(d), 0) + 1
    return dict(sorted(hist.items()))
