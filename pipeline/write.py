"""Fetch selected candidates and write WebDataset + Parquet shards, atomically and resumably.

Shard assignment is a pure function of the selected uids: sorted by uid, chunk k of
`shard_size` uids is shard k. So a rerun (or a rerun after kill -9) builds the same shards,
and a shard that is already complete is skipped without touching the network: its status
rows are re-read from `shards/_status/NNNNN.parquet`, which records every candidate of the
shard (kept or failed) and is renamed into place last, as the completion marker.

Inside a shard, images are fetched by a thread pool and written in key order with fixed
tar metadata, so the same inputs give byte-identical tars. Every file goes through Beam's
FileSystems (so OUT may be ``s3://`` or ``gs://``) under a temporary name unique to the
attempt; a failed write (a full disk) removes its temporaries and raises
`ShardWriteError` with a one-line message.

Publishing is two steps, as in Beam's own file sinks: the write step emits the names of
its temporaries, and after a Reshuffle (which passes on only the outputs of the attempt
the runner committed) the commit step renames them into place, the completion marker
last. A retried or duplicated bundle (backup tasks on Flink and Spark) therefore writes
its own temporaries, which are never renamed and are swept by `finalize_output`; it
cannot interleave its files with another attempt's.
"""

from __future__ import annotations

import errno
import io
import json
import sys
import tarfile
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import fsio
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

    def temporary(self, path: str, attempt: str = "") -> str:
        folder, base = path.rsplit("/", 1)
        suffix = f".{attempt}" if attempt else ""
        return f"{folder}/.{base}{suffix}{TMP_SUFFIX}"

    def all_final(self) -> tuple[str, str, str]:
        return (self.tar, self.parquet, self.status)


def shard_paths(out_dir: str, index: int) -> ShardPaths:
    name = shard_name(index)
    shards = fsio.join(out_dir, SHARDS_DIR)
    return ShardPaths(
        name,
        fsio.join(shards, f"{name}.tar"),
        fsio.join(shards, f"{name}.parquet"),
        fsio.join(shards, STATUS_SUBDIR, f"{name}.parquet"),
    )


def is_complete(paths: ShardPaths) -> bool:
    """A shard is complete once its status file (renamed last) and its tar exist."""
    return all(fsio.exists(p) for p in paths.all_final())


def clean_stale_temp_files(out_dir: str) -> int:
    """Remove temporaries left by a killed run or a discarded attempt; returns how many."""
    shards = fsio.join(out_dir, SHARDS_DIR)
    found = []
    for folder in (shards, fsio.join(shards, STATUS_SUBDIR), out_dir):
        found += fsio.list_files(fsio.join(folder, f".*{TMP_SUFFIX}"))
    fsio.delete_files(found)
    return len(found)


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


#: Working fields a record may carry through the writer (query ids, input row) for the job.
CARRIED = ("qids", "sel", "row")


def status_row(record: dict, status: str, reason: str | None, shard=None, key=None) -> dict:
    row = {name: record.get(name) for name in STATUS_SCHEMA.names}
    row.update(status=status, reason=reason, shard=shard, key=key)
    row.update({k: record[k] for k in CARRIED if k in record})
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


def _write_parquet(table: pa.Table, path: str) -> None:
    with fsio.create(path) as fh:
        pq.write_table(table, fh)
        fsio.sync_local(fh)


