"""`wit-eval`: zero-shot, linear probe, retrieval and overlap check."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wit-eval", description="Evaluate CLIP checkpoints.")
    sub = p.add_subparsers(dest="task", required=True)
    for name in ("zeroshot", "probe", "retrieval", "overlap"):
        s = sub.add_parser(name)
        s.add_argument("--checkpoint", required=True, nargs="+")
        s.add_argument("--dataset", required=True)
    return p


def main(argv: list[str] | None = None) -> int:
    build_parser().parse_args(argv)
    print("wit-eval: not built yet (issue 9)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
