"""Write report tables as aligned text, CSV or JSON.

Text is for people (thousands separators, shares as percentages); CSV and JSON keep the
raw values so that other tools can read them back exactly.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import re

from pipeline.stats.report import Report
from pipeline.stats.tables import Table

_SHARE_COLUMNS = {
    "share",
    "share_of_status",
    "yield",
    "success_rate",
    "share_of_domain",
    "rot_rate",
}
_SHARE_WORDS = re.compile(r"\b(share|rate|yield)\b")


def is_share(table: Table, row: tuple, col: int) -> bool:
    """Whether a cell is a fraction, shown as a percentage: by its column or its row's label."""
    if table.columns[col] in _SHARE_COLUMNS:
        return True
    first = row[0] if row and isinstance(row[0], str) else ""
    return col > 0 and bool(_SHARE_WORDS.search(first))


def human(value, share: bool = False) -> str:
    """One cell as a person reads it."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if share and isinstance(value, int | float):
        return f"{100 * value:.2f}%"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 1000 else f"{value:.4g}"
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False)
    return str(value).replace("\n", " ")


def text_table(table: Table, shares: bool = True) -> str:
    """Aligned columns; `shares=False` for SQL results, whose columns we know nothing of."""
    cells = [
        [human(v, shares and is_share(table, row, i)) for i, v in enumerate(row)]
        for row in table.rows
    ]
    widths = [len(c) for c in table.columns]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    numeric = [
        all(isinstance(r[i], int | float) or r[i] is None for r in table.rows) and table.rows
        for i in range(len(table.columns))
    ]

    def line(values: list[str]) -> str:
        parts = [
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    out = [f"== {table.title} ==", line(table.columns), line(["-" * w for w in widths])]
    out += [line(r) for r in cells] or ["(no rows)"]
    if table.note:
        out.append(f"note: {table.note}")
    return "\n".join(out)


def _csv_cell(value):
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False)
    return "" if value is None else value


def csv_table(table: Table, header_comment: bool = True) -> str:
    buf = io.StringIO()
    if header_comment:
        buf.write(f"# {table.name}: {table.title}\n")
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(table.columns)
    writer.writerows([_csv_cell(v) for v in row] for row in table.rows)
    return buf.getvalue()


def _json_default(value):
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def report_json(report: Report) -> str:
    data = {
        "tables": {
            t.name: {"title": t.title, "columns": t.columns, "rows": t.as_dicts(), "note": t.note}
            for t in report.tables
        },
        "compliance": dataclasses.asdict(report.compliance) if report.compliance else None,
    }
    return json.dumps(data, indent=2, ensure_ascii=False, default=_json_default)


def render_report(report: Report, fmt: str) -> str:
    """The whole report in one of the formats of `--format`."""
    if fmt == "json":
        return report_json(report)
    if fmt == "csv":
        return "\n".join(csv_table(t) for t in report.tables)
    return "\n\n".join(text_table(t) for t in report.tables)


def render_rows(table: Table, fmt: str) -> str:
    """The result of `--sql`: one table, with no section header in CSV."""
    if fmt == "json":
        return json.dumps(table.as_dicts(), indent=2, ensure_ascii=False, default=_json_default)
    if fmt == "csv":
        return csv_table(table, header_comment=False).rstrip("\n")
    return text_table(table, shares=False)
