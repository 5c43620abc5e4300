"""The cap compliance check: no query may select more than t pairs under exact balancing."""

from __future__ import annotations

from dataclasses import dataclass

import duckdb

from pipeline.stats.tables import Table, rows_of


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


def compliance_tables(
    con: duckdb.DuckDBPyConnection, cap: int, balance: str, top: int
) -> tuple[Compliance, Table, Table]:
    """Check that no query selected more than t, in the counts table and in status itself.

    The status rows' `selected_by` lists are counted too, so a counts table that disagrees
    with the rows it summarises is caught as well. Only `exact` balancing promises the
    cap; under `metaclip` the draw is probabilistic and overshoot is reported, not failed.
    """
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE _selected_by_status AS
        SELECT q AS query, count(*) AS selected
        FROM (SELECT unnest(selected_by) AS q FROM status WHERE len(selected_by) > 0)
        GROUP BY q
        """
    )
    (row,) = rows_of(
        con,
        """
        SELECT (SELECT coalesce(max(selected), 0) FROM query_counts),
               (SELECT count(*) FROM query_counts WHERE selected > $1),
               (SELECT coalesce(max(selected), 0) FROM _selected_by_status),
               (SELECT count(*) FROM _selected_by_status WHERE selected > $1),
               (SELECT count(*) FROM query_counts c FULL JOIN _selected_by_status s
                    ON c.query = s.query
                WHERE coalesce(c.selected, 0) <> coalesce(s.selected, 0))
        """,
        [cap],
    )
    max_c, over_c, max_s, over_s, disagree = row
    enforced = balance == "exact"
    broken = over_c > 0 or over_s > 0
    if not broken:
        result, message = "PASS", f"no query selected more than t = {cap}"
    elif enforced:
        result = "FAIL"
        message = (
            f"CAP COMPLIANCE FAILED: {max(over_c, over_s)} queries selected more than "
            f"t = {cap} (max {max(max_c, max_s)}; counts table {over_c}, status rows {over_s})"
        )
    else:
        result = "NOT ENFORCED"
        message = (
            f"{max(over_c, over_s)} queries selected more than t = {cap} "
            f"(balance = {balance} is probabilistic; not a failure)"
        )
    compliance = Compliance(
        cap, balance, enforced, over_c, over_s, not (broken and enforced), message
    )
    checks = Table(
        "cap_compliance",
        "Cap compliance",
        ["check", "value"],
        [
            ("per-query cap t", cap),
            ("balance", balance),
            ("max selected (counts table)", max_c),
            ("queries over t (counts table)", over_c),
            ("max selected (status selected_by)", max_s),
            ("queries over t (status selected_by)", over_s),
            ("queries where counts and status disagree", disagree),
            ("result", result),
        ],
        message,
    )
    over = rows_of(
        con,
        """
        SELECT coalesce(c.query, s.query) AS query, c.selected, s.selected
        FROM query_counts c FULL JOIN _selected_by_status s ON c.query = s.query
        WHERE coalesce(c.selected, 0) > $1 OR coalesce(s.selected, 0) > $1
        ORDER BY greatest(coalesce(c.selected, 0), coalesce(s.selected, 0)) DESC, 1
        LIMIT $2
        """,
        [cap, top],
    )
    over_table = Table(
        "over_cap",
        "Queries over the cap",
        ["query", "selected_counts", "selected_status"],
        over,
    )
    return compliance, checks, over_table
