"""The default wit-stats report: plain SQL over the views, gathered into named tables.

The 10-million-row status table is scanned three times in all: once into a small table
of (source, status, reason) counts, once for caption lengths, once for `selected_by`.
Every section is then a cheap query over those results or over the smaller tables.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import duckdb

from pipeline.schema import STATUSES
from pipeline.stats.compliance import Compliance, compliance_tables
from pipeline.stats.domains import domain_tables
from pipeline.stats.tables import Table, ratio, rows_of

#: Reasons shown per status; the rest are summed into one row (duplicate reasons are uids).
REASONS_PER_STATUS = 10
#: Sources shown in the yield table; the rest are summed into one row.
SOURCES_SHOWN = 50


@dataclass
class Report:
    """The sections in the order they are shown, and the outcome of the cap check."""

    tables: list[Table] = field(default_factory=list)
    compliance: Compliance | None = None

    def table(self, name: str) -> Table:
        for t in self.tables:
            if t.name == name:
                return t
        raise KeyError(name)


#: Statuses given before matching: these rows never reached the query matcher.
UNMATCHED = ("duplicate", "caption_rejected", "no_match")


def group_status(con: duckdb.DuckDBPyConnection) -> None:
    """One scan of status into a small table of (source, status, reason) counts.

    The status, reason and source tables all come from it. A duplicate's reason is the uid
    of the row that won, one value per row, so it is folded into one label here; that
    keeps the table small on any input.
    """
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE _status_groups AS
        SELECT source, status,
               CASE WHEN status = 'duplicate' THEN '(uid of the copy kept)'
                    ELSE coalesce(reason, '') END AS reason,
               count(*) AS n
        FROM status GROUP BY ALL
        """
    )


def status_tables(con: duckdb.DuckDBPyConnection) -> tuple[Table, Table, int]:
    """Totals by status (the whole closed set, zeros included) and by status and reason."""
    counts = dict(rows_of(con, "SELECT status, sum(n) FROM _status_groups GROUP BY status"))
    total = sum(counts.values())
    ordered = list(STATUSES) + sorted(s for s in counts if s not in STATUSES)
    totals = [(s, counts.get(s, 0), ratio(counts.get(s, 0), total)) for s in ordered]
    unknown = [s for s in counts if s not in STATUSES]
    note = f"statuses outside the closed set: {', '.join(unknown)}" if unknown else ""
    k = REASONS_PER_STATUS
    reasons = rows_of(
        con,
        f"""
        WITH r AS (SELECT status, reason, sum(n) AS n FROM _status_groups GROUP BY ALL),
        ranked AS (SELECT *, row_number() OVER (PARTITION BY status ORDER BY n DESC, reason)
                             AS rk
                   FROM r)
        SELECT status, reason, n, rk FROM ranked WHERE rk <= {k}
        UNION ALL
        SELECT status, '(' || count(*) || ' other reasons)', sum(n), {k + 1}
        FROM ranked WHERE rk > {k} GROUP BY status
        """,
    )
    order = {s: i for i, s in enumerate(ordered)}
    reasons.sort(key=lambda r: (order.get(r[0], len(order)), r[3]))
    reason_rows = [(s, label, n, ratio(n, counts.get(s, 0))) for s, label, n, _ in reasons]
    return (
        Table("status", "Candidates by status", ["status", "rows", "share"], totals, note),
        Table(
            "reasons",
            f"Candidates by status and reason (top {REASONS_PER_STATUS} reasons per status)",
            ["status", "reason", "rows", "share_of_status"],
            reason_rows,
        ),
        total,
    )


def source_table(con: duckdb.DuckDBPyConnection) -> Table:
    """Yield per source: candidates, how many reached matching and matched, how many kept.

    `matched` counts rows whose status comes after matching, which is exactly the rows with
    a non-empty `matched_queries`, without reading that list column.
    """
    rows = rows_of(
        con,
        f"""
        SELECT source,
               sum(n) AS candidates,
               coalesce(sum(n) FILTER (WHERE status NOT IN {UNMATCHED}), 0) AS matched,
               coalesce(sum(n) FILTER (WHERE status = 'kept'), 0) AS kept
        FROM _status_groups GROUP BY source ORDER BY candidates DESC, source
        """,
    )
    shown, rest = rows[:SOURCES_SHOWN], rows[SOURCES_SHOWN:]
    if rest:
        shown.append(
            (f"({len(rest)} other sources)",) + tuple(sum(r[i] for r in rest) for i in range(1, 4))
        )
    return Table(
        "sources",
        "Yield per source",
        ["source", "candidates", "matched", "kept", "yield"],
        [(s, c, m, k, ratio(k, c)) for s, c, m, k in shown],
    )


