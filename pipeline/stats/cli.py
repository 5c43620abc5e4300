"""`wit-stats`: report, SQL and plots over a built OUT folder, with DuckDB.

Exit status: 0 when the report ran and the cap holds, 1 when the cap compliance check
fails (exact balancing only), 2 on bad arguments or unreadable input.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import duckdb

from pipeline.stats.domains import attach_earlier, link_rot_tables, run_time
from pipeline.stats.layout import StatsInputError, load_layout
from pipeline.stats.render import render_report, render_rows
from pipeline.stats.report import build_report
from pipeline.stats.tables import Table, plain
from pipeline.stats.views import VIEW_NAMES, connect

EXIT_OK, EXIT_CAP_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="wit-stats",
        description="Inspect a corpus built by wit-build: totals by status and reason, "
        "per-query distribution and cap compliance, caption and image sizes, shards, "
        "duplicates. Exit 1 if a query selected more than t (exact balancing).",
    )
    p.add_argument("out", help="the OUT folder of wit-build")
    p.add_argument(
        "--sql",
        default=None,
        help=f"run this SQL instead of the report; views: {', '.join(VIEW_NAMES)}",
    )
    p.add_argument("--format", default="table", choices=["table", "csv", "json"])
    p.add_argument(
        "--plots", default=None, metavar="DIR", help="write PNG plots and index.html here"
    )
    p.add_argument(
        "--cap", type=int, default=None, help="per-query cap t (default: manifest parameters)"
    )
    p.add_argument("--top", type=int, default=20, help="queries listed in the top tables")
    p.add_argument(
        "--domains",
        type=int,
        default=20,
        help="domains listed in the success-rate and reasons tables (0: leave them out)",
    )
    p.add_argument(
        "--since",
        default=None,
        metavar="EARLIER_OUT",
        help="also report link rot: what became of the URLs this earlier OUT kept",
    )
    return p


def _cap_and_balance(layout, cap_flag: int | None) -> tuple[int, str]:
    params = layout.parameters
    balance = str(params.get("balance", "exact"))
    if cap_flag is not None:
        return cap_flag, balance
    cap = params.get("per_query_cap")
    if not isinstance(cap, int) or isinstance(cap, bool):
        raise StatsInputError(
            f"{layout.root / 'manifest.json'} has no integer parameters.per_query_cap; pass --cap"
        )
    return cap, balance


def _run_sql(con: duckdb.DuckDBPyConnection, sql: str, fmt: str) -> int:
    try:
        cur = con.execute(sql)
        columns = [d[0] for d in cur.description] if cur.description else []
        rows = [tuple(plain(v) for v in r) for r in cur.fetchall()]
    except duckdb.Error as exc:
        raise StatsInputError(f"SQL failed: {_first_line(exc)}") from exc
    print(render_rows(Table("sql", "SQL result", columns, rows), fmt))
    print(f"wit-stats: {len(rows):,} rows", file=sys.stderr)
    return EXIT_OK


def _first_line(exc: BaseException) -> str:
    lines = [x for x in str(exc).splitlines() if x.strip()]
    return lines[0] if lines else type(exc).__name__


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    wants_report = args.sql is None or args.plots is not None
    layout = load_layout(args.out, need_manifest=wants_report and args.cap is None)
    con = connect(layout)
    try:
        cap, balance = _cap_and_balance(layout, args.cap)
    except StatsInputError:
        if wants_report:
            raise
        cap, balance = None, None  # plain SQL needs no cap
    else:
        # SQL can compare against the build's cap: getvariable('per_query_cap')
        con.execute(f"SET VARIABLE per_query_cap = {int(cap)}")
        con.execute("SET VARIABLE balance = '" + balance.replace("'", "''") + "'")
    if args.sql is not None:
        code = _run_sql(con, args.sql, args.format)
        if args.plots is None:
            return code
    report = build_report(
        con,
        cap,
        balance,
        top=args.top,
        with_pages=bool(layout.page_files),
        out_name=str(layout.root),
        domains=args.domains,
    )
    if args.since is not None:
        earlier = load_layout(args.since, need_manifest=False)
        attach_earlier(con, earlier)
        report.tables += link_rot_tables(
            con,
            max(args.domains, 1),
            then=run_time(earlier),
            now=run_time(layout),
            earlier_name=str(earlier.root),
        )
    if args.sql is None:
        print(render_report(report, args.format))
    written = []
    if args.plots is not None:
        from pipeline.stats.plots import write_plots  # matplotlib only when asked

        written = write_plots(con, report, cap, pathlib.Path(args.plots), str(layout.root))
    c = report.compliance
    summary = report.table("summary").as_dicts()
    values = {d["metric"]: d["value"] for d in summary}
    print(
        f"wit-stats: {values['candidates']:,} candidates, {values['kept']:,} kept, "
        f"{values['queries']:,} queries, t = {cap}, {len(written)} plot files, "
        f"{time.perf_counter() - start:.1f}s",
        file=sys.stderr,
    )
    if not c.ok:
        print(f"wit-stats: {c.message}", file=sys.stderr)
        return EXIT_CAP_FAILED
    if not c.enforced and (c.over_cap_counts or c.over_cap_status):
        print(f"wit-stats: warning: {c.message}", file=sys.stderr)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for flag, value in (("--cap", args.cap), ("--top", args.top), ("--domains", args.domains)):
        if value is not None and value < 0:
            print(f"wit-stats: {flag} must be >= 0, got {value}", file=sys.stderr)
            return EXIT_BAD_INPUT
    try:
        return run(args)
    except StatsInputError as exc:
        print(f"wit-stats: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except duckdb.Error as exc:
        print(f"wit-stats: reading {args.out} failed: {_first_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:  # e.g. --plots names a folder that cannot be written
        print(f"wit-stats: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
