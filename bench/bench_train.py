"""Training throughput: wit-train against open_clip's trainer on the same shards.

Both trainers get the same WebDataset shards, the same model architecture (our flat
config, translated to open_clip's nested one), the same batch size, precision, worker
count and number of steps, and OpenAI's tokenizer. Each runs once, as a subprocess;
the table shows steady-state samples/s (the mean of the trainers' own log lines after
the first one) and the wall time of the whole command.

    .venv/bin/python bench/bench_train.py                       # synthetic shards, CPU
    .venv/bin/python bench/bench_train.py --shards 'OUT/shards/*.tar' --model ViT-B-32 \\
        --precision bf16 --device cuda --batch-size 256 --steps 200   # on a GPU machine

open_clip's trainer is driven through a two-line wrapper that registers our config
with `open_clip.add_model_config`, so its own `open_clip_train.main.main` does the work.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pathlib
import random
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: A small ViT-CLIP that trains at a useful speed on a few CPU cores.
BENCH_CPU_CONFIG = {
    "embed_dim": 128,
    "quick_gelu": True,
    "image_size": 32,
    "vision_layers": 2,
    "vision_width": 128,
    "vision_patch_size": 8,
    "vision_heads": 2,
    "context_length": 77,
    "vocab_size": 49408,
    "text_width": 128,
    "text_heads": 2,
    "text_layers": 2,
}

#: Registers our config, then runs open_clip's own main(). The one patch: with
#: webdataset 0.2.111, `tar_file_expander` yields an empty dict at the end of each shard,
#: which open_clip 3.3.0's `group_by_keys_nothrow` indexes and fails on (KeyError 'fname');
#: turning that end marker off restores the behaviour open_clip was written for.
OPEN_CLIP_WRAPPER = (
    "import sys, functools, open_clip, open_clip_train.data as d; "
    "d.tar_file_expander = functools.partial(d.tar_file_expander, eof_value=None); "
    "open_clip.add_model_config(sys.argv.pop(1)); "
    "from open_clip_train.main import main; main(sys.argv[1:])"
)


def to_open_clip_config(cfg: dict) -> dict:
    """Our flat config as open_clip's nested one (ViT and ModifiedResNet towers)."""
    resnet = isinstance(cfg["vision_layers"], (list, tuple))
    vision = {
        "image_size": cfg["image_size"],
        "layers": cfg["vision_layers"],
        "width": cfg["vision_width"],
    }
    if resnet:
        vision["head_width"] = 64
    else:
        vision["patch_size"] = cfg["vision_patch_size"]
        vision["head_width"] = cfg["vision_width"] // cfg["vision_heads"]
    return {
        "embed_dim": cfg["embed_dim"],
        "quick_gelu": bool(cfg.get("quick_gelu", True)),
        "vision_cfg": vision,
        "text_cfg": {
            "context_length": cfg["context_length"],
            "vocab_size": cfg["vocab_size"],
            "width": cfg["text_width"],
            "heads": cfg["text_heads"],
            "layers": cfg["text_layers"],
        },
    }


