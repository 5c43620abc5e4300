"""`wit-train`: train CLIP on wit-build shards.

Defaults suit a tiny run on CPU; the paper's settings are flags away (see --help).
Run with torchrun for several processes: `torchrun --nproc_per_node=N -m train.cli_train ...`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def _betas(text: str) -> tuple[float, float]:
    try:
        b1, b2 = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError("expected two numbers: BETA1,BETA2") from None
    return b1, b2


def _override(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError("expected KEY=VALUE, e.g. context_length=32")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wit-train", description="Train CLIP on WebDataset shards.")
    p.add_argument("--shards", required=True, help="glob or brace pattern of .tar shards")
    p.add_argument(
        "--model", required=True, help="config name (tiny-vit, ViT-B-32, ...) or JSON path"
    )
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument(
        "--override",
        type=_override,
        action="append",
        metavar="KEY=VALUE",
        help="set a model config field (repeatable), e.g. context_length=32",
    )
    p.add_argument("--resume", action="store_true", help="continue from RUN/checkpoints/latest.pt")

    opt = p.add_argument_group("optimization")
    opt.add_argument("--steps", type=_positive, default=300, help="optimizer steps in total")
    opt.add_argument(
        "--batch-size", type=_positive, default=32, help="samples per process per step"
    )
    opt.add_argument("--lr", type=float, default=5e-4, help="peak learning rate")
    opt.add_argument(
        "--min-lr", type=float, default=0.0, help="learning rate at the end of the cosine"
    )
    opt.add_argument("--wd", type=float, default=0.1, help="AdamW decoupled weight decay")
    opt.add_argument("--warmup", type=int, default=30, help="linear warmup steps")
    opt.add_argument(
        "--betas",
        type=_betas,
        default=None,
        help="Adam betas 'B1,B2' (default: the paper's for the vision tower)",
    )
    opt.add_argument("--eps", type=float, default=None, help="Adam eps (default: the paper's)")
    opt.add_argument("--grad-clip", type=float, default=None, help="clip the gradient norm to this")

    mem = p.add_argument_group("precision and memory")
    mem.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    mem.add_argument(
        "--accum-steps",
        type=_positive,
        default=1,
        help="micro-batches per step (keeps the full batch's negatives)",
    )
    mem.add_argument("--grad-checkpointing", action="store_true")
    mem.add_argument("--device", default="auto", help="auto | cpu | cuda")
    mem.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (0: torch's default)"
    )
    mem.add_argument(
        "--deterministic",
        action="store_true",
        help="torch.use_deterministic_algorithms(True), for exact reruns",
    )

    dat = p.add_argument_group("data")
    dat.add_argument("--workers", type=int, default=2, help="loader worker processes per rank")
    dat.add_argument(
        "--shuffle-buffer", type=int, default=1000, help="sample shuffle buffer (1: off)"
    )
    dat.add_argument(
        "--samples-per-epoch",
        type=int,
        default=None,
        help="resample shards with replacement; an epoch is this many samples",
    )
    dat.add_argument(
        "--tokenizer",
        default=None,
        help="openai | PATH to a learned tokenizer | learn:VOCAB (learn from the shards); "
        "default: the config's ('learned' configs learn 4096 tokens, others use openai)",
    )
    dat.add_argument(
        "--tokenizer-captions", type=int, default=200_000, help="captions read to learn a tokenizer"
    )
    dat.add_argument("--seed", type=int, default=0)

    log = p.add_argument_group("checkpoints and logging")
    log.add_argument("--save-every", type=_positive, default=100, help="checkpoint every N steps")
    log.add_argument("--log-every", type=_positive, default=10, help="log.jsonl line every N steps")
    log.add_argument("--no-tensorboard", action="store_true")
    log.add_argument("--no-progress", action="store_true", help="no progress bar")
    log.add_argument(
        "--zeroshot-dataset",
        default=None,
        help="class-per-folder image dataset for zero-shot evaluation during training",
    )
    log.add_argument(
        "--zeroshot-templates",
        default="a photo of a {}.",
        help="prompt template, or a templates file/name for an ensemble",
    )
    log.add_argument(
        "--zeroshot-every", type=int, default=0, help="evaluate every N steps (0: never)"
    )
    return p


def validate(args, parser: argparse.ArgumentParser) -> None:
    if args.batch_size % args.accum_steps:
        parser.error(
            f"--batch-size {args.batch_size} must be divisible by --accum-steps {args.accum_steps}"
        )
    if args.workers < 0:
        parser.error("--workers must be >= 0")
    if args.zeroshot_every and not args.zeroshot_dataset:
        parser.error("--zeroshot-every needs --zeroshot-dataset")
    if args.zeroshot_dataset and not os.path.isdir(args.zeroshot_dataset):
        parser.error(f"--zeroshot-dataset {args.zeroshot_dataset} is not a folder")
    if args.samples_per_epoch is not None and args.samples_per_epoch < args.batch_size:
        parser.error("--samples-per-epoch must be at least one batch")


def main(argv: list[str] | None = None) -> int:
    code = _main(argv)
    # a torchrun rank that finished: leave before a C++ teardown abort can turn the done
    # run into a failed one (a failing rank exits normally: it fails either way)
    if code == 0 and int(os.environ.get("WORLD_SIZE", "1")) > 1 and argv is None:
        from train.distributed import exit_rank

        exit_rank(code)
    return code


def _main(argv: list[str] | None) -> int:
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    validate(args, parser)
    from train.trainer import AllRanksError, run  # torch import after argument errors

    try:
        run(args)
    except AllRanksError as exc:  # every rank fails here alike: one line, from rank 0
        if os.environ.get("RANK", "0") == "0":
            print(f"wit-train: error: {exc}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError, RuntimeError, FloatingPointError) as exc:
        print(f"wit-train: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("wit-train: interrupted; resume with --resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
