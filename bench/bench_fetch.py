"""Images/s of our fetch + resize + write against img2dataset.download on the same URLs.

Serves real photos on a local FixtureWeb (127.0.0.1 only), builds one URL list (each photo
`--repeat` times, with a query string so no cache helps), and runs both tools once, side by
side, with the same resize settings and the same number of processes and threads. Ours is
the `FetchAndWriteShards` Beam transform on Beam's local multi-process runner, start-up
included, as `wit-build` runs it.

Two photo sets (`--set`):

- `flickr`: the 1,000 Flickr8k photos of ../shared/data/flickr8k-1k (about 500x375, small);
- `wallpapers`: the distinct large JPEGs of Debian's `plasma-workspace-wallpapers`
  (`apt-get install plasma-workspace-wallpapers`; 24 photos of 2.8-14.7 MP, baseline and
  progressive), where decoding and resizing dominate, as in img2dataset's CC12M runs.

    .venv/bin/python bench/bench_fetch.py --processes 2 --threads 16 --repeat 3
    .venv/bin/python bench/bench_fetch.py --set wallpapers --repeat 20
    .venv/bin/python bench/bench_fetch.py --set wallpapers --resize-only

`--resize-only` skips the network and times the resize step alone on the set, in this
process: img2dataset's `Resizer` (serial, as each img2dataset process resizes), ours with a
full decode, and ours with the reduced-size JPEG decode, on 1 and `--threads` threads, and
reports the reduced decode's PSNR against the full decode.

Prints tables; the goals are ours / img2dataset >= 1.0 on small photos, >= 1.5 on large ones.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import hashlib
import json
import os
import pathlib
import sys
import tempfile
import time
from collections import Counter

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FLICKR = ROOT.parent / "shared" / "data" / "flickr8k-1k" / "images"
WALLPAPERS = pathlib.Path("/usr/share/wallpapers")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--set", choices=["flickr", "wallpapers"], default="flickr")
    ap.add_argument("--images", type=int, default=1000, help="distinct photos to serve")
    ap.add_argument("--repeat", type=int, default=3, help="times each photo is listed")
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--resize-mode", default="keep_ratio")
    ap.add_argument("--shard-size", type=int, default=1000)
    ap.add_argument("--which", choices=["both", "ours", "img2dataset"], default="both")
    ap.add_argument("--local", action="store_true", help="also time our plain one-process path")
    ap.add_argument("--resize-only", action="store_true", help="time the resize step alone")
    ap.add_argument("--ours-first", action="store_true", help="run ours before img2dataset")
    return ap.parse_args(argv)


def wallpaper_dir(tmp: str) -> pathlib.Path | None:
    """The distinct wallpaper JPEGs (the package links one photo under many names), copied
    into tmp as wp-NN.jpg; None when the package is not installed."""
    if not WALLPAPERS.is_dir():
        return None
    seen: dict[str, pathlib.Path] = {}
    for path in sorted(WALLPAPERS.rglob("*.jpg")):
        if path.stat().st_size < 100_000:
            continue  # thumbnails and the small portrait crops
        data = path.read_bytes()
        seen.setdefault(hashlib.sha256(data).hexdigest(), path)
    folder = pathlib.Path(tmp) / "wallpapers"
    folder.mkdir()
    for i, path in enumerate(sorted(seen.values())):
        (folder / f"wp-{i:02d}.jpg").write_bytes(path.read_bytes())
    return folder


def photo_dir(args, tmp: str) -> pathlib.Path | None:
    return FLICKR if args.set == "flickr" else wallpaper_dir(tmp)


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


_POOL_RESIZER = None


def _pool_init(opts) -> None:
    global _POOL_RESIZER
    from pipeline.resize import ImageResizer

    _POOL_RESIZER = ImageResizer(opts, reduced_decode=False)


def _pool_resize(data: bytes) -> int:
    return len(_POOL_RESIZER(data).data or b"")


def resize_only(args, folder: pathlib.Path, names: list[str]) -> int:
    """The resize step alone: img2dataset's Resizer vs ours, and the reduced decode's PSNR."""
    import io
    from concurrent.futures import ThreadPoolExecutor

    import cv2
    import numpy as np
    from img2dataset.resizer import Resizer

    from pipeline.resize import ImageResizer, _inspect, psnr

    datas = [(folder / n).read_bytes() for n in names]
    opts = our_options(args)
    reference = Resizer(
        image_size=args.image_size, resize_mode=args.resize_mode, resize_only_if_bigger=False,
        encode_quality=opts.encode_quality, min_image_size=0, max_aspect_ratio=float("inf"),
    )  # fmt: skip
    full, fast = ImageResizer(opts, reduced_decode=False), ImageResizer(opts)

    def rate(fn, threads: int, rounds: int = 2) -> tuple[float, float]:
        """(images/s, CPU ms an image) of the best round; CPU time counts every thread."""
        best, cpu = float("inf"), 0.0
        for _ in range(rounds):
            start, cpu0 = time.perf_counter(), time.process_time()
            if threads == 1:
                for d in datas:
                    fn(d)
            else:
                with ThreadPoolExecutor(threads) as pool:
                    list(pool.map(fn, datas))
            wall = time.perf_counter() - start
            if wall < best:
                best, cpu = wall, time.process_time() - cpu0
        return len(datas) / best, 1000 * cpu / len(datas)

    from concurrent.futures import ProcessPoolExecutor

    procs = os.cpu_count() or 1
    with ProcessPoolExecutor(procs, initializer=_pool_init, initargs=(opts,)) as pool:
        list(pool.map(_pool_resize, datas[:procs]))  # start-up excluded
        start = time.perf_counter()
        list(pool.map(_pool_resize, datas))
        pool_rate = (len(datas) / (time.perf_counter() - start), float("nan"))
    rows = [
        ("img2dataset Resizer (serial, as in img2dataset)", rate(lambda d: reference(io.BytesIO(d)), 1)),
        (f"ours, full decode, process pool of {procs}", pool_rate),
        ("ours, full decode, 1 thread", rate(full, 1)),
        (f"ours, full decode, {args.threads} threads", rate(full, args.threads)),
        ("ours, reduced decode, 1 thread", rate(fast, 1)),
        (f"ours, reduced decode, {args.threads} threads", rate(fast, args.threads)),
    ]  # fmt: skip
    base = rows[0][1][0]
    print(f"\nresize only: {len(datas)} photos of {args.set}, {args.resize_mode} "
          f"{args.image_size}px, JPEG q{opts.encode_quality}, cpus={os.cpu_count()}, "
          f"load {os.getloadavg()[0]:.1f}\n")  # fmt: skip
    print(f"| {'resizer':48s} | {'images/s':>8s} | {'ratio':>5s} | {'CPU ms/image':>12s} |")
    print(f"|{'-' * 50}|{'-' * 9}:|{'-' * 6}:|{'-' * 13}:|")
    for label, (r, cpu) in rows:
        cpu_text = "-" if cpu != cpu else f"{cpu:.1f}"
        print(f"| {label:48s} | {r:8.1f} | {r / base:5.2f} | {cpu_text:>12s} |")

    def pixels(data: bytes):
        return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)

    lossless = ImageResizer(dataclasses.replace(opts, encode_format="png", encode_quality=1))
    lossless_full = ImageResizer(lossless.options, reduced_decode=False)
    scores, scales = [], []
    for d in datas:
        scales.append(lossless._reduction(_inspect(d)))
        scores.append(psnr(pixels(lossless(d).data), pixels(lossless_full(d).data)))
    finite = [s for s in scores if s != float("inf")] or [float("inf")]
    print(f"\nreduced vs full decode, final {args.image_size}px pixels (PNG, no encoder loss): "
          f"PSNR min {min(finite):.1f} dB, median {float(np.median(finite)):.1f} dB; "
          f"decode scale per photo: {dict(sorted(Counter(scales).items()))}")  # fmt: skip
    return 0


def tar_images(folder: str) -> dict[str, bytes]:
    """caption -> image bytes over every WebDataset tar under folder (both tools write
    `KEY.jpg` next to `KEY.txt`)."""
    import tarfile

    out: dict[str, bytes] = {}
    for path in glob.glob(os.path.join(folder, "**", "*.tar"), recursive=True):
        members: dict[str, dict[str, bytes]] = {}
        with tarfile.open(path) as tar:
            for info in tar:
                if info.isfile() and not os.path.basename(info.name).startswith("."):
                    key, _, ext = info.name.rpartition(".")
                    members.setdefault(key, {})[ext] = tar.extractfile(info).read()
        for parts in members.values():
            if "jpg" in parts and "txt" in parts:
                out[parts["txt"].decode("utf-8")] = parts["jpg"]
    return out


def compare_outputs(ours: str, theirs: str) -> str:
    """How far our images are from img2dataset's for the same URLs: identical count, PSNR."""
    import cv2
    import numpy as np

    from pipeline.resize import psnr

    a, b = tar_images(ours), tar_images(theirs)
    common = sorted(set(a) & set(b))
    same = sum(a[c] == b[c] for c in common)
    scores = []
    for caption in common:
        if a[caption] != b[caption]:
            x, y = (cv2.imdecode(np.frombuffer(d, np.uint8), cv2.IMREAD_UNCHANGED)
                    for d in (a[caption], b[caption]))  # fmt: skip
            scores.append(psnr(x, y) if x.shape == y.shape else float("-inf"))
    text = f"output vs img2dataset's: {len(common)} images compared, {same} byte-identical"
    if scores:
        text += (f"; the others PSNR min {min(scores):.1f} dB, "
                 f"median {float(np.median(scores)):.1f} dB")  # fmt: skip
    return text