def read_status_rows(paths: ShardPaths) -> list[dict]:
    return fsio.read_parquet(paths.status).cast(STATUS_SCHEMA).to_pylist()


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
        """Write and publish shard `index` (or skip it when complete); its status rows."""
        rows, pending = self.write_uncommitted(index, records)
        if pending:
            commit_shard(pending)
        return rows

    def write_uncommitted(self, index: int, records: Iterable[dict]):
        """(status rows, pending renames): the shard's files under attempt-unique names.

        ``pending`` is None when the shard was already complete for these records;
        otherwise ``commit_shard(pending)`` publishes it.
        """
        paths = shard_paths(self.out_dir, index)
        records = list(records)
        if is_complete(paths):
            rows = reuse_status_rows(read_status_rows(paths), records)
            if rows is not None:
                self.skipped_shards += 1
                return rows, None
        ordered = sorted(records, key=lambda r: (key_for_uid(r["uid"]), r["uid"]))
        attempt = uuid.uuid4().hex[:10]
        temps = [paths.temporary(p, attempt) for p in paths.all_final()]
        try:
            rows = self._write_temporaries(paths, ordered, temps)
        except OSError as err:
            try:
                fsio.delete_files(temps)
            except Exception:  # noqa: BLE001 - the write error is the one to report
                pass
            detail = err.strerror or " ".join(str(err).split())[:160] or type(err).__name__
            if err.errno == errno.ENOSPC:
                detail = "no space left on device"
            folder = paths.tar.rsplit("/", 1)[0]
            raise ShardWriteError(
                err.errno, f"cannot write shard {paths.name} in {folder}: {detail}"
            ) from None
        self.written_shards += 1
        return rows, list(zip(temps, paths.all_final(), strict=True))

    def _write_temporaries(self, paths: ShardPaths, ordered: list[dict], temps) -> list[dict]:
        tar_tmp, parquet_tmp, status_tmp = temps
        rows: list[dict] = []
        samples: list[dict] = []
        seen_keys: set[str] = set()
        ext = self.resizer.extension
        with fsio.create(tar_tmp) as fh:
            # stream mode: object-store writers cannot seek; the bytes equal mode "w"
            with tarfile.open(fileobj=fh, mode="w|", format=tarfile.USTAR_FORMAT) as tar:
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
            fsio.sync_local(fh)
        _write_parquet(pa.Table.from_pylist(samples, schema=SAMPLE_SCHEMA), parquet_tmp)
        _write_parquet(pa.Table.from_pylist(rows, schema=STATUS_SCHEMA), status_tmp)
        return rows


def commit_shard(pending: list[tuple[str, str]]) -> None:
    """Rename a shard's temporaries into place; idempotent, so a retried commit is safe.

    The old completion marker goes first (a crash then leaves an incomplete shard, which
    the next run redoes), the new marker last.
    """
    marker_tmp, marker = pending[-1]
    if fsio.exists(marker_tmp) and fsio.exists(marker):
        fsio.delete_files([marker])
    for tmp, final in pending:
        if fsio.exists(tmp):
            fsio.move(tmp, final)
    fsio.sync_dir(pending[0][1])
    fsio.sync_dir(marker)


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


class _WriteShardFn(fsio.FsDoFn):
    def __init__(self, out_dir: str, options: FetchOptions, beam_args=()):
        super().__init__(beam_args)
        self.out_dir = out_dir
        self.options = options
        self.writer: ShardWriter | None = None
        self.groups = beam.metrics.Metrics.counter("wit.units", "shard_groups")
        self.skipped = beam.metrics.Metrics.counter("wit.shards", "skipped_complete")
        self.written = beam.metrics.Metrics.counter("wit.shards", "written")

    def setup(self):
        super().setup()
        self.writer = ShardWriter(self.out_dir, self.options)

    def process(self, element):
        index, records = element
        self.groups.inc()
        rows, pending = self.writer.write_uncommitted(index, records)
        (self.skipped if pending is None else self.written).inc()
        yield index, rows, pending

    def teardown(self):
        if self.writer is not None:
            self.writer.close()


class _CommitShardFn(fsio.FsDoFn):
    def __init__(self, beam_args=(), out_dir: str | None = None):
        super().__init__(beam_args)
        self.out_dir = out_dir

    def setup(self):
        from pipeline.progress import Reporter

        super().setup()
        self.progress = Reporter(self.out_dir, "fetch")

    def finish_bundle(self):
        self.progress.flush()

    def process(self, element):
        index, rows, pending = element
        if pending:
            commit_shard(pending)
        self.progress.add(len(rows))
        yield index, rows


class _PlanFn(fsio.FsDoFn):
    def __init__(self, out_dir: str, shard_size: int, beam_args=()):
        super().__init__(beam_args)
        self.out_dir, self.shard_size = out_dir, shard_size

    def process(self, counts):
        write_shard_plan(self.out_dir, sum(n for _, n in counts), self.shard_size)
        return []


