"""`wit-build --retry-failed OUT`: fetch again only the rows that failed for a reason that
may pass next time (timeouts, 5xx and 429, connection and DNS errors, an unreachable
robots.txt), never 4xx or opt-outs, as img2dataset users ask (its #452, #242, #358).

A shard's planned candidates are recorded in ``shards/_status/NNNNN.parquet``, so only
shards holding a retryable failure are touched, and every other file stays byte-identical.
A touched shard is rebuilt from its old tar (kept samples are copied member by member,
not fetched or re-encoded) plus whatever the retry fetched, in the writer's key order,
then published like any shard: attempt-unique temporaries, the completion marker last.
Its status part under ``status/`` (named by the digest of its uids and statuses) is
replaced, and ``counts/``, ``sizes.json`` and the manifest are updated by the difference.
The work is O(shards touched + queries), on the machine that runs the command.
"""

from __future__ import annotations

import dataclasses
import io
import json
import sys
import tarfile
import time

import pyarrow as pa

from pipeline import fsio, status_io
from pipeline.fetch import Fetcher, FetchOptions
from pipeline.resize import ImageResizer
from pipeline.schema import (
    FETCH_FAILED,
    IMAGE_REJECTED,
    KEPT,
    SAMPLE_SCHEMA,
    STATUS_SCHEMA,
    STATUSES,
    key_for_uid,
)
from pipeline.tally import TOTALS_FILE
from pipeline.write import (
    STATUS_SUBDIR,
    add_member,
    commit_shard,
    finalize_output,
    sample_json,
    sample_row,
    shard_paths,
    status_row,
)

#: Reasons worth another try (see pipeline/fetch.py for where each comes from).
RETRYABLE_PREFIXES = ("deadline", "ReadTimeout", "ConnectTimeout", "ConnectionError",
                      "ChunkedEncodingError", "http_5", "http_429", "dns ",
                      "robots_unreachable", "robots_error")  # fmt: skip


def is_retryable(status: str | None, reason: str | None) -> bool:
    reason = reason or ""
    return status == FETCH_FAILED and (
        reason.startswith(RETRYABLE_PREFIXES) or reason.endswith(" deadline")
    )


def _old_members(tar_bytes: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isreg()}


def _status_part_path(out: str, rows: list[dict]) -> str:
    """The name write_status_part gave this shard's status part (a digest of its rows)."""
    table = pa.Table.from_pylist(rows, schema=STATUS_SCHEMA)
    return status_io.status_part_path(out, "p", table)


def rebuild_shard(out: str, index: int, fetcher: Fetcher, resizer: ImageResizer):
    """Retry one shard's retryable failures; (old rows, new rows), or None if none."""
    paths = shard_paths(out, index)
    old = fsio.read_parquet(paths.status).cast(STATUS_SCHEMA).to_pylist()
    retry = [r for r in old if is_retryable(r["status"], r["reason"])]
    if not retry:
        return None
    members = _old_members(fsio.read_bytes(paths.tar))
    old_samples = {r["key"]: r for r in fsio.read_parquet(paths.parquet).to_pylist()}
    ext = resizer.extension
    fetched = {}
    for record in retry:
        result = fetcher.fetch(record["url"] or "")
        if not result.ok:
            fetched[record["uid"]] = (result.status, result.reason, None)
            continue
        image = resizer(result.data or b"")
        fetched[record["uid"]] = (
            (None, None, image) if image.ok else (IMAGE_REJECTED, image.reason, None)
        )
    ordered = sorted(old, key=lambda r: (key_for_uid(r["uid"]), r["uid"]))
    rows, samples = [], []
    attempt = f"retry{int(time.time())}"
    temps = [paths.temporary(p, attempt) for p in paths.all_final()]
    with fsio.create(temps[0]) as fh:
        with tarfile.open(fileobj=fh, mode="w|", format=tarfile.USTAR_FORMAT) as tar:
            for record in ordered:
                key = key_for_uid(record["uid"])
                if record["status"] == KEPT:  # copied as it was, byte for byte
                    for name in (f"{key}.{ext}", f"{key}.txt", f"{key}.json"):
                        add_member(tar, name, members[name])
                    samples.append(old_samples[key])
                    rows.append(record)
                    continue
                if record["uid"] not in fetched:
                    rows.append(record)
                    continue
                status, reason, image = fetched[record["uid"]]
                if image is None:
                    rows.append(status_row(record, status, reason))
                    continue
                sample = sample_row(key, record, image)
                add_member(tar, f"{key}.{ext}", image.data)
                add_member(tar, f"{key}.txt", (sample["caption"] or "").encode("utf-8"))
                add_member(tar, f"{key}.json", sample_json(sample))
                samples.append(sample)
                rows.append(status_row(record, KEPT, None, paths.name, key))
        fsio.sync_local(fh)
    for table, path in (
        (pa.Table.from_pylist(samples, schema=SAMPLE_SCHEMA), temps[1]),
        (pa.Table.from_pylist(rows, schema=STATUS_SCHEMA), temps[2]),
    ):
        with fsio.create(path) as fh:
            fh.write(fsio.parquet_bytes(table))
            fsio.sync_local(fh)
    old_part = _status_part_path(out, old)
    commit_shard(list(zip(temps, paths.all_final(), strict=True)))
    status_io.write_status_part(out, "p", pa.Table.from_pylist(rows, schema=STATUS_SCHEMA))
    if fsio.exists(old_part) and old_part != _status_part_path(out, rows):
        fsio.delete_files([old_part])
    return old, rows


