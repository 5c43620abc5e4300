"""`make demo`: the whole chain on a self-contained default, on one CPU machine.

It builds the query list from the offline sources found here, draws a synthetic web of
captioned shape images, serves it on 127.0.0.1, curates it with `wit-build`, reports on it
with `wit-stats`, trains a tiny CLIP with `wit-train` and evaluates it zero-shot on
(shape, colour) combinations it never saw, next to a random-init model, then against
few-shot probes and under synthetic distribution shifts on the same held-out set.

Every step runs the real console script, so what the demo shows is what users run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def _say(msg: str) -> None:
    print(f"\n\033[1m== {msg}\033[0m", flush=True)


def _run(step: str, argv: list[str], env: dict | None = None) -> int:
    """Run one console script, streaming its output; report a not-yet-built command."""
    exe = BIN / argv[0]
    cmd = [str(exe) if exe.exists() else argv[0], *argv[1:]]
    print("$ " + " ".join(argv), flush=True)
    t0 = time.perf_counter()
    rc = subprocess.call(cmd, env={**os.environ, **(env or {})})
    print(f"   ({step}: exit {rc}, {time.perf_counter() - t0:.0f} s)", flush=True)
    return rc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.demo", description=__doc__)
    ap.add_argument("--out", default="demo-out", help="where everything goes (default demo-out)")
    ap.add_argument("--images", type=int, default=4000, help="synthetic training images")
    ap.add_argument("--steps", type=int, default=300, help="training steps")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--cap", type=int, default=1500, help="--per-query-cap for the demo corpus")
    ap.add_argument("--fresh", action="store_true", help="delete OUT first")
    args = ap.parse_args(argv)

    from pipeline.fixtures.synthetic import generate_images, write_candidates, write_eval_set
    from pipeline.fixtures.web import FixtureWeb

    out = Path(args.out).resolve()
    if args.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    results: dict[str, object] = {}

    _say("1/5 query list (wit-querylist build)")
    ql_dir = out / "querylist"
    rc = _run("querylist", ["wit-querylist", "build", "--out", str(ql_dir)])
    querylist = ql_dir / "querylist.parquet"
    if rc != 0 or not querylist.exists():
        print("   the query list did not build; the demo falls back to its own short list")
        from pipeline.fixtures.synthetic import demo_queries

        ql_dir.mkdir(parents=True, exist_ok=True)
        querylist = ql_dir / "demo-queries.txt"
        querylist.write_text("\n".join(demo_queries()) + "\n")

    _say("2/5 synthetic web and wit-build")
    corpus, eval_dir = out / "corpus", out / "eval-heldout"
    if not (corpus / "manifest.parquet").exists():
        generate_images(corpus, n=args.images, seed=0, workers=2)
    shapes_dir = out / "eval-shapes"
    if not eval_dir.exists():
        write_eval_set(eval_dir, n_per_class=40, seed=1, kind="heldout")
    if not shapes_dir.exists():  # harder: the shape alone decides, in every colour
        write_eval_set(shapes_dir, n_per_class=40, seed=2, kind="shapes")
    build = out / "build"
    with FixtureWeb(image_dir=corpus / "images") as web:
        noise = write_candidates(corpus, web.base_url, out / "candidates", seed=0)
        print(f"   fixture web at {web.base_url}; candidate noise: {noise}")
        rc = _run(
            "wit-build",
            [
                "wit-build",
                "--querylist", str(querylist),
                "--input", str(out / "candidates" / "candidates.parquet"),
                "--input", str(out / "candidates" / "pages" / "*.html"),
                "--out", str(build),
                "--per-query-cap", str(args.cap),
                "--image-size", "64",
                "--shard-size", "1000",
                "--allow-private-addresses",
            ],
        )  # fmt: skip
    results["wit-build"] = rc
    shards = sorted((build / "shards").glob("*.tar"))
    if rc != 0 or not shards:
        print("   wit-build wrote no shards; the later steps need them")

    _say("3/5 wit-stats")
    results["wit-stats"] = _run(
        "wit-stats", ["wit-stats", str(build), "--plots", str(out / "plots")]
    )

    _say("4/5 wit-train (tiny CLIP on CPU)")
    run = out / "run"
    results["wit-train"] = _run(
        "wit-train",
        [
            "wit-train",
            "--shards", str(build / "shards" / "*.tar"),
            "--model", "tiny-vit",
            # demo captions are under 20 tokens: a short context makes each step ~3x cheaper
            "--override", "context_length=32",
            "--out", str(run),
            "--steps", str(args.steps),
            "--batch-size", str(args.batch_size),
            "--workers", "1",
            "--save-every", "100",
            # a second `make demo` continues (or, when done, skips) the first one's run,
            # like the build above; a new run starts from step 0
            "--resume",
        ],
    )  # fmt: skip

    _say("5/5 wit-eval zeroshot on held-out (shape, colour) combinations")
    eval_json = out / "zeroshot.json"
    results["wit-eval"] = _run(
        "wit-eval",
        [
            "wit-eval", "zeroshot",
            "--checkpoint", str(run), "random:" + str(run),
            "--dataset", str(eval_dir),
            "--out", str(eval_json),
        ],
    )  # fmt: skip

    shapes_json = out / "zeroshot-shapes.json"
    _run(
        "wit-eval shapes",
        [
            "wit-eval", "zeroshot",
            "--checkpoint", str(run), "random:" + str(run),
            "--dataset", str(shapes_dir),
            "--out", str(shapes_json),
            "--quiet",
        ],
    )  # fmt: skip

    # few-shot probes against zero-shot, and accuracy under synthetic shifts (~20 s together)
    fewshot_json, robust_json = out / "fewshot.json", out / "robustness.json"
    results["wit-eval fewshot"] = _run(
        "wit-eval fewshot",
        [
            "wit-eval", "fewshot",
            "--checkpoint", str(run), "random:" + str(run),
            "--dataset", str(eval_dir),
            "--shots", "1,4,16", "--draws", "2", "--zeroshot-prior",
            "--out", str(fewshot_json),
            "--quiet",
        ],
    )  # fmt: skip
    results["wit-eval robustness"] = _run(
        "wit-eval robustness",
        [
            "wit-eval", "robustness",
            "--checkpoint", str(run), "random:" + str(run),
            "--dataset", str(eval_dir),
            "--severities", "5",
            "--out", str(robust_json),
            "--quiet",
        ],
    )  # fmt: skip

    _say("where everything went")
    for name, path in [
        ("query list", ql_dir),
        ("synthetic corpus", corpus),
        ("corpus (status/, counts/, shards/)", build),
        ("plots and index.html", out / "plots"),
        ("training run (checkpoints, log.jsonl, tensorboard)", run),
        ("zero-shot results", eval_json),
        ("few-shot and robustness results (+ .png plot)", out / "{fewshot,robustness}.json"),
    ]:
        print(f"   {name:<52} {path}")
    for title, path in [
        ("held-out (shape, colour) combinations, 8 classes", eval_json),
        ("shape alone, every colour, 8 classes (harder)", shapes_json),
    ]:
        if not path.exists():
            continue
        print(f"\n   zero-shot top-1, {title}:")
        data = json.loads(path.read_text())
        rows = data.get("results", data) if isinstance(data, dict) else data
        for row in rows if isinstance(rows, list) else [rows]:
            top1 = row.get("top1")
            shown = f"{top1:.1%}" if isinstance(top1, float) else str(top1)
            print(f"   {row.get('checkpoint', '?'):<60} top1={shown}")
    failed = [k for k, v in results.items() if v != 0]
    print(
        f"\n   demo took {time.perf_counter() - t_start:.0f} s; steps that failed: {failed or 'none'}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
