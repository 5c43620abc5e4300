"""WebDataset loading of wit-build shards for training, with an exactly resumable order.

The shards are read through `docs/shard-format.md` only: `<key>.jpg` + `<key>.txt` per
sample, `sizes.json` for the epoch length. Everything random about the stream is a
function of (seed, epoch, rank, worker) or of (seed, epoch, sample key):

- the shard order of an epoch: `Random(seed, epoch)`, the same on every rank, then split
  by node and by worker (or, in resampled mode, drawn with replacement per worker);
- the sample shuffle buffer: `Random(seed, epoch, rank, worker)`;
- the random resized crop of a sample: torch seeded from (seed, epoch, key).

So replaying an epoch and dropping the samples that were already consumed gives the
same batches as an uninterrupted run. `ResumableLoader` does the bookkeeping: it hands
out batches in a fixed round-robin order over workers (independent of process timing)
and its `state_dict()` says how far each worker got, in batches and in raw samples drawn
from its shuffled stream. A resume drops that many raw samples without decoding them
(the tar reader and the shuffle buffer still run, so the stream is the same), instead of
decoding every JPEG of the epoch so far.
"""

from __future__ import annotations

import collections
import glob
import hashlib
import io
import json
import os
import random
import tarfile
import time
from collections.abc import Callable, Iterator

import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
MAX_REASONS = 20


#: Schemes webdataset opens itself (pipe: runs a command; http(s) uses curl).
WDS_SCHEMES = ("pipe", "http", "https")


def scheme_of(url: str) -> str:
    if url.startswith("pipe:"):
        return "pipe"
    head, sep, _ = url.partition("://")
    return head.lower() if sep else ""


def _fs(url: str):
    """(fsspec filesystem, path) of a remote URL, or a one-line ValueError."""
    import fsspec

    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:
        scheme = scheme_of(url)
        hint = {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}
        extra = f" (pip install {hint[scheme]}, or use pipe:)" if scheme in hint else ""
        raise ValueError(f"cannot read {url}: {one_line(exc)}{extra}") from None


def _fsspec_gopen(url, mode="rb", bufsize=8192, **kw):
    fs, path = _fs(url)
    return fs.open(path, mode)


def register_fsspec_schemes() -> None:
    """Let webdataset open object-store shards (s3://, gs://, ...) through fsspec, as
    open_clip users expect; pipe: and http(s) stay webdataset's own."""
    import importlib

    import fsspec

    gopen = importlib.import_module("webdataset.gopen")
    for scheme in fsspec.available_protocols():
        if scheme not in WDS_SCHEMES and scheme not in ("file", "local"):
            gopen.gopen_schemes[scheme] = _fsspec_gopen


register_fsspec_schemes()


def _read_text(url: str) -> str | None:
    """A small file (sizes.json) from a local path or any fsspec URL; None when absent."""
    try:
        if scheme_of(url) in ("", "file"):
            with open(url.removeprefix("file://"), encoding="utf-8") as f:
                return f.read()
        fs, path = _fs(url)
        if not fs.exists(path):
            return None
        with fs.open(path, "rb") as f:
            return f.read().decode("utf-8")
    except (OSError, ValueError):
        return None


def _folder(url: str) -> str:
    if scheme_of(url) in ("", "file"):
        return os.path.dirname(os.path.abspath(url.removeprefix("file://")))
    return url.rsplit("/", 1)[0]


def _sizes_tables(folder: str, cache: dict) -> list[dict]:
    """The sizes.json beside a shard folder and one folder up (wit-build writes both)."""
    tables = []
    parent = folder.rsplit("/", 1)[0] if "/" in folder else folder
    for cand in (f"{folder}/sizes.json", f"{parent}/sizes.json"):
        if cand not in cache:
            text = _read_text(cand)
            try:
                cache[cand] = json.loads(text) if text else None
            except ValueError:
                cache[cand] = None
        if cache[cand] is not None:
            tables.append(cache[cand])
    return tables


