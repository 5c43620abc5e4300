"""Benchmark: the text stages of wit-build (--no-fetch) over 100k and 1M candidates.

Input: the real captions of ../shared/data (CC3M validation, Flickr8k, the img2dataset
sample), repeated with unique URLs into one parquet file per size. Queries: wordfreq's
500,000 most frequent English words (a query list of the real size). Each size runs the
real command line as a subprocess; wall time and the peak resident memory of the whole
process tree (driver + Beam workers, sampled every 0.2 s) are reported.

    .venv/bin/python bench/bench_text_stages.py [--sizes 100000 1000000] [--queries 500000]
        [--beam-arg=--direct_num_workers=1 ...]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import threading
import time

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = pathlib.Path(__file__).resolve().parents[1]
DATA = pathlib.Path(os.environ.get("WIT_SHARED_DATA", ROOT.parent / "shared" / "data"))


def real_captions() -> list[str]:
    caps = [
        line.split("\t")[0]
        for line in open(DATA / "captions" / "cc3m-validation.tsv", encoding="utf-8")
    ]
    with open(DATA / "flickr8k-1k" / "captions.csv", encoding="utf-8", newline="") as f:
        caps += [row["caption"] for row in csv.DictReader(f)]
    caps += pq.read_table(DATA / "captions" / "img2dataset-test_10000.parquet")["TEXT"].to_pylist()
    return [c for c in caps if c]


def write_input(path: pathlib.Path, n: int, captions: list[str]) -> None:
    writer = None
    step = 100_000
    for start in range(0, n, step):
        idx = range(start, min(n, start + step))
        table = pa.table({
            "URL": [f"https://images.example.org/{i // 1000}/{i}.jpg" for i in idx],
            "TEXT": [captions[i % len(captions)] for i in idx],
        })  # fmt: skip
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table, row_group_size=50_000)
    writer.close()


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            pass
    return total


def run(cmd: list[str]) -> tuple[float, int, float]:
    """(wall seconds, peak tree RSS bytes, CPU seconds of the whole tree)."""
    peak = 0
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, tree_rss(proc.pid))
            time.sleep(0.2)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    out, err = proc.communicate()
    seconds = time.perf_counter() - start
    done.set()
    t.join()
    if proc.returncode != 0:
        sys.exit(f"wit-build failed ({proc.returncode}):\n{err[-3000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return seconds, peak, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--queries", type=int, default=500_000)
    ap.add_argument("--lid", default="fasttext")
    ap.add_argument("--workdir", default=None)
    args, beam_args = ap.parse_known_args()
    from bench_match import bench_queries

    work = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="wit-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    qpath = work / "queries.txt"
    qpath.write_text("\n".join(bench_queries(args.queries)) + "\n", encoding="utf-8")
    captions = real_captions()
    rows = []
    for n in args.sizes:
        inp = work / f"candidates-{n}.parquet"
        if not inp.exists():
            write_input(inp, n, captions)
        out = work / f"out-{n}"
        cmd = [str(pathlib.Path(sys.executable).parent / "wit-build"), "--querylist", str(qpath),
               "--input", str(inp), "--out", str(out), "--no-fetch", "--lid", args.lid, *beam_args]  # fmt: skip
        load = os.getloadavg()[0]
        seconds, peak, cpu = run(cmd)
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["rows"] == n, (manifest["rows"], n)
        rows.append((n, seconds, n / seconds, cpu, peak / 2**30, manifest["totals"]["kept"], load))
    print(
        f"queries={args.queries:,} captions={len(captions):,} beam_args={' '.join(beam_args) or '(default)'}"
    )
    print(
        "cpu s: user+system time of wit-build and its Beam workers; load: 1-min load average at start"
    )
    print(
        f"{'candidates':>12} {'seconds':>9} {'cand/s':>9} {'cpu s':>8} {'peak GiB':>9} {'kept':>9} {'load':>6}"
    )
    for n, s, rate, cpu, gib, kept, load in rows:
        print(f"{n:>12,} {s:>9.1f} {rate:>9,.0f} {cpu:>8.1f} {gib:>9.2f} {kept:>9,} {load:>6.1f}")
    if len(rows) >= 2:
        (n0, s0, *_), (n1, s1, *_) = rows[0], rows[-1]
        print(f"time ratio {n1:,}/{n0:,}: {s1 / s0:.2f}x for {n1 / n0:.0f}x the input")


if __name__ == "__main__":
    main()
