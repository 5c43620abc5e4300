"""`wit-stats`: report, SQL and plots over a built OUT folder, with DuckDB."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wit-stats", description="Inspect a corpus built by wit-build.")
    p.add_argument("out", help="the OUT folder of wit-build")
    p.add_argument("--sql", default=None, help="SQL over views status, samples, query_counts, shards")
    p.add_argument("--format", default="table", choices=["table", "csv", "json"])
    p.add_argument("--plots", default=None, metavar="DIR", help="write PNG plots and index.html here")
    return p


def main(argv: list[str] | None = None) -> int:
    build_parser().parse_args(argv)
    print("wit-stats: not built yet (issue 6)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
