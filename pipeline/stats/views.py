"""DuckDB views over the parquet files of an OUT folder, read in place with no import step.

Views: `status`, `query_counts`, `samples` (with a `shard` column), `shards` (one row per
shard) and `pages`. Views over absent parts (no shards after `--no-fetch`, no pages) are
empty tables of the right schema, so the same SQL runs on every OUT folder.
"""

from __future__ import annotations

import pathlib

import duckdb
import pyarrow as pa

from pipeline.schema import PAGE_SCHEMA, SAMPLE_SCHEMA
from pipeline.stats.layout import OutLayout, shard_table

VIEW_NAMES = ("status", "query_counts", "samples", "shards", "pages")


def _sql_list(paths: list[pathlib.Path]) -> str:
    quoted = ("'" + str(p).replace("'", "''") + "'" for p in paths)
    return "[" + ", ".join(quoted) + "]"


def _register_empty(con: duckdb.DuckDBPyConnection, name: str, schema: pa.Schema) -> None:
    con.register(f"_{name}_empty", schema.empty_table())
    con.execute(f"CREATE VIEW {name} AS SELECT * FROM _{name}_empty")


def connect(layout: OutLayout) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the OUT folder's views registered."""
    con = duckdb.connect(":memory:")
    con.execute(
        f"CREATE VIEW status AS SELECT * FROM read_parquet({_sql_list(layout.status_files)})"
    )
    con.execute(
        f"CREATE VIEW query_counts AS SELECT * FROM read_parquet({_sql_list([layout.counts_file])})"
    )
    if layout.sample_files:
        con.execute(
            "CREATE VIEW samples AS SELECT * EXCLUDE (filename), "
            "parse_filename(filename, true) AS shard FROM read_parquet("
            f"{_sql_list(layout.sample_files)}, filename = true)"
        )
    else:
        _register_empty(con, "samples", SAMPLE_SCHEMA.append(pa.field("shard", pa.string())))
    if layout.page_files:
        con.execute(
            f"CREATE VIEW pages AS SELECT * FROM read_parquet({_sql_list(layout.page_files)})"
        )
    else:
        _register_empty(con, "pages", PAGE_SCHEMA)
    con.register("_shards_table", shard_table(layout))
    con.execute("CREATE VIEW shards AS SELECT * FROM _shards_table")
    return con
