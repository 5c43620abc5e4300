"""Does capping pairs per query help? Balanced vs unbalanced corpus at equal compute.

Issue 12. One long-tailed candidate pool (pipeline.fixtures.longtail: Zipf concept
frequencies, alt-text captions, a uniform held-out test set) is served on 127.0.0.1 by
FixtureWeb and curated twice by `wit-build`, exactly as a user would run it:

- unbalanced: `--per-query-cap` at least the largest concept count (nothing is capped);
- balanced: the cap at which the corpus keeps the share of the matched pool that CLIP's
  and MetaCLIP's t = 20,000 kept at scale (MetaCLIP: 400M of a 1.6B pool, 25%); on a
  Zipf pool this is about the median concept count, so it binds on the head.

A small CLIP is trained on each corpus with `wit-train` for the same steps, batch size,
seed, model and tokenizer (so the same number of samples seen; the smaller balanced
corpus simply cycles more epochs), for every training seed. `wit-eval zeroshot` then
scores each checkpoint on the uniform test set, and on three views of it that keep every
class but hold only the images of the head, torso or tail third of the concepts (thirds
by pool frequency), which gives the recall on each third with all classes competing.

    .venv/bin/python bench/ablation_balance.py --out ablation.json [--seeds 3]

writes the JSON (`runs`, one row per seed and corpus, plus summary and settings) and
rewrites the marked section of docs/experiments.md with a table and a bar plot. Corpora
are built once and shared by all training seeds: the question is what the cap does to
one pool, so the seeds measure training noise; the corpora are deterministic anyway
(wit-build's balancing is a seeded hash).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ablation_report import (  # noqa: E402 - bench/ is not a package
    CORPORA,
    GROUPS,
    METRICS,
    fmt_pct,
    plot_summary,
    render_section,
    replace_section,
    summarize,
    verdict,
)

BIN = Path(sys.executable).parent
#: MetaCLIP's t = 20,000 kept 400M of its 1.6B matched pool.
METACLIP_KEPT_SHARE = 400 / 1600
#: A CLIP small enough to train 6 times on 2 CPU cores in the time budget: 16 patches of
#: 16 px on a 64 px image, two layers per tower, a 32-token context.
MODEL_BASE = "tiny-vit"
MODEL_OVERRIDES = {
    "vision_patch_size": 16,
    "vision_width": 96,
    "vision_layers": 2,
    "vision_heads": 2,
    "text_width": 96,
    "text_layers": 2,
    "text_heads": 2,
    "embed_dim": 64,
    "context_length": 32,
}


class AblationError(RuntimeError):
    """A step of the experiment failed; the message says which and where its log is."""


# ---------------------------------------------------------------- plain functions


def scaled_cap(counts: list[int], kept_share: float = METACLIP_KEPT_SHARE) -> int:
    """Smallest cap t whose balanced corpus keeps at least `kept_share` of the pool.

    `sum(min(count, t))` grows with t, so this is the cap at which the pool shrinks to the
    share that t = 20,000 left of MetaCLIP's pool.
    """
    if not counts or min(counts) < 0:
        raise ValueError("counts must be a non-empty list of non-negative integers")
    if not 0 < kept_share <= 1:
        raise ValueError(f"kept_share must be in (0, 1], got {kept_share}")
    target = kept_share * sum(counts)
    lo, hi = 1, max(counts)
    while lo < hi:
        mid = (lo + hi) // 2
        if sum(min(c, mid) for c in counts) >= target:
            hi = mid
        else:
            lo = mid + 1
    return lo


def frequency_thirds(pool_counts: dict[str, int]) -> dict[str, list[str]]:
    """Head, torso and tail: the concepts ranked by pool count (ties by name), cut in thirds.

    With n concepts the head is the first round(n/3), the torso up to round(2n/3).
    """
    ranked = sorted(pool_counts, key=lambda c: (-pool_counts[c], c))
    n = len(ranked)
    a, b = round(n / 3), round(2 * n / 3)
    return {"head": ranked[:a], "torso": ranked[a:b], "tail": ranked[b:]}


def make_group_views(test_dir: Path, groups: dict[str, list[str]], views_dir: Path) -> dict:
    """For each group, a copy of the test set's folder tree whose other classes are empty.

    Every class stays a zero-shot candidate, so top-1 on a view is the recall on that
    group's images against all classes. Images are symlinked (copied where links fail).
    """
    classes = sorted(d.name for d in test_dir.iterdir() if d.is_dir())
    out = {}
    for group, concepts in groups.items():
        folders = {c.replace(" ", "_") for c in concepts}
        missing = folders - set(classes)
        if missing:
            raise AblationError(f"test set {test_dir} has no folder for {sorted(missing)[0]!r}")
        view = views_dir / group
        if view.exists():
            shutil.rmtree(view)
        for cls in classes:
            (view / cls).mkdir(parents=True)
            if cls not in folders:
                continue
            for img in sorted((test_dir / cls).iterdir()):
                dst = view / cls / img.name
                try:
                    dst.symlink_to(img.resolve())
                except OSError:
                    shutil.copyfile(img, dst)
        out[group] = view
    return out


# ---------------------------------------------------------------- running the commands


def _log(msg: str) -> None:
    print(f"[{datetime.datetime.now().strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        raise AblationError(f"{name} not found next to {sys.executable}; run `make install`")
    return str(path)


def _env() -> dict:
    env = dict(os.environ)
    env.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    env.setdefault("PYTHONHASHSEED", "0")
    return env


def _tail(path: Path, n: int = 3) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "(no log)"
    return " | ".join(lines[-n:])


def run_logged(cmd: list[str], log: Path, what: str) -> None:
    """Run a command with its output in `log`; fail with the log's last lines."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, env=_env(), cwd=ROOT)
    if rc != 0:
        raise AblationError(f"{what} failed (exit {rc}, log {log}): {_tail(log)}")


