"""`wit-querylist count` (counts from a Wikipedia dump) and `wit-querylist build` (merge the
sources into the query list)."""

from __future__ import annotations

import argparse
import functools
import os
import sys

from . import bigrams, build, titles, unigrams, wordnet
from .count import (
    DEFAULT_BIGRAM_FLOOR,
    DEFAULT_CHUNK_MB,
    DEFAULT_SPILL_KEYS,
    DEFAULT_UNIGRAM_FLOOR,
)
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


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _add_count_options(c: argparse.ArgumentParser) -> None:
    """The options of `count` that `build --wikipedia` shares."""
    c.add_argument(
        "--workers",
        type=_positive,
        default=os.cpu_count() or 1,
        help="worker processes (default: the number of cores, %(default)s)",
    )
    c.add_argument(
        "--unigram-floor",
        type=_positive,
        default=DEFAULT_UNIGRAM_FLOOR,
        help="write words seen at least this often (default %(default)s: all, so that the "
        "counts sum to the corpus size PMI needs)",
    )
    c.add_argument(
        "--bigram-floor",
        type=_positive,
        default=DEFAULT_BIGRAM_FLOOR,
        help="write word pairs seen at least this often (default %(default)s)",
    )
    c.add_argument(
        "--spill-keys",
        type=_positive,
        default=DEFAULT_SPILL_KEYS,
        help="distinct words+pairs+titles a worker holds before writing them to disk "
        "(default %(default)s, about 0.2 GB per worker)",
    )
    c.add_argument(
        "--partitions",
        type=_positive,
        default=None,
        help="parts the counts are split into for the final sum; its memory is the "
        "vocabulary / parts (default: one per 128 MB of dump, 4 to 1024)",
    )
    c.add_argument(
        "--chunk-mb",
        type=_positive_float,
        default=DEFAULT_CHUNK_MB,
        help="MB per work unit: of bzip2 streams in a multistream dump, of XML otherwise "
        "(default %(default)s)",
    )
    c.add_argument(
        "--tmp",
        default=None,
        metavar="DIR",
        help="where the spilled counts go: a fresh .count-tmp-* folder inside DIR (default: "
        "inside OUT), removed at the end; a full English dump needs ~10 GB there",
    )
    c.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wit-querylist", description="Build CLIP's query list.")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser(
        "count",
        help="count words, word pairs and article titles in Wikipedia dumps",
        description="Stream MediaWiki XML dumps (pages-articles*.xml[.bz2]) and write "
        "DIR/unigrams.tsv.gz, DIR/bigrams.tsv.gz, DIR/titles.tsv.gz and DIR/count.json, "
        "the inputs of `build`. Only articles count (namespace 0, no redirects); words are "
        "cut by the matcher's rules. See docs/querylist.md.",
    )
    c.add_argument(
        "--wikipedia",
        nargs="+",
        required=True,
        metavar="DUMP",
        help="pages-articles XML dump(s): .xml.bz2 (multistream is read in parallel), "
        ".xml.gz or .xml",
    )
    c.add_argument("--out", required=True, help="output folder")
    _add_count_options(c)
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
    b.add_argument(
        "--titles",
        default=None,
        help="article titles ('title<TAB>id' lines, titles.tsv.gz of `count`): with "
        "--pageviews only these titles count, ':' allowed; without, --min-views 0 keeps all",
    )
    b.add_argument(
        "--counts",
        default=None,
        metavar="DIR",
        help="output folder of `wit-querylist count`: sets --unigrams, --bigrams, "
        "--bigram-unigrams and --titles to its files (flags given explicitly win)",
    )
    b.add_argument(
        "--wikipedia",
        nargs="+",
        default=None,
        metavar="DUMP",
        help="run `count` on these dumps into OUT/counts first (reused when OUT/counts/"
        "count.json records the same dumps and floors), then build as with --counts",
    )
    _add_count_options(b)
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
            titles.load, args.pageviews, args.min_views, tuple(args.projects), args.titles
        ),
        "wordnet": functools.partial(wordnet.load, args.wordnet),
    }


