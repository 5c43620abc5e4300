"""The default wit-stats report: plain SQL over the views, gathered into named tables.

Every number comes from one DuckDB query over the parquet files; Python only arranges the
rows, so the report is as fast as the scans and the SQL reads the way the docs describe.
"""

from __future__ import annotations

import decimal
from dataclasses import dataclass, field

import duckdb

from pipeline.schema import STATUSES

#: Reasons shown per status; the rest are summed into one row (duplicate reasons are uids).
REASONS_PER_STATUS = 10
#: Sources shown in the yield table; the rest are summed into one row.
SOURCES_SHOWN = 50


@dataclass
class Table:
    """One section of the report: a title, column names and rows of plain values."""

    name: str
    title: str
    columns: list[str]
    rows: list[tuple]
    note: str = ""

    def as_dicts(self) -> list[dict]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]


@dataclass
class Compliance:
    """The cap check: `ok` is False only when the cap is enforced and broken."""

    cap: int
    balance: str
    enforced: bool
    over_cap_counts: int
    over_cap_status: int
    ok: bool
    message: str


@dataclass
class Report:
    tables: list[Table] = field(default_factory=list)
    compliance: Compliance | None = None

    def table(self, name: str) -> Table:
        for t in self.tables:
            if t.name == name:
                return t
        raise KeyError(name)


def _plain(value):
    """DuckDB returns DECIMAL for some sums and averages; JSON and CSV want floats."""
    if isinstance(value, decimal.Decimal):
        return float(value)
    return value


def rows_of(con: duckdb.DuckDBPyConnection, sql: str, params=None) -> list[tuple]:
    return [tuple(_plain(v) for v in row) for row in con.execute(sql, params or []).fetchall()]


def _ratio(num, den) -> float | None:
    return None if not den else num / den


def status_tables(con: duckdb.DuckDBPyConnection) -> tuple[Table, Table, int]:
    """Totals by status (the whole closed set, zeros included) and by status and reason."""
    counts = dict(rows_of(con, "SELECT status, count(*) FROM status GROUP BY status"))
    total = sum(counts.values())
    ordered = list(STATUSES) + sorted(s for s in counts if s not in STATUSES)
    totals = [(s, counts.get(s, 0), _ratio(counts.get(s, 0), total)) for s in ordered]
    unknown = [s for s in counts if s not in STATUSES]
    note = f"statuses outside the closed set: {', '.join(unknown)}" if unknown else ""
    k = REASONS_PER_STATUS
    reasons = rows_of(
        con,
        f"""
        WITH r AS (SELECT status, coalesce(reason, '') AS reason, count(*) AS n
                   FROM status GROUP BY ALL),
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
    reason_rows = [(s, label, n, _ratio(n, counts.get(s, 0))) for s, label, n, _ in reasons]
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