def run_parallel(jobs: list[tuple[list[str], Path, str]], max_jobs: int) -> None:
    """Run (cmd, log, what) jobs, at most `max_jobs` at once; fail on the first failure."""
    pending, running = list(jobs), []
    try:
        while pending or running:
            while pending and len(running) < max_jobs:
                cmd, log, what = pending.pop(0)
                log.parent.mkdir(parents=True, exist_ok=True)
                f = open(log, "w")  # noqa: SIM115 - closed when the process ends
                f.write("$ " + " ".join(cmd) + "\n")
                f.flush()
                proc = subprocess.Popen(
                    cmd, stdout=f, stderr=subprocess.STDOUT, env=_env(), cwd=ROOT
                )
                running.append((proc, f, log, what, time.monotonic()))
                _log(f"started {what}")
            time.sleep(0.5)
            for item in list(running):
                proc, f, log, what, t0 = item
                if proc.poll() is None:
                    continue
                f.close()
                running.remove(item)
                if proc.returncode != 0:
                    raise AblationError(
                        f"{what} failed (exit {proc.returncode}, log {log}): {_tail(log)}"
                    )
                _log(f"finished {what} in {time.monotonic() - t0:.0f} s")
    finally:
        for proc, f, *_ in running:
            proc.terminate()
            proc.wait()
            f.close()


def build_fixture(work: Path, args) -> dict:
    """The long-tailed pool and test set (reused when `work` already holds the same one)."""
    from pipeline.fixtures.longtail import generate_longtail

    fixture = work / "fixture"
    params = {
        k: getattr(args, k)
        for k in ("n_concepts", "n_pairs", "zipf_a", "fixture_seed", "test_per_class")
    }
    stamp = fixture / "params.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == params:
        _log(f"reusing the fixture in {fixture}")
    else:
        if fixture.exists():
            shutil.rmtree(fixture)
        _log(f"generating {args.n_pairs:,} pairs over {args.n_concepts} concepts")
        generate_longtail(
            fixture,
            n_concepts=args.n_concepts,
            n_pairs=args.n_pairs,
            zipf_a=args.zipf_a,
            seed=args.fixture_seed,
            test_per_class=args.test_per_class,
        )
        stamp.write_text(json.dumps(params))
    import pyarrow.parquet as pq

    table = pq.read_table(fixture / "concepts.parquet").to_pylist()
    return {
        "dir": fixture,
        "pool_counts": {r["concept"]: r["pool_count"] for r in table},
    }


