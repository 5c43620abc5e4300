"""Benchmark: `wit-querylist count` pages/s per core on the real dump excerpt, extrapolated
to a full English Wikipedia dump on 16 cores.

Input: ../shared/data/wikipedia/enwiki-pages-articles-shortened.xml.bz2 (206 real pages,
106 articles, 5.7 MB of article wikitext), as it is (one bzip2 stream) and recompressed
here as a multistream file (a stream per 20 pages, as Wikimedia's
`pages-articles-multistream.xml.bz2` has a stream per 100), so that workers decompress.

    .venv/bin/python bench/bench_querylist_count.py [--workers N] [--repeat 3]

It reports, per run, wall time and pages/s, and the CPU seconds of the workers and of the
parent. Per-core figures use CPU seconds: this machine is shared, and CPU time is what a
core is charged whatever else runs. A breakdown by stage (decompress, XML, wikitext to
text, words) is measured in-process on the same pages.

The extrapolation uses three yardsticks, because the excerpt's articles are long ones
(54 kB of wikitext each, 4,400 words, against ~670 words for the average English
article): articles/s (pessimistic: it treats every article as this long), words/s, and
MB of XML per second.
"""

from __future__ import annotations

import argparse
import bz2
import os
import pathlib
import re
import sys
import tempfile
import time
from collections import Counter

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = pathlib.Path(os.environ.get("WIT_SHARED_DATA", ROOT.parent / "shared" / "data"))
DUMP = DATA / "wikipedia" / "enwiki-pages-articles-shortened.xml.bz2"

# English Wikipedia, for the extrapolation: articles and words from Wikipedia:Size of
# Wikipedia (April 2024: 6,816,939 articles, "over 4.5 billion words"); the compressed
# pages-articles dump is ~22 GB (July 2023: 22.14 GB), about 90-100 GB of XML.
FULL_ARTICLES = 6_700_000
FULL_WORDS = 4.5e9
FULL_XML_GB = 95
CORES = 16


def multistream_copy(src: pathlib.Path, dst: pathlib.Path, pages_per_stream: int = 20) -> None:
    xml = bz2.decompress(src.read_bytes())
    starts = [m.start() for m in re.finditer(rb"  <page>", xml)]
    cuts = [0, *starts[::pages_per_stream], xml.rfind(b"</mediawiki>"), len(xml)]
    with open(dst, "wb") as f:
        for a, b in zip(cuts, cuts[1:], strict=False):
            if b > a:
                f.write(bz2.compress(xml[a:b]))


def stages(path: pathlib.Path) -> dict[str, float]:
    """CPU seconds of each stage over the whole excerpt, in this process."""
    from querylist import dump, wikitext, words

    t = time.process_time()
    xml = bz2.decompress(path.read_bytes())
    out = {"decompress": time.process_time() - t}
    t = time.process_time()
    split = dump.split_pages(xml)
    pages = [dump.parse_page(p) for p in split.pages]
    out["xml"] = time.process_time() - t
    articles = [p for p in pages if p.ns == 0 and not p.redirect]
    t = time.process_time()
    texts = [wikitext.visible_text(p.text) for p in articles]
    out["wikitext"] = time.process_time() - t
    t = time.process_time()
    uni, bi = Counter(), Counter()
    for text in texts:
        words.count_into(text, uni, bi)
    out["words"] = time.process_time() - t
    out["xml_mb"] = len(xml) / 1e6
    return out


