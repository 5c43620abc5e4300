"""Pages/s of the page crawl (`--input-format pages`) on the local fixture web.

Starts `--hosts` FixtureWeb servers on 127.0.0.1 (each port is a separate host for the
politeness limits), each serving `--pages` HTML pages of `--images-per-page` real Flickr8k
captions with relative, absolute and srcset images. Times, on the same URL list:

- `crawl_host` per host in threads, as one worker runs it (no politeness delay);
- the `CrawlPages` Beam transform on the local multi-process runner, start-up included;
- the same with the default politeness (1 s between page requests to a host), on a
  shorter list, to show what the default costs;
- a plain sequential `requests.get` + `read_warc.images_in_html` loop: no guard, no
  robots.txt, no limits; the floor the guarded crawl is compared with.

    .venv/bin/python bench/bench_pages.py --hosts 8 --pages 50
"""

from __future__ import annotations

import argparse
import csv
import html
import os
import pathlib
import sys
import time
from concurrent.futures import ThreadPoolExecutor

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FLICKR = ROOT.parent / "shared" / "data" / "flickr8k-1k"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hosts", type=int, default=8)
    ap.add_argument("--pages", type=int, default=50, help="pages per host")
    ap.add_argument("--images-per-page", type=int, default=10)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--polite-pages", type=int, default=4, help="pages per host, polite run")
    return ap.parse_args(argv)


def captions() -> list[tuple[str, str]]:
    pairs: dict[str, str] = {}
    with open(FLICKR / "captions.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            pairs.setdefault(row["image"], row["caption"])
    return sorted(pairs.items())


def page_html(chunk: list[tuple[str, str]], base_url: str) -> str:
    tags = []
    for j, (name, text) in enumerate(chunk):
        alt = html.escape(text)
        if j % 3 == 0:
            tags.append(f'<img src="../images/{name}" alt="{alt}">')
        elif j % 3 == 1:
            tags.append(f'<img src="{base_url}/images/{name}" alt="{alt}">')
        else:
            tags.append(
                f'<img src="/images/s.jpg" srcset="/images/{name} 800w, /s.jpg 200w" alt="{alt}">'
            )
    return "<html><head><title>p</title></head><body>" + "\n".join(tags) + "</body></html>"


def start_webs(args, pairs):
    from pipeline.fixtures.web import FixtureWeb

    webs, urls = [], []
    k = args.images_per_page
    for h in range(args.hosts):
        web = FixtureWeb(image_dir=FLICKR / "images").start()
        for p in range(args.pages):
            start = ((h * args.pages + p) * k) % max(1, len(pairs) - k)
            web.pages[f"p{p}"] = page_html(pairs[start : start + k], web.base_url)
            urls.append(web.url(f"/pages/p{p}.html"))
        webs.append(web)
    return webs, urls


def options(page_delay: float):
    from pipeline.crawl import CrawlOptions
    from pipeline.fetch import FetchOptions

    fetch = FetchOptions(allowed_networks=("127.0.0.1/32",))
    return CrawlOptions(fetch=fetch, page_delay=page_delay)


def run_threads(urls, page_delay: float) -> tuple[int, int]:
    from pipeline.crawl import FETCHED, HostPacer, crawl_host, host_key
    from pipeline.fetch import Fetcher

    opts = options(page_delay)
    fetcher = Fetcher(opts.fetch)
    pacer = HostPacer()
    by_host: dict[str, list[str]] = {}
    for u in urls:
        by_host.setdefault(host_key(u), []).append(u)
    with ThreadPoolExecutor(opts.hosts_in_parallel) as pool:
        runs = pool.map(lambda kv: crawl_host(fetcher, pacer, kv[0], kv[1], opts), by_host.items())
        results = [r for run in runs for r in run]
    fetcher.close()
    return sum(r.status == FETCHED for r in results), sum(len(r.images) for r in results)


def run_beam(urls, processes: int) -> tuple[int, int]:
    import json
    import tempfile

    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.testing.util import assert_that

    from pipeline.crawl import FETCHED, CrawlPages

    tally = os.path.join(tempfile.mkdtemp(prefix="bench_pages_"), "tally.json")

    def record(rows):  # may run in a worker process: hand the totals back through a file
        fetched = sum(r["status"] == FETCHED for r in rows)
        with open(tally, "w") as fh:
            json.dump([fetched, sum(r["images_found"] for r in rows)], fh)

    beam_opts = PipelineOptions(
        [
            "--runner=FnApiRunner",
            "--direct_running_mode=multi_processing",
            f"--direct_num_workers={processes}",
        ]
    )
    with beam.Pipeline(options=beam_opts) as p:
        out = p | beam.Create(urls) | CrawlPages(options(0.0))
        assert_that(out["pages"], record)
    with open(tally) as fh:
        pages, images = json.load(fh)
    return pages, images


def run_plain(urls) -> tuple[int, int]:
    import requests

    from pipeline.read_warc import images_in_html

    pages = images = 0
    with requests.Session() as session:
        for u in urls:
            reply = session.get(u, timeout=10)
            if reply.ok and "html" in reply.headers.get("content-type", ""):
                pages += 1
                images += len(images_in_html(reply.content, u))
    return pages, images


def main(argv=None) -> int:
    args = parse_args(argv)
    if not (FLICKR / "captions.csv").exists():
        print(f"bench_pages: real captions not found under {FLICKR}", file=sys.stderr)
        return 2
    pairs = captions()
    webs, urls = start_webs(args, pairs)
    polite = [u for u in urls if int(u.rsplit("/p", 1)[1].split(".")[0]) < args.polite_pages]
    rows = []
    try:
        for label, fn, listed in (
            ("plain requests, sequential, unguarded", lambda: run_plain(urls), urls),
            ("crawl_host, threads, delay 0", lambda: run_threads(urls, 0.0), urls),
            (f"CrawlPages Beam, {args.processes} procs, delay 0",
             lambda: run_beam(urls, args.processes), urls),
            ("crawl_host, threads, default delay 1 s", lambda: run_threads(polite, 1.0), polite),
        ):  # fmt: skip
            t0 = time.perf_counter()
            pages, images = fn()
            seconds = time.perf_counter() - t0
            rows.append((label, len(listed), pages, images, seconds))
    finally:
        for web in webs:
            web.stop()
    print(f"{args.hosts} hosts (ports) on 127.0.0.1, {args.images_per_page} images a page\n")
    print(f"| {'run':44s} | {'listed':>6s} | {'fetched':>7s} | {'images':>6s} | "
          f"{'seconds':>7s} | {'pages/s':>7s} |")  # fmt: skip
    print(f"|{'-' * 46}|{'-' * 7}:|{'-' * 8}:|{'-' * 7}:|{'-' * 8}:|{'-' * 8}:|")
    for label, listed, pages, images, seconds in rows:
        print(
            f"| {label:44s} | {listed:6d} | {pages:7d} | {images:6d} | "
            f"{seconds:7.2f} | {pages / seconds:7.1f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