def write_synthetic_shards(out: pathlib.Path, n: int, per_shard: int, size: int) -> str:
    """Coloured-shape images with captions, as wit-build lays out OUT/shards + sizes.json."""
    from PIL import Image, ImageDraw

    colors = {
        "red": (220, 40, 40),
        "green": (40, 180, 60),
        "blue": (40, 70, 220),
        "yellow": (230, 210, 40),
    }
    shapes = ("circle", "square", "triangle")
    rng = random.Random(0)
    (out / "shards").mkdir(parents=True, exist_ok=True)
    sizes = {}
    for s in range((n + per_shard - 1) // per_shard):
        name = f"{s:05d}.tar"
        count = min(per_shard, n - s * per_shard)
        with tarfile.open(out / "shards" / name, "w") as tar:
            for i in range(count):
                color, shape = rng.choice(list(colors)), rng.choice(shapes)
                img = Image.new("RGB", (size, size), (128, 128, 128))
                d, r = ImageDraw.Draw(img), size // 4
                c = rng.randint(r, size - r)
                box = [c - r, c - r, c + r, c + r]
                if shape == "circle":
                    d.ellipse(box, fill=colors[color])
                elif shape == "square":
                    d.rectangle(box, fill=colors[color])
                else:
                    d.polygon([(c, c - r), (c - r, c + r), (c + r, c + r)], fill=colors[color])
                buf = io.BytesIO()
                img.save(buf, format="JPEG", quality=90)
                key = f"{s:05d}{i:011d}"
                for ext, data in (("jpg", buf.getvalue()), ("txt", f"a {color} {shape}".encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        sizes[name] = count
    (out / "sizes.json").write_text(json.dumps(sizes))
    last = len(sizes) - 1
    return str(out / "shards" / f"{{00000..{last:05d}}}.tar")


def shard_count(pattern: str) -> int:
    from train.data import expand_shards, shard_sizes

    return sum(shard_sizes(expand_shards(pattern)).values())


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_timed(cmd: list[str], env: dict, log: pathlib.Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the command and its loader workers)."""
    start, cpu = time.perf_counter(), children_cpu_s()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
    wall, cpu = time.perf_counter() - start, children_cpu_s() - cpu
    if proc.returncode != 0:
        tail = log.read_text()[-3000:]
        raise SystemExit(f"bench: {cmd[2]} failed (exit {proc.returncode}); log tail:\n{tail}")
    return wall, cpu


def steady(values: list[float]) -> float:
    """Mean throughput without the first log window (start-up, first-batch latency)."""
    values = values[1:] if len(values) > 1 else values
    return sum(values) / len(values) if values else float("nan")


def bench_ours(args, shards, config_path, work, env) -> dict:
    run = work / "ours"
    shutil.rmtree(run, ignore_errors=True)
    cmd = [
        sys.executable, "-m", "train.cli_train", "--shards", shards, "--model", str(config_path),
        "--out", str(run), "--steps", str(args.steps), "--batch-size", str(args.batch_size),
        "--precision", args.precision, "--workers", str(args.workers), "--device", args.device,
        "--log-every", str(args.log_every), "--save-every", str(args.steps), "--warmup", "10",
        "--tokenizer", "openai", "--no-progress", "--no-tensorboard",
    ]  # fmt: skip
    wall, cpu = run_timed(cmd, env, work / "ours.log")
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    sps = [r["samples_per_s"] for r in rows if "samples_per_s" in r and r["step"] > 1]
    return {"samples_per_s": steady(sps), "wall_s": wall, "cpu_s": cpu, "steps": rows[-1]["step"]}


#: open_clip's "Batch (t)" is the mean step time since the previous log line (its "/s"
#: figure uses the last step only), so batch / Batch(t) matches our window average.
OPEN_CLIP_BATCH_TIME = re.compile(r"Batch \(t\): ([\d.]+),")
OPEN_CLIP_PRECISION = {"fp32": "fp32", "bf16": "amp_bf16", "fp16": "amp"}


def bench_open_clip(args, shards, config_dir, name, work, env) -> dict:
    samples = args.steps * args.batch_size
    cmd = [
        sys.executable, "-c", OPEN_CLIP_WRAPPER, str(config_dir),
        "--train-data", shards, "--dataset-type", "webdataset",
        "--train-num-samples", str(samples), "--epochs", "1", "--model", name,
        "--batch-size", str(args.batch_size), "--precision", OPEN_CLIP_PRECISION[args.precision],
        "--workers", str(args.workers), "--log-every-n-steps", str(args.log_every),
        "--warmup", "10", "--lr", "5e-4", "--wd", "0.1", "--seed", "0",
        "--logs", str(work / "open_clip_logs"), "--name", "bench", "--save-frequency", "1",
        "--report-to", "", "--device", "cuda" if args.device.startswith("cuda") else "cpu",
    ]  # fmt: skip
    if args.device == "auto":
        cmd = cmd[:-2]
    wall, cpu = run_timed(cmd, env, work / "open_clip.log")
    text = (work / "open_clip.log").read_text()
    rates = [args.batch_size / float(t) for t in OPEN_CLIP_BATCH_TIME.findall(text) if float(t) > 0]
    return {"samples_per_s": steady(rates), "wall_s": wall, "cpu_s": cpu}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--shards", help="shard pattern (default: write synthetic shards)")
    p.add_argument("--model", default=None, help="config name/JSON (default: a small CPU ViT)")
    p.add_argument("--samples", type=int, default=2048, help="synthetic samples to write")
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--log-every", type=int, default=4)
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeat", type=int, default=1, help="runs per trainer, alternating order")
    p.add_argument("--keep", default=None, help="work folder to keep (default: a temp folder)")
    args = p.parse_args(argv)

    from train import load_config

    cfg = load_config(args.model) if args.model else dict(BENCH_CPU_CONFIG)
    cfg = {k: v for k, v in cfg.items() if k in BENCH_CPU_CONFIG}
    work = pathlib.Path(args.keep or tempfile.mkdtemp(prefix="bench_train_"))
    work.mkdir(parents=True, exist_ok=True)
    shards = args.shards or write_synthetic_shards(work / "data", args.samples, 512, 64)
    available = shard_count(shards)
    if available < args.steps * args.batch_size:
        p.error(
            f"{available} samples in the shards, fewer than steps x batch = {args.steps * args.batch_size}"
        )
    config_path = work / "bench-model.json"
    config_path.write_text(json.dumps(cfg))
    config_dir = work / "open_clip_configs"
    config_dir.mkdir(exist_ok=True)
    (config_dir / "wit-bench.json").write_text(json.dumps(to_open_clip_config(cfg)))
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", PYTHONPATH=str(ROOT))

    results: dict[str, list[dict]] = {"wit-train": [], "open_clip_train.main": []}
    for i in range(args.repeat):
        # alternate the order (A B, B A, ...) so that a drift in machine load hits both
        order = ["wit-train", "open_clip_train.main"][:: 1 if i % 2 == 0 else -1]
        for name in order:
            if name == "wit-train":
                results[name].append(bench_ours(args, shards, config_path, work, env))
            else:
                oc_work = work / f"open_clip_{i}"
                oc_work.mkdir(exist_ok=True)
                results[name].append(
                    bench_open_clip(args, shards, config_dir, "wit-bench", oc_work, env)
                )
    print(
        f"model {json.dumps(cfg)}\nshards {shards} ({available} samples), batch {args.batch_size}, "
        f"{args.steps} steps, {args.precision}, {args.workers} workers, device {args.device}, "
        f"{args.repeat} run(s) each"
    )
    print("| trainer | run | samples/s (steady) | wall s (whole command) | CPU s (whole command) |")
    print("|---|---:|---:|---:|---:|")
    for name, runs in results.items():
        for i, r in enumerate(runs):
            print(
                f"| {name} | {i + 1} | {r['samples_per_s']:.1f} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} |"
            )
    med = {n: statistics.median(r["samples_per_s"] for r in runs) for n, runs in results.items()}
    cpu = {n: statistics.median(r["cpu_s"] for r in runs) for n, runs in results.items()}
    print(
        f"median samples/s wit-train / open_clip: {med['wit-train'] / med['open_clip_train.main']:.2f}x; "
        f"median CPU s open_clip / wit-train: {cpu['open_clip_train.main'] / cpu['wit-train']:.2f}x "
        f"(work folder: {work})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
