"""`wit-querylist build`: merge the offline sources into the query list."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wit-querylist", description="Build CLIP's query list.")
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build querylist.parquet/.txt/.json")
    b.add_argument("--out", required=True, help="output folder")
    b.add_argument("--wordnet", default=None, help="WordNet 3.0 dict folder (default /usr/share/wordnet)")
    b.add_argument("--unigrams", default=None, help="'word count' file (default: wordfreq)")
    b.add_argument("--bigrams", default=None, help="'w1 w2 count' file (default: wordsegment)")
    b.add_argument("--pageviews", nargs="*", default=[], help="Wikipedia page-view dump files")
    b.add_argument("--max-entries", type=int, default=500000)
    return p


def main(argv: list[str] | None = None) -> int:
    build_parser().parse_args(argv)
    print("wit-querylist: not built yet (issue 3)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
