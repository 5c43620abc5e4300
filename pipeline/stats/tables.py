"""The plain value a report section is made of, and the helpers that fill it from DuckDB."""

from __future__ import annotations

import decimal
from dataclasses import dataclass

import duckdb


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


def plain(value):
    """DuckDB returns DECIMAL for some sums and averages; JSON and CSV want floats."""
    if isinstance(value, decimal.Decimal):
        return float(value)
    return value


def rows_of(con: duckdb.DuckDBPyConnection, sql: str, params=None) -> list[tuple]:
    return [tuple(plain(v) for v in row) for row in con.execute(sql, params or []).fetchall()]


def ratio(num, den) -> float | None:
    return None if not den else num / den
