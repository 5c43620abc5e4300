"""wit-eval's results as the terminal shows them (text tables) and as it writes them (JSON)."""

from __future__ import annotations

import json
import math
import os

#: The two classifiers every robustness result holds.
KINDS = ("zeroshot", "probe")


def _fmt(key: str, value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float) and (key.startswith(("top", "mean_", "val_")) or "R@" in key):
        return f"{100 * value:.2f}%"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def format_table(results: dict[str, dict], keys: list[str]) -> str:
    """Metrics as rows, checkpoints as columns."""
    names = list(results)
    header = ["metric"] + [_short_name(n) for n in names]
    rows = [
        [k] + [_fmt(k, results[n].get(k)) for n in names]
        for k in keys
        if any(k in results[n] for n in names)
    ]
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]

    def line(r):
        cells = zip(r, widths, strict=True)
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(cells))

    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def _grid(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]

    def line(r):
        cells = zip(r, widths, strict=True)
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(cells))

    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def _pct(value) -> str:
    return _fmt("top1", value)


def _worth(res: dict) -> str:
    """`2.8`, or `< 1` / `> 16` outside the measured shots."""
    value, note = res["zeroshot_equivalent_shots"], res["zeroshot_equivalent"]
    if value is not None:
        return f"{value:.1f}"
    k = next((w for w in note.split() if w.split("-")[0].isdigit()), None)
    if k is None:
        return "-"
    return ("< " if note.startswith("below") else "> ") + k.split("-")[0]


def fewshot_table(results: dict[str, dict]) -> str:
    """Mean ± std top-1 per k for each checkpoint, zero-shot, and what zero-shot is worth."""
    names = list(results)
    first = results[names[0]]
    rows = [["zero-shot"] + [_pct(results[n]["zeroshot_top1"]) for n in names]]
    for key, suffix in (("fewshot", ""), ("zeroshot_prior", " + prior")):
        if key not in first:
            continue
        for i, k in enumerate(first["shots"]):
            cells = []
            for n in names:
                r = results[n][key][i]
                cells.append(f"{100 * r['top1_mean']:.2f} ± {100 * r['top1_std']:.2f}%")
            rows.append([f"{k}-shot{suffix}"] + cells)
    rows.append(["zero-shot = k shots"] + [_worth(results[n]) for n in names])
    return _grid(["top-1"] + [_short_name(n) for n in names], rows)


def robustness_table(report: dict) -> str:
    """Top-1 per set, zero-shot and probe side by side for each checkpoint."""
    res = report["results"]
    header = ["top-1"]
    for r in res:
        header += [f"{_short_name(r['checkpoint'])} zs", f"{_short_name(r['checkpoint'])} probe"]
    rows = [["in-distribution"] + [_pct(r[k]["in_distribution"]) for r in res for k in KINDS]]
    for s in report["shifts"]:
        rows.append(
            [s["name"]] + [_pct(r[k]["shifts"][s["name"]]["top1"]) for r in res for k in KINDS]
        )
    rows.append(["mean shifted"] + [_pct(r[k]["mean_shifted"]) for r in res for k in KINDS])
    rows.append(["mean drop"] + [_pct(r[k]["mean_drop"]) for r in res for k in KINDS])
    rows.append(
        ["eff. robustness"] + [_pct(r[k]["mean_effective_robustness"]) for r in res for k in KINDS]
    )
    return _grid(header, rows)


def _overlap_text(report: dict) -> str:
    lines = [
        f"eval images: {report['eval_images']} ({report['eval_hashed']} hashed), "
        f"training images: {report['train_images']} in {report['shards']} shard(s)",
        f"near-duplicates ({report['hash']}, Hamming <= {report['max_distance']}): "
        f"{report['eval_with_near_duplicate']} eval images "
        f"({100 * report['overlap_fraction']:.2f}%), {report['near_duplicate_pairs']} pairs",
    ]
    if report.get("per_class"):
        hits = {k: v for k, v in report["per_class"].items() if v}
        lines.append("per class: " + (", ".join(f"{k} {v}" for k, v in hits.items()) or "none"))
    for ex in report["examples"]:
        lines.append(
            f"  d={ex['distance']}  {ex['eval_image']}  <->  {ex.get('shard')}:"
            f"{ex.get('key')}  {ex.get('caption', '')[:60]!r}"
        )
    return "\n".join(lines)


def _short_name(path: str) -> str:
    """A column title: the file or run name, keeping a `random:` prefix visible."""
    prefix = "random:" if path.startswith("random:") else ""
    rest = path.removeprefix(prefix)
    return prefix + (os.path.basename(os.path.normpath(rest)) or rest)


# --- JSON output -------------------------------------------------------------------------


def write_json(path: str, obj: dict) -> None:
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, allow_nan=False, default=str)
        f.write("\n")
    os.replace(tmp, path)


def clean_json(obj):
    """NaN (a metric on an empty set) becomes null so the JSON stays standard."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): clean_json(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [clean_json(v) for v in obj]
    return obj
