"""`wit-build`: the command line of the curation job. Beam's own options go to Beam;
any other unknown option is an error (exit 2)."""

from __future__ import annotations

import argparse
import difflib
import errno
import functools
import re
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="wit-build",
        description="Curate (image URL, alt-text) candidates into a balanced corpus "
        "written as Parquet + WebDataset shards. Any Apache Beam pipeline option "
        "(--runner, --direct_num_workers, ...) is passed through to Beam.",
    )
    p.add_argument("--querylist", required=True, help="querylist.parquet or .txt")
    p.add_argument(
        "--input",
        action="append",
        required=True,
        metavar="GLOB",
        help="candidate files (repeatable)",
    )
    p.add_argument("--out", required=True, help="output folder OUT")
    p.add_argument(
        "--input-format",
        default="auto",
        choices=["auto", "parquet", "csv", "tsv", "jsonl", "warc", "wat", "html", "pages"],
    )
    p.add_argument("--url-col", default=None, help="URL column of tabular input")
    p.add_argument("--caption-col", default=None, help="caption column of tabular input")
    p.add_argument("--per-query-cap", type=int, default=20000, help="t: at most t pairs per query")
    p.add_argument("--balance", default="exact", choices=["exact", "metaclip"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--lid",
        default="cascade",
        choices=["cascade", "fasttext", "langdetect", "none"],
        help="language ID: cascade (default; English vocabulary, CLD2 veto, fastText: keeps "
        "short English alt-text), fasttext, langdetect, or none",
    )
    p.add_argument("--no-fetch", action="store_true", help="stop after balancing; kept = selected")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument(
        "--resize-mode",
        default="center_crop",
        choices=["no", "border", "keep_ratio", "keep_ratio_largest", "center_crop"],
    )
    p.add_argument("--shard-size", type=int, default=10000)
    p.add_argument(
        "--retry-failed",
        metavar="OUT",
        help="instead of a build: fetch again only OUT's retryable fetch_failed rows "
        "(timeouts, 5xx, 429, connection, DNS) and rewrite only the shards that change; "
        "takes --retries, --timeout, --verbose",
    )
    p.add_argument(
        "--verbose",
        action="store_true",
        help="show Beam's and the libraries' log lines (hidden by default)",
    )
    p.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        help="no progress bars and no progress markers under OUT/_progress (for batch logs)",
    )
    p.add_argument(
        "--rows-per-bucket",
        type=int,
        default=100_000,
        help="target candidates per shuffle bucket; the bucket count is the estimated input "
        "size over this, so parallelism grows with the input (default 100000)",
    )
    fetch = p.add_argument_group("fetching (as img2dataset names them)")
    fetch.add_argument("--min-image-size", type=int, default=10, help="reject smaller sides")
    fetch.add_argument("--max-aspect-ratio", type=float, default=10.0)
    fetch.add_argument("--encode-quality", type=int, default=95)
    fetch.add_argument("--threads", type=int, default=32, help="download threads per worker")
    fetch.add_argument("--per-host-connections", type=int, default=8)
    fetch.add_argument("--timeout", type=float, default=20.0, help="read timeout, seconds")
    fetch.add_argument("--retries", type=int, default=2)
    fetch.add_argument("--user-agent", default=None, help="add a contact address for your crawl")
    p.add_argument(
        "--follow-links",
        type=int,
        default=0,
        metavar="N",
        help="with --input-format pages: also crawl up to N same-host pages linked from the "
        "listed pages, per host (depth 1; default 0, off)",
    )
    p.add_argument(
        "--page-delay",
        type=float,
        default=None,
        metavar="SECONDS",
        help="with --input-format pages: least time between two page requests to one host "
        "(default 1.0); a larger robots.txt Crawl-delay still wins. Lower it only for sites "
        "you run or may crawl hard",
    )
    p.add_argument(
        "--pages-per-host",
        type=int,
        default=None,
        metavar="N",
        help="with --input-format pages: page requests in flight at once per host (default 2)",
    )
    p.add_argument(
        "--page-text",
        default="alt",
        choices=["alt", "title", "figcaption"],
        help="with --input-format pages: caption from alt (default, as in CLIP), or the "
        "image's title / its figure's figcaption where present, falling back to alt",
    )
    p.add_argument(
        "--allow-private-addresses",
        action="store_true",
        help="switch off the address guard (local use and tests only)",
    )
    return p


@functools.lru_cache(maxsize=1)
def beam_option_names() -> frozenset[str]:
    """Every `--flag` that a subclass of Beam's PipelineOptions, at any depth, registers."""
    from apache_beam.options.pipeline_options import PipelineOptions

    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    names: set[str] = set()
    for cls in subclasses(PipelineOptions):
        parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
        parser.add_value_provider_argument = parser.add_argument  # Beam's parser extension
        try:
            cls._add_argparse_args(parser)
        except Exception:  # noqa: BLE001 - one odd class must not hide the others' options
            continue
        names.update(s for action in parser._actions for s in action.option_strings)
    return frozenset(n for n in names if n.startswith("--"))


def _is_option(token: str) -> bool:
    if not token.startswith("-") or token == "-":
        return False
    try:
        float(token)  # a negative number is a value, not an option
    except ValueError:
        return True
    return False