def query_tables(con: duckdb.DuckDBPyConnection, cap: int, top: int) -> tuple[Table, Table]:
    """The per-query distribution before (matched) and after (selected) balancing.

    The tail is the queries with fewer than t matches: balancing keeps all of their
    pairs, so their share of the pairs grows as the head is cut down to t.
    """
    (row,) = rows_of(
        con,
        """
        SELECT count(*),
               count(*) FILTER (WHERE matched = 0), count(*) FILTER (WHERE selected = 0),
               count(*) FILTER (WHERE matched >= $1), count(*) FILTER (WHERE selected >= $1),
               coalesce(sum(matched), 0), coalesce(sum(selected), 0),
               coalesce(sum(matched) FILTER (WHERE matched < $1), 0),
               coalesce(sum(selected) FILTER (WHERE matched < $1), 0),
               quantile_disc(matched, 0.5), quantile_disc(selected, 0.5),
               quantile_disc(matched, 0.9), quantile_disc(selected, 0.9),
               quantile_disc(matched, 0.99), quantile_disc(selected, 0.99),
               max(matched), max(selected)
        FROM query_counts
        """,
        [cap],
    )
    n, zero_m, zero_s, cap_m, cap_s, sum_m, sum_s, tail_m, tail_s = row[:9]
    p50_m, p50_s, p90_m, p90_s, p99_m, p99_s, max_m, max_s = row[9:]
    dist = Table(
        "queries",
        f"Per-query distribution before (matched) and after (selected) balancing, t = {cap}",
        ["metric", "before", "after"],
        [
            ("queries", n, n),
            ("queries with no pair", zero_m, zero_s),
            ("queries at the cap (>= t)", cap_m, cap_s),
            ("pairs (sum over queries)", sum_m, sum_s),
            ("tail share (queries with matched < t)", ratio(tail_m, sum_m), ratio(tail_s, sum_s)),
            ("median per query", p50_m, p50_s),
            ("p90 per query", p90_m, p90_s),
            ("p99 per query", p99_m, p99_s),
            ("max per query", max_m, max_s),
        ],
    )
    top_rows = rows_of(
        con,
        "SELECT query, matched, selected, kept FROM query_counts "
        "ORDER BY matched DESC, query LIMIT $1",
        [top],
    )
    return dist, Table(
        "top_queries",
        f"Top {top} queries by matches",
        ["query", "matched", "selected", "kept"],
        top_rows,
    )


_DIST_COLUMNS = ["count", "min", "p10", "median", "p90", "max", "mean"]


def quantile_from_histogram(hist: list[tuple[int, int]], q: float):
    """The inverted-CDF quantile (DuckDB's quantile_disc) of values given as (value, count)."""
    total = sum(c for _, c in hist)
    if not total:
        return None
    need = max(1, math.ceil(q * total))
    seen = 0
    for value, count in sorted(hist):
        seen += count
        if seen >= need:
            return value
    return None


def _histogram_row(label: str, hist: list[tuple[int, int]]) -> tuple:
    hist = [(v, c) for v, c in hist if c]
    total = sum(c for _, c in hist)
    if not total:
        return (label, 0) + (None,) * (len(_DIST_COLUMNS) - 1)
    quantiles = tuple(quantile_from_histogram(hist, q) for q in (0.1, 0.5, 0.9))
    mean = sum(v * c for v, c in hist) / total
    return (label, total, min(v for v, _ in hist)) + quantiles + (max(v for v, _ in hist), mean)