def main(argv=None) -> int:
    args = parse_args(argv)
    from pipeline.fixtures.web import FixtureWeb

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = photo_dir(args, tmp)
        if folder is None or not folder.is_dir():
            where = FLICKR if args.set == "flickr" else WALLPAPERS
            print(f"bench_fetch: real photos not found at {where}", file=sys.stderr)
            return 2
        names = sorted(p.name for p in folder.glob("*.jpg"))[: args.images]
        if args.resize_only:
            return resize_only(args, folder, names)
        with FixtureWeb(image_dir=folder) as web:
            urls = url_list(web, names, args.repeat)
            runs = []
            if args.which in ("both", "img2dataset"):
                runs.append(("img2dataset.download", run_img2dataset))
            if args.which in ("both", "ours"):
                runs.append(("wit-builder FetchAndWriteShards (Beam)", run_ours_beam))
            if args.local:
                runs.append(("wit-builder plain, 1 process", run_ours_local))
            if args.ours_first:
                runs.reverse()
            folders = {}
            for label, fn in runs:
                out = os.path.join(tmp, label.split()[0] + str(len(results)))
                os.makedirs(out)
                start = time.perf_counter()
                ok = fn(urls, out, args)
                seconds = time.perf_counter() - start
                results.append((label, ok, seconds))
                folders[label.split()[0]] = out
            quality = None
            if {"img2dataset.download", "wit-builder"} <= set(folders):
                quality = compare_outputs(folders["wit-builder"], folders["img2dataset.download"])
    base = next((r for r in results if r[0].startswith("img2dataset")), None)
    kind = "Flickr8k photos" if args.set == "flickr" else "Debian wallpaper JPEGs"
    print(
        f"\n{len(urls)} URLs ({len(names)} {kind} x {args.repeat}), "
        f"{args.processes} processes x {args.threads} threads, "
        f"{args.resize_mode} {args.image_size}px, cpus={os.cpu_count()}, "
        f"load {os.getloadavg()[0]:.1f}\n"
    )
    print(
        f"| {'tool':40s} | {'images ok':>9s} | {'seconds':>8s} | {'images/s':>8s} | {'ratio':>5s} |"
    )
    print(f"|{'-' * 42}|{'-' * 10}:|{'-' * 9}:|{'-' * 9}:|{'-' * 6}:|")
    for label, ok, seconds in results:
        rate = ok / seconds
        ratio = f"{rate / (base[1] / base[2]):.2f}" if base else "-"
        print(f"| {label:40s} | {ok:9d} | {seconds:8.1f} | {rate:8.1f} | {ratio:>5s} |")
    if quality:
        print(f"\n{quality}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