def _apply_counts(out: str, changes: list[tuple[list[dict], list[dict]]]) -> dict:
    """Update counts/ by the difference of the retried rows; returns the new totals."""
    counts_path = fsio.join(out, "counts", "query_counts.parquet")
    counts = fsio.read_parquet(counts_path)
    index = {q: i for i, q in enumerate(counts["query"].to_pylist())}
    kept = counts["kept"].to_pylist()
    totals = fsio.read_json(fsio.join(out, "counts", TOTALS_FILE))
    for old, new in changes:
        for before, after in zip(
            sorted(old, key=lambda r: r["uid"]), sorted(new, key=lambda r: r["uid"]), strict=True
        ):
            if before["status"] == after["status"]:
                continue
            totals["totals"][before["status"]] -= 1
            totals["totals"][after["status"]] = totals["totals"].get(after["status"], 0) + 1
            step = (after["status"] == KEPT) - (before["status"] == KEPT)
            for q in after["matched_queries"] or []:
                if q in index:
                    kept[index[q]] += step
    field = counts.schema.field("kept")
    table = counts.set_column(counts.schema.get_field_index("kept"), field,
                              pa.array(kept, field.type))  # fmt: skip
    status_io.write_query_counts(out, table)
    fsio.publish_json(fsio.join(out, "counts", TOTALS_FILE), totals)
    return totals


def fetch_options_of(manifest: dict, **overrides) -> FetchOptions:
    known = {f.name for f in dataclasses.fields(FetchOptions)}
    saved = {k: v for k, v in (manifest.get("fetch_options") or {}).items() if k in known}
    for k in ("allowed_networks",):
        if k in saved and isinstance(saved[k], list):
            saved[k] = tuple(saved[k])
    saved.update({k: v for k, v in overrides.items() if v is not None})
    return FetchOptions(**saved)


def retry_failed(out: str, **overrides) -> dict:
    """Retry every shard's retryable failures; returns the updated manifest."""
    manifest_path = fsio.join(out, "manifest.json")
    if not fsio.exists(manifest_path):
        raise ValueError(f"{out} has no manifest.json: not a finished wit-build output")
    manifest = fsio.read_json(manifest_path)
    if manifest.get("fetch_options") is None:
        raise ValueError(f"{out} was built with --no-fetch: there is nothing to retry")
    options = fetch_options_of(manifest, **overrides)
    markers = fsio.list_files(fsio.join(out, "shards", STATUS_SUBDIR, "*.parquet"))
    fetcher, resizer = Fetcher(options), ImageResizer(options)
    changes, touched = [], []
    started = time.perf_counter()
    try:
        for marker in markers:
            name = marker.rsplit("/", 1)[-1][: -len(".parquet")]
            if not name.isdigit():
                continue
            changed = rebuild_shard(out, int(name), fetcher, resizer)
            if changed is not None:
                changes.append(changed)
                touched.append(f"{name}.tar")
    finally:
        fetcher.close()
    retried = sum(1 for old, _ in changes for r in old if is_retryable(r["status"], r["reason"]))
    recovered = sum(
        1
        for old, new in changes
        for a, b in zip(
            sorted(old, key=lambda r: r["uid"]), sorted(new, key=lambda r: r["uid"]), strict=True
        )  # fmt: skip
        if a["status"] != KEPT and b["status"] == KEPT
    )
    if changes:
        totals = _apply_counts(out, changes)
        manifest["totals"] = {s: totals["totals"].get(s, 0) for s in STATUSES}
        manifest["shards"] = finalize_output(out)
    manifest.setdefault("retries", []).append({
        "retried": retried, "recovered": recovered, "shards_rewritten": touched,
        "seconds": round(time.perf_counter() - started, 2),
    })  # fmt: skip
    text = json.dumps(manifest, indent=2, default=str)
    fsio.publish(manifest_path, text.encode("utf-8"))
    print(f"wit-build: retried {retried:,} failed rows in {len(touched)} shard(s); "
          f"{recovered:,} now kept", file=sys.stderr)  # fmt: skip
    return manifest
