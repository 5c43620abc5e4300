"""Merging the counting workers' sorted runs on disk into the output TSVs, one hash
partition at a time, so memory follows the vocabulary of one partition, not the dump."""

from __future__ import annotations

import glob
import gzip
import heapq
import multiprocessing as mp
import os
from collections import Counter
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .count import CountConfig

KINDS = ("unigrams", "bigrams", "titles")
OUTPUTS = {kind: f"{kind}.tsv.gz" for kind in KINDS}


def _merge_part(args: tuple) -> tuple[str, int, int, int, str]:
    """Sum one part of one kind over all workers' runs; write its kept lines sorted.

    Returns (kind, distinct keys, kept keys, sum of counts, path of the sorted part).
    """
    tmp, kind, part, floor = args
    files = sorted(glob.glob(os.path.join(tmp, f"{kind}-{part:04d}-w*.gz")))
    out = os.path.join(tmp, f"sorted-{kind}-{part:04d}.tsv")
    if kind == "titles":
        titles: dict[str, int] = {}
        for path in files:
            with gzip.open(path, "rt", encoding="utf-8") as f:
                for line in f:
                    title, _, pid = line.rstrip("\n").rpartition("\t")
                    titles[title] = min(int(pid), titles.get(title, int(pid)))
        rows = sorted(titles.items())
        _write_lines(out, (f"{t}\t{pid}\n" for t, pid in rows))
        return kind, len(titles), len(rows), len(rows), out
    counts: Counter = Counter()
    get = counts.get
    for path in files:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                key, _, n = line.rpartition("\t")
                counts[key] = get(key, 0) + int(n)
    total = sum(counts.values())
    kept = [(k, n) for k, n in counts.items() if n >= floor]
    kept.sort(key=lambda kv: kv[0])
    kept.sort(key=lambda kv: kv[1], reverse=True)
    _write_lines(out, (f"{k}\t{n}\n" for k, n in kept))
    return kind, len(counts), len(kept), total, out


def _write_lines(path: str, lines: Iterable[str]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.writelines(lines)


def _sort_key(kind: str) -> Callable[[str], tuple]:
    if kind == "titles":
        return lambda line: line.rpartition("\t")[0]

    def by_count(line: str) -> tuple:
        key, _, n = line.rstrip("\n").rpartition("\t")
        return -int(n), key

    return by_count


def write_merged(kind: str, parts: list[str], path: str) -> None:
    """Merge the sorted parts into one gzip file with a fixed header (no name, mtime 0)."""
    files = [open(p, encoding="utf-8") for p in parts]
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as raw, gzip.GzipFile("", "wb", 6, raw, mtime=0) as gz:
            buf: list[str] = []
            for line in heapq.merge(*files, key=_sort_key(kind)):
                buf.append(line)
                if len(buf) >= 65536:
                    gz.write("".join(buf).encode())
                    buf.clear()
            gz.write("".join(buf).encode())
        os.replace(tmp, path)
    finally:
        for f in files:
            f.close()
        if os.path.exists(tmp):
            os.remove(tmp)


def merge_all(cfg: CountConfig, tmp: str, partitions: int) -> dict:
    jobs = [(tmp, kind, p, cfg.floors()[kind]) for kind in KINDS for p in range(partitions)]
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    stats: dict[str, Counter] = {kind: Counter() for kind in KINDS}
    parts: dict[str, list[str]] = {kind: [] for kind in KINDS}
    with ctx.Pool(min(cfg.workers, len(jobs))) as pool:
        for kind, distinct, kept, total, out in pool.imap_unordered(_merge_part, jobs):
            stats[kind].update(distinct=distinct, written=kept, total=total)
            parts[kind].append(out)
    for kind in KINDS:
        write_merged(kind, sorted(parts[kind]), os.path.join(cfg.out, OUTPUTS[kind]))
    return {kind: dict(s) for kind, s in stats.items()}
