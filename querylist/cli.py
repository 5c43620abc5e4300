"""`wit-querylist build`: merge the offline sources into the query list."""

from __future__ import annotations

import argparse
import functools
import os
import sys

from . import bigrams, build, titles, unigrams, wordnet
from .source import QueryListError


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _non_negative(text: str) -> int:
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _positive(text: str) -> int:
    value = _integer(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wit-querylist", description="Build CLIP's query list.")
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser(
        "build",
        help="build querylist.parquet/.txt/.json",
        description="Merge unigrams, PMI bigrams, page-view titles and WordNet lemmas "
        "(in that priority) into DIR/querylist.{parquet,txt,json}. See docs/querylist.md.",
    )
    b.add_argument("--out", required=True, help="output folder")
    b.add_argument(
        "--wordnet", default=None, help="WordNet 3.0 dict folder (default /usr/share/wordnet)"
    )
    b.add_argument("--unigrams", default=None, help="'word count' file (default: wordfreq)")
    b.add_argument("--bigrams", default=None, help="'w1 w2 count' file (default: wordsegment)")
    b.add_argument(
        "--bigram-unigrams",
        default=None,
        help="'word count' file of the corpus --bigrams came from, for PMI "
        "(default: --unigrams when --bigrams is given)",
    )
    b.add_argument(
        "--pageviews", nargs="*", default=[], help="Wikipedia page-view dump files (gz, hourly)"
    )
    b.add_argument(
        "--max-entries",
        type=_positive,
        default=build.DEFAULT_MAX_ENTRIES,
        help="cap on the list, applied by source priority then score (default %(default)s)",
    )
    b.add_argument(
        "--min-count",
        type=_non_negative,
        default=unigrams.DEFAULT_MIN_COUNT,
        help="unigram threshold in occurrences (default %(default)s)",
    )
    b.add_argument(
        "--unigram-corpus-tokens",
        type=_positive,
        default=unigrams.DEFAULT_CORPUS_TOKENS,
        help="corpus size that turns wordfreq frequencies into counts (default %(default)s)",
    )
    b.add_argument(
        "--bigram-budget",
        type=_non_negative,
        default=bigrams.DEFAULT_BUDGET,
        help="how many top-PMI bigrams to keep (default %(default)s)",
    )
    b.add_argument(
        "--min-bigram-count",
        type=_non_negative,
        default=bigrams.DEFAULT_MIN_COUNT,
        help="ignore bigrams seen fewer times (default %(default)s)",
    )
    b.add_argument(
        "--min-views",
        type=_non_negative,
        default=titles.DEFAULT_MIN_VIEWS,
        help="title threshold on summed page views (default %(default)s)",
    )
    b.add_argument(
        "--projects",
        nargs="+",
        default=list(titles.DEFAULT_PROJECTS),
        help="page-view project codes to keep (default: en)",
    )
    return p


def _loaders(args: argparse.Namespace) -> dict:
    """One zero-argument loader per source, bound to the command-line options."""
    bigram_unigrams = args.bigram_unigrams or (args.unigrams if args.bigrams else None)
    return {
        "unigrams": functools.partial(
            unigrams.load, args.unigrams, args.min_count, args.unigram_corpus_tokens
        ),
        "bigrams": functools.partial(
            bigrams.load, args.bigrams, bigram_unigrams, args.bigram_budget, args.min_bigram_count
        ),
        "titles": functools.partial(
            titles.load, args.pageviews, args.min_views, tuple(args.projects)
        ),
        "wordnet": functools.partial(wordnet.load, args.wordnet),
    }


def _check_inputs(args: argparse.Namespace) -> None:
    """Fail early, in one line, on a named input that is not there."""
    named = [args.unigrams, args.bigrams, args.bigram_unigrams, *args.pageviews]
    for path in filter(None, named):
        if not os.path.isfile(path):
            raise QueryListError(f"no such file: {path}")
    if args.bigrams and not (args.bigram_unigrams or args.unigrams):
        raise QueryListError(
            "--bigrams needs unigram counts of the same corpus: pass --bigram-unigrams FILE"
        )
    if args.wordnet and not os.path.isdir(args.wordnet):
        raise QueryListError(f"--wordnet {args.wordnet}: no such folder")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise QueryListError(f"--out {args.out} exists and is not a folder")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def log(message: str) -> None:
        print(f"wit-querylist: {message}", file=sys.stderr, flush=True)

    try:
        _check_inputs(args)
        report = build.build(_loaders(args), args.out, args.max_entries, log=log)
    except QueryListError as e:
        print(f"wit-querylist: error: {e}", file=sys.stderr)
        return 2
    print(build.summary_table(report))
    if not report["total"]:
        print("wit-querylist: error: no source gave any entry; nothing written", file=sys.stderr)
        return 1
    print(f"wrote {report['total']:,} queries to {args.out} in {report['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
