"""Fetch selected candidates and write WebDataset + Parquet shards, atomically and resumably.

Shard assignment is a pure function of the selected uids: sorted by uid, chunk k of
`shard_size` uids is shard k. So a rerun (or a rerun after kill -9) builds the same shards,
and a shard that is already complete is skipped without touching the network: its status
rows are re-read from `shards/_status/NNNNN.parquet`, which records every candidate of the
shard (kept or failed) and is renamed into place last, as the completion marker.

Inside a shard, images are fetched by a thread pool and written in key order with fixed
tar metadata, so the same inputs give byte-identical tars. Every file is written under a
temporary name in its final folder, fsynced and renamed; a failed write (a full disk)
removes its temporaries and raises `ShardWriteError` with a one-line message.
"""

from __future__ import annotations

import errno
import glob
import io
import json
import os
import sys
import tarfile
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.fetch import Fetcher, FetchOptions
from pipeline.resize import ImageResizer, ResizedImage
from pipeline.schema import (
    FETCH_FAILED,
    IMAGE_REJECTED,
    KEPT,
    SAMPLE_SCHEMA,
    STATUS_SCHEMA,
    key_for_uid,
    shard_name,
)

SHARDS_DIR = "shards"
#: Per-shard status rows; the leading underscore keeps it out of Arrow/Spark dataset scans
#: of shards/ and `shards/*.parquet` globs do not descend into it.
STATUS_SUBDIR = "_status"
TMP_SUFFIX = ".tmp"
#: How many shards the last run's selection fills (read by finalize_output).
PLAN_FILE = "_plan.json"
#: Hex digits of the uid used to bucket candidates while ranking them (65,536 buckets).
BUCKET_CHARS = 4
TAR_MTIME = 0


class ShardWriteError(OSError):
    """A shard could not be written (full disk, permissions); the message is one line."""


@dataclass(frozen=True)
class ShardPaths:
    name: str
    tar: str
    parquet: str
    status: str

    def temporary(self, path: str) -> str:
        folder, base = os.path.split(path)
        return os.path.join(folder, f".{base}{TMP_SUFFIX}")

    def all_final(self) -> tuple[str, str, str]:
        return (self.tar, self.parquet, self.status)


def shard_paths(out_dir: str, index: int) -> ShardPaths:
    name = shard_name(index)
    shards = os.path.join(out_dir, SHARDS_DIR)
    return ShardPaths(
        name,
        os.path.join(shards, f"{name}.tar"),
        os.path.join(shards, f"{name}.parquet"),
        os.path.join(shards, STATUS_SUBDIR, f"{name}.parquet"),
    )


def is_complete(paths: ShardPaths) -> bool:
    """A shard is complete once its status file (renamed last) and its tar exist."""
    return all(os.path.exists(p) for p in paths.all_final())


def clean_stale_temp_files(out_dir: str) -> int:
    """Remove temporaries left by a killed run; returns how many were removed."""
    removed = 0
    shards = os.path.join(out_dir, SHARDS_DIR)
    for folder in (shards, os.path.join(shards, STATUS_SUBDIR)):
        for path in glob.glob(os.path.join(glob.escape(folder), f".*{TMP_SUFFIX}")):
            try:
                os.remove(path)
                removed += 1
            except FileNotFoundError:
                pass
    sizes_tmp = os.path.join(out_dir, f".sizes.json{TMP_SUFFIX}")
    if os.path.exists(sizes_tmp):
        os.remove(sizes_tmp)
        removed += 1
    return removed


# --- shard assignment (pure) -------------------------------------------------------------


def uid_bucket(uid: str) -> str:
    return uid[:BUCKET_CHARS]


def bucket_offsets(counts: Iterable[tuple[str, int]]) -> dict[str, int]:
    """Global rank of each bucket's first uid, from per-bucket counts."""
    offsets, total = {}, 0
    for bucket, n in sorted(counts):
        offsets[bucket] = total
        total += n
    return offsets


def rank_bucket(
    bucket: str, records: Iterable[dict], offsets: dict[str, int], shard_size: int
) -> Iterator[tuple[int, dict]]:
    """(shard index, record) for a bucket: uid order continues the global order."""
    ordered = sorted(records, key=lambda r: (r["uid"], r.get("url") or ""))
    start = offsets[bucket]
    for i, record in enumerate(ordered):
        yield (start + i) // shard_size, record


