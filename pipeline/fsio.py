"""Every read and write of OUT (and of inputs) goes through Beam's ``FileSystems``.

So ``--out s3://bucket/run`` or ``gs://...`` works on any runner: a worker on another
machine writes to the same store the launcher reads. Two facts shape this module:

- Workers started by a worker pool (Flink/Spark task managers, ``worker_pool_main``)
  never receive the job's options for FileSystems, so ``s3://`` fails there with "Must
  provide one of client or options". Every DoFn that touches files carries the Beam
  arguments and calls :func:`ensure_options` in ``setup()`` (:class:`FsDoFn`).
- Rename is atomic on a local disk and HDFS, but copy + delete on object stores. So
  publishing never relies on rename being atomic: names are write-once (derived from
  content or a shard index), an object store PUT is all-or-nothing, and a completion
  marker is written last. :func:`publish` writes a whole file under its final name.
"""

from __future__ import annotations

import io
import json
import os
import uuid

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

_RAW = CompressionTypes.UNCOMPRESSED
_options_set: tuple[str, ...] | None = None

#: The schemes whose rename is a metadata operation (atomic); elsewhere it is copy + delete.
ATOMIC_RENAME = ("", "file", "hdfs")


class OutError(ValueError):
    """OUT cannot be used (unknown scheme, missing extra, not writable); one line."""


def scheme(path: str) -> str:
    """``s3`` for ``s3://b/k``; ``""`` for a local path."""
    head, sep, _ = path.partition("://")
    return head.lower() if sep and head.isalpha() else ""


def is_local(path: str) -> bool:
    return scheme(path) in ("", "file")


def ensure_options(beam_args: list[str] | tuple[str, ...] | None) -> None:
    """Give this process's FileSystems the job's options (S3 endpoint, credentials...)."""
    global _options_set
    key = tuple(beam_args or ())
    if _options_set == key:
        return
    FileSystems.set_options(PipelineOptions(list(key)))
    _options_set = key


class FsDoFn(beam.DoFn):
    """A DoFn that reads or writes files: sets FileSystems' options on the worker."""

    def __init__(self, beam_args=None):
        self.beam_args = tuple(beam_args or ())

    def setup(self):
        ensure_options(self.beam_args)


def join(base: str, *parts: str) -> str:
    return FileSystems.join(base, *parts) if parts else base


def exists(path: str) -> bool:
    return FileSystems.exists(path)


def read_bytes(path: str) -> bytes:
    with FileSystems.open(path, compression_type=_RAW) as f:
        return f.read()


def read_json(path: str):
    return json.loads(read_bytes(path).decode("utf-8"))


def create(path: str):
    """A write channel for ``path`` (local folders are created)."""
    return FileSystems.create(path, compression_type=_RAW)


def publish(path: str, data: bytes) -> None:
    """Write a whole file so that readers see the old file or the new one, never a part.

    Local and HDFS: a temporary sibling, then rename. Object stores: one PUT of the final
    name, which is all-or-nothing there (a temporary + rename would be a copy).
    """
    if scheme(path) in ATOMIC_RENAME:
        folder, base = path.rsplit("/", 1) if "/" in path else ("", path)
        tmp = join(folder, f".{base}.{uuid.uuid4().hex[:8]}.tmp") if folder else f".{base}.tmp"
        try:
            with create(tmp) as f:
                f.write(data)
            if exists(path):
                FileSystems.delete([path])
            FileSystems.rename([tmp], [path])
        finally:
            if exists(tmp):
                FileSystems.delete([tmp])
    else:
        with create(path) as f:
            f.write(data)


def publish_json(path: str, value) -> None:
    text = json.dumps(value, indent=1, sort_keys=True, default=str) + "\n"
    publish(path, text.encode("utf-8"))


def list_files(pattern: str) -> list[str]:
    """Paths matching a glob, sorted; none when nothing matches (not an error)."""
    try:
        result = FileSystems.match([pattern])[0]
    except Exception:  # noqa: BLE001 - Beam raises when a pattern matches nothing
        return []
    return sorted(m.path for m in result.metadata_list)


def list_with_sizes(pattern: str) -> list[tuple[str, int]]:
    try:
        result = FileSystems.match([pattern])[0]
    except Exception:  # noqa: BLE001
        return []
    return sorted((m.path, m.size_in_bytes) for m in result.metadata_list)


def delete_tree(folder: str) -> None:
    """Remove a folder (a prefix on object stores) and everything under it."""
    if is_local(folder):
        if exists(folder):
            FileSystems.delete([folder])
        return
    files = list_files(join(folder, "**"))
    if files:
        FileSystems.delete(files)


def delete_files(paths: list[str]) -> None:
    present = [p for p in paths if exists(p)]
    if present:
        FileSystems.delete(present)


def move(src: str, dst: str) -> None:
    """Rename one file (copy + delete on object stores)."""
    if is_local(dst):
        folder = os.path.dirname(local_path(dst))
        if folder:
            os.makedirs(folder, exist_ok=True)  # local-only: object stores have no folders
    FileSystems.rename([src], [dst])


def check_out(out: str) -> None:
    """Fail before any work when OUT cannot be used: a one-line :class:`OutError`."""
    name = scheme(out)
    extras = {"s3": "apache-beam[aws]", "gs": "apache-beam[gcp]", "hdfs": "apache-beam[hadoop]",
              "azfs": "apache-beam[azure]"}  # fmt: skip
    try:
        FileSystems.get_filesystem(out)
    except (ValueError, ImportError):
        if name in extras:  # Beam registers these only when their client library imports
            raise OutError(f"--out {out}: {name}:// needs {extras[name]}") from None
        raise OutError(
            f"--out {out}: unknown scheme {name}:// (Beam knows file paths, gs://, s3://, hdfs://)"
        ) from None
    probe = join(out, f"_write_check_{uuid.uuid4().hex[:8]}")
    try:
        with create(probe) as f:
            f.write(b"ok")
        FileSystems.delete([probe])
    except Exception as e:  # noqa: BLE001 - any failure means OUT is unusable
        text = " ".join(str(e).split())[:200]
        if name in extras and ("No module named" in text or "ImportError" in text):
            raise OutError(f"--out {out}: {name}:// needs {extras[name]}") from None
        raise OutError(f"--out {out} is not writable: {type(e).__name__}: {text}") from None


def parquet_bytes(table) -> bytes:
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def read_parquet(path: str, columns=None):
    import pyarrow.parquet as pq

    with FileSystems.open(path, compression_type=_RAW) as f:
        return pq.read_table(io.BytesIO(f.read()), columns=columns)


def parquet_rows(path: str) -> int:
    """Rows in a parquet file from its footer only."""
    import pyarrow.parquet as pq

    with FileSystems.open(path, compression_type=_RAW) as f:
        return pq.ParquetFile(f).metadata.num_rows


def local_path(path: str) -> str:
    """The OS path of a local ``file://`` or plain path (for local-only helpers)."""
    return path[len("file://") :] if path.startswith("file://") else os.fspath(path)


# --- local-only helpers: durability on a local disk; no-ops on object stores ---------------


def sync_local(fh) -> None:
    """fsync a local file before it is renamed into place (a crash must not publish
    a file whose bytes are still in the page cache). Object-store writers have no fd."""
    try:
        fd = fh.fileno()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return
    fh.flush()
    os.fsync(fd)


def sync_dir(path: str) -> None:
    """fsync the local folder holding ``path`` so a rename survives a crash."""
    if not is_local(path):
        return
    folder = os.path.dirname(local_path(path)) or "."
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
