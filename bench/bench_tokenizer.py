"""Tokenizer speed on the real captions in ../shared/data: ours vs open_clip's SimpleTokenizer.

    .venv/bin/python bench/bench_tokenizer.py [--data ../shared/data] [--limit N]

Prints captions/s for a cold pass (fresh tokenizer, empty word cache) and a warm pass
(second pass over the same captions), checks that the ids are equal, and times learning
an 8,192-token vocabulary on the same captions.
"""

from __future__ import annotations

import argparse
import csv
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def load_captions(data: pathlib.Path) -> list[str]:
    import pyarrow.parquet as pq

    captions = []
    with open(data / "captions" / "cc3m-validation.tsv", encoding="utf-8", newline="") as f:
        captions += [line.rstrip("\r\n").split("\t")[0] for line in f if line.strip()]
    with open(data / "flickr8k-1k" / "captions.csv", encoding="utf-8", newline="") as f:
        captions += [row["caption"] for row in csv.DictReader(f)]
    table = pq.read_table(data / "captions" / "img2dataset-test_10000.parquet", columns=["TEXT"])
    captions += [t for t in table.column("TEXT").to_pylist() if t is not None]
    return captions


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=pathlib.Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--limit", type=int, default=0, help="use only the first N captions")
    args = p.parse_args(argv)
    if not (args.data / "captions").is_dir():
        print(f"bench_tokenizer: no caption data under {args.data}", file=sys.stderr)
        return 2
    captions = load_captions(args.data)
    if args.limit:
        captions = captions[: args.limit]
    n = len(captions)

    from train.tokenizer import get_tokenizer, learn_tokenizer

    rows = []
    ours = get_tokenizer("openai")
    ours_ids, t = timed(ours, captions)
    rows.append(("ours (openai merges)", "cold", t))
    _, t = timed(ours, captions)
    rows.append(("ours (openai merges)", "warm", t))
    try:
        from open_clip.tokenizer import SimpleTokenizer
    except ImportError:
        print("open_clip not installed: reference timings skipped", file=sys.stderr)
        ref_ids = None
    else:
        ref = SimpleTokenizer()
        ref_ids, t = timed(ref, captions)
        rows.append(("open_clip SimpleTokenizer", "cold", t))
        _, t = timed(ref, captions)
        rows.append(("open_clip SimpleTokenizer", "warm", t))
    learned, t_learn = timed(learn_tokenizer, captions, 8192)
    _, t = timed(learned, captions)
    rows.append((f"ours (learned, vocab {learned.vocab_size})", "cold", t))

    print(f"{n} real captions (CC3M validation, Flickr8k-1k, img2dataset LAION-style)")
    print(f"{'tokenizer':<34} {'pass':<5} {'seconds':>8} {'captions/s':>11}")
    for name, kind, seconds in rows:
        print(f"{name:<34} {kind:<5} {seconds:8.2f} {n / seconds:11,.0f}")
    print(f"learning the 8,192-token vocabulary: {t_learn:.2f} s")
    if ref_ids is not None:
        same = bool((ours_ids == ref_ids).all())
        print(f"ids equal to open_clip on all {n} captions: {same}")
        if not same:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
