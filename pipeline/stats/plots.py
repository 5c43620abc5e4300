"""PNG plots of a built corpus and one index.html that shows them with the report tables.

Figures are drawn with matplotlib's object API on the Agg canvas (no pyplot state, no
display) at a fixed 1000x600 pixels, so pages and tests can rely on the size. Only binned
or sampled data leaves DuckDB, so plotting stays cheap on tens of millions of rows.
"""

from __future__ import annotations

import html
import pathlib

import duckdb
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pipeline.stats.render import human, is_share
from pipeline.stats.report import Report
from pipeline.stats.tables import Table

WIDTH_PX, HEIGHT_PX, DPI = 1000, 600, 100
CAPTION_BIN = 5
CAPTION_CLIP = 400
SCATTER_POINTS = 20000


def _figure():
    fig = Figure(figsize=(WIDTH_PX / DPI, HEIGHT_PX / DPI), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _save(fig, path: pathlib.Path) -> pathlib.Path:
    fig.savefig(path, dpi=DPI, format="png")
    return path


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)


def plot_query_counts(con: duckdb.DuckDBPyConnection, cap: int, path: pathlib.Path):
    """Per-query counts by rank on log-log axes, before and after balancing, with t marked."""
    data = con.execute("SELECT matched, selected FROM query_counts").fetchnumpy()
    fig, ax = _figure()
    drawn = False
    for col, label in (("matched", "before balancing (matched)"), ("selected", "after (selected)")):
        values = np.sort(np.asarray(data[col], dtype=np.int64))[::-1]
        values = values[values > 0]
        zeros = len(data[col]) - len(values)
        if len(values):
            ranks = np.arange(1, len(values) + 1)
            ax.plot(ranks, values, drawstyle="steps-post", label=f"{label}; {zeros:,} at 0")
            drawn = True
    if drawn:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.axhline(cap, color="grey", linestyle="--", label=f"cap t = {cap:,}")
        ax.legend()
    else:
        _empty(ax, "no query matched any candidate")
    ax.set_xlabel("query rank")
    ax.set_ylabel("pairs per query")
    ax.set_title("Pairs per query before and after balancing")
    return _save(fig, path)


def plot_caption_length(con: duckdb.DuckDBPyConnection, path: pathlib.Path):
    """Histogram of caption length for all candidates and for the kept ones.

    Binned from the per-length counts that the report's caption section already made
    (build_report runs first), so plotting does not scan the captions again.
    """
    rows = con.execute(
        f"""
        SELECT least(chars, {CAPTION_CLIP}) // {CAPTION_BIN} * {CAPTION_BIN} AS bin,
               sum(n), sum(kept)
        FROM _caption_lengths GROUP BY bin ORDER BY bin
        """
    ).fetchall()
    fig, ax = _figure()
    if rows:
        edges = np.arange(0, CAPTION_CLIP + 2 * CAPTION_BIN, CAPTION_BIN)
        all_counts = np.zeros(len(edges) - 1)
        kept_counts = np.zeros(len(edges) - 1)
        for b, n, k in rows:
            all_counts[b // CAPTION_BIN] = n
            kept_counts[b // CAPTION_BIN] = k
        ax.stairs(all_counts, edges, label="all candidates")
        ax.stairs(kept_counts, edges, label="kept", fill=True, alpha=0.6)
        ax.set_yscale("symlog")
        ax.set_xlim(0, edges[np.flatnonzero(all_counts).max() + 1] + CAPTION_BIN)
        ax.legend()
    else:
        _empty(ax, "no captions")
    ax.set_xlabel(
        f"caption length in characters (bins of {CAPTION_BIN}, last bin >= {CAPTION_CLIP})"
    )
    ax.set_ylabel("rows")
    ax.set_title("Caption length")
    return _save(fig, path)


def plot_image_size(con: duckdb.DuckDBPyConnection, path: pathlib.Path):
    """Scatter of image width against height, as downloaded and after resizing (sampled)."""
    data = con.execute(
        f"""
        SELECT original_width, original_height, width, height FROM samples
        USING SAMPLE reservoir({SCATTER_POINTS} ROWS) REPEATABLE (0)
        """
    ).fetchnumpy()
    fig, ax = _figure()
    if len(data["width"]):
        ax.scatter(
            data["original_width"], data["original_height"], s=4, alpha=0.4, label="as downloaded"
        )
        ax.scatter(data["width"], data["height"], s=4, alpha=0.4, label="after resizing")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.legend()
    else:
        _empty(ax, "no samples in shards (built with --no-fetch?)")
    ax.set_xlabel("width (px)")
    ax.set_ylabel("height (px)")
    ax.set_title(f"Image size (up to {SCATTER_POINTS:,} sampled samples)")
    return _save(fig, path)


def plot_status(report: Report, path: pathlib.Path):
    """Bar chart of the rows per status: where the candidates went."""
    rows = report.table("status").rows
    fig, ax = _figure()
    labels = [r[0] for r in rows][::-1]
    ax.barh(labels, [r[1] for r in rows][::-1])
    ax.set_xlabel("rows")
    ax.set_title("Candidates by status")
    fig.subplots_adjust(left=0.2)
    return _save(fig, path)


def _html_table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    body = []
    for row in table.rows:
        cells = "".join(
            f"<td>{html.escape(human(v, is_share(table, row, i)))}</td>" for i, v in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    note = f"<p class='note'>{html.escape(table.note)}</p>" if table.note else ""
    return (
        f"<h2>{html.escape(table.title)}</h2>\n<table><thead><tr>{head}</tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table>{note}"
    )


def write_index(report: Report, images: list[pathlib.Path], out_dir: pathlib.Path, title: str):
    """One page with the plots (relative img src) and every report table."""
    ok = report.compliance is None or report.compliance.ok
    banner = html.escape(report.compliance.message) if report.compliance else ""
    imgs = "\n".join(
        f"<figure><img src='{html.escape(p.name)}' width='{WIDTH_PX}' height='{HEIGHT_PX}' "
        f"alt='{html.escape(p.stem)}'></figure>"
        for p in images
    )
    tables = "\n".join(_html_table(t) for t in report.tables)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>wit-stats: {html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; margin-bottom: 1em; }}
td, th {{ border: 1px solid #ccc; padding: 2px 8px; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }}
.ok {{ background: #dfd; padding: 0.5em; }} .fail {{ background: #fdd; padding: 0.5em; }}
.note {{ color: #555; }}
</style></head><body>
<h1>wit-stats: {html.escape(title)}</h1>
<p class="{"ok" if ok else "fail"}">{banner}</p>
{imgs}
{tables}
</body></html>
"""
    path = out_dir / "index.html"
    path.write_text(page, encoding="utf-8")
    return path


def write_plots(
    con: duckdb.DuckDBPyConnection, report: Report, cap: int, out_dir: pathlib.Path, title: str
) -> list[pathlib.Path]:
    """Write every PNG and index.html into out_dir; return the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    images = [
        plot_query_counts(con, cap, out_dir / "query_counts.png"),
        plot_caption_length(con, out_dir / "caption_length.png"),
        plot_image_size(con, out_dir / "image_size.png"),
        plot_status(report, out_dir / "status.png"),
    ]
    return images + [write_index(report, images, out_dir, title)]
