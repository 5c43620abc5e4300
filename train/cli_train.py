"""`wit-train`: train CLIP on wit-build shards."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wit-train", description="Train CLIP on WebDataset shards.")
    p.add_argument("--shards", required=True, help="glob or brace pattern of .tar shards")
    p.add_argument("--model", required=True, help="config name (tiny-vit, ViT-B-32, ...) or JSON path")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--resume", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    build_parser().parse_args(argv)
    print("wit-train: not built yet (issue 8)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