def read_query_counts(out: Path) -> dict[str, dict]:
    import pyarrow.parquet as pq

    rows = pq.read_table(out / "counts" / "query_counts.parquet").to_pylist()
    return {r["query"]: r for r in rows}


def build_corpora(work: Path, fixture: Path, caps: dict[str, int], args) -> dict:
    """Both corpora with wit-build, fetching from a FixtureWeb on 127.0.0.1."""
    from pipeline.fixtures.longtail import write_longtail_candidates
    from pipeline.fixtures.web import FixtureWeb

    info = {}
    with FixtureWeb(image_dir=fixture / "pool" / "images") as web:
        candidates = write_longtail_candidates(fixture, web.base_url)
        for corpus in CORPORA:
            out = work / "corpora" / corpus
            if out.exists():
                shutil.rmtree(out)
            cmd = [
                _tool("wit-build"),
                "--querylist", str(fixture / "queries.txt"),
                "--input", str(candidates),
                "--out", str(out),
                "--per-query-cap", str(caps[corpus]),
                "--seed", "0",
                "--image-size", "64",
                "--allow-private-addresses",
                *args.build_arg,
            ]  # fmt: skip
            t0 = time.monotonic()
            _log(f"wit-build {corpus} (cap {caps[corpus]:,})")
            run_logged(cmd, work / "logs" / f"build-{corpus}.log", f"wit-build {corpus}")
            manifest = json.loads((out / "manifest.json").read_text())
            counts = read_query_counts(out)
            kept = sum(json.loads((out / "sizes.json").read_text()).values())
            if kept == 0:
                raise AblationError(f"wit-build {corpus} kept no samples; see its log")
            info[corpus] = {
                "cap": caps[corpus],
                "kept": kept,
                "matched": sum(r["matched"] for r in counts.values()),
                "kept_per_concept": {q: r["kept"] for q, r in counts.items()},
                "totals": manifest.get("totals"),
                "seconds": round(time.monotonic() - t0, 1),
            }
            _log(f"wit-build {corpus}: {kept:,} samples in {info[corpus]['seconds']:.0f} s")
    return info


