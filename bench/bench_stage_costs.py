"""Benchmark: CPU cost of each text stage's plain functions, per million candidates.

The stages' own work without Beam, on real captions (bench_text_stages' input, unique
URLs) and a query list of the real size, measured as process CPU time (so a loaded
machine changes it less than wall time). Beam's transport between stages is the rest of
the whole-job CPU that bench_scale_out.py measures. docs/operations.md extrapolates these
to a 10-billion-candidate pool.

    .venv/bin/python bench/bench_stage_costs.py [--rows 100000] [--queries 361000]
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile
import time

import pyarrow as pa

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))


def cpu(fn, *args):
    start = time.process_time()
    out = fn(*args)
    return out, time.process_time() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=361_000)
    ap.add_argument("--batch", type=int, default=32_768)
    ap.add_argument("--lid", default="fasttext")
    ap.add_argument("--cap", type=int, default=20_000, help="t; at 100k rows few queries pass "
                    "20,000, so pass 2 is cheap here: use a smaller t to see its cost")  # fmt: skip
    args = ap.parse_args()

    from bench_match import bench_queries
    from bench_text_stages import real_captions

    from pipeline import balance, dedup, fsio, status_io
    from pipeline.lid import LanguageIdentifier
    from pipeline.match import QueryMatcher
    from pipeline.normalize import normalize_table
    from pipeline.tally import Tally

    queries = bench_queries(args.queries)
    captions = real_captions()
    n = args.rows
    raw = pa.table(
        {
            "url": [f"https://images.example.org/{i // 1000}/{i}.jpg" for i in range(n)],
            "caption": [captions[i % len(captions)] for i in range(n)],
            "source": ["bench.parquet"] * n,
            "row": list(range(n)),
            "error": pa.nulls(n, pa.string()),
        }
    )
    batches = [raw.slice(i, args.batch) for i in range(0, n, args.batch)]
    costs: dict[str, float] = {}

    def add(name, seconds):
        costs[name] = costs.get(name, 0.0) + seconds

    matcher, load_match = cpu(QueryMatcher, queries)
    lid, load_lid = cpu(LanguageIdentifier, args.lid)
    qkeys, load_keys = cpu(balance.query_keys, queries, 0)
    work = tempfile.mkdtemp(prefix="wit-costs-")
    english = []
    for b in batches:
        t, s = cpu(normalize_table, b)
        add("normalize", s)
        (winners, _dups), s = cpu(dedup.resolve_duplicates, t)
        name = dedup.spill_name(winners)
        _, s2 = cpu(fsio.publish, f"{work}/{name}", fsio.parquet_bytes(winners))
        keys, s3 = cpu(dedup.narrow_keys, winners, name)
        losers, s4 = cpu(dedup.later_copies, keys)
        back, s5 = cpu(fsio.read_parquet, f"{work}/{name}")
        (rest, _), s6 = cpu(dedup.mark_duplicates, back.cast(status_io.WORK_SCHEMA), [])
        add("dedup (spill, narrow keys, read back)", s + s2 + s3 + s4 + s5 + s6)
        qids, s = cpu(matcher.match_many, rest["caption"].to_pylist())
        rest = status_io.with_columns(rest, qids=qids)
        add("match", s)
        matched = rest.filter(pa.array([bool(q) for q in qids]))
        rejections, s = cpu(lid.rejections, matched["caption"].to_pylist())
        add("language ID (matched rows)", s)
        english.append(matched.filter(pa.array([r is None for r in rejections])))
    pairs = sum(len(pa.compute.list_flatten(t["qids"])) for t in english)
    start = time.process_time()
    counts_fn = balance.QueryStatsFn("metaclip", 20_000)
    acc = counts_fn.create_accumulator()
    for t in english:
        for _b, part in balance.table_counts(t, 1):
            acc = counts_fn.add_input(acc, part)
    counts = balance.dense_counts([counts_fn.extract_output(acc)])
    add("balance pass 1: counts (combiner)", time.process_time() - start)
    start = time.process_time()
    hist_fn = balance.QueryStatsFn("metaclip", args.cap)
    acc = hist_fn.create_accumulator()
    for t in english:
        for _b, part in balance.table_histogram(t, qkeys, counts, args.cap, 1):
            acc = hist_fn.add_input(acc, part)
    bounds = balance.boundaries([hist_fn.extract_output(acc)], len(counts), args.cap)
    pairs_fn = balance.QueryStatsFn("exact", args.cap, raw=True)
    acc = pairs_fn.create_accumulator()
    for t in english:
        for _b, part in balance.table_boundary_pairs(t, qkeys, bounds, args.cap, 1):
            acc = pairs_fn.add_input(acc, part)
    stats = {"counts": counts,
             **balance.dense_thresholds([pairs_fn.extract_output(acc)], bounds)}  # fmt: skip
    add("balance pass 2: histograms, boundary pairs", time.process_time() - start)
    selected = []
    for t in english:
        out, s = cpu(balance.select_candidates, t, qkeys, stats, "exact", args.cap)
        add("balance: selection map", s)
        selected.append(out)
    start = time.process_time()
    names = pa.array(queries, pa.string())
    for t in selected:
        Tally.of_table(t)
        fsio.parquet_bytes(status_io.to_status_table(t, names))
    add("status part + tally", time.process_time() - start)

    total = sum(costs.values())
    print(f"rows={n:,} queries={len(queries):,} pairs={pairs:,} "
          f"({pairs / n:.1f} a candidate) lid={args.lid} t={args.cap:,} "
          f"queries over t={int((counts > args.cap).sum()):,}")  # fmt: skip
    print(f"per-worker set-up: matcher {load_match:.1f} s, language ID {load_lid:.1f} s, "
          f"query keys {load_keys:.1f} s (CPU)")  # fmt: skip
    print(f"{'stage':<40}{'CPU us/candidate':>18}{'CPU s per 1M':>14}")
    for name, seconds in costs.items():
        print(f"{name:<40}{1e6 * seconds / n:>18.1f}{1e6 * seconds / n:>14.1f}")
    print(f"{'sum of stages':<40}{1e6 * total / n:>18.1f}{1e6 * total / n:>14.1f}")


if __name__ == "__main__":
    main()
