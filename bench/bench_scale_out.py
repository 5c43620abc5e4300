"""Benchmark: text stages (--no-fetch) of this tree against its anchor, side by side.

The anchor is the job as it was before the scale-out (16 fixed buckets, a join on full
candidate rows, counts read back on the launcher): a git worktree of ``--anchor``
(default 462672b). Both run the real command line on the default runner, alternating, on
the same input: real captions from ../shared/data with unique URLs (bench_text_stages),
wordfreq's most frequent words as queries. Reported per run:

- wall seconds, candidates/s, CPU seconds per candidate (the whole process tree);
- peak RSS of the launcher process alone and of the whole tree (sampled every 0.2 s);
- the parallel units each shuffle stage had (from the manifest; the anchor's are 16).

    .venv/bin/python bench/bench_scale_out.py [--sizes 1000000 4000000] [--queries 361000]
        [--repeats 1] [--anchor REV] [--only new|anchor]
        [--results bench/results/scale_out.jsonl] [--plot docs/img/scale_out_rss.png]

Every run is appended to ``--results`` (JSON lines), and ``--plot`` draws peak tree RSS
against input size for every run recorded there, before (anchor) and after (new): the
20M run of `make bench-large` joins the 1M/4M runs on one plot.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from bench_text_stages import real_captions, tree_rss, write_input  # noqa: E402


def rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def run(cmd: list[str], cwd: pathlib.Path, env: dict) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    peak = {"tree": 0, "launcher": 0}
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak["tree"] = max(peak["tree"], tree_rss(proc.pid))
            peak["launcher"] = max(peak["launcher"], rss(proc.pid))
            time.sleep(0.2)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    _out, err = proc.communicate()
    seconds = time.perf_counter() - start
    done.set()
    t.join()
    if proc.returncode != 0:
        sys.exit(f"wit-build failed ({proc.returncode}):\n{err[-3000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"seconds": seconds, "cpu": cpu, **peak}


def anchor_tree(rev: str, work: pathlib.Path) -> pathlib.Path:
    tree = work / f"anchor-{rev}"
    if not tree.exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), rev],
                       check=True, capture_output=True)  # fmt: skip
    return tree


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 4_000_000])
    ap.add_argument("--queries", type=int, default=361_000)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--anchor", default="462672b")
    ap.add_argument("--only", choices=["new", "anchor"], default=None)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--results", default=str(ROOT / "bench" / "results" / "scale_out.jsonl"))
    ap.add_argument("--plot", default=None, help="PNG of peak RSS against input size")
    args = ap.parse_args()
    from bench_match import bench_queries

    work = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="wit-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    qpath = work / "queries.txt"
    if not qpath.exists():
        qpath.write_text("\n".join(bench_queries(args.queries)) + "\n", encoding="utf-8")
    captions = real_captions()
    trees = {"new": ROOT, "anchor": anchor_tree(args.anchor, work)}
    if args.only:
        trees = {args.only: trees[args.only]}
    results: dict[tuple[str, int], list[dict]] = {}
    for n in args.sizes:
        inp = work / f"candidates-{n}.parquet"
        if not inp.exists():
            write_input(inp, n, captions)
        for rep in range(args.repeats):
            for name, tree in trees.items():
                out = work / f"out-{name}-{n}"
                env = dict(os.environ, PYTHONPATH=str(tree), NO_ALBUMENTATIONS_UPDATE="1")
                cmd = [sys.executable, "-m", "pipeline.cli", "--querylist", str(qpath),
                       "--input", str(inp), "--out", str(out), "--no-fetch"]  # fmt: skip
                r = run(cmd, tree, env)
                manifest = json.loads((out / "manifest.json").read_text())
                assert manifest["rows"] == n, (name, manifest["rows"], n)
                r["units"] = manifest.get("parallelism", {"shuffle_buckets": 16})
                r["kept"] = manifest["totals"]["kept"]
                r["load"] = os.getloadavg()[0]
                results.setdefault((name, n), []).append(r)
                record = {"run": name, "candidates": n, **r, "time": time.time()}
                pathlib.Path(args.results).parent.mkdir(parents=True, exist_ok=True)
                with open(args.results, "a", encoding="utf-8") as f:
                    f.write(json.dumps(record) + "\n")
                print(f"{name} {n:,} rep {rep}: {r['seconds']:.1f} s, tree "
                      f"{r['tree'] / 2**30:.2f} GiB", file=sys.stderr, flush=True)  # fmt: skip
    print(f"queries={args.queries:,} captions={len(captions):,} anchor={args.anchor} "
          f"repeats={args.repeats} (medians)")  # fmt: skip
    print(f"{'run':<8}{'candidates':>12}{'seconds':>9}{'cand/s':>9}{'cpu us/cand':>12}"
          f"{'launcher GiB':>13}{'tree GiB':>9}{'kept':>12}  units")  # fmt: skip
    for (name, n), rs in results.items():
        med = {k: statistics.median(r[k] for r in rs) for k in ("seconds", "cpu", "launcher",
                                                                "tree")}  # fmt: skip
        print(f"{name:<8}{n:>12,}{med['seconds']:>9.1f}{n / med['seconds']:>9,.0f}"
              f"{1e6 * med['cpu'] / n:>12.1f}{med['launcher'] / 2**30:>13.2f}"
              f"{med['tree'] / 2**30:>9.2f}{rs[0]['kept']:>12,}  {json.dumps(rs[0]['units'])}")  # fmt: skip
    for n in args.sizes:
        if ("new", n) in results and ("anchor", n) in results:
            new = statistics.median(r["seconds"] for r in results[("new", n)])
            old = statistics.median(r["seconds"] for r in results[("anchor", n)])
            kept_equal = results[("new", n)][0]["kept"] == results[("anchor", n)][0]["kept"]
            print(f"{n:,}: new/anchor throughput {old / new:.2f}x; kept equal: {kept_equal}")

    if args.plot:
        plot(args.results, args.plot)


def plot(results_path: str, png: str) -> None:
    """Peak RSS of the whole process tree against candidates, one line per code version;
    for each size the latest run recorded (the code as it is now, not older versions)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [json.loads(line) for line in open(results_path, encoding="utf-8") if line.strip()]
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, label in (("anchor", "before (16 buckets, wide shuffles)"),
                        ("new", "after (narrow keys, spill files)")):  # fmt: skip
        latest: dict[int, float] = {}
        for r in sorted(runs, key=lambda r: r["time"]):
            if r["run"] == name:
                latest[r["candidates"]] = r["tree"] / 2**30
        if latest:
            xs = sorted(latest)
            ax.plot([x / 1e6 for x in xs], [latest[x] for x in xs], "o-", label=label)
    ax.axhline(8, color="grey", linestyle="--", linewidth=1, label="8 GiB goal")
    ax.set_xlabel("candidates (millions)")
    ax.set_ylabel("peak RSS, whole process tree (GiB)")
    ax.set_title("wit-build --no-fetch on 2 cores")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=110)


if __name__ == "__main__":
    main()
