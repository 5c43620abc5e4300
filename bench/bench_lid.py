"""Benchmark: language ID backends on real English captions and a labelled non-English set.

English: CC3M validation and Flickr8k captions from ../shared/data (all English).
Non-English: bench/lid_non_english.tsv, 85 image-caption-like sentences in 24 languages,
written for this project (label<TAB>caption). For each backend: English recall (share
kept), non-English rejection (share rejected) and CPU ms per caption, using the job's own
decision rule (``LanguageIdentifier.rejection``).

    .venv/bin/python bench/bench_lid.py [--limit 3000]
"""

from __future__ import annotations

import argparse
import csv
import os
import pathlib
import time

from pipeline.lid import MIN_CONFIDENCE, LanguageIdentifier

ROOT = pathlib.Path(__file__).resolve().parents[1]
DATA = pathlib.Path(os.environ.get("WIT_SHARED_DATA", ROOT.parent / "shared" / "data"))
NON_ENGLISH = pathlib.Path(__file__).with_name("lid_non_english.tsv")


def english_sets(limit: int) -> dict[str, list[str]]:
    cc3m = [
        line.split("\t")[0]
        for line in open(DATA / "captions" / "cc3m-validation.tsv", encoding="utf-8")
    ]
    with open(DATA / "flickr8k-1k" / "captions.csv", encoding="utf-8", newline="") as f:
        flickr = [row["caption"] for row in csv.DictReader(f)]
    return {"cc3m": cc3m[:limit], "flickr8k": flickr[:limit]}


def non_english() -> list[tuple[str, str]]:
    rows = [line.rstrip("\n").split("\t", 1) for line in open(NON_ENGLISH, encoding="utf-8")]
    return [(lang, text) for lang, text in rows if text]


def measure(lid: LanguageIdentifier, texts: list[str]) -> tuple[list[str | None], float]:
    start = time.process_time()
    out = [lid.rejection(t) for t in texts]
    return out, 1000 * (time.process_time() - start) / max(1, len(texts))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=3000, help="captions per English set")
    args = ap.parse_args()
    english = english_sets(args.limit)
    foreign = non_english()
    print(f"English: {', '.join(f'{k} {len(v):,}' for k, v in english.items())}; "
          f"non-English: {len(foreign)} in {len({lang for lang, _ in foreign})} languages; "
          f"job default: reject when the top language is not English, confidence >= {MIN_CONFIDENCE}")  # fmt: skip
    header = f"{'backend':<11}{'set':<13}{'n':>7}{'measure':>22}{'value':>9}{'ms/caption':>12}"
    print(header)
    for backend in ("fasttext", "langdetect"):
        for threshold in sorted({0.0, MIN_CONFIDENCE, 0.5}):
            lid = LanguageIdentifier(backend, min_confidence=threshold)
            for name, texts in english.items():
                rejected, ms = measure(lid, texts)
                recall = sum(r is None for r in rejected) / len(texts)
                print(f"{backend:<11}{name:<13}{len(texts):>7,}{f'English recall @{threshold}':>22}"
                      f"{recall:>9.2%}{ms:>12.3f}")  # fmt: skip
            rejected, ms = measure(lid, [t for _, t in foreign])
            share = sum(r is not None for r in rejected) / len(foreign)
            print(f"{backend:<11}{'non-English':<13}{len(foreign):>7,}{f'rejected @{threshold}':>22}"
                  f"{share:>9.2%}{ms:>12.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