def run(dumps: list[str], workers: int) -> dict:
    from querylist.count import CountConfig, count

    with tempfile.TemporaryDirectory() as tmp:
        t = time.monotonic()
        s = count(CountConfig(dumps=dumps, out=tmp, workers=workers, progress=False))
        s["wall"] = time.monotonic() - t
    return s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeat", type=int, default=3, help="runs of each setting (best CPU)")
    args = ap.parse_args()
    if not DUMP.exists():
        sys.exit(f"bench_querylist_count: {DUMP} not found (the shared/data folder is absent)")
    import querylist.words  # noqa: F401 - Beam's import, once, outside the timings

    with tempfile.TemporaryDirectory() as tmp:
        ms = pathlib.Path(tmp) / "multistream.xml.bz2"
        multistream_copy(DUMP, ms)
        settings = [
            ("single stream, 1 worker", [str(DUMP)], 1),
            ("multistream, 1 worker", [str(ms)], 1),
            (f"multistream, {args.workers} workers", [str(ms)], args.workers),
        ]
        results = []
        for name, dumps, workers in settings:
            runs = [run(dumps, workers) for _ in range(args.repeat)]
            results.append((name, min(runs, key=lambda s: s["cpu_seconds"]["workers"])))
        st = min((stages(DUMP) for _ in range(args.repeat)), key=lambda d: d["wikitext"])

    first = results[0][1]
    pages, articles, words_n = first["pages"], first["articles"], first["tokens"]
    chars = first["wikitext_chars"]
    print(
        f"Input: {DUMP.name}: {pages} pages ({articles} articles, {first['redirects']} "
        f"redirects), {chars / 1e6:.1f} M chars of article wikitext, {words_n:,} words; "
        f"{st['xml_mb']:.1f} MB of XML, {DUMP.stat().st_size / 1e6:.2f} MB bzip2.\n"
    )
    print(
        "| run | wall s | pages/s (wall) | worker CPU s | parent CPU s | pages per worker CPU-s |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name, s in results:
        cpu = s["cpu_seconds"]
        print(
            f"| {name} | {s['wall']:.1f} | {s['pages'] / s['seconds']['count']:.1f} | "
            f"{cpu['workers']:.2f} | {cpu['parent']:.2f} | "
            f"{s['pages'] / cpu['workers']:.1f} |"
        )
    total = sum(st[k] for k in ("decompress", "xml", "wikitext", "words"))
    print("\nCPU seconds by stage over the excerpt, in one process:\n")
    print("| decompress | XML | wikitext to text | words and pairs | total |")
    print("|---:|---:|---:|---:|---:|")
    print(
        f"| {st['decompress']:.2f} | {st['xml']:.2f} | {st['wikitext']:.2f} | "
        f"{st['words']:.2f} | {total:.2f} |"
    )

    ms1 = results[1][1]  # multistream, 1 worker: the worker does every stage
    cpu = ms1["cpu_seconds"]["workers"]
    per_core = {
        "articles": articles / cpu,
        "words": words_n / cpu,
        "xml_mb": st["xml_mb"] / cpu,
    }
    print(
        f"\nPer core (multistream, 1 worker, {cpu:.2f} CPU s): {pages / cpu:.0f} pages/s, "
        f"{per_core['articles']:.0f} articles/s, {per_core['words'] / 1e3:.0f}k words/s, "
        f"{per_core['xml_mb']:.2f} MB of XML/s.\n"
    )
    print(f"Full English dump on {CORES} cores (multistream), by yardstick:\n")
    print("| yardstick | full dump | per core here | hours on 16 cores |")
    print("|---|---:|---:|---:|")
    rows = [
        ("articles/s (upper bound)", f"{FULL_ARTICLES / 1e6:.1f} M articles", "articles"),
        ("words/s", f"{FULL_WORDS / 1e9:.1f} G words", "words"),
        ("MB of XML/s", f"{FULL_XML_GB} GB of XML", "xml_mb"),
    ]
    full = {"articles": FULL_ARTICLES, "words": FULL_WORDS, "xml_mb": FULL_XML_GB * 1e3}
    for label, size, key in rows:
        hours = full[key] / per_core[key] / CORES / 3600
        print(f"| {label} | {size} | {per_core[key]:,.2f} | {hours:.1f} |")
    parent_mb_s = st["xml_mb"] / st["decompress"]
    print(
        f"\nA single-stream dump is decompressed by the parent alone at {parent_mb_s:.0f} MB "
        f"of XML/s: {FULL_XML_GB * 1e3 / parent_mb_s / 3600:.1f} h for {FULL_XML_GB} GB "
        "whatever the number of workers; the multistream dump spreads it over them."
    )


if __name__ == "__main__":
    main()
