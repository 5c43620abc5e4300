"""Success rate and failure reasons by domain, and link rot between two runs.

These are the tables people build by hand after every img2dataset run. A domain here is
the URL's host name, lower-cased (`images.example.com`, not the registrable
`example.com`: the host is what serves, fails and rate-limits). Only rows that reached
the fetch stage count: `kept`, `fetch_failed`, `opted_out`, `blocked_address` and
`image_rejected`.

Link rot compares this OUT with an earlier one (`wit-stats OUT --since OLD_OUT`): of the
URLs kept in the earlier run and fetched again in this one, how many failed now, why, and
where. URLs are compared as written; a URL listed with several captions counts once, kept
if any of its rows was kept.
"""

from __future__ import annotations

import datetime

import duckdb

from pipeline.stats.layout import OutLayout
from pipeline.stats.tables import Table, ratio, rows_of

#: Statuses of rows whose URL was fetched (or refused just before fetching).
FETCHED = ("kept", "fetch_failed", "opted_out", "blocked_address", "image_rejected")
#: Statuses that mean "this URL no longer gives an image" when it gave one before.
ROTTED = ("fetch_failed", "image_rejected")
#: Failure reasons shown per domain.
REASONS_PER_DOMAIN = 3

_HOST_PATTERN = r"'^(?:[^@/?#]*@)?(\[[^\]]*\]|[^:/?#]*)'"
_FETCHED_SQL = "(" + ", ".join(f"'{s}'" for s in FETCHED) + ")"
_ROTTED_SQL = "(" + ", ".join(f"'{s}'" for s in ROTTED) + ")"


def authority_sql(column: str = "url") -> str:
    """SQL for the authority of a URL (`user@host:port`, with any `?query` or `#fragment`
    that follows when there is no path): cheap string splitting, run on every row."""
    return f"CASE WHEN contains({column}, '://') THEN split_part({column}, '/', 3) ELSE '' END"


def host_sql(authority: str) -> str:
    """SQL for the host within an authority: after any user info, up to port, query or
    fragment; lower-cased, trailing dots dropped, IPv6 literals in brackets; `(no host)`
    when there is none. A regular expression, so it runs on grouped authorities only (it
    costs 2-3x the whole default report when run on 3M URLs)."""
    host = f"rtrim(lower(regexp_extract({authority}, {_HOST_PATTERN}, 1)), '.')"
    return f"coalesce(nullif({host}, ''), '(no host)')"


def domain_tables(con: duckdb.DuckDBPyConnection, top: int) -> list[Table]:
    """Per domain (the `top` with most fetched rows): success rate, counts, top reasons."""
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _domain_groups AS
        WITH a AS (
            SELECT {authority_sql()} AS authority, status, coalesce(reason, '') AS reason,
                   count(*) AS n
            FROM status WHERE status IN {_FETCHED_SQL} GROUP BY ALL)
        SELECT {host_sql("authority")} AS domain, status, reason, sum(n) AS n
        FROM a GROUP BY ALL
        """
    )
    per_status = ", ".join(
        f"coalesce(sum(n) FILTER (WHERE status = '{s}'), 0) AS {s}" for s in FETCHED
    )
    rows = rows_of(
        con,
        f"""
        SELECT domain, sum(n) AS fetched, {per_status}
        FROM _domain_groups GROUP BY domain ORDER BY fetched DESC, domain
        """,
    )
    columns = ["domain", "fetched", "kept", "success_rate", *FETCHED[1:]]

    def shaped(label: str, values: list) -> tuple:
        fetched, kept, *others = values
        return (label, fetched, kept, ratio(kept, fetched), *others)

    shown = [shaped(r[0], list(r[1:])) for r in rows[:top]]
    rest = rows[top:]
    if rest:
        sums = [sum(r[i] for r in rest) for i in range(1, len(rows[0]))]
        shown.append(shaped(f"({len(rest)} other domains)", sums))
    if rows:
        totals = [sum(r[i] for r in rows) for i in range(1, len(rows[0]))]
        shown.append(shaped(f"(all {len(rows)} domains)", totals))
    by_domain = Table(
        "domains",
        f"Fetch outcome by domain (top {top} by fetched rows)",
        columns,
        shown,
    )
    names = [r[0] for r in rows[:top]]
    reason_rows = []
    if names:
        reason_rows = rows_of(
            con,
            f"""
            WITH d AS (SELECT domain, sum(n) AS total FROM _domain_groups GROUP BY domain),
            r AS (SELECT g.domain, g.status, g.reason, g.n, d.total,
                         row_number() OVER (PARTITION BY g.domain
                                            ORDER BY g.n DESC, g.status, g.reason) AS rk
                  FROM _domain_groups g JOIN d USING (domain)
                  WHERE g.status <> 'kept' AND g.domain IN (SELECT unnest($1)))
            SELECT domain, status, reason, n, n / total FROM r
            WHERE rk <= {REASONS_PER_DOMAIN}
            """,
            [names],
        )
        order = {name: i for i, name in enumerate(names)}
        reason_rows.sort(key=lambda r: (order[r[0]], -r[3], r[1], r[2]))
    reasons = Table(
        "domain_reasons",
        f"Why fetches failed, by domain (top {REASONS_PER_DOMAIN} reasons of each domain above)",
        ["domain", "status", "reason", "rows", "share_of_domain"],
        reason_rows,
    )
    return [by_domain, reasons]


def run_time(layout: OutLayout) -> datetime.datetime | None:
    """When a run finished: its manifest's mtime (written last), else its newest status file's."""
    manifest = layout.root / "manifest.json"
    paths = [manifest] if manifest.exists() else list(layout.status_files)
    times = [p.stat().st_mtime for p in paths if p.exists()]
    if not times:
        return None
    return datetime.datetime.fromtimestamp(max(times), tz=datetime.UTC)


def attach_earlier(con: duckdb.DuckDBPyConnection, earlier: OutLayout) -> None:
    """The earlier run's status rows as the view `earlier_status`."""
    files = "[" + ", ".join("'" + str(p).replace("'", "''") + "'" for p in earlier.status_files)
    con.execute(f"CREATE OR REPLACE VIEW earlier_status AS SELECT * FROM read_parquet({files}])")


