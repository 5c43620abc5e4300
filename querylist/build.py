"""Merge the sources into one query list, cap it, and write parquet/txt/json.

Sources are merged in the CLIP paper's order (Wikipedia words, then bigrams, then
article titles, then WordNet synsets "not already in the query list"); an entry whose
case-folded form was already taken by an earlier source, or by a better-scored entry of
the same source, is a duplicate. The cap keeps that order too: source priority first,
then score.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from .normalize import has_word_character, normalize_query
from .source import SourceResult, SourceUnavailable

#: Merge priority: the order in which the CLIP paper adds the sources.
SOURCE_ORDER = ("unigrams", "bigrams", "titles", "wordnet")
#: MetaCLIP's published per-source counts for its 500k list (they sum to 500,000).
PAPER_COUNTS = {"unigrams": 251_465, "bigrams": 100_646, "titles": 61_235, "wordnet": 86_654}
DEFAULT_MAX_ENTRIES = 500_000

QUERYLIST_SCHEMA = pa.schema(
    [
        pa.field("query", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("score", pa.float64(), nullable=False),
    ]
)


@dataclass
class SourceStats:
    """What happened to one source's entries on their way into the list."""

    status: str = "ok"
    passed_threshold: int = 0
    invalid: int = 0
    duplicates: int = 0
    capped: int = 0
    entries: int = 0


def merge(results: list[SourceResult]) -> tuple[list[tuple[str, str, float]], dict]:
    """Deduplicate on the case-folded form across `results` (given in priority order).

    Each source lists its entries best first, so the first entry to claim a key keeps its
    display form and its source. Returns (rows, per-source SourceStats).
    """
    seen: set[str] = set()
    rows: list[tuple[str, str, float]] = []
    stats: dict[str, SourceStats] = {}
    for result in results:
        st = stats.setdefault(result.name, SourceStats())
        st.passed_threshold = len(result.entries)
        for query, score in result.entries:
            query = normalize_query(query)
            if not has_word_character(query):
                st.invalid += 1
                continue
            key = query.casefold()  # == fold_key(query), as query is normalised
            if key in seen:
                st.duplicates += 1
                continue
            seen.add(key)
            rows.append((query, result.name, float(score)))
            st.entries += 1
    return rows, stats


def cap(rows: list, max_entries: int, stats: dict) -> list:
    """The first `max_entries` rows (already in priority, then score, order)."""
    for _, source, _ in rows[max_entries:]:
        stats[source].capped += 1
        stats[source].entries -= 1
    return rows[:max_entries]


def _atomic_write(path: str, write: Callable[[str], None]) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    write(tmp)
    os.replace(tmp, path)


def write_outputs(out_dir: str, rows: list, report: dict) -> None:
    """querylist.parquet, querylist.txt and querylist.json in `out_dir`, each atomically."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {ext: os.path.join(out_dir, f"querylist.{ext}") for ext in ("parquet", "txt", "json")}
    table = pa.table(
        {
            "query": [r[0] for r in rows],
            "source": [r[1] for r in rows],
            "score": [r[2] for r in rows],
        },
        schema=QUERYLIST_SCHEMA,
    )
    _atomic_write(paths["parquet"], lambda p: pq.write_table(table, p))

    def write_txt(p: str) -> None:
        with open(p, "w", encoding="utf-8") as f:
            f.writelines(f"{r[0]}\n" for r in rows)

    def write_json(p: str) -> None:
        with open(p, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2, ensure_ascii=False, allow_nan=False)
            f.write("\n")

    _atomic_write(paths["txt"], write_txt)
    _atomic_write(paths["json"], write_json)


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _source_report(
    name: str, result: SourceResult | None, st: SourceStats, note: str, seconds: float
) -> dict:
    entry: dict = {
        "status": st.status,
        "entries": st.entries,
        "paper_entries": PAPER_COUNTS[name],
        "note": note,
    }
    if result is not None:
        entry.update(
            read=result.read,
            passed_threshold=st.passed_threshold,
            invalid=st.invalid,
            duplicates=st.duplicates,
            capped=st.capped,
            thresholds={k: _json_safe(v) for k, v in result.thresholds.items()},
            version=result.version,
            paths=result.paths,
            rejected=result.rejected,
            seconds=round(seconds, 2),
        )
    return entry


def build(
    loaders: dict[str, Callable[[], SourceResult]],
    out_dir: str,
    max_entries: int,
    log: Callable[[str], None] = print,
) -> dict:
    """Run each source's loader in SOURCE_ORDER, merge, cap and write; returns the report.

    A loader raising SourceUnavailable is reported as 0 entries with its reason and the
    build goes on with the rest; any other error (QueryListError) propagates to the CLI.
    Nothing is written when no source gives an entry (report["total"] == 0).
    """
    start = time.monotonic()
    names = [n for n in SOURCE_ORDER if n in loaders]
    results: dict[str, SourceResult] = {}
    missing: dict[str, str] = {}
    seconds: dict[str, float] = {}
    for name in names:
        t0 = time.monotonic()
        try:
            result = loaders[name]()
        except SourceUnavailable as e:
            missing[name] = f"{name}: 0 — {e}"
            log(missing[name])
            continue
        seconds[name] = time.monotonic() - t0
        results[name] = result
        log(
            f"{name}: {len(result.entries):,} of {result.read:,} candidates pass "
            f"{_format_thresholds(result.thresholds)} ({seconds[name]:.1f} s)"
        )
    rows, stats = merge(list(results.values()))
    rows = cap(rows, max_entries, stats)
    sources = {}
    for name in names:
        st = stats.get(name, SourceStats(status="unavailable"))
        note = missing[name] if name in missing else results[name].note
        sources[name] = _source_report(name, results.get(name), st, note, seconds.get(name, 0.0))
    report = {
        "wit_builder_version": _own_version(),
        "total": len(rows),
        "max_entries": max_entries,
        "order": names,
        "counts": {name: s["entries"] for name, s in sources.items()},
        "paper_counts": PAPER_COUNTS,
        "sources": sources,
        "outputs": {
            ext: os.path.join(out_dir, f"querylist.{ext}") for ext in ("parquet", "txt", "json")
        },
        "seconds": round(time.monotonic() - start, 2),
    }
    if rows:
        write_outputs(out_dir, rows, report)
    return report


def _own_version() -> str:
    try:
        return importlib.metadata.version("wit-builder")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _format_thresholds(thresholds: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in thresholds.items()) or "no threshold"


def summary_table(report: dict) -> str:
    """A fixed-width table: per source, candidates, threshold passes, duplicates, entries."""
    header = ("source", "read", "passed", "invalid", "dupes", "capped", "entries", "paper")
    lines = [header]
    for name, s in report["sources"].items():
        lines.append(
            (
                name,
                f"{s.get('read', 0):,}",
                f"{s.get('passed_threshold', 0):,}",
                f"{s.get('invalid', 0):,}",
                f"{s.get('duplicates', 0):,}",
                f"{s.get('capped', 0):,}",
                f"{s['entries']:,}",
                f"{PAPER_COUNTS.get(name, 0):,}",
            )
        )
    lines.append(
        ("total", "", "", "", "", "", f"{report['total']:,}", f"{sum(PAPER_COUNTS.values()):,}")
    )
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    out = []
    for row in lines:
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        out.append("  ".join(cells))
    out += [s["note"] for s in report["sources"].values() if s["status"] != "ok"]
    return "\n".join(out)
