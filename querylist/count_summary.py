"""The record `wit-querylist count` writes last (`count.json`): what was read, and the
lines it prints from it; a rerun over the same dumps and floors finds it and skips."""

from __future__ import annotations

import json
import os

SUMMARY = "count.json"


def input_record(path: str) -> dict:
    st = os.stat(path)
    return {"path": os.path.abspath(path), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def summary_lines(s: dict) -> list[str]:
    w, d, sec = s["written"], s["distinct"], s["seconds"]
    return [
        f"read {s['pages']:,} pages: {s['articles']:,} articles, {s['redirects']:,} redirects, "
        f"{s['other_namespaces']:,} in other namespaces; {s['tokens']:,} words",
        f"{sec['count']:.1f} s counting = {s['pages_per_s'] or 0:,.0f} pages/s "
        f"({s['articles_per_s'] or 0:,.0f} articles/s) on {s['settings']['workers']} workers, "
        f"{sec['merge']:.1f} s merging",
        f"wrote {w['unigrams']:,} of {d['unigrams']:,} words (>= {s['floors']['unigrams']}), "
        f"{w['bigrams']:,} of {d['bigrams']:,} pairs (>= {s['floors']['bigrams']}), "
        f"{w['titles']:,} titles to {os.path.dirname(s['outputs']['unigrams']) or '.'}",
    ] + (
        [
            f"skipped {s['skipped_articles']:,} article(s) whose wikitext did not parse, "
            f"e.g. {s['skipped_examples'][0]} (all in count.json)"
        ]
        if s.get("skipped_articles")
        else []
    )


def same_inputs(summary: dict, cfg) -> bool:
    """True when `summary` (a count.json) counted exactly `cfg.dumps` with `cfg`'s floors."""
    try:
        recorded = [{k: i[k] for k in ("path", "bytes", "mtime_ns")} for i in summary["inputs"]]
        return recorded == [input_record(p) for p in cfg.dumps] and summary["floors"] == (
            cfg.floors()
        )
    except (KeyError, TypeError, OSError):
        return False


def read_summary(out: str) -> dict | None:
    try:
        with open(os.path.join(out, SUMMARY), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