def expand_shards(pattern: str | list[str]) -> list[str]:
    """Shard paths or URLs from a brace pattern, a glob, `::`-separated parts or a list.

    Local paths, any fsspec URL (``s3://``, ``gs://``, ...; globs too) and webdataset's own
    ``pipe:`` and ``http(s)://`` URLs. Where a wit-build ``sizes.json`` sits beside the
    shards, it is trusted: globbed shards it does not list (an earlier, larger run's) are
    skipped with a notice. Raises ValueError with a one-line reason when nothing matches.
    """
    parts = pattern if isinstance(pattern, list) else [pattern]
    found: list[str] = []
    globbed: set[str] = set()
    for part in parts:
        for url in wds.shardlists.expand_urls(part):
            scheme = scheme_of(url)
            if scheme in WDS_SCHEMES:
                found.append(url)
            elif scheme not in ("", "file"):
                fs, path = _fs(url)
                if any(c in path for c in "*?["):
                    matches = [fs.unstrip_protocol(p) for p in sorted(fs.glob(path))]
                    found.extend(matches)
                    globbed.update(matches)
                elif fs.exists(path):
                    found.append(url)
                else:
                    raise ValueError(f"shard not found: {url}")
            elif any(c in url for c in "*?["):
                matches = sorted(glob.glob(url.removeprefix("file://")))
                found.extend(matches)
                globbed.update(matches)
            elif os.path.exists(url.removeprefix("file://")):
                found.append(url)
            else:
                raise ValueError(f"shard not found: {url}")
    found = list(dict.fromkeys(found))
    cache: dict = {}
    stale = []
    for shard in found:
        if shard in globbed:
            tables = _sizes_tables(_folder(shard), cache)
            if tables and not any(shard.rsplit("/", 1)[-1] in t for t in tables):
                stale.append(shard)
    if stale:
        print(f"wit-train: skipping {len(stale)} shard(s) that sizes.json does not list "
              f"(left by an earlier run?): {', '.join(s.rsplit('/', 1)[-1] for s in stale[:5])}")  # fmt: skip
        found = [s for s in found if s not in stale]
    if not found:
        raise ValueError(f"no shards match {pattern!r}")
    return found


def count_tar_samples(path: str) -> int:
    """Samples in one tar (distinct keys that have an image), for shards missing in sizes.json."""
    keys = set()
    try:
        stream = wds.gopen(path) if scheme_of(path) not in ("", "file") else None
        with (
            tarfile.open(path, fileobj=stream, mode="r|*")
            if stream
            else tarfile.open(path.removeprefix("file://")) as tar
        ):
            for member in tar:
                if member.isreg() and "." in os.path.basename(member.name):
                    key, ext = os.path.basename(member.name).split(".", 1)
                    if ext.lower() in IMAGE_EXTS:
                        keys.add(key)
    except (OSError, EOFError, tarfile.TarError, ValueError) as exc:
        # A damaged shard counts what it holds before the damage; the loader skips the rest.
        print(f"wit-train: shard {path} is damaged ({one_line(exc)}); counted {len(keys)} samples")
    return len(keys)


