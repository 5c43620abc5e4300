"""Faults: `wit-build` killed with SIGKILL at three points and rerun gives the same tar
members, byte for byte, as an uninterrupted run, and leaves no temporary file; a full disk
gives a clear error and no partial shard under a final name.

The kills hit a real `wit-build` process (its whole process group, so no Beam worker
outlives it). Slow fixture-web images stretch each shard over half a second, so every
kill point is reached reliably without any timing assumption.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tarfile
import time
from pathlib import Path

import pytest
from reliability_helpers import (
    IN_PROCESS,
    assert_status_invariant,
    build,
    build_command,
    candidates_parquet,
    child_env,
    noise_jpegs,
    tar_bytes,
    tar_members,
    temp_files,
    write_queries,
)

from pipeline.fixtures.web import FixtureWeb

SHARD_OPTIONS = ["--allow-private-addresses", "--shard-size", "4", "--image-size", "32"]


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """A fixture web with 10 images and 3 slow ones, the candidates, and an uninterrupted run."""
    root = tmp_path_factory.mktemp("faults")
    names = noise_jpegs(root / "images", 10, side=48)
    with FixtureWeb(image_dir=root / "images") as web:
        urls = [web.url(f"/images/{n}") for n in names]
        urls += [web.url(f"/e/slow.jpg?s=0.5&n={i}") for i in range(3)]
        cands = candidates_parquet(root / "cands.parquet", urls)
        queries = write_queries(root)
        reference = root / "reference"
        assert build(queries, reference, [cands], *SHARD_OPTIONS, *IN_PROCESS, fetch=True) == 0
        yield root, web, queries, cands, reference


def kill_when(argv: list[str], ready, timeout: float = 120) -> str:
    """Start wit-build, SIGKILL its process group once ready() holds; return its stderr."""
    child = subprocess.Popen(argv, env=child_env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and child.poll() is None and not ready():
            time.sleep(0.005)
        assert child.poll() is None, (
            "wit-build ended before the kill point: " + (child.stderr.read().decode()[-2000:])
        )
        assert ready(), "the kill point was not reached in time"
        os.killpg(child.pid, signal.SIGKILL)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
        child.wait()
    return child.stderr.read().decode()


def _markers(out: Path) -> list[str]:
    folder = out / "shards" / "_status"
    return sorted(p.name for p in folder.glob("*.parquet")) if folder.is_dir() else []


@pytest.mark.slow
def test_killed_three_times_then_rerun_gives_the_same_tars(job):
    root, _web, queries, cands, reference = job
    out = root / "killed"
    argv = build_command(queries, out, [cands], *SHARD_OPTIONS, *IN_PROCESS)
    shards = out / "shards"

    # 1. while reading and matching: OUT is prepared, no shard work has started
    kill_when(argv, lambda: (out / "status").is_dir())
    assert not (out / "manifest.json").exists()
    # 2. in the middle of writing a shard: its temporaries exist
    kill_when(argv, lambda: shards.is_dir() and any(p.suffix == ".tmp" for p in shards.iterdir()))
    assert temp_files(out), "the kill should land while a shard is being written"
    # 3. between shards: at least one shard complete, not all, no manifest yet
    done_before = len(_markers(out))
    kill_when(argv, lambda: len(_markers(out)) > done_before)
    assert 0 < len(_markers(out)) < len(tar_bytes(reference))
    assert not (out / "manifest.json").exists()

    result = subprocess.run(argv, env=child_env(), capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    assert temp_files(out) == []
    assert tar_members(out) == tar_members(reference)
    assert tar_bytes(out) == tar_bytes(reference)
    assert_status_invariant(out, 13)
    assert (out / "sizes.json").read_text() == (reference / "sizes.json").read_text()


# --- a full disk ------------------------------------------------------------------------------


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 1 MiB tmpfs (root only; skipped elsewhere)."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip()[:200]}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


@pytest.fixture(scope="module")
def big_images(tmp_path_factory):
    root = tmp_path_factory.mktemp("big")
    names = noise_jpegs(root / "images", 12, side=160, seed=1)
    with FixtureWeb(image_dir=root / "images") as web:
        urls = [web.url(f"/images/{n}") for n in names]
        yield root, candidates_parquet(root / "cands.parquet", urls), write_queries(root)


def _full_disk_run(big_images, mount):
    _root, cands, queries = big_images
    out = mount / "out"
    argv = build_command(queries, out, [cands], "--allow-private-addresses", "--shard-size", "4",
                         "--image-size", "384", *IN_PROCESS)  # fmt: skip
    return out, subprocess.run(argv, env=child_env(), capture_output=True, text=True, timeout=180)


def test_full_disk_gives_a_one_line_error_and_no_partial_shard(big_images, small_tmpfs):
    out, result = _full_disk_run(big_images, small_tmpfs)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]  # (Beam may log a traceback above it)
    assert last.startswith("wit-build:") and "no space left on device" in last
    assert temp_files(out) == []
    markers = set(_markers(out))
    tars = sorted((out / "shards").glob("*.tar"))
    assert len(tars) < 3, "the disk should fill before every shard is written"
    for tar_path in tars:
        assert f"{tar_path.stem}.parquet" in markers, f"{tar_path.name} has no completion marker"
        with tarfile.open(tar_path) as tar:  # and it is a whole tar
            assert len(tar.getmembers()) == 3 * 4
