"""Benchmark: the query matcher against the naive reference, same queries, same captions.

Queries (``bench_queries``): wordfreq's English word list (about 320,000 words) topped up
to 500,000 with two-word phrases of its most frequent words, so the list has the real size
and exercises phrase matching.
Captions: CC3M validation from ../shared/data. The naive matcher
(../shared/bench/naive_matcher.py) tests every query against every caption, so it runs on
the first --naive-limit captions only; the fast matcher runs on those same captions (for
the speed-up and an equality check) and on all of them.

    .venv/bin/python bench/bench_match.py [--queries 500000] [--naive-limit 200]

Times are CPU seconds of this process (``time.process_time``): the machine is shared, and
CPU time is what both matchers are charged for whatever else runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import pathlib
import time

from pipeline.match import QueryMatcher

ROOT = pathlib.Path(__file__).resolve().parents[1]
DATA = pathlib.Path(os.environ.get("WIT_SHARED_DATA", ROOT.parent / "shared" / "data"))
NAIVE = DATA.parent / "bench" / "naive_matcher.py"


def bench_queries(n: int) -> list[str]:
    """n queries: wordfreq's English words, then phrases "w1 w2" of its top 1,000 words."""
    import wordfreq

    words = wordfreq.top_n_list("en", n)
    seen = set(words)
    top = words[:1000]
    phrases = (f"{a} {b}" for k in range(len(top) * 2) for i, a in enumerate(top[: k + 1])
               for b in top[k - i : k - i + 1] if a != b)  # fmt: skip
    out = list(words)
    for phrase in phrases:
        if len(out) >= n:
            break
        if phrase not in seen:
            seen.add(phrase)
            out.append(phrase)
    return out[:n]


def load_naive():
    spec = importlib.util.spec_from_file_location("naive_matcher", NAIVE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=500_000)
    ap.add_argument("--naive-limit", type=int, default=200)
    args = ap.parse_args()
    naive = load_naive()
    queries = bench_queries(args.queries)
    captions = [
        line.split("\t")[0]
        for line in open(DATA / "captions" / "cc3m-validation.tsv", encoding="utf-8")
    ]
    sample = captions[: args.naive_limit]

    start = time.process_time()
    matcher = QueryMatcher(queries)
    build = time.process_time() - start

    normalized = [naive.normalize(q) for q in queries]
    start = time.process_time()
    want = [naive.match(c, normalized) for c in sample]
    naive_s = time.process_time() - start

    start = time.process_time()
    got = [matcher.match(c) for c in sample]
    fast_sample_s = time.process_time() - start
    start = time.process_time()
    all_hits = sum(len(matcher.match(c)) for c in captions)
    fast_all_s = time.process_time() - start

    assert got == want, "fast matcher disagrees with the naive reference"
    naive_rate = len(sample) / naive_s
    fast_rate = len(captions) / fast_all_s
    print(f"queries={len(queries):,} (patterns {matcher.n_patterns:,}); build {build:.1f} s; "
          f"results equal on {len(sample)} captions ({sum(map(len, want)):,} matches)")  # fmt: skip
    print(f"{'matcher':<10}{'captions':>10}{'cpu s':>10}{'captions/s':>13}{'us/caption':>12}")
    print(
        f"{'naive':<10}{len(sample):>10,}{naive_s:>10.2f}{naive_rate:>13,.1f}{1e6 / naive_rate:>12,.0f}"
    )
    print(f"{'fast':<10}{len(sample):>10,}{fast_sample_s:>10.3f}{len(sample) / fast_sample_s:>13,.0f}"
          f"{1e6 * fast_sample_s / len(sample):>12,.1f}")  # fmt: skip
    print(f"{'fast':<10}{len(captions):>10,}{fast_all_s:>10.2f}{fast_rate:>13,.0f}{1e6 / fast_rate:>12,.1f}"
          f"   ({all_hits:,} matches)")  # fmt: skip
    print(f"speed-up over naive: {fast_rate / naive_rate:,.0f}x")


if __name__ == "__main__":
    main()