def one_line(exc: BaseException) -> str:
    """An exception as one printable line (tarfile and torch messages can span several)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return "".join(ch if ch.isprintable() else "?" for ch in text)[:200]


def shard_sizes(shards: list[str]) -> dict[str, int]:
    """Sample count per shard, from sizes.json (next to the shards or one folder up), read
    locally or through fsspec like the shards themselves.

    wit-build writes OUT/sizes.json beside OUT/shards/; open_clip looks in the shard
    folder. Shards that no sizes.json lists are counted by reading the tar.
    """
    sizes: dict[str, int] = {}
    cache: dict = {}
    for shard in shards:
        name = shard.rsplit("/", 1)[-1]
        tables = [] if scheme_of(shard) == "pipe" else _sizes_tables(_folder(shard), cache)
        listed = [t[name] for t in tables if name in t]
        sizes[shard] = int(listed[0]) if listed else count_tar_samples(shard)
    return sizes


def seed_of(*parts) -> int:
    """A stable 63-bit seed from any tuple of values (Python's hash() is salted per process)."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class BadSamples:
    """Counts samples that could not be used, by reason, instead of failing the run."""

    def __init__(self):
        self.counts: collections.Counter = collections.Counter()

    def add(self, reason: str) -> None:
        self.counts[reason] += 1

    def handler(self, exn: Exception) -> bool:
        """webdataset exception handler: count the error and keep going."""
        self.add(type(exn).__name__)
        return True

    def take(self) -> dict[str, int]:
        """The counts since the last call (so each batch reports only its own skips)."""
        out, self.counts = dict(self.counts), collections.Counter()
        return out


def decode_sample(sample: dict) -> tuple[Image.Image, str] | str:
    """(image, caption) of a raw tar sample, or the reason it is unusable."""
    data = next((sample[e] for e in IMAGE_EXTS if e in sample), None)
    if data is None:
        return "missing_image"
    if "txt" not in sample:
        return "missing_text"
    try:
        caption = sample["txt"].decode("utf-8").strip()
    except UnicodeDecodeError:
        return "bad_text"
    if not caption:
        return "empty_text"
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Exception as exc:  # PIL raises many types for corrupt files
        return f"bad_image:{type(exc).__name__}"
    return image, caption


def seeded_transform(transform: Callable, image: Image.Image, seed: int) -> torch.Tensor:
    """Apply `transform` with torch's RNG seeded for this sample, restoring it afterwards.

    torchvision's random crops draw from the global torch RNG; seeding per sample makes
    the crop independent of worker count, process timing and resume position.
    """
    # Only the CPU generator: torch.manual_seed would also queue seeds for CUDA, MTIA and
    # XPU, capturing a stack trace each time (about 1.7 ms a sample, a third of the loader).
    generator = torch.default_generator
    saved = generator.get_state()
    generator.manual_seed(seed)
    try:
        return transform(image)
    finally:
        generator.set_state(saved)


class ShardBatches(IterableDataset):
    """Batches of (image tensor, token tensor) from WebDataset shards, one epoch per iter().

    Each worker yields dicts `{"images", "texts", "worker", "bad", "produce_s"}` and, when
    its part of the epoch is done, a final `{"worker", "end": True, "bad"}` marker.
    `set_epoch(epoch, skip)` picks the epoch and how many batches each worker drops first.
    """

    def __init__(
        self,
        shards: list[str],
        transform: Callable,
        tokenizer: Callable,
        batch_size: int,
        context_length: int = 77,
        seed: int = 0,
        shuffle_buffer: int = 1000,
        shuffle_initial: int = 100,
        rank: int = 0,
        world_size: int = 1,
        samples_per_epoch: int | None = None,
    ):
        if batch_size < 1:
            raise ValueError("batch size must be at least 1")
        self.shards = list(shards)
        self.transform = transform
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.context_length = context_length
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.shuffle_initial = shuffle_initial
        self.rank = rank
        self.world_size = world_size
        self.samples_per_epoch = samples_per_epoch
        self.epoch = 0
        self.skip: list[int] = []
        self.skip_samples: list[int] | None = None

    def set_epoch(
        self, epoch: int, skip: list[int] | None = None, skip_samples: list[int] | None = None
    ) -> None:
        """`skip`: batches each worker has handed out this epoch; `skip_samples`: the raw
        samples its stream had yielded by then (None: unknown, so skip by decoding)."""
        self.epoch = epoch
        self.skip = list(skip or [])
        self.skip_samples = list(skip_samples) if skip_samples is not None else None

    def worker_shards(self, worker: int, num_workers: int) -> Iterator[str]:
        if self.samples_per_epoch is not None:
            rng = random.Random(seed_of(self.seed, self.epoch, self.rank, worker, "resample"))
            while True:
                yield rng.choice(self.shards)
        order = list(self.shards)
        random.Random(seed_of(self.seed, self.epoch, "shards")).shuffle(order)
        yield from order[self.rank :: self.world_size][worker::num_workers]

    def worker_quota(self, worker: int, num_workers: int) -> int | None:
        """Batches this worker yields per epoch in resampled mode (None: until data ends)."""
        if self.samples_per_epoch is None:
            return None
        total = max(1, self.samples_per_epoch // (self.batch_size * self.world_size))
        return total // num_workers + (1 if worker < total % num_workers else 0)

    def __iter__(self):
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        skip = self.skip[worker] if worker < len(self.skip) else 0
        raw_skip = 0
        if self.skip_samples is not None and worker < len(self.skip_samples):
            raw_skip = self.skip_samples[worker]
        quota = self.worker_quota(worker, num_workers)
        bad = BadSamples()
        raw = wds.tarfile_samples(
            ({"url": s} for s in self.worker_shards(worker, num_workers)), handler=bad.handler
        )
        if self.shuffle_buffer > 1:
            rng = random.Random(seed_of(self.seed, self.epoch, self.rank, worker, "buffer"))
            raw = wds.shuffle(self.shuffle_buffer, self.shuffle_initial, rng=rng)(raw)
        produced = drawn = 0
        if raw_skip:
            # The consumed batches end exactly at sample `raw_skip` of this stream; the
            # samples before it are passed over undecoded (unusable ones included).
            for _ in zip(range(raw_skip), raw, strict=False):
                drawn += 1
            produced, skip = skip, 0
        pending: list[tuple[str, Image.Image, str]] = []
        started = time.perf_counter()
        for sample in raw:
            if quota is not None and produced >= quota:
                break
            drawn += 1
            decoded = decode_sample(sample)
            if isinstance(decoded, str):
                bad.add(decoded)
                continue
            pending.append((sample["__key__"], *decoded))
            if len(pending) < self.batch_size:
                continue
            batch, pending = pending, []
            produced += 1
            if skip > 0:  # already consumed before a resume: drop it without transforming
                skip -= 1
                started = time.perf_counter()
                continue
            out = self.collate(batch)
            out.update(
                worker=worker,
                bad=bad.take(),
                produce_s=time.perf_counter() - started,
                drawn=drawn,
            )
            yield out
            started = time.perf_counter()
        yield {"worker": worker, "end": True, "bad": bad.take()}

    def collate(self, batch: list[tuple[str, Image.Image, str]]) -> dict:
        images = torch.stack(
            [
                seeded_transform(self.transform, img, seed_of(self.seed, self.epoch, key))
                for key, img, _ in batch
            ]
        )
        texts = self.tokenizer([c for _, _, c in batch], context_length=self.context_length)
        return {"images": images, "texts": texts}


class ResumableLoader:
    """Endless batches over epochs in an order fixed by the data, not by process timing.

    Batch i of an epoch is the next batch of worker `i mod workers` (skipping workers
    whose share is exhausted), whatever order the DataLoader delivered them in. The state
    (epoch, batches consumed per worker, next worker, finished workers) is what a
    checkpoint stores; a loader restored from it continues with the very next batch.
    """

    def __init__(
        self,
        dataset: ShardBatches,
        num_workers: int = 0,
        prefetch_factor: int = 2,
        pin_memory: bool = False,
    ):
        self.dataset = dataset
        self.pin_memory = pin_memory
        self.num_workers = num_workers
        self.prefetch_factor = prefetch_factor
        self.slots = max(1, num_workers)
        self.epoch = 0
        self.reset_epoch_state()
        self.iterator = None
        self.bad: collections.Counter = collections.Counter()

    def reset_epoch_state(self) -> None:
        self.consumed = [0] * self.slots
        self.drawn: list[int] | None = [0] * self.slots  # raw samples behind `consumed`
        self.done = [False] * self.slots
        self.next_worker = 0
        self.buffers: dict[int, collections.deque] = collections.defaultdict(collections.deque)

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "consumed": list(self.consumed),
            "samples": list(self.drawn) if self.drawn is not None else None,
            "done": [int(d) for d in self.done],
            "next_worker": self.next_worker,
            "workers": self.slots,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from a saved position; with a different worker count, restart the epoch."""
        self.close()
        self.epoch = int(state["epoch"])
        self.reset_epoch_state()
        if int(state["workers"]) == self.slots:
            self.consumed = [int(c) for c in state["consumed"]]
            samples = state.get("samples")  # absent in checkpoints from older versions
            self.drawn = [int(n) for n in samples] if samples is not None else None
            self.done = [bool(d) for d in state["done"]]
            self.next_worker = int(state["next_worker"])
        else:
            print(
                f"wit-train: worker count changed ({state['workers']} -> {self.slots}); "
                f"restarting epoch {self.epoch} from its first batch"
            )

    def close(self) -> None:
        self.iterator = None

    def start_epoch(self) -> None:
        self.dataset.set_epoch(self.epoch, skip=self.consumed, skip_samples=self.drawn)
        loader = DataLoader(
            self.dataset,
            batch_size=None,
            num_workers=self.num_workers,
            prefetch_factor=self.prefetch_factor if self.num_workers else None,
            persistent_workers=False,
            pin_memory=self.pin_memory,
        )
        self.iterator = iter(loader)

    def pull(self) -> None:
        """Move one item from the DataLoader into its worker's buffer."""
        try:
            item = next(self.iterator)
        except StopIteration:  # every worker ends with a marker; this is only a safeguard
            self.done = [True] * self.slots
            return
        self.count_bad(item.get("bad") or {})
        self.buffers[int(item["worker"])].append(item)

    def count_bad(self, bad: dict) -> None:
        for reason, n in bad.items():
            self.bad[reason] += int(n)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        while True:
            if all(self.done):
                if sum(self.consumed) == 0:
                    raise RuntimeError(
                        "the shards yield no complete batch: too few usable samples for "
                        f"batch size {self.dataset.batch_size} (skipped: {dict(self.bad)})"
                    )
                self.epoch += 1
                self.reset_epoch_state()
                self.iterator = None
                continue
            if self.iterator is None:
                self.start_epoch()
            w = self.next_worker
            if self.done[w]:
                self.next_worker = (w + 1) % self.slots
                continue
            while not self.buffers[w] and not self.done[w]:
                self.pull()
            if not self.buffers[w]:
                continue
            item = self.buffers[w].popleft()
            self.next_worker = (w + 1) % self.slots
            if item.get("end"):
                self.done[w] = True
                continue
            self.consumed[w] += 1
            if self.drawn is not None:
                self.drawn[w] = int(item["drawn"])
            return item


def iter_captions(shards: list[str], limit: int | None = None) -> Iterator[str]:
    """Captions (`.txt` members) of the shards in order, for learning a tokenizer."""
    n = 0
    for shard in shards:
        try:
            with tarfile.open(shard) as tar:
                for member in tar:
                    if member.isreg() and member.name.endswith(".txt"):
                        f = tar.extractfile(member)
                        text = f.read().decode("utf-8", errors="replace").strip() if f else ""
                        if text:
                            yield text
                            n += 1
                            if limit is not None and n >= limit:
                                return
        except (OSError, tarfile.TarError) as exc:
            print(f"wit-train: skipping unreadable shard {shard}: {one_line(exc)}")