class ShardOutcomes(beam.PTransform):
    """Selected candidate dicts in; (shard index, that shard's status rows) out.

    Ranks the selection into shards by uid without a global sort (per-bucket counts give
    each bucket's offset), writes each shard under attempt-unique names, and commits after
    a Reshuffle. Call `finalize_output(OUT)` after the run.
    """

    def __init__(self, out_dir: str, options: FetchOptions | None = None, beam_args=(),
                 progress: bool = True):  # fmt: skip
        super().__init__()
        self.out_dir = out_dir
        self.options = options or FetchOptions()
        self.beam_args = tuple(beam_args)
        self.progress = progress  # False: no markers for the fetch bar

    def expand(self, selected):
        shard_size = self.options.shard_size
        keyed = selected | "KeyByUidBucket" >> beam.Map(lambda r: (uid_bucket(r["uid"]), r))
        counts = (
            keyed
            | "CountPerBucket" >> beam.combiners.Count.PerKey()
            | "AllBucketCounts" >> beam.combiners.ToList()
        )
        offsets = counts | "BucketOffsets" >> beam.Map(bucket_offsets)
        _ = counts | "RecordShardPlan" >> beam.ParDo(
            _PlanFn(self.out_dir, shard_size, self.beam_args)
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
            | "FetchResizeWrite"
            >> beam.ParDo(_WriteShardFn(self.out_dir, self.options, self.beam_args))
            | "OnlyCommittedAttempts" >> beam.Reshuffle()
            | "CommitShards"
            >> beam.ParDo(_CommitShardFn(self.beam_args, self.out_dir if self.progress else None))
        )


class FetchAndWriteShards(beam.PTransform):
    """Selected candidate dicts in, the same dicts with their final status out.

    Writes OUT/shards/NNNNN.{tar,parquet} (+ _status/NNNNN.parquet); kept rows carry
    `shard` and `key`, failures a `reason`. Call `finalize_output(OUT)` after the run.
    """

    def __init__(self, out_dir: str, options: FetchOptions | None = None, beam_args=()):
        super().__init__()
        self.outcomes = ShardOutcomes(out_dir, options, beam_args)

    def expand(self, selected):
        return selected | "Shards" >> self.outcomes | "Rows" >> beam.FlatMap(lambda kv: kv[1])


def write_shard_plan(out_dir: str, candidates: int, shard_size: int) -> int:
    """Record how many shards this run's selection fills; returns that number."""
    n_shards = -(-candidates // shard_size)
    plan = {"candidates": candidates, "shard_size": shard_size, "shards": n_shards}
    fsio.publish_json(fsio.join(out_dir, SHARDS_DIR, PLAN_FILE), plan)
    return n_shards


STALE_DIR = "_stale"


def finalize_output(out_dir: str) -> list[dict]:
    """Write sizes.json (in OUT and in OUT/shards) and return the shards for the manifest.

    O(shards): lists shards/ and reads each shard's parquet footer. Only complete shards
    of this run's plan are listed; complete shards numbered beyond it (left by an earlier
    run with a larger selection) are moved to OUT/_stale/, so that the documented
    `--shards 'OUT/shards/*.tar'` glob and wit-stats never read them.
    """
    clean_stale_temp_files(out_dir)
    plan_path = fsio.join(out_dir, SHARDS_DIR, PLAN_FILE)
    limit = fsio.read_json(plan_path)["shards"] if fsio.exists(plan_path) else None
    shards, stale = [], []
    for tar_path in fsio.list_files(fsio.join(out_dir, SHARDS_DIR, "*.tar")):
        name = tar_path.rsplit("/", 1)[-1][: -len(".tar")]
        if not name.isdigit():
            continue
        paths = shard_paths(out_dir, int(name))
        if limit is not None and int(name) >= limit:
            stale.append(paths)
            continue
        if not is_complete(paths):
            continue
        shards.append({"shard": f"{name}.tar", "samples": fsio.parquet_rows(paths.parquet)})
    if stale:
        for paths in stale:
            for path, kind in zip(paths.all_final(), ("tar", "parquet", "status"), strict=True):
                suffix = ".status.parquet" if kind == "status" else f".{kind}"
                if fsio.exists(path):
                    fsio.move(path, fsio.join(out_dir, STALE_DIR, paths.name + suffix))
        names = [f"{p.name}.tar" for p in stale]
        print(
            f"wit-build: moved {len(stale)} shard(s) of an earlier, larger run out of shards/ "
            f"to {STALE_DIR}/: {', '.join(names[:5])}" + (" ..." if len(names) > 5 else ""),
            file=sys.stderr,
        )
    sizes = {s["shard"]: s["samples"] for s in shards}
    # open_clip reads sizes.json from the folder that holds the tars; OUT/sizes.json is the
    # documented copy at the top of the output.
    fsio.publish_json(fsio.join(out_dir, "sizes.json"), sizes)
    fsio.publish_json(fsio.join(out_dir, SHARDS_DIR, "sizes.json"), sizes)
    return shards