def train_command(corpus_dir: Path, run_dir: Path, tokenizer: Path, seed: int, args) -> list:
    cmd = [
        _tool("wit-train"),
        "--shards", str(corpus_dir / "shards" / "*.tar"),
        "--model", MODEL_BASE,
        "--out", str(run_dir),
        "--tokenizer", str(tokenizer),
        "--steps", str(args.steps),
        "--batch-size", str(args.batch_size),
        "--lr", str(args.lr),
        "--warmup", str(args.warmup),
        "--seed", str(seed),
        "--threads", str(args.threads),
        "--workers", "0",
        "--save-every", str(args.steps),
        "--log-every", str(max(1, args.steps // 20)),
        "--no-tensorboard",
        "--no-progress",
    ]  # fmt: skip
    for key, value in MODEL_OVERRIDES.items():
        cmd += ["--override", f"{key}={value}"]
    return cmd


def learn_shared_tokenizer(fixture: Path, path: Path, vocab: int) -> Path:
    """One BPE vocabulary learned from the pool's captions, used by every run."""
    import pyarrow.parquet as pq

    from train.tokenizer import learn_tokenizer

    captions = pq.read_table(fixture / "pool" / "pool.parquet").column("caption").to_pylist()
    tok = learn_tokenizer(captions, vocab, context_length=MODEL_OVERRIDES["context_length"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(path)
    return path


def evaluate_runs(run_dirs: list[Path], dataset: Path, out: Path, log: Path) -> dict:
    """wit-eval zeroshot on one dataset for all checkpoints; {run dir: metrics}."""
    cmd = [
        _tool("wit-eval"), "zeroshot",
        "--checkpoint", str(run_dirs[0]),
        *(["--compare", *map(str, run_dirs[1:])] if len(run_dirs) > 1 else []),
        "--dataset", str(dataset),
        "--batch-size", "256",
        "--device", "cpu",
        "--quiet",
        "--out", str(out),
    ]  # fmt: skip
    run_logged(cmd, log, f"wit-eval zeroshot on {dataset.name}")
    data = json.loads(out.read_text())
    rows = data["results"] if "results" in data else [data]
    return {os.path.normpath(r["checkpoint"]): r for r in rows}


# ---------------------------------------------------------------- the experiment


def run_experiment(args) -> dict:
    started = time.monotonic()
    load_before = os.getloadavg()[1]
    timing = {}
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="ablation-balance-"))
    work.mkdir(parents=True, exist_ok=True)
    _log(f"working in {work}")
    try:
        t0 = time.monotonic()
        fx = build_fixture(work, args)
        timing["fixture"] = time.monotonic() - t0
        counts = list(fx["pool_counts"].values())
        caps = {
            "unbalanced": max(counts),
            "balanced": args.cap or scaled_cap(counts, args.kept_share),
        }
        groups = frequency_thirds(fx["pool_counts"])

        t0 = time.monotonic()
        corpora = build_corpora(work, fx["dir"], caps, args)
        timing["build"] = time.monotonic() - t0

        tokenizer = learn_shared_tokenizer(fx["dir"], work / "tokenizer.json", args.vocab)
        t0 = time.monotonic()
        jobs, run_dirs = [], {}
        for seed in args.seed_list:
            for corpus in CORPORA:
                run_dir = work / "runs" / f"{corpus}-seed{seed}"
                if run_dir.exists():
                    shutil.rmtree(run_dir)
                run_dirs[(corpus, seed)] = run_dir
                cmd = train_command(work / "corpora" / corpus, run_dir, tokenizer, seed, args)
                jobs.append((cmd, work / "logs" / f"train-{corpus}-seed{seed}.log",
                             f"wit-train {corpus} seed {seed}"))  # fmt: skip
        run_parallel(jobs, args.jobs)
        timing["train"] = time.monotonic() - t0

        t0 = time.monotonic()
        test_dir = fx["dir"] / "test"
        views = make_group_views(test_dir, groups, work / "views")
        ordered = [run_dirs[k] for k in sorted(run_dirs, key=lambda k: (k[1], k[0]))]
        evals = {
            "all": evaluate_runs(ordered, test_dir, work / "eval" / "all.json",
                                 work / "logs" / "eval-all.log"),
        }  # fmt: skip
        for group, view in views.items():
            _log(f"wit-eval zeroshot on the {group} third")
            evals[group] = evaluate_runs(
                ordered, view, work / "eval" / f"{group}.json", work / "logs" / f"eval-{group}.log"
            )
        timing["eval"] = time.monotonic() - t0

        runs = []
        for (corpus, seed), run_dir in sorted(
            run_dirs.items(), key=lambda kv: (kv[0][1], kv[0][0])
        ):
            key = os.path.normpath(str(run_dir))
            full = evals["all"][key]
            row = {
                "seed": seed,
                "corpus": corpus,
                "top1": full["top1"],
                "mean_per_class_recall": full["mean_per_class_recall"],
            }
            for group in GROUPS:
                row[group] = evals[group][key]["top1"]
            runs.append(row)
        timing["total"] = time.monotonic() - started
        median = statistics.median(counts)
        return {
            "runs": runs,
            "summary": summarize(runs),
            "settings": {
                "n_concepts": args.n_concepts,
                "n_pairs": args.n_pairs,
                "zipf_a": args.zipf_a,
                "fixture_seed": args.fixture_seed,
                "test_per_class": args.test_per_class,
                "kept_share": args.kept_share,
                "seeds": args.seed_list,
                "steps": args.steps,
                "batch_size": args.batch_size,
                "lr": args.lr,
                "warmup": args.warmup,
                "model": MODEL_BASE,
                "model_overrides": MODEL_OVERRIDES,
                "tokenizer_vocab": args.vocab,
                "templates": "single",
            },
            "corpora": {
                **{c: {k: v for k, v in corpora[c].items()} for c in CORPORA},
                "median_count": median,
            },
            "groups": {
                "definition": "concepts ranked by pool count (ties by name), cut in thirds: "
                "head = first round(n/3), torso = up to round(2n/3), tail = the rest; recall "
                "on a third = top-1 on that third's test images with all classes competing",
                **{g: groups[g] for g in GROUPS},
            },
            "timing_s": {k: round(v, 1) for k, v in timing.items()},
            "machine": machine(),
            "load_average_5min": {"start": load_before, "end": os.getloadavg()[1]},
            "command": "bench/ablation_balance.py " + " ".join(args.argv),
            "finished_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "work": str(work) if args.keep_work or args.work else None,
        }
    finally:
        if not args.work and not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}"


def write_outputs(result: dict, args) -> None:
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    tmp.replace(out)
    _log(f"wrote {out}")
    if args.no_docs:
        return
    docs = Path(args.docs)
    plot = Path(args.plot)
    title = (
        f"{result['settings']['n_concepts']} Zipf concepts, {len(result['settings']['seeds'])} "
        f"seed(s), {result['settings']['steps']} steps x {result['settings']['batch_size']}"
    )
    plot_summary(result["summary"], plot, title)
    rel = os.path.relpath(plot.resolve(), docs.resolve().parent)
    text = docs.read_text() if docs.is_file() else "# Experiments\n"
    docs.parent.mkdir(parents=True, exist_ok=True)
    docs.write_text(replace_section(text, render_section(result, rel)))
    _log(f"updated {docs} and {plot}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench/ablation_balance.py",
        description="Balanced vs unbalanced corpus at equal compute on a long-tailed web.",
    )
    p.add_argument("--out", required=True, metavar="FILE.json", help="where the results go")
    p.add_argument("--seeds", type=int, default=3, help="training seeds 0..N-1")
    p.add_argument("--work", help="working folder, kept afterwards (default: a temporary one)")
    p.add_argument("--keep-work", action="store_true", help="keep the temporary folder")
    p.add_argument("--docs", default=str(ROOT / "docs" / "experiments.md"))
    p.add_argument("--plot", default=str(ROOT / "docs" / "img" / "ablation_balance.png"))
    p.add_argument("--no-docs", action="store_true", help="write only the JSON")
    g = p.add_argument_group("pool")
    g.add_argument("--n-concepts", type=int, default=150)
    g.add_argument("--n-pairs", type=int, default=30000)
    g.add_argument("--zipf-a", type=float, default=1.1)
    g.add_argument("--fixture-seed", type=int, default=0)
    g.add_argument("--test-per-class", type=int, default=20)
    g = p.add_argument_group("balancing")
    g.add_argument(
        "--kept-share",
        type=float,
        default=METACLIP_KEPT_SHARE,
        help="the balanced corpus keeps this share of the pool (MetaCLIP: 400M/1.6B)",
    )
    g.add_argument("--cap", type=int, help="use this balanced cap instead of --kept-share's")
    g.add_argument(
        "--build-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra wit-build argument (repeatable), e.g. --build-arg=--lid=none",
    )
    g = p.add_argument_group("training (the same for both corpora)")
    g.add_argument("--steps", type=int, default=600)
    g.add_argument("--batch-size", type=int, default=64)
    g.add_argument("--lr", type=float, default=1e-3)
    g.add_argument("--warmup", type=int, default=50)
    g.add_argument("--vocab", type=int, default=1024, help="learned BPE vocabulary size")
    g.add_argument("--jobs", type=int, default=2, help="training runs at once")
    g.add_argument("--threads", type=int, default=1, help="torch threads per training run")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    for name in ("steps", "batch_size", "jobs", "n_concepts", "test_per_class"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.n_concepts < 3:
        parser.error("--n-concepts must be at least 3 (head, torso and tail)")
    args.seed_list = list(range(args.seeds))
    args.argv = argv
    try:
        result = run_experiment(args)
    except (AblationError, ValueError, OSError) as exc:
        print(f"ablation_balance: error: {exc}", file=sys.stderr)
        return 1
    write_outputs(result, args)
    s = result["summary"]
    for corpus in CORPORA:
        print(f"{corpus:>10}: " + ", ".join(f"{m} {fmt_pct(s[corpus][m])}" for m in METRICS))
    print(verdict(s))
    print(f"done in {result['timing_s']['total']:.0f} s; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