def link_rot_tables(
    con: duckdb.DuckDBPyConnection,
    top: int,
    then: datetime.datetime | None = None,
    now: datetime.datetime | None = None,
    earlier_name: str = "",
) -> list[Table]:
    """Of the URLs kept in `earlier_status`, what became of them in `status`."""
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _rot AS
        WITH before AS (
            SELECT url FROM earlier_status
            WHERE status = 'kept' AND url IS NOT NULL GROUP BY url),
        after AS (
            SELECT url, status, coalesce(reason, '') AS reason FROM status
            WHERE url IN (SELECT url FROM before)
            QUALIFY row_number() OVER (
                PARTITION BY url ORDER BY status <> 'kept', status, reason) = 1)
        SELECT b.url, {authority_sql("b.url")} AS authority,
               CASE WHEN a.status IN {_FETCHED_SQL} THEN a.status END AS now_status,
               a.reason AS now_reason
        FROM before b LEFT JOIN after a USING (url)
        """
    )
    counts = dict(
        rows_of(
            con,
            "SELECT coalesce(now_status, '(not fetched in this run)'), count(*) "
            "FROM _rot GROUP BY ALL",
        )
    )
    kept_before = sum(counts.values())
    refetched = sum(n for s, n in counts.items() if s in FETCHED)
    rotted = sum(counts.get(s, 0) for s in ROTTED)
    days = None
    if then is not None and now is not None:
        days = round((now - then).total_seconds() / 86400, 2)
    summary_rows = [
        ("earlier run", earlier_name),
        ("earlier run finished (UTC)", then.isoformat(timespec="seconds") if then else None),
        ("this run finished (UTC)", now.isoformat(timespec="seconds") if now else None),
        ("days between", days),
        ("URLs kept in the earlier run", kept_before),
        ("of those, fetched again in this run", refetched),
        ("still kept", counts.get("kept", 0)),
        ("now fetch_failed", counts.get("fetch_failed", 0)),
        ("now image_rejected", counts.get("image_rejected", 0)),
        ("now opted_out", counts.get("opted_out", 0)),
        ("now blocked_address", counts.get("blocked_address", 0)),
        ("not fetched in this run", counts.get("(not fetched in this run)", 0)),
        ("link rot rate (failed now / fetched again)", ratio(rotted, refetched)),
        ("opt-out rate since (opted out now / fetched again)",
         ratio(counts.get("opted_out", 0), refetched)),
    ]  # fmt: skip
    summary = Table(
        "link_rot",
        "Link rot since the earlier run (URLs kept then, fetched again now)",
        ["metric", "value"],
        summary_rows,
    )
    reason_rows = rows_of(
        con,
        f"""
        SELECT now_status, now_reason, count(*) AS n FROM _rot
        WHERE now_status IN {_ROTTED_SQL} OR now_status = 'opted_out'
        GROUP BY ALL ORDER BY n DESC, now_status, now_reason LIMIT 20
        """,
    )
    reasons = Table(
        "link_rot_reasons",
        "Why URLs kept in the earlier run fail now (top 20 reasons)",
        ["status", "reason", "rows", "share"],
        [(s, r, n, ratio(n, refetched)) for s, r, n in reason_rows],
    )
    domain_rows = rows_of(
        con,
        f"""
        WITH a AS (
            SELECT authority, count(*) AS refetched,
                   count(*) FILTER (WHERE now_status IN {_ROTTED_SQL}) AS rotted
            FROM _rot WHERE now_status IS NOT NULL GROUP BY authority)
        SELECT {host_sql("authority")} AS domain, sum(refetched), sum(rotted) AS lost
        FROM a GROUP BY domain ORDER BY lost DESC, sum(refetched) DESC, domain
        LIMIT {int(top)}
        """,
    )
    by_domain = Table(
        "link_rot_domains",
        f"Link rot by domain (top {top} by URLs lost)",
        ["domain", "fetched_again", "failed_now", "rot_rate"],
        [(d, f, r, ratio(r, f)) for d, f, r in domain_rows],
    )
    return [summary, reasons, by_domain]