def _check_out(out: str) -> None:
    if os.path.exists(out) and not os.path.isdir(out):
        raise QueryListError(f"--out {out} exists and is not a folder")


def _check_inputs(args: argparse.Namespace) -> None:
    """Fail early, in one line, on a named input that is not there."""
    named = [args.unigrams, args.bigrams, args.bigram_unigrams, args.titles, *args.pageviews]
    for path in filter(None, named):
        if not os.path.isfile(path):
            raise QueryListError(f"no such file: {path}")
    if args.bigrams and not (args.bigram_unigrams or args.unigrams):
        raise QueryListError(
            "--bigrams needs unigram counts of the same corpus: pass --bigram-unigrams FILE"
        )
    if args.wordnet and not os.path.isdir(args.wordnet):
        raise QueryListError(f"--wordnet {args.wordnet}: no such folder")
    _check_out(args.out)


def _count_config(args: argparse.Namespace, dumps: list[str], out: str):
    from .count import CountConfig

    for path in dumps:
        if not os.path.isfile(path):
            raise QueryListError(f"no such file: {path}")
    return CountConfig(
        dumps=list(dumps),
        out=out,
        workers=args.workers,
        unigram_floor=args.unigram_floor,
        bigram_floor=args.bigram_floor,
        spill_keys=args.spill_keys,
        partitions=args.partitions,
        chunk_mb=args.chunk_mb,
        tmp=args.tmp,
        progress=not args.no_progress,
    )


def _run_count(cfg, log) -> dict:
    from . import count

    _check_out(cfg.out)
    summary = count.count(cfg)
    for line in count.summary_lines(summary):
        log(line)
    return summary


def _counts_for_build(args: argparse.Namespace, log) -> None:
    """`build --wikipedia`: count into OUT/counts unless a finished count of the same
    dumps with the same floors is already there."""
    from . import count

    if args.counts:
        raise QueryListError("pass either --wikipedia or --counts, not both")
    _check_out(args.out)
    cfg = _count_config(args, args.wikipedia, os.path.join(args.out, "counts"))
    done = count.read_summary(cfg.out)
    if done and count.same_inputs(done, cfg):
        log(f"reusing the counts in {cfg.out} (count.json records the same dumps and floors)")
    else:
        _run_count(cfg, log)
    args.counts = cfg.out


def _apply_counts(args: argparse.Namespace) -> None:
    """--counts DIR: its files fill --unigrams/--bigrams/--bigram-unigrams/--titles."""
    if not args.counts:
        return
    from .count import OUTPUTS

    if not os.path.isdir(args.counts):
        raise QueryListError(f"--counts {args.counts}: no such folder")
    paths = {kind: os.path.join(args.counts, name) for kind, name in OUTPUTS.items()}
    for kind, path in paths.items():
        if not os.path.isfile(path):
            raise QueryListError(
                f"--counts {args.counts} has no {OUTPUTS[kind]} (make it with wit-querylist count)"
            )
    if not args.bigrams:
        args.bigrams = paths["bigrams"]
        args.bigram_unigrams = args.bigram_unigrams or paths["unigrams"]
    args.unigrams = args.unigrams or paths["unigrams"]
    args.titles = args.titles or paths["titles"]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def log(message: str) -> None:
        print(f"wit-querylist: {message}", file=sys.stderr, flush=True)

    try:
        if args.command == "count":
            _run_count(_count_config(args, args.wikipedia, args.out), log)
            return 0
        if args.wikipedia:
            _counts_for_build(args, log)
        _apply_counts(args)
        _check_inputs(args)
        report = build.build(_loaders(args), args.out, args.max_entries, log=log)
    except QueryListError as e:
        print(f"wit-querylist: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("wit-querylist: interrupted", file=sys.stderr)
        return 130
    print(build.summary_table(report))
    if not report["total"]:
        print("wit-querylist: error: no source gave any entry; nothing written", file=sys.stderr)
        return 1
    print(f"wrote {report['total']:,} queries to {args.out} in {report['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
