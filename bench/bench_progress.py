"""Benchmark: what the progress bars cost (issue 17 allows at most 2% of the job).

The same tree runs the same `wit-build --no-fetch` job with its progress bars and with
``--no-progress`` (no markers under OUT/_progress, no polling thread), alternating, on
the input of bench_scale_out (real captions with unique URLs, wordfreq's most frequent
words as queries). Reported per variant: median wall seconds and median CPU seconds of
the whole process tree, and their ratios. CPU is the stable measure on a shared 2-core
machine; wall time moves with the neighbours' load.

It also times the launcher's side alone: one poll (list and sum the markers of a phase)
over a folder of ``--markers`` marker files, the cost paid once a second.

    .venv/bin/python bench/bench_progress.py [--size 1000000] [--repeats 3]
        [--queries 361000] [--markers 2000] [--results bench/results/progress.jsonl]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from bench_scale_out import run  # noqa: E402
from bench_text_stages import real_captions, write_input  # noqa: E402


def poll_cost(n_markers: int, repeats: int = 20) -> float:
    """Median seconds of one `done_rows` over a folder of n_markers markers."""
    from pipeline.progress import done_rows, record

    with tempfile.TemporaryDirectory() as out:
        for i in range(n_markers):
            record(out, "text", f"w{i // 100}.{i}", 1000)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            assert done_rows(out, "text") == 1000 * n_markers
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--queries", type=int, default=361_000)
    ap.add_argument("--markers", type=int, default=2000)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--results", default=str(ROOT / "bench" / "results" / "progress.jsonl"))
    args = ap.parse_args()
    from bench_match import bench_queries

    work = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="wit-progress-"))
    work.mkdir(parents=True, exist_ok=True)
    qpath = work / "queries.txt"
    if not qpath.exists():
        qpath.write_text("\n".join(bench_queries(args.queries)) + "\n", encoding="utf-8")
    inp = work / f"candidates-{args.size}.parquet"
    if not inp.exists():
        write_input(inp, args.size, real_captions())
    env = dict(os.environ, PYTHONPATH=str(ROOT), NO_ALBUMENTATIONS_UPDATE="1")
    variants = {"bars": [], "no-progress": ["--no-progress"]}
    results: dict[str, list[dict]] = {name: [] for name in variants}
    for rep in range(args.repeats):
        order = list(variants) if rep % 2 == 0 else list(variants)[::-1]
        for name in order:
            out = work / f"out-{name}"
            cmd = [sys.executable, "-m", "pipeline.cli", "--querylist", str(qpath),
                   "--input", str(inp), "--out", str(out), "--no-fetch", *variants[name]]  # fmt: skip
            r = run(cmd, ROOT, env)
            totals = json.loads((out / "counts" / "totals.json").read_text())
            r.update(kept=totals.get("kept"), load=os.getloadavg()[0])
            results[name].append(r)
            record = {"run": name, "candidates": args.size, **r, "time": time.time()}
            pathlib.Path(args.results).parent.mkdir(parents=True, exist_ok=True)
            with open(args.results, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            print(f"{name} rep {rep}: {r['seconds']:.1f} s wall, {r['cpu']:.1f} s CPU, "
                  f"load {r['load']:.1f}", file=sys.stderr, flush=True)  # fmt: skip
    med = {
        name: {k: statistics.median(r[k] for r in rs) for k in ("seconds", "cpu")}
        for name, rs in results.items()
    }
    print(f"candidates={args.size:,} queries={args.queries:,} repeats={args.repeats} (medians)")
    print(f"{'variant':<13}{'wall s':>9}{'CPU s':>9}{'cpu us/cand':>12}")
    for name, m in med.items():
        print(f"{name:<13}{m['seconds']:>9.1f}{m['cpu']:>9.1f}"
              f"{1e6 * m['cpu'] / args.size:>12.1f}")  # fmt: skip
    bars, plain = med["bars"], med["no-progress"]
    print(f"bars / no-progress: wall {bars['seconds'] / plain['seconds']:.3f}x, "
          f"CPU {bars['cpu'] / plain['cpu']:.3f}x")  # fmt: skip
    kept = {r["kept"] for rs in results.values() for r in rs}
    print(f"kept equal across all runs: {len(kept) == 1}")
    cost = poll_cost(args.markers)
    print(f"one launcher poll over {args.markers:,} markers: {1e3 * cost:.1f} ms "
          f"(once a second: {100 * cost:.2f}% of one core)")  # fmt: skip


if __name__ == "__main__":
    main()