def check_beam_args(parser: argparse.ArgumentParser, beam_args: list[str]) -> None:
    """Exit 2 on an option that is neither ours nor Beam's; Beam would drop it silently,
    so a misspelled `--no-fecth` would start downloading."""
    if beam_args and not _is_option(beam_args[0]):
        parser.error(f"unexpected argument {beam_args[0]!r}")
    beam = beam_option_names()
    ours = {s for action in parser._actions for s in action.option_strings if s.startswith("--")}
    for token in beam_args:
        if token == "--":
            break
        if not _is_option(token):
            continue  # the value of the Beam option before it
        name = token.split("=", 1)[0]
        if name in beam:
            continue
        # Compare with dashes and underscores alike: Beam spells --direct_num_workers.
        known = {n.replace("_", "-"): n for n in sorted(ours | beam)}
        near = difflib.get_close_matches(name.replace("_", "-"), known, n=1, cutoff=0.75)
        hint = f" (did you mean {known[near[0]]}?)" if near else ""
        parser.error(f"unknown option {name}{hint}")


def _one_line_failure(error: BaseException) -> str:
    """A failed run's cause in one line (Beam wraps worker errors in long tracebacks)."""
    text = f"{type(error).__name__}: {error}"
    if "No space left on device" in text or getattr(error, "errno", None) == errno.ENOSPC:
        return "no space left on device while writing the output folder"
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    causes = [line for line in lines if re.match(r"^[A-Za-z_.]*(Error|Exception)\b", line)]
    detail = causes[-1] if causes else (lines[-1] if lines else type(error).__name__)
    return f"the job failed: {detail[:300]}"


def _fetch_options(args):
    from pipeline.fetch import FetchOptions

    extra = {"user_agent": args.user_agent} if args.user_agent else {}
    return FetchOptions(
        image_size=args.image_size,
        resize_mode=args.resize_mode,
        shard_size=args.shard_size,
        allow_private_addresses=args.allow_private_addresses,
        min_image_size=args.min_image_size,
        max_aspect_ratio=args.max_aspect_ratio,
        encode_quality=args.encode_quality,
        threads=args.threads,
        per_host_connections=args.per_host_connections,
        read_timeout=args.timeout,
        retries=args.retries,
        **extra,
    )


def _crawl_options(args):
    """Page crawling fetches pages even with --no-fetch (which skips only the images)."""
    from pipeline.crawl import CrawlOptions

    pacing = {}  # CrawlOptions holds the defaults
    if args.page_delay is not None:
        pacing["page_delay"] = args.page_delay
    if args.pages_per_host is not None:
        pacing["pages_in_flight_per_host"] = args.pages_per_host
    return CrawlOptions(
        fetch=_fetch_options(args),
        follow_links=args.follow_links,
        page_text=args.page_text,
        **pacing,
    )


def main(argv: list[str] | None = None) -> int:
    from pipeline.terminal import QuietStderr

    argv = sys.argv[1:] if argv is None else argv
    # before Beam is imported: its import-time warnings are library noise too
    with QuietStderr(enabled="--verbose" not in argv):
        return _main(argv)


def build_retry_parser() -> argparse.ArgumentParser:
    """The command line of `wit-build --retry-failed OUT`."""
    p = argparse.ArgumentParser(
        prog="wit-build --retry-failed",
        description="Fetch again only the rows whose status is fetch_failed for a reason that "
        "may pass next time (timeouts, 5xx, 429, connection, DNS); rewrites only the shards "
        "that change and updates status/, counts/, sizes.json and the manifest.",
    )
    p.add_argument("--retry-failed", required=True, metavar="OUT", dest="out")
    p.add_argument("--retries", type=int, default=None, help="retries per URL (default: as built)")
    p.add_argument("--timeout", type=float, default=None, help="read timeout, seconds")
    p.add_argument("--verbose", action="store_true")
    return p


def _retry_main(argv: list[str]) -> int:
    """`wit-build --retry-failed OUT`: fetch only the retryable failures again."""
    p = build_retry_parser()
    args = p.parse_args(argv)
    from pipeline.retry import retry_failed

    try:
        retry_failed(args.out, retries=args.retries, read_timeout=args.timeout)
    except ValueError as e:
        print(f"wit-build: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - one line, not a traceback
        print(f"wit-build: {_one_line_failure(e)}", file=sys.stderr)
        return 1
    return 0


def _main(argv: list[str]) -> int:
    if any(a == "--retry-failed" or a.startswith("--retry-failed=") for a in argv):
        return _retry_main(argv)
    parser = build_parser()
    args, beam_args = parser.parse_known_args(argv)
    check_beam_args(parser, beam_args)
    if args.per_query_cap < 1:
        parser.error("--per-query-cap must be at least 1")
    if args.follow_links < 0:
        parser.error("--follow-links must be 0 or more")
    if args.page_delay is not None and not args.page_delay >= 0:  # also refuses nan
        parser.error("--page-delay must be 0 or more seconds")
    if args.pages_per_host is not None and args.pages_per_host < 1:
        parser.error("--pages-per-host must be at least 1")

    return _run(args, beam_args)


def _run(args, beam_args) -> int:
    from pipeline.job import JobConfig, run_job, summary_table

    try:
        cfg = JobConfig(
            querylist=args.querylist,
            inputs=args.input,
            out=args.out,
            input_format=args.input_format,
            url_col=args.url_col,
            caption_col=args.caption_col,
            per_query_cap=args.per_query_cap,
            balance=args.balance,
            seed=args.seed,
            lid=args.lid,
            no_fetch=args.no_fetch,
            fetch_options=None if args.no_fetch else _fetch_options(args),
            crawl_options=_crawl_options(args) if args.input_format == "pages" else None,
            rows_per_bucket=args.rows_per_bucket,
            verbose=args.verbose,
            progress=args.progress,
            beam_args=beam_args,
        )
        manifest = run_job(cfg)
    except ValueError as e:
        print(f"wit-build: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - a failed run ends in one line, not a traceback
        print(f"wit-build: {_one_line_failure(e)}", file=sys.stderr)
        return 1
    print(summary_table(manifest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