def assign_shards(records: Iterable[dict], shard_size: int) -> dict[int, list[dict]]:
    """The same assignment without Beam: sort by uid, cut every shard_size."""
    ordered = sorted(records, key=lambda r: (r["uid"], r.get("url") or ""))
    shards: dict[int, list[dict]] = {}
    for i, record in enumerate(ordered):
        shards.setdefault(i // shard_size, []).append(record)
    return shards


# --- one shard (plain functions) ---------------------------------------------------------


def status_row(record: dict, status: str, reason: str | None, shard=None, key=None) -> dict:
    row = {name: record.get(name) for name in STATUS_SCHEMA.names}
    row.update(status=status, reason=reason, shard=shard, key=key)
    for name in ("matched_queries", "selected_by"):
        row[name] = list(row[name] or [])
    return row


def sample_row(key: str, record: dict, image: ResizedImage) -> dict:
    """The shard parquet row of a kept sample (docs/shard-format.md)."""
    return {
        "key": key,
        "uid": record["uid"],
        "url": record.get("url"),
        "caption": record.get("caption"),
        "width": image.width,
        "height": image.height,
        "original_width": image.original_width,
        "original_height": image.original_height,
        "sha256": image.sha256,
        "matched_queries": list(record.get("matched_queries") or []),
        "selected_by": list(record.get("selected_by") or []),
    }


def sample_json(sample: dict) -> bytes:
    """The `<key>.json` member: the parquet row without the key, in a fixed byte form."""
    meta = {k: v for k, v in sample.items() if k != "key"}
    return json.dumps(meta, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    """Add a file with fixed metadata, so equal content gives equal tar bytes."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = TAR_MTIME
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_parquet(table: pa.Table, path: str) -> None:
    with open(path, "wb") as fh:
        pq.write_table(table, fh)
        fh.flush()
        os.fsync(fh.fileno())


def read_status_rows(paths: ShardPaths) -> list[dict]:
    return pq.read_table(paths.status).cast(STATUS_SCHEMA).to_pylist()


def reuse_status_rows(saved: list[dict], records: list[dict]) -> list[dict] | None:
    """The saved outcome for each current record, or None if the shard holds other uids.

    A complete shard written for a different selection (the input or the query list
    changed) must be rewritten, not trusted. The outcome (status, reason, shard, key)
    comes from the saved rows; every other field from the current record.
    """
    outcome = {row["uid"]: row for row in saved}
    if len(outcome) != len(records) or any(r["uid"] not in outcome for r in records):
        return None
    rows = []
    for record in records:
        old = outcome[record["uid"]]
        rows.append(status_row(record, old["status"], old["reason"], old["shard"], old["key"]))
    return rows


class ShardWriter:
    """Fetches, resizes and writes shards; one per worker, reused across shards."""

    def __init__(
        self,
        out_dir: str,
        options: FetchOptions,
        fetcher: Fetcher | None = None,
        resizer: ImageResizer | None = None,
    ):
        self.out_dir = out_dir
        self.options = options
        self.fetcher = fetcher or Fetcher(options)
        self.resizer = resizer or ImageResizer(options)
        self._pool = ThreadPoolExecutor(max_workers=options.threads, thread_name_prefix="fetch")
        self.skipped_shards = 0
        self.written_shards = 0

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.fetcher.close()

    def _download(self, record: dict) -> tuple[str | None, str | None, ResizedImage | None]:
        """(status, reason, image) for one record: a failure status, or None and an image."""
        try:
            result = self.fetcher.fetch(record.get("url") or "")
            if not result.ok:
                return result.status, result.reason, None
            image = self.resizer(result.data or b"")
        except Exception as err:  # a bug must cost one record, not the shard
            return FETCH_FAILED, f"internal {type(err).__name__}", None
        if not image.ok:
            return IMAGE_REJECTED, image.reason, None
        return None, None, image

    def write(self, index: int, records: Iterable[dict]) -> list[dict]:
        """Write shard `index` (or skip it when complete); returns its status rows."""
        paths = shard_paths(self.out_dir, index)
        records = list(records)
        if is_complete(paths):
            rows = reuse_status_rows(read_status_rows(paths), records)
            if rows is not None:
                self.skipped_shards += 1
                return rows
        ordered = sorted(records, key=lambda r: (key_for_uid(r["uid"]), r["uid"]))
        os.makedirs(os.path.dirname(paths.status), exist_ok=True)
        temps = [paths.temporary(p) for p in paths.all_final()]
        try:
            rows = self._write_temporaries(paths, ordered, temps)
            for tmp, final in zip(temps, paths.all_final(), strict=True):
                os.replace(tmp, final)  # the status file goes last: the completion marker
            _fsync_dir(os.path.dirname(paths.tar))
            _fsync_dir(os.path.dirname(paths.status))
        except OSError as err:
            for tmp in temps:
                try:
                    os.remove(tmp)
                except OSError:
                    pass
            detail = err.strerror or type(err).__name__
            if err.errno == errno.ENOSPC:
                detail = "no space left on device"
            raise ShardWriteError(
                err.errno,
                f"cannot write shard {paths.name} in {os.path.dirname(paths.tar)}: {detail}",
            ) from None
        self.written_shards += 1
        return rows

    def _write_temporaries(self, paths: ShardPaths, ordered: list[dict], temps) -> list[dict]:
        tar_tmp, parquet_tmp, status_tmp = temps
        rows: list[dict] = []
        samples: list[dict] = []
        seen_keys: set[str] = set()
        ext = self.resizer.extension
        with open(tar_tmp, "wb") as fh:
            with tarfile.open(fileobj=fh, mode="w", format=tarfile.USTAR_FORMAT) as tar:
                outcomes = self._pool.map(self._download, ordered)
                for record, (status, reason, image) in zip(ordered, outcomes, strict=True):
                    key = key_for_uid(record["uid"])
                    if image is None:
                        rows.append(status_row(record, status, reason))
                        continue
                    if key in seen_keys:
                        rows.append(status_row(record, FETCH_FAILED, f"key_collision {key}"))
                        continue
                    seen_keys.add(key)
                    sample = sample_row(key, record, image)
                    add_member(tar, f"{key}.{ext}", image.data)
                    add_member(tar, f"{key}.txt", (sample["caption"] or "").encode("utf-8"))
                    add_member(tar, f"{key}.json", sample_json(sample))
                    rows.append(status_row(record, KEPT, None, paths.name, key))
                    samples.append(sample)
            fh.flush()
            os.fsync(fh.fileno())
        _write_parquet(pa.Table.from_pylist(samples, schema=SAMPLE_SCHEMA), parquet_tmp)
        _write_parquet(pa.Table.from_pylist(rows, schema=STATUS_SCHEMA), status_tmp)
        return rows


def fetch_and_write_local(records: Iterable[dict], out_dir: str, options: FetchOptions):
    """The whole stage without Beam, in this process: returns every status row."""
    clean_stale_temp_files(out_dir)
    records = list(records)
    write_shard_plan(out_dir, len(records), options.shard_size)
    writer = ShardWriter(out_dir, options)
    try:
        rows: list[dict] = []
        for index, shard in sorted(assign_shards(records, options.shard_size).items()):
            rows.extend(writer.write(index, shard))
        return rows
    finally:
        writer.close()


# --- Beam ----------------------------------------------------------------------------------


class _WriteShardFn(beam.DoFn):
    def __init__(self, out_dir: str, options: FetchOptions):
        self.out_dir = out_dir
        self.options = options
        self.writer: ShardWriter | None = None
        self.skipped = beam.metrics.Metrics.counter("wit.shards", "skipped_complete")
        self.written = beam.metrics.Metrics.counter("wit.shards", "written")

    def setup(self):
        self.writer = ShardWriter(self.out_dir, self.options)

    def process(self, element):
        index, records = element
        before = self.writer.skipped_shards
        yield from self.writer.write(index, records)
        if self.writer.skipped_shards > before:
            self.skipped.inc()
        else:
            self.written.inc()

    def teardown(self):
        if self.writer is not None:
            self.writer.close()


class FetchAndWriteShards(beam.PTransform):
    """Selected candidate dicts in, the same dicts with their final status out.

    Writes OUT/shards/NNNNN.{tar,parquet} (+ _status/NNNNN.parquet); kept rows carry
    `shard` and `key`, failures a `reason`. Call `finalize_output(OUT)` after the run.
    """

    def __init__(self, out_dir: str, options: FetchOptions | None = None):
        super().__init__()
        self.out_dir = out_dir
        self.options = options or FetchOptions()

    def expand(self, selected):
        clean_stale_temp_files(self.out_dir)
        shard_size = self.options.shard_size
        keyed = selected | "KeyByUidBucket" >> beam.Map(lambda r: (uid_bucket(r["uid"]), r))
        counts = (
            keyed
            | "CountPerBucket" >> beam.combiners.Count.PerKey()
            | "AllBucketCounts" >> beam.combiners.ToList()
        )
        offsets = counts | "BucketOffsets" >> beam.Map(bucket_offsets)
        out_dir = self.out_dir
        _ = counts | "RecordShardPlan" >> beam.Map(
            lambda c: write_shard_plan(out_dir, sum(n for _, n in c), shard_size)
        )
        return (
            keyed
            | "GroupByBucket" >> beam.GroupByKey()
            | "RankIntoShards"
            >> beam.FlatMap(
                lambda kv, offs: rank_bucket(kv[0], kv[1], offs, shard_size),
                beam.pvalue.AsSingleton(offsets),
            )
            | "GroupByShard" >> beam.GroupByKey()
            | "FetchResizeWrite" >> beam.ParDo(_WriteShardFn(self.out_dir, self.options))
        )


def write_shard_plan(out_dir: str, candidates: int, shard_size: int) -> int:
    """Record how many shards this run's selection fills; returns that number."""
    n_shards = -(-candidates // shard_size)
    plan = {"candidates": candidates, "shard_size": shard_size, "shards": n_shards}
    _write_json_atomically(os.path.join(out_dir, SHARDS_DIR, PLAN_FILE), plan)
    return n_shards


def finalize_output(out_dir: str) -> list[dict]:
    """Write sizes.json (in OUT and in OUT/shards) and return the shards for the manifest.

    Only complete shards of this run's plan are listed; complete shards numbered beyond
    it (left by an earlier run with a larger selection) are named in a warning.
    """
    clean_stale_temp_files(out_dir)
    plan_path = os.path.join(out_dir, SHARDS_DIR, PLAN_FILE)
    limit = None
    if os.path.exists(plan_path):
        with open(plan_path, encoding="utf-8") as fh:
            limit = json.load(fh)["shards"]
    shards, stale = [], []
    pattern = os.path.join(glob.escape(os.path.join(out_dir, SHARDS_DIR)), "*.tar")
    for tar_path in sorted(glob.glob(pattern)):
        name = os.path.basename(tar_path)[: -len(".tar")]
        if not name.isdigit():
            continue
        paths = shard_paths(out_dir, int(name))
        if paths.tar != tar_path or not is_complete(paths):
            continue
        if limit is not None and int(name) >= limit:
            stale.append(f"{name}.tar")
            continue
        samples = pq.ParquetFile(paths.parquet).metadata.num_rows
        shards.append({"shard": f"{name}.tar", "samples": samples})
    if stale:
        print(
            f"wit-build: warning: {len(stale)} shard(s) from an earlier run are not part of "
            f"this output and are left out of sizes.json: {', '.join(stale[:5])}"
            + (" ..." if len(stale) > 5 else ""),
            file=sys.stderr,
        )
    sizes = {s["shard"]: s["samples"] for s in shards}
    # open_clip reads sizes.json from the folder that holds the tars; OUT/sizes.json is the
    # documented copy at the top of the output.
    _write_json_atomically(os.path.join(out_dir, "sizes.json"), sizes)
    _write_json_atomically(os.path.join(out_dir, SHARDS_DIR, "sizes.json"), sizes)
    return shards


def _write_json_atomically(path: str, value) -> None:
    folder, base = os.path.split(path)
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{base}{TMP_SUFFIX}")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(value, fh, indent=1, sort_keys=True)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
