"""Benchmark: language-ID backends on real short alt-text (English kept, other languages rejected).

Sets: built by bench/build_lid_sets.py from translated Debian docs (GIMP manual,
LibreOffice help, Debian Reference: image alt text, figure/table titles, headings) plus
the CC3M and Flickr8k captions of ../shared/data; split into a tuning half and a held-out
half by a hash of the text. This script reports the held-out half (``--split test``) by
default; the cascade's thresholds were chosen on the tuning half (``--tune``).

For each backend, with the job's own rule (``LanguageIdentifier.rejection``):
- English kept: overall (docs + captions), docs strings, <= 3 words, CC3M, Flickr8k;
- non-English rejected: overall, <= 3 words, and per language;
- CPU µs per caption over the labelled split and over the LAION-style sample of
  ../shared/data (unlabelled web captions: a realistic mix);
- load time (wall) and resident memory added by loading the backend, each backend in a
  fresh process.

    .venv/bin/python bench/build_lid_sets.py            # once (needs the Debian packages)
    .venv/bin/python bench/bench_lid.py [--split test] [--backends fasttext langdetect cascade]
    .venv/bin/python bench/bench_lid.py --tune           # the cascade's grid, tuning half
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import multiprocessing
import os
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from build_lid_sets import DEFAULT_OUT  # noqa: E402

CAPTION_SOURCES = ("cc3m", "flickr8k")
# Issue 19's examples of short English alt-text: a setting that rejects one is not chosen.
ISSUE_ENGLISH = (
    "Edge detect", "Pencil tool", "Tutorial Step 5", "pug puppy in a hat",
    "Examples of gradient shapes", "a snowy egret flying over a lagoon",
)  # fmt: skip
GOAL = {"en": 0.99, "en_short": 0.99, "non_en": 0.97, "us": 30.0}


def load_split(sets: pathlib.Path, split: str) -> list[tuple[str, str, str]]:
    path = sets / f"{split}.tsv"
    if not path.exists():
        raise SystemExit(
            f"{path} is missing: run bench/build_lid_sets.py first (it needs the Debian "
            "packages named in its docstring)"
        )
    rows = []
    for line in open(path, encoding="utf-8"):
        src, lang, text = line.rstrip("\n").split("\t", 2)
        rows.append((src, lang, text))
    return rows


def load_web(sets: pathlib.Path) -> list[str]:
    path = sets / "web.tsv"
    if not path.exists():
        return []
    return [line.rstrip("\n").split("\t", 2)[2] for line in open(path, encoding="utf-8")]


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def short(text: str) -> bool:
    return len(text.split()) <= 3


def summarize(rows, verdicts) -> dict:
    """Shares kept/rejected per group from (row, rejection reason or None) pairs."""
    groups: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    per_lang: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    reasons: collections.Counter = collections.Counter()

    def add(name, hit):
        groups[name][0] += hit
        groups[name][1] += 1

    for (src, lang, text), reason in zip(rows, verdicts, strict=True):
        if lang == "en":
            kept = reason is None
            add("en", kept)
            add("en_caption" if src in CAPTION_SOURCES else "en_docs", kept)
            if src in CAPTION_SOURCES:
                add(f"en_{src}", kept)
            if short(text):
                add("en_short", kept)
        else:
            rejected = reason is not None
            add("non_en", rejected)
            if short(text):
                add("non_en_short", rejected)
            per_lang[lang][0] += rejected
            per_lang[lang][1] += 1
            if rejected:
                reasons[reason.split(":")[0] if ":" in reason else "language"] += 1
    share = {k: (a / b if b else float("nan"), b) for k, (a, b) in groups.items()}
    langs = {k: (a / b, b) for k, (a, b) in sorted(per_lang.items())}
    return {"share": share, "per_language": langs, "reject_signals": dict(reasons)}


def run_backend(backend: str, sets: str, split: str, limit: int | None, queue) -> None:
    """In a fresh process: load, time, classify; puts a result dict on the queue."""
    from pipeline.lid import LanguageIdentifier

    rows = load_split(pathlib.Path(sets), split)
    web = load_web(pathlib.Path(sets))
    if limit:
        rows = rows[:: max(1, len(rows) // limit)]
        web = web[: max(1, limit // 4)]
    before = rss_mib()
    t0 = time.perf_counter()
    lid = LanguageIdentifier(backend)
    load_s = time.perf_counter() - t0
    mem = rss_mib() - before
    texts = [t for _, _, t in rows]
    start = time.process_time()
    verdicts = [lid.rejection(t) for t in texts]
    us_labelled = 1e6 * (time.process_time() - start) / len(texts)
    us_groups = {}
    for name, pick in (
        ("en_docs", lambda r: r[1] == "en" and r[0] not in CAPTION_SOURCES),
        ("en_caption", lambda r: r[0] in CAPTION_SOURCES),
        ("non_en", lambda r: r[1] != "en"),
    ):
        sub = [t for r, t in zip(rows, texts, strict=True) if pick(r)]
        start = time.process_time()
        for t in sub:
            lid.rejection(t)
        us_groups[name] = 1e6 * (time.process_time() - start) / max(1, len(sub))
    us_web, web_kept = float("nan"), float("nan")
    if web:
        start = time.process_time()
        web_verdicts = [lid.rejection(t) for t in web]
        us_web = 1e6 * (time.process_time() - start) / len(web)
        web_kept = sum(v is None for v in web_verdicts) / len(web)
    out = summarize(rows, verdicts)
    out.update(
        backend=backend, load_s=load_s, mem_mib=mem, us_labelled=us_labelled, us_web=us_web,
        us_groups=us_groups, web_kept=web_kept, n=len(rows), n_web=len(web),
    )  # fmt: skip
    queue.put(out)


def measure(backend: str, sets: pathlib.Path, split: str, limit: int | None) -> dict:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=run_backend, args=(backend, str(sets), split, limit, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def pct(x: float) -> str:
    return f"{100 * x:.1f}%" if x == x else "-"


def print_tables(results: list[dict], split: str, sets: pathlib.Path) -> None:
    r0 = results[0]
    sh = r0["share"]
    print(f"Sets: {sets} ({split} half). English: {sh['en'][1]:,} "
          f"(docs {sh['en_docs'][1]:,}, of which <= 3 words {sh['en_short'][1]:,}; "
          f"CC3M {sh.get('en_cc3m', (0, 0))[1]:,}, Flickr8k {sh.get('en_flickr8k', (0, 0))[1]:,}); "
          f"non-English: {sh['non_en'][1]:,} in {len(r0['per_language'])} languages "
          f"(<= 3 words {sh['non_en_short'][1]:,}); web mix (LAION-style, unlabelled): {r0['n_web']:,}")  # fmt: skip
    print()
    cols = ["backend", "EN kept", "EN docs", "EN <=3 w", "CC3M", "Flickr8k", "non-EN rej",
            "non-EN <=3 w", "us/caption", "us web", "load s", "mem MiB", "goal"]  # fmt: skip
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in results:
        s = r["share"]
        met = (
            s["en"][0] >= GOAL["en"]
            and s["en_short"][0] >= GOAL["en_short"]
            and s["non_en"][0] >= GOAL["non_en"]
            and r["us_labelled"] <= GOAL["us"]
        )
        cells = [
            r["backend"], pct(s["en"][0]), pct(s["en_docs"][0]), pct(s["en_short"][0]),
            pct(s.get("en_cc3m", (float("nan"),))[0]), pct(s.get("en_flickr8k", (float("nan"),))[0]),
            pct(s["non_en"][0]), pct(s["non_en_short"][0]), f"{r['us_labelled']:.1f}",
            f"{r['us_web']:.1f}", f"{r['load_s']:.2f}", f"{r['mem_mib']:.0f}",
            "met" if met else "not met",
        ]  # fmt: skip
        print("| " + " | ".join(cells) + " |")
    print()
    print("Non-English rejected per language (n = strings in this half):")
    print()
    print("| lang | n | " + " | ".join(r["backend"] for r in results) + " |")
    print("|" + "---|" * (2 + len(results)))
    for lang, (_, n) in r0["per_language"].items():
        cells = [pct(r["per_language"][lang][0]) for r in results]
        print(f"| {lang} | {n:,} | " + " | ".join(cells) + " |")
    print()
    for r in results:
        g = r["us_groups"]
        sig = ", ".join(f"{k} {v:,}" for k, v in sorted(r["reject_signals"].items()))
        print(f"{r['backend']}: us/caption English docs {g['en_docs']:.1f}, captions "
              f"{g['en_caption']:.1f}, non-English {g['non_en']:.1f}; web mix kept "
              f"{pct(r['web_kept'])}; non-English rejected by: {sig}")  # fmt: skip


# --- tuning (the cascade's thresholds, on the tuning half only) ---


def tune(sets: pathlib.Path) -> None:
    import functools

    from pipeline import lid_cascade as lc

    rows = load_split(sets, "tune")
    texts = [t for _, _, t in rows]
    t0 = time.perf_counter()
    excess = lc.english_excess(1.5)
    print(f"wordfreq excess table: {len(excess):,} words, {time.perf_counter() - t0:.0f} s")
    base = lc.Cascade(lc.CascadeParams(), vocabulary=lc.Vocabulary(lc.CascadeParams(), frozenset()))
    ft = functools.cache(base._fasttext)
    cld = functools.cache(base._cld2)
    cld_best = functools.cache(base._cld2_best)
    grid_vocab = {
        "margin": (1.5, 2.0, 2.5),
        "min_zipf": (1.5, 2.0),
        "part_zipf": (3.0, 3.5),
        "min_part": (4, 99),  # 99: no compounds
    }
    grid_rule = {
        "known_share": (0.5, 0.6, 0.75),
        "fasttext_reject": (0.5, 0.7, 0.9),
        "fasttext_keep": (0.3, 0.5, 0.6),
    }
    results = []
    for vals in itertools.product(*grid_vocab.values()):
        v = dict(zip(grid_vocab, vals, strict=True))
        margin = v.pop("margin")
        excluded = frozenset(w for w, e in excess.items() if e >= margin)
        vocab = lc.Vocabulary(lc.CascadeParams(**v), excluded)
        for rvals in itertools.product(*grid_rule.values()):
            params = lc.CascadeParams(**v, **dict(zip(grid_rule, rvals, strict=True)))
            c = lc.Cascade.__new__(lc.Cascade)
            c.params, c.vocabulary, c._fasttext, c._cld2 = params, vocab, ft, cld
            c._cld2_best = cld_best
            if any(c.rejection(t) is not None for t in ISSUE_ENGLISH):
                continue
            s = summarize(rows, [c.rejection(t) for t in texts])["share"]
            results.append((margin, params, s))

    def slack(s) -> float:
        """The smallest distance above the goals: the choice is the setting that keeps the
        most room on its tightest goal, so that the held-out half is least likely to miss."""
        return min(s["en"][0] - GOAL["en"], s["en_short"][0] - GOAL["en_short"],
                   s["non_en"][0] - GOAL["non_en"])  # fmt: skip

    def total(s) -> float:
        return s["en"][0] + s["en_short"][0] + s["non_en"][0]

    # Ties (within 0.1 point of the tightest goal) go to the best total.
    results.sort(key=lambda r: (-round(slack(r[2]), 3), -total(r[2])))
    ok = [r for r in results if slack(r[2]) >= 0]
    n = len(list(itertools.product(*grid_vocab.values(), *grid_rule.values())))
    print(f"{n} settings, {len(results)} keep the issue's English examples, {len(ok)} of them "
          "meet the goals on the tuning half; best first:")  # fmt: skip
    for margin, params, s in results[:15]:
        print(f"margin {margin} {params}: slack {100 * slack(s):.2f} points, "
              f"EN {pct(s['en'][0])}, EN<=3 {pct(s['en_short'][0])}, "
              f"docs {pct(s['en_docs'][0])}, non-EN {pct(s['non_en'][0])}, "
              f"non-EN<=3 {pct(s['non_en_short'][0])}")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", type=pathlib.Path, default=DEFAULT_OUT)
    ap.add_argument("--split", default="test", choices=["test", "tune"])
    ap.add_argument("--backends", nargs="+", default=["fasttext", "langdetect", "cascade"])
    ap.add_argument("--limit", type=int, help="classify about this many labelled strings only")
    ap.add_argument("--json", type=pathlib.Path, help="also write the results here")
    ap.add_argument(
        "--tune", action="store_true", help="grid-search the cascade on the tuning half"
    )
    args = ap.parse_args()
    if args.tune:
        tune(args.sets)
        return
    results = [measure(b, args.sets, args.split, args.limit) for b in args.backends]
    print_tables(results, args.split, args.sets)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
