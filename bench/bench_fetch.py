"""Images/s of our fetch + resize + write against img2dataset.download on the same URLs.

Serves the real Flickr8k photos from ../shared/data on a local FixtureWeb (127.0.0.1 only),
builds one URL list (each photo `--repeat` times, with a query string so no cache helps),
and runs both tools once with the same resize settings and the same number of processes
and threads. Ours is the `FetchAndWriteShards` Beam transform on Beam's local
multi-process runner, start-up included, as `wit-build` runs it.

    .venv/bin/python bench/bench_fetch.py --processes 2 --threads 16 --repeat 3

Prints a table; the goal is ours / img2dataset >= 0.9.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import pathlib
import sys
import tempfile
import time

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FLICKR = ROOT.parent / "shared" / "data" / "flickr8k-1k" / "images"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=1000, help="distinct photos to serve")
    ap.add_argument("--repeat", type=int, default=3, help="times each photo is listed")
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--resize-mode", default="keep_ratio")
    ap.add_argument("--shard-size", type=int, default=1000)
    ap.add_argument("--which", choices=["both", "ours", "img2dataset"], default="both")
    ap.add_argument("--local", action="store_true", help="also time our plain one-process path")
    return ap.parse_args(argv)


def url_list(web, names, repeat) -> list[tuple[str, str]]:
    return [
        (web.url(f"/images/{name}?r={r}"), f"photo {name} copy {r}")
        for r in range(repeat)
        for name in names
    ]


def run_img2dataset(urls, out, args) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from img2dataset import download

    listing = os.path.join(out, "urls.parquet")
    pq.write_table(
        pa.table({"url": [u for u, _ in urls], "caption": [c for _, c in urls]}), listing
    )
    download(
        url_list=listing,
        input_format="parquet",
        url_col="url",
        caption_col="caption",
        output_format="webdataset",
        output_folder=os.path.join(out, "shards"),
        processes_count=args.processes,
        thread_count=args.threads,
        image_size=args.image_size,
        resize_mode=args.resize_mode,
        number_sample_per_shard=args.shard_size,
        subjob_size=args.shard_size,
        extract_exif=False,  # we do not extract EXIF either
        timeout=10,
        retries=0,
        distributor="multiprocessing",
    )
    ok = 0
    for stats in glob.glob(os.path.join(out, "shards", "*_stats.json")):
        with open(stats) as fh:
            ok += json.load(fh)["successes"]
    return ok


def our_options(args):
    from pipeline.fetch import FetchOptions

    return FetchOptions(
        allow_private_addresses=True,
        threads=args.threads,
        per_host_connections=args.threads,  # one host serves everything here
        retries=0,
        read_timeout=10,
        image_size=args.image_size,
        resize_mode=args.resize_mode,
        min_image_size=0,
        max_aspect_ratio=float("inf"),
        shard_size=args.shard_size,
    )


def candidates(urls) -> list[dict]:
    out = []
    for url, caption in urls:
        uid = hashlib.sha256(f"{url}\n{caption}".encode()).hexdigest()
        out.append(
            dict(uid=uid, url=url, caption=caption, source="bench", status="kept", reason=None,
                 matched_queries=["photo"], selected_by=["photo"], shard=None, key=None)
        )  # fmt: skip
    return out


def run_ours_beam(urls, out, args) -> int:
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.write import FetchAndWriteShards, finalize_output

    argv = [
        "--runner=apache_beam.runners.portability.fn_api_runner.FnApiRunner",
        "--direct_running_mode=multi_processing",
        f"--direct_num_workers={args.processes}",
    ]
    with beam.Pipeline(options=PipelineOptions(argv)) as p:
        _ = p | beam.Create(candidates(urls)) | FetchAndWriteShards(out, our_options(args))
    return sum(s["samples"] for s in finalize_output(out))


def run_ours_local(urls, out, args) -> int:
    from pipeline.write import fetch_and_write_local

    rows = fetch_and_write_local(candidates(urls), out, our_options(args))
    return sum(r["status"] == "kept" for r in rows)


def main(argv=None) -> int:
    args = parse_args(argv)
    if not FLICKR.is_dir():
        print(f"bench_fetch: real photos not found at {FLICKR}", file=sys.stderr)
        return 2
    from pipeline.fixtures.web import FixtureWeb

    names = sorted(p.name for p in FLICKR.glob("*.jpg"))[: args.images]
    results = []
    with FixtureWeb(image_dir=FLICKR) as web, tempfile.TemporaryDirectory() as tmp:
        urls = url_list(web, names, args.repeat)
        runs = []
        if args.which in ("both", "img2dataset"):
            runs.append(("img2dataset.download", run_img2dataset))
        if args.which in ("both", "ours"):
            runs.append(("wit-builder FetchAndWriteShards (Beam)", run_ours_beam))
        if args.local:
            runs.append(("wit-builder plain, 1 process", run_ours_local))
        for label, fn in runs:
            out = os.path.join(tmp, label.split()[0] + str(len(results)))
            os.makedirs(out)
            start = time.perf_counter()
            ok = fn(urls, out, args)
            seconds = time.perf_counter() - start
            results.append((label, ok, seconds))
    base = next((r for r in results if r[0].startswith("img2dataset")), None)
    print(
        f"\n{len(urls)} URLs ({len(names)} Flickr8k photos x {args.repeat}), "
        f"{args.processes} processes x {args.threads} threads, "
        f"{args.resize_mode} {args.image_size}px, cpus={os.cpu_count()}\n"
    )
    print(
        f"| {'tool':40s} | {'images ok':>9s} | {'seconds':>8s} | {'images/s':>8s} | {'ratio':>5s} |"
    )
    print(f"|{'-' * 42}|{'-' * 10}:|{'-' * 9}:|{'-' * 9}:|{'-' * 6}:|")
    for label, ok, seconds in results:
        rate = ok / seconds
        ratio = f"{rate / (base[1] / base[2]):.2f}" if base else "-"
        print(f"| {label:40s} | {ok:9d} | {seconds:8.1f} | {rate:8.1f} | {ratio:>5s} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
