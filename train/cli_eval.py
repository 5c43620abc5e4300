"""`wit-eval`: zero-shot, linear probe, few-shot, robustness, retrieval and the overlap check.

    wit-eval zeroshot   --checkpoint CKPT [--compare CKPT ...] --dataset DIR [--templates SET]
    wit-eval probe      --checkpoint CKPT --dataset DIR [--test-dataset DIR]
    wit-eval fewshot    --checkpoint CKPT --dataset DIR [--shots 1,2,4,8,16] [--draws 5]
                        [--zeroshot-prior]
    wit-eval robustness --checkpoint CKPT [--compare CKPT ...] --dataset DIR
                        [--shifted [NAME=]DIR ...] [--synthetic all] [--severities 1,3,5]
    wit-eval retrieval  --checkpoint CKPT --dataset captions.csv [--images DIR]
    wit-eval overlap    --shards 'OUT/shards/*.tar' --dataset DIR [--checkpoint CKPT]

A checkpoint is one of ours (file or run folder) or an OpenAI / open_clip state dict
with `--model CONFIG`. Results go to the terminal as a table and, with `--out`, to JSON.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from train.eval.tables import (
    _overlap_text,
    _short_name,
    clean_json,
    fewshot_table,
    format_table,
    robustness_table,
    write_json,
)

TASKS = ("zeroshot", "probe", "fewshot", "robustness", "retrieval", "overlap")
TABLE_KEYS = {
    "zeroshot": ["top1", "top5", "mean_per_class_recall", "n"],
    "probe": [
        "top1",
        "top5",
        "mean_per_class_recall",
        "l2",
        "val_top1",
        "n_train",
        "n_val",
        "n_test",
    ],
    "retrieval": [f"{d}_R@{k}" for d in ("image_to_text", "text_to_image") for k in (1, 5, 10)]
    + ["n_images", "n_texts"],
    "overlap": ["top1_all", "top1_clean", "top1_overlap", "n_clean", "n_overlap"],
}


def _common(s: argparse.ArgumentParser, checkpoint_required: bool = True) -> None:
    g = s.add_argument_group("model")
    g.add_argument(
        "--checkpoint",
        nargs="+",
        default=[],
        metavar="CKPT",
        help="checkpoint file or run folder (RUN/checkpoints/latest.pt)"
        + ("" if checkpoint_required else "; optional here"),
    )
    g.add_argument(
        "--compare",
        nargs="+",
        default=[],
        metavar="CKPT",
        help="more checkpoints, evaluated alike and shown side by side",
    )
    g.add_argument(
        "--model",
        metavar="CONFIG",
        help="architecture for a plain OpenAI/open_clip state dict: a config name or JSON",
    )
    g.add_argument(
        "--tokenizer",
        metavar="SPEC",
        help="tokenizer: 'openai' or a learned tokenizer file (default: the checkpoint's)",
    )
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: auto)")
    g.add_argument("--batch-size", type=int, default=64)
    g.add_argument("--workers", type=int, default=0, help="image decoding processes")
    s.add_argument("--out", metavar="FILE.json", help="write the results as JSON")
    s.add_argument("--quiet", action="store_true", help="no progress on stderr")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wit-eval", description="Evaluate CLIP checkpoints.")
    sub = p.add_subparsers(dest="task", required=True)

    z = sub.add_parser("zeroshot", help="zero-shot classification with prompt templates")
    _common(z)
    z.add_argument("--dataset", required=True, help="folder per class, or labelled .tar shards")
    z.add_argument("--classnames", metavar="FILE", help="one name a line, or folder<TAB>name")
    z.add_argument(
        "--templates",
        default="single",
        help="single | cifar10 | cifar100 | imagenet | FILE | a literal 'a photo of a {}.'",
    )
    z.add_argument("--ensemble", choices=("embedding", "probability"), default="embedding")
    z.add_argument("--limit-per-class", type=int, metavar="N")
    z.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="also keep class embeddings on disk here (they are always cached in memory)",
    )

    pr = sub.add_parser("probe", help="linear probe (logistic regression) on frozen features")
    _common(pr)
    pr.add_argument("--dataset", required=True, help="training folder per class (or the only one)")
    pr.add_argument("--test-dataset", help="test folder; without it --dataset is split")
    pr.add_argument("--classnames", metavar="FILE")
    pr.add_argument("--limit-per-class", type=int, metavar="N")
    pr.add_argument("--val-fraction", type=float, default=0.2)
    pr.add_argument(
        "--test-fraction",
        type=float,
        default=0.2,
        help="share of a single dataset held out for test",
    )
    pr.add_argument("--seed", type=int, default=0, help="seed of the deterministic split")

    fs = sub.add_parser(
        "fewshot", help="few-shot logistic-regression probes at k shots against zero-shot"
    )
    _common(fs)
    fs.add_argument("--dataset", required=True, help="folder per class, or labelled .tar shards")
    fs.add_argument("--test-dataset", help="test set; without it --dataset is split")
    fs.add_argument("--classnames", metavar="FILE")
    fs.add_argument("--limit-per-class", type=int, metavar="N")
    fs.add_argument(
        "--shots",
        default="1,2,4,8,16",
        help="examples per class, comma-separated (default 1,2,4,8,16)",
    )
    fs.add_argument("--draws", type=int, default=5, help="seeded draws of the shots per k")
    fs.add_argument(
        "--zeroshot-prior",
        action="store_true",
        help="also fit probes started at and L2-pulled toward the zero-shot classifier",
    )
    fs.add_argument(
        "--val-per-class",
        type=int,
        default=10,
        help="images per class held out of the pool to choose the L2 strength",
    )
    fs.add_argument(
        "--test-fraction",
        type=float,
        default=0.2,
        help="share of a single dataset held out for test",
    )
    fs.add_argument("--seed", type=int, default=0, help="seed of the split and of the draws")
    fs.add_argument("--templates", default="single", help="zero-shot templates, as for zeroshot")
    fs.add_argument("--ensemble", choices=("embedding", "probability"), default="embedding")
    fs.add_argument("--cache-dir", metavar="DIR", help="keep class embeddings on disk here")

    rb = sub.add_parser("robustness", help="zero-shot and probe accuracy under distribution shift")
    _common(rb)
    rb.add_argument(
        "--dataset", required=True, help="in-distribution set: folder per class or labelled shards"
    )
    rb.add_argument(
        "--train-dataset",
        help="in-distribution training set for the probe; without it --dataset is split",
    )
    rb.add_argument(
        "--shifted",
        nargs="+",
        default=[],
        metavar="[NAME=]DIR",
        help="natural shifted sets (folder per class or shards), classes named as in --dataset",
    )
    rb.add_argument(
        "--synthetic",
        default="all",
        metavar="FAMILIES",
        help="synthetic shifts: all, none, or some of noise,blur,jpeg,contrast,haze,pixelate",
    )
    rb.add_argument("--severities", default="1,3,5", help="synthetic severities 0..5 (0: none)")
    rb.add_argument("--shift-seed", type=int, default=0, help="seed of the random shifts")
    rb.add_argument("--classnames", metavar="FILE")
    rb.add_argument("--limit-per-class", type=int, metavar="N")
    rb.add_argument("--val-fraction", type=float, default=0.2)
    rb.add_argument("--test-fraction", type=float, default=0.2)
    rb.add_argument("--seed", type=int, default=0, help="seed of the deterministic split")
    rb.add_argument("--templates", default="single", help="zero-shot templates, as for zeroshot")
    rb.add_argument("--ensemble", choices=("embedding", "probability"), default="embedding")
    rb.add_argument("--cache-dir", metavar="DIR", help="keep class embeddings on disk here")
    rb.add_argument(
        "--plot",
        metavar="FILE.png",
        help="in-distribution vs shifted accuracy plot (default: beside --out, as .png)",
    )

    r = sub.add_parser("retrieval", help="image-text retrieval recall@1/5/10")
    _common(r)
    r.add_argument(
        "--dataset", required=True, help="CSV with columns image,caption, or .tar shards"
    )
    r.add_argument(
        "--images", metavar="DIR", help="images folder (default: images/ beside the CSV)"
    )
    r.add_argument("--limit-images", type=int, metavar="N")

    o = sub.add_parser("overlap", help="near-duplicates between training shards and an eval set")
    _common(o, checkpoint_required=False)
    o.add_argument(
        "--shards", required=True, help="training shards: glob, {a..b} pattern or folder"
    )
    o.add_argument(
        "--dataset", required=True, help="eval set: folder per class, captions CSV or shards"
    )
    o.add_argument("--images", metavar="DIR", help="images folder for a captions CSV")
    o.add_argument("--classnames", metavar="FILE")
    o.add_argument("--limit-per-class", type=int, metavar="N")
    o.add_argument("--hash", choices=("phash", "dhash"), default="phash")
    o.add_argument("--max-distance", type=int, default=4, help="Hamming distance (of 64 bits)")
    o.add_argument("--examples", type=int, default=10)
    o.add_argument("--templates", default="single", help="for zero-shot on clean/overlap subsets")
    return p


# ---------------------------------------------------------------- running


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _log(args, msg: str) -> None:
    if not args.quiet:
        print(msg, file=sys.stderr)


def _load(args, path: str):
    from train.eval.load import load_for_eval

    return load_for_eval(path, args.model, args.tokenizer, _device(args.device))


def _run_zeroshot(args, path: str, dataset, keep_scores: bool = False) -> dict:
    from train.eval.zeroshot import evaluate_classification

    m = _load(args, path)
    return evaluate_classification(
        m.model,
        m.tokenizer,
        dataset,
        args.templates,
        getattr(args, "ensemble", "embedding"),
        args.batch_size,
        _device(args.device),
        args.workers,
        getattr(args, "cache_dir", None),
        progress=not args.quiet,
        keep_scores=keep_scores,
    )


def _run_probe(args, path: str, data) -> dict:
    from train.eval.probe import evaluate_probe

    train_set, test_set = data
    m = _load(args, path)
    return evaluate_probe(
        m.model,
        train_set,
        test_set,
        args.val_fraction,
        args.test_fraction,
        args.seed,
        args.batch_size,
        _device(args.device),
        args.workers,
        progress=not args.quiet,
    )


def _run_fewshot(args, path: str, data) -> dict:
    from train.eval.fewshot import evaluate_fewshot

    train_set, test_set = data
    m = _load(args, path)
    return evaluate_fewshot(
        m.model,
        m.tokenizer,
        train_set,
        test_set,
        shots=args.shots,
        draws=args.draws,
        seed=args.seed,
        templates=args.templates,
        ensemble=args.ensemble,
        zeroshot_prior=args.zeroshot_prior,
        val_per_class=args.val_per_class,
        test_fraction=args.test_fraction,
        batch_size=args.batch_size,
        device=_device(args.device),
        workers=args.workers,
        cache_dir=args.cache_dir,
        progress=not args.quiet,
    )


def _shifted_sets(args, id_classnames: list[str]) -> list:
    """`--shifted [NAME=]DIR` sets (classes matched by name) then the synthetic shifts."""
    from train.eval import datasets as ds
    from train.eval.robustness import natural_shift, synthetic_shifts
    from train.eval.shifts import parse_families, parse_severities

    shifts, seen = [], set()
    for spec in args.shifted:
        name, sep, path = spec.partition("=")
        if not sep or os.path.exists(spec):
            name, path = _short_name(spec.removesuffix("/")), spec
        if name in seen:
            raise ValueError(f"two shifted sets are named {name!r}: give NAME=DIR")
        seen.add(name)
        # a folder set maps its folders through --classnames (the folder<TAB>name form also
        # covers a subset of the classes); shards carry their own classnames.txt
        names_file = None if ds.is_shard_spec(path) else args.classnames
        data = ds.load_classification(path, names_file, args.limit_per_class)
        shifts.append(natural_shift(name, data, id_classnames))
    families = parse_families(args.synthetic)
    if families:
        shifts += synthetic_shifts(families, parse_severities(args.severities))
    if not shifts:
        raise ValueError("no shifts: give --shifted DIR and/or --synthetic FAMILIES")
    return shifts


def _run_robustness(args, checkpoints: list[str], data) -> dict:
    from train.eval.robustness import evaluate_model_robustness, robustness_split, summarize

    dataset, train_set = data
    train, val, test, split = robustness_split(
        dataset, train_set, args.val_fraction, args.test_fraction, args.seed
    )
    for name, part in (("probe train", train), ("validation", val), ("test", test)):
        if not part.items:
            raise ValueError(f"the {name} split is empty: use more images per class")
    shifts = _shifted_sets(args, dataset.classnames)
    per_model = {}
    for path in checkpoints:
        _log(args, f"wit-eval robustness: {path}")
        m = _load(args, path)
        per_model[path] = evaluate_model_robustness(
            m.model,
            m.tokenizer,
            train,
            val,
            test,
            shifts,
            templates=args.templates,
            ensemble=args.ensemble,
            shift_seed=args.shift_seed,
            batch_size=args.batch_size,
            device=_device(args.device),
            workers=args.workers,
            cache_dir=args.cache_dir,
            progress=not args.quiet,
        )
        del m
    summary = summarize(per_model, shifts, args.compare)
    report = {
        "train_dataset": args.train_dataset,
        "split": split,
        "template_set": args.templates,
        "shift_seed": args.shift_seed,
        "shifts": [s.describe() for s in shifts],
        **summary,
    }
    plot = args.plot or (os.path.splitext(args.out)[0] + ".png" if args.out else None)
    if plot:
        from train.eval.robustness import plot_robustness

        report["plot"] = plot_robustness(summary, shifts, plot)
    return report


def _run_retrieval(args, path: str, dataset) -> dict:
    from train.eval.retrieval import evaluate_retrieval

    m = _load(args, path)
    return evaluate_retrieval(
        m.model,
        m.tokenizer,
        dataset,
        batch_size=args.batch_size,
        device=_device(args.device),
        workers=args.workers,
        progress=not args.quiet,
    )


def _load_data(args):
    from train.eval import datasets as ds

    if args.task == "zeroshot":
        return ds.load_classification(args.dataset, args.classnames, args.limit_per_class)
    if args.task in ("probe", "fewshot"):
        train = ds.load_classification(args.dataset, args.classnames, args.limit_per_class)
        test = None
        if args.test_dataset:
            test = ds.load_classification(args.test_dataset, args.classnames, args.limit_per_class)
        return train, test
    if args.task == "robustness":
        test = ds.load_classification(args.dataset, args.classnames, args.limit_per_class)
        train = None
        if args.train_dataset:
            train = ds.load_classification(
                args.train_dataset, args.classnames, args.limit_per_class
            )
        return test, train
    if args.task == "retrieval":
        return ds.load_captions(args.dataset, args.images, args.limit_images)
    # overlap: a class folder keeps labels (per-class counts, clean/overlap zero-shot)
    if os.path.isdir(args.dataset) or (ds.is_shard_spec(args.dataset) and args.classnames):
        return ds.load_classification(args.dataset, args.classnames, args.limit_per_class)
    return ds.load_captions(args.dataset, args.images)


def _run_overlap(args, checkpoints: list[str], data) -> dict:
    from train.eval.datasets import ClassificationSet
    from train.eval.overlap import overlap_report

    labelled = isinstance(data, ClassificationSet)
    items = data.items if labelled else data.images
    report = overlap_report(
        items,
        args.shards,
        args.hash,
        args.max_distance,
        args.examples,
        data.labels if labelled else None,
        data.classnames if labelled else None,
        progress=not args.quiet,
    )
    if checkpoints and labelled:
        # The paper's check: does accuracy differ between the clean and the overlapping part?
        from train.eval.metrics import classification_metrics

        overlap = set(report["overlap_indices"])
        report["zeroshot"] = {}
        for path in checkpoints:
            res = _run_zeroshot(args, path, data, keep_scores=True)
            row = {"top1_all": res["top1"]}
            is_dup = [i in overlap for i in res["indices"]]
            for name, want in (("clean", False), ("overlap", True)):
                rows = [r for r, d in enumerate(is_dup) if d == want]
                sub = classification_metrics(res["scores"][rows], res["labels"][rows])
                row[f"top1_{name}"] = sub["top1"] if rows else None
                row[f"n_{name}"] = len(rows)
            report["zeroshot"][path] = row
    return report


def _check_early(args, checkpoints: list[str]) -> None:
    """Fail on a missing checkpoint or bad templates before any image is read."""
    from train.checkpoint import resolve
    from train.eval.load import RANDOM_PREFIX
    from train.eval.zeroshot import load_templates

    for path in checkpoints:
        resolve(path.removeprefix(RANDOM_PREFIX))
    if getattr(args, "templates", None):
        load_templates(args.templates)


def run(args) -> dict:
    """Run one task and return what --out writes."""
    started = time.monotonic()
    checkpoints = list(dict.fromkeys(args.checkpoint + args.compare))
    if args.task != "overlap" and not checkpoints:
        raise ValueError("give --checkpoint CKPT (and --compare CKPT ... to compare)")
    _check_early(args, checkpoints)
    data = _load_data(args)
    meta = {"task": args.task, "dataset": args.dataset}
    if args.task == "overlap":
        report = _run_overlap(args, checkpoints, data)
        print(_overlap_text(report))
        if report.get("zeroshot"):
            print(format_table(report["zeroshot"], TABLE_KEYS["overlap"]))
        result = {**meta, **report}
    elif args.task == "robustness":
        report = clean_json(_run_robustness(args, checkpoints, data))
        print(robustness_table(report))
        fit = report["line_fit"]
        print(
            f"split: {report['split']}\n"
            f"effective robustness: above the line fitted in logit space through the probes "
            f"of {', '.join(_short_name(m) for m in fit['models'])}"
            + (
                ""
                if fit["mean"]
                else " (no line: it needs two distinct in-distribution accuracies; compare more models)"
            )
        )
        if report.get("plot"):
            print(f"plot: {report['plot']}")
        for r in report["results"]:
            if r.get("skipped"):
                print(
                    f"{r['checkpoint']}: {len(r['skipped'])} image(s) skipped, e.g. "
                    f"{r['skipped'][0]['image']}: {r['skipped'][0]['reason']}"
                )
        result = {**meta, **report}
    else:
        runner = {
            "zeroshot": _run_zeroshot,
            "probe": _run_probe,
            "fewshot": _run_fewshot,
            "retrieval": _run_retrieval,
        }
        results = {}
        for path in checkpoints:
            _log(args, f"wit-eval {args.task}: {path}")
            results[path] = runner[args.task](args, path, data)
        if args.task == "fewshot":
            print(fewshot_table(results))
        else:
            print(format_table(results, TABLE_KEYS[args.task]))
        first = results[checkpoints[0]]
        if args.task == "fewshot":
            print(
                f"{first['classes']} classes, {first['draws']} draw(s) per k, mean ± std; "
                f"L2 chosen on {first['n_val']} validation images; test n={first['n_test']}"
            )
            print(f"split: {first['split']}")
            meta["template_set"] = args.templates
        if args.task == "zeroshot":
            print(
                f"{first['classes']} classes (chance top-1 {100 / first['classes']:.2f}%), "
                f"{first['templates']} template(s), {first['ensemble']} ensembling"
            )
            meta["template_set"] = args.templates
        if args.task == "probe":
            print(f"split: {first['split']}; l2 chosen on validation")
        for path, res in results.items():
            if res.get("skipped"):
                print(
                    f"{path}: {len(res['skipped'])} image(s) skipped, e.g. "
                    f"{res['skipped'][0]['image']}: {res['skipped'][0]['reason']}"
                )
        if len(results) == 1:
            result = {**meta, "checkpoint": checkpoints[0], **first}
        else:
            result = {**meta, "results": [{"checkpoint": p, **r} for p, r in results.items()]}
    print(f"wit-eval {args.task}: done in {time.monotonic() - started:.1f}s", file=sys.stderr)
    result = clean_json(result)
    if args.out:
        write_json(args.out, result)
        _log(args, f"wrote {args.out}")
    return result


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from train.eval.datasets import DatasetError
    from train.eval.load import LoadError

    try:
        run(args)
    except (DatasetError, LoadError, ValueError, FileNotFoundError, OSError) as e:
        print(f"wit-eval: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
