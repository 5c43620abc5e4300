"""Tables, verdict and plot for bench/ablation_balance.py: plain functions on its results.

Kept apart from the runner so that the docs section can be rendered, parsed and checked
(tests/test_ablation.py) without running the experiment.
"""

from __future__ import annotations

import re
import statistics
from pathlib import Path

CORPORA = ("unbalanced", "balanced")
GROUPS = ("head", "torso", "tail")
METRICS = ("top1", "mean_per_class_recall", "head", "torso", "tail")
METRIC_TITLES = {
    "top1": "top-1",
    "mean_per_class_recall": "mean per-class recall",
    "head": "head recall",
    "torso": "torso recall",
    "tail": "tail recall",
}
SECTION_BEGIN = "<!-- BEGIN ablation_balance: written by bench/ablation_balance.py -->"
SECTION_END = "<!-- END ablation_balance -->"


def mean_std(values: list[float]) -> dict:
    """Mean and sample standard deviation (None with fewer than two values)."""
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else None,
        "n": len(values),
    }


def summarize(runs: list[dict]) -> dict:
    """{corpus: {metric: {mean, std, n}}} over seeds."""
    return {
        corpus: {m: mean_std([r[m] for r in runs if r["corpus"] == corpus]) for m in METRICS}
        for corpus in CORPORA
        if any(r["corpus"] == corpus for r in runs)
    }


def fmt_pct(stat: dict) -> str:
    """`61.9 ± 1.2` in percent; `61.9` when there is no spread to show."""
    if stat["std"] is None:
        return f"{100 * stat['mean']:.1f}"
    return f"{100 * stat['mean']:.1f} ± {100 * stat['std']:.1f}"


def verdict(summary: dict) -> str:
    """One sentence on each metric: balanced minus unbalanced, and whether it beats the noise.

    A difference counts as real only when it exceeds the sum of the two standard
    deviations; with one seed no claim is made.
    """
    parts, any_std = [], False
    for m in METRICS:
        b, u = summary["balanced"][m], summary["unbalanced"][m]
        diff = 100 * (b["mean"] - u["mean"])
        if b["std"] is None or u["std"] is None:
            word = "one seed, no noise estimate"
        else:
            any_std = True
            noise = 100 * (b["std"] + u["std"])
            if abs(diff) <= noise:
                word = f"within the seed noise of {noise:.1f}"
            else:
                word = "balanced better" if diff > 0 else "balanced worse"
        parts.append(f"{METRIC_TITLES[m]} {diff:+.1f} points ({word})")
    head = "Balanced minus unbalanced: " + "; ".join(parts) + "."
    if not any_std:
        head += " Run with several seeds before drawing a conclusion."
    return head


def render_section(result: dict, plot_rel: str | None) -> str:
    """The marked Markdown section: settings, the table, the plot and the verdict."""
    s, c, summary = result["settings"], result["corpora"], result["summary"]
    load = result["load_average_5min"]
    seeds = ", ".join(str(x) for x in s["seeds"])
    lines = [
        SECTION_BEGIN,
        "",
        f"Run {result['finished_utc']} on {result['machine']} (5-minute load average "
        f"{load['start']:.1f} at the start, {load['end']:.1f} at the end), "
        f"{result['timing_s']['total']:.0f} s in all. Command: `{result['command']}`",
        "",
        f"Pool: {s['n_pairs']:,} pairs over {s['n_concepts']} concepts (Zipf exponent "
        f"{s['zipf_a']}, largest count {c['unbalanced']['cap']:,}, median "
        f"{c['median_count']:g}); test set {s['test_per_class']} images per concept. "
        f"Training: {s['steps']} steps of {s['batch_size']} "
        f"({s['steps'] * s['batch_size']:,} samples seen per run), seeds {seeds}.",
        "",
        "| corpus | cap t | pairs kept | epochs | "
        + " | ".join(METRIC_TITLES[m] for m in METRICS)
        + " |",
        "|---|---:|---:|---:|" + "---:|" * len(METRICS),
    ]
    for corpus in CORPORA:
        kept = c[corpus]["kept"]
        epochs = s["steps"] * s["batch_size"] / kept if kept else float("nan")
        cells = [fmt_pct(summary[corpus][m]) for m in METRICS]
        lines.append(
            f"| {corpus} | {c[corpus]['cap']:,} | {kept:,} | {epochs:.1f} | "
            + " | ".join(cells)
            + " |"
        )
    lines += [
        "",
        "Recall in percent, mean ± sample standard deviation over the seeds; chance is "
        f"{100 / s['n_concepts']:.1f}%.",
        "",
    ]
    if plot_rel:
        lines += [f"![balanced vs unbalanced]({plot_rel})", ""]
    lines += [verdict(summary), "", SECTION_END]
    return "\n".join(lines)


def replace_section(text: str, section: str) -> str:
    """`text` with the marked section replaced, or with it appended when there is none."""
    pattern = re.compile(re.escape(SECTION_BEGIN) + r".*?" + re.escape(SECTION_END), re.S)
    if pattern.search(text):
        return pattern.sub(lambda _: section, text, count=1)
    return text.rstrip("\n") + ("\n\n" if text.strip() else "") + section + "\n"


def parse_section_table(text: str) -> dict:
    """The table rows of the marked section: {corpus: {column title: cell text}}."""
    start, end = text.index(SECTION_BEGIN), text.index(SECTION_END)
    rows = [ln for ln in text[start:end].splitlines() if ln.startswith("|")]
    header = [h.strip() for h in rows[0].strip("|").split("|")]
    out = {}
    for row in rows[2:]:
        cells = [x.strip() for x in row.strip("|").split("|")]
        out[cells[0]] = dict(zip(header, cells, strict=True))
    return out


def plot_summary(summary: dict, path: Path, title: str) -> None:
    """Grouped bars (one group per metric) with seed std as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.6), dpi=110)
    width = 0.38
    for i, corpus in enumerate(CORPORA):
        means = [100 * summary[corpus][m]["mean"] for m in METRICS]
        errs = [100 * (summary[corpus][m]["std"] or 0.0) for m in METRICS]
        xs = [j + (i - 0.5) * width for j in range(len(METRICS))]
        ax.bar(xs, means, width, yerr=errs, capsize=3, label=corpus)
    ax.set_xticks(range(len(METRICS)), [METRIC_TITLES[m] for m in METRICS])
    ax.set_ylabel("recall (%)")
    ax.set_title(title, fontsize=10)
    ax.legend(frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