def caption_table(con: duckdb.DuckDBPyConnection) -> Table:
    """Caption length in characters, over all candidates and over the kept ones.

    One scan counts rows per length (a few hundred distinct values); exact quantiles come
    from those counts, and the caption plot reuses them instead of scanning again.
    """
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE _caption_lengths AS
        SELECT length(caption) AS chars, count(*) AS n,
               count(*) FILTER (WHERE status = 'kept') AS kept
        FROM status WHERE caption IS NOT NULL GROUP BY chars
        """
    )
    hist = rows_of(con, "SELECT chars, n, kept FROM _caption_lengths")
    rows = [
        _histogram_row("candidates", [(v, n) for v, n, _ in hist]),
        _histogram_row("kept", [(v, k) for v, _, k in hist]),
    ]
    return Table("caption_length", "Caption length (characters)", ["rows"] + _DIST_COLUMNS, rows)


_SIDES = ["original_width", "original_height", "width", "height"]


def image_size_table(con: duckdb.DuckDBPyConnection) -> Table:
    """Image sides in pixels, as downloaded and after resizing, over the shard samples."""
    aggregates = ", ".join(
        f"count({c}), min({c}), quantile_disc({c}, [0.1, 0.5, 0.9]), max({c}), avg({c})"
        for c in _SIDES
    )
    (row,) = rows_of(con, f"SELECT {aggregates} FROM samples")
    out = []
    for i, side in enumerate(_SIDES):
        count, lo, qs, hi, mean = row[5 * i : 5 * i + 5]
        out.append((side, count, lo, *(qs or [None] * 3), hi, mean))
    return Table("image_size", "Image size (pixels) of the samples", ["side"] + _DIST_COLUMNS, out)


def shard_size_table(con: duckdb.DuckDBPyConnection, kept: int) -> Table:
    """Shard sizes, and the three counts of samples that must agree with the kept rows."""
    (row,) = rows_of(
        con,
        """
        SELECT count(*), coalesce(sum(samples), 0),
               min(samples), quantile_disc(samples, 0.5), max(samples),
               coalesce(sum(tar_bytes), 0), count(*) FILTER (WHERE tar_bytes IS NULL),
               count(*) FILTER (WHERE samples IS DISTINCT FROM parquet_rows),
               (SELECT count(*) FROM samples)
        FROM shards
        """,
    )
    n, total, lo, mid, hi, tar_bytes, no_tar, disagree, sample_rows = row
    return Table(
        "shards",
        "Shards",
        ["metric", "value"],
        [
            ("shards", n),
            ("samples (sizes.json)", total),
            ("samples (shard parquet rows)", sample_rows),
            ("kept rows in status", kept),
            ("min samples per shard", lo),
            ("median samples per shard", mid),
            ("max samples per shard", hi),
            ("tar bytes", tar_bytes),
            ("shards without a tar", no_tar),
            ("shards whose sizes.json and parquet disagree", disagree),
        ],
    )


def duplicate_table(con: duckdb.DuckDBPyConnection, total: int) -> Table:
    """Duplicate rate: rows dropped as repeated (url, caption), and repeated image bytes.

    Distinct images are counted on a 64-bit hash of the sha256 column, about twice as fast
    as on the strings; a false collision among 10 million samples has odds near 3e-6.
    """
    (row,) = rows_of(
        con,
        """
        SELECT (SELECT coalesce(sum(n), 0) FROM _status_groups WHERE status = 'duplicate'),
               count(sha256), count(DISTINCT hash(sha256)) FILTER (WHERE sha256 IS NOT NULL)
        FROM samples
        """,
    )
    dup_rows, hashed, distinct = row
    return Table(
        "duplicates",
        "Duplicates",
        ["metric", "value"],
        [
            ("duplicate candidates (same url + caption)", dup_rows),
            ("duplicate rate over candidates", ratio(dup_rows, total)),
            ("samples with an image hash", hashed),
            ("samples repeating an earlier image", hashed - distinct),
            ("repeated image rate over samples", ratio(hashed - distinct, hashed)),
        ],
    )


def page_table(con: duckdb.DuckDBPyConnection) -> Table:
    rows = rows_of(
        con,
        "SELECT status, count(*) AS pages, coalesce(sum(images_found), 0) AS images_found "
        "FROM pages GROUP BY status ORDER BY pages DESC, status",
    )
    return Table(
        "pages", "Pages fetched for image candidates", ["status", "pages", "images_found"], rows
    )


def build_report(
    con: duckdb.DuckDBPyConnection,
    cap: int,
    balance: str,
    top: int = 20,
    with_pages: bool = False,
    out_name: str = "",
    domains: int = 20,
) -> Report:
    """Run every section of the default report; `domains` sets how many domains the
    by-domain tables list (0 leaves them out)."""
    group_status(con)
    status, reasons, total = status_tables(con)
    kept = dict((r[0], r[1]) for r in status.rows).get("kept", 0)
    dist, top_queries = query_tables(con, cap, top)
    compliance, checks, over = compliance_tables(con, cap, balance, top)
    shards = shard_size_table(con, kept)
    summary = Table(
        "summary",
        "Summary",
        ["metric", "value"],
        [
            ("out", out_name),
            ("candidates", total),
            ("kept", kept),
            ("yield", ratio(kept, total)),
            ("queries", dist.rows[0][1]),
            ("per-query cap t", cap),
            ("balance", balance),
            ("shards", shards.rows[0][1]),
            ("cap compliance", checks.rows[-1][1]),
        ],
    )
    tables = [summary, status, reasons, source_table(con), dist, top_queries, checks]
    if over.rows:
        tables.append(over)
    tables += [caption_table(con), image_size_table(con), shards, duplicate_table(con, total)]
    if with_pages:
        tables.append(page_table(con))
    if domains > 0:
        tables += domain_tables(con, domains)
    return Report(tables, compliance)
