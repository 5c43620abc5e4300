"""The wit-train loop: one optimizer step per global batch, checkpoints that resume exactly.

`run(args)` wires model, tokenizer, data, optimizer and logging; `train_step` is the
step itself (autocast, accumulation with cached features, clipping, logit-scale clamp),
kept as a plain function so tests can compare it with a single large-batch step.
"""

from __future__ import annotations

import contextlib
import math
import pathlib
import random
import time

import numpy as np
import torch
from torch import nn

from train import checkpoint as ckpt_io
from train import data as data_mod
from train import distributed as dist_mod
from train import optim as optim_mod
from train.logging_utils import RunLogger

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def autocast(device: torch.device, precision: str):
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _backward(loss: torch.Tensor, scaler) -> None:
    (scaler.scale(loss) if scaler is not None else loss).backward()


def train_step(
    model: nn.Module,
    images: torch.Tensor,
    texts: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    loss_fn,
    accum_steps: int = 1,
    precision: str = "fp32",
    scaler=None,
    grad_clip: float | None = None,
) -> torch.Tensor:
    """One optimizer step on a batch; returns the (detached) loss of the full batch.

    The loss stays a tensor so that a GPU run does not wait for it at every step.

    With `accum_steps > 1` the batch is cut into micro-batches. As in open_clip's
    accum-freq, all features are first computed without gradients; then each micro-batch
    is recomputed with gradients and scored against the cached features of the whole
    batch, so every micro-batch still sees all negatives. The gradients of the
    micro-batch losses sum to the full-batch gradient; the logit scale takes its gradient
    from one micro-batch only, so it is not counted `accum_steps` times.
    """
    device = images.device
    optimizer.zero_grad(set_to_none=True)
    if accum_steps <= 1:
        with autocast(device, precision):
            img, txt, scale = model(images, texts)
            loss = loss_fn(img, txt, scale)
        _backward(loss, scaler)
    else:
        if images.shape[0] % accum_steps:
            raise ValueError(
                f"batch size {images.shape[0]} is not divisible by accum steps {accum_steps}"
            )
        img_chunks = images.chunk(accum_steps)
        txt_chunks = texts.chunk(accum_steps)
        with torch.no_grad(), autocast(device, precision):
            cached = [model(i, t)[:2] for i, t in zip(img_chunks, txt_chunks, strict=True)]
        for j in range(accum_steps):
            last = j == accum_steps - 1
            sync = (
                contextlib.nullcontext()
                if last or not hasattr(model, "no_sync")
                else model.no_sync()
            )
            with sync:
                with autocast(device, precision):
                    img_j, txt_j, scale = model(img_chunks[j], txt_chunks[j])
                    img = torch.cat(
                        [c[0] for c in cached[:j]] + [img_j] + [c[0] for c in cached[j + 1 :]]
                    )
                    txt = torch.cat(
                        [c[1] for c in cached[:j]] + [txt_j] + [c[1] for c in cached[j + 1 :]]
                    )
                    loss = loss_fn(img, txt, scale if last else scale.detach())
                _backward(loss, scaler)
    if scaler is not None:
        scaler.unscale_(optimizer)
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optim_mod.clamp_logit_scale(unwrap(model))
    return loss.detach()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def build_model_and_tokenizer(args, resume_state: dict | None, info=None):
    """The model and tokenizer of a fresh run, or those stored in the checkpoint."""
    from train import create_model, get_tokenizer

    if resume_state is not None:
        tokenizer = get_tokenizer(resume_state["tokenizer"])
        model = create_model(resume_state["config"])
        return model, tokenizer
    from train import load_config

    config = load_config(args.model, **dict(args.override or []))
    tokenizer = build_tokenizer(args, default_tokenizer(config), info)
    overrides = {}
    if tokenizer.vocab_size != config["vocab_size"]:
        overrides["vocab_size"] = tokenizer.vocab_size
    return create_model(config, **overrides), tokenizer


#: The vocabulary a tiny config learns from the corpus when --tokenizer is not given.
LEARNED_VOCAB = 4096


def default_tokenizer(config: dict) -> str:
    """The config's own choice: tiny configs learn a small vocabulary, paper configs use
    OpenAI's 49,408-token BPE so that their checkpoints stay compatible."""
    return f"learn:{LEARNED_VOCAB}" if config.get("tokenizer") == "learned" else "openai"


def build_tokenizer(args, default: str = "openai", info=None):
    """`openai`, a tokenizer file, or `learn:N` = a vocabulary of N learned from the shards.

    Under DDP only rank 0 learns; the other ranks receive its merges, so every rank
    tokenizes a caption the same way (the learning itself is deterministic too).
    """
    from train import get_tokenizer
    from train import tokenizer as tok_mod

    spec = args.tokenizer or default
    if not spec.startswith("learn:"):
        return get_tokenizer(spec)
    info = info or dist_mod.DistInfo()
    learned: dict | None = None
    if info.is_main:
        try:
            vocab = int(spec.split(":", 1)[1])
            shards = data_mod.expand_shards(args.shards)
            captions = data_mod.iter_captions(shards, limit=args.tokenizer_captions)
            learned = tok_mod.learn_tokenizer(captions, vocab).spec()
        except (ValueError, OSError) as exc:
            if not info.distributed:
                raise
            learned = {"error": f"cannot learn the tokenizer on rank 0: {exc}"}
    learned = dist_mod.all_gather_objects(learned, info)[0]  # rank 0's, on every rank
    if "error" in learned:
        raise AllRanksError(learned["error"])
    return get_tokenizer(learned)


class AllRanksError(ValueError):
    """A failure every rank meets at the same point: only rank 0 reports it (one line)."""


def check_shard_assignment(shards: list[str], info, samples_per_epoch: int | None) -> None:
    """Fail every rank together, before any training, when a rank would get no shard.

    Without resampling each rank reads its own slice of the shards (rank::world_size), so
    with fewer shards than ranks one rank raises at its first batch while the others wait
    in a collective until the timeout. The shard count is gathered, so ranks that see
    different files (a folder not shared by every node) fail together too.
    """
    counts = dist_mod.all_gather_objects(len(shards), info)
    if len(set(counts)) > 1:
        raise AllRanksError(
            f"the ranks see different shards for --shards ({', '.join(map(str, counts))} "
            "files by rank): every node must see the same files"
        )
    if samples_per_epoch is None and counts[0] < info.world_size:
        raise AllRanksError(
            f"too few shards for {info.world_size} ranks: --shards matches {counts[0]}, so "
            f"{info.world_size - counts[0]} rank(s) would get none; use --samples-per-epoch "
            f"(resampled shards) or at least {info.world_size} shards"
        )


def find_resume_state(args, info) -> dict | None:
    run = pathlib.Path(args.out)
    latest = run / ckpt_io.CHECKPOINT_DIR / ckpt_io.LATEST
    if args.resume:
        if latest.is_file():
            return ckpt_io.load_checkpoint(latest, map_location="cpu")
        if info.is_main:
            print(f"wit-train: --resume: no checkpoint in {run}, starting from step 0")
        return None
    if latest.is_file():
        raise ValueError(f"{run} already holds checkpoints; pass --resume or choose a new --out")
    return None


def make_loader(args, model, tokenizer, info) -> data_mod.ResumableLoader:
    from train import image_transform

    shards = data_mod.expand_shards(args.shards)
    dataset = data_mod.ShardBatches(
        shards,
        transform=image_transform(unwrap(model).image_size, is_train=True),
        tokenizer=tokenizer,
        batch_size=args.batch_size,
        context_length=unwrap(model).context_length,
        seed=args.seed,
        shuffle_buffer=args.shuffle_buffer,
        rank=info.rank,
        world_size=info.world_size,
        samples_per_epoch=args.samples_per_epoch,
    )
    return data_mod.ResumableLoader(
        dataset, num_workers=args.workers, pin_memory=info.device.type == "cuda"
    )


def checkpoint_state(model, optimizer, scaler, step, tokenizer, loader, args, info) -> dict:
    loader_states = dist_mod.all_gather_objects(loader.state_dict(), info)
    return {
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "step": int(step),
        "config": dict(unwrap(model).config),
        "tokenizer": tokenizer.spec(),
        "rng": ckpt_io.rng_state(),
        "data": loader_states,
        "world_size": info.world_size,
        "args": {
            k: v
            for k, v in vars(args).items()
            if isinstance(v, (str, int, float, bool, type(None)))
        },
    }


def run_zeroshot(model, tokenizer, args, info) -> dict:
    from train.eval.zeroshot import evaluate

    m = unwrap(model)
    m.eval()
    try:
        return evaluate(
            m,
            tokenizer,
            args.zeroshot_dataset,
            templates=args.zeroshot_templates,
            batch_size=args.batch_size,
            device=str(info.device),
        )
    finally:
        m.train()


def run(args) -> dict:
    """Train as `args` (the parsed wit-train command line) says; return a summary dict."""
    info = dist_mod.init_distributed(args.device)
    try:
        return _run(args, info)
    finally:
        dist_mod.cleanup(info)


def _run(args, info) -> dict:
    if args.deterministic:
        torch.use_deterministic_algorithms(True)
    if args.threads:
        torch.set_num_threads(args.threads)
    shards = data_mod.expand_shards(args.shards)  # fail on a bad pattern before model work
    check_shard_assignment(shards, info, args.samples_per_epoch)
    seed_everything(args.seed)
    resume_state = find_resume_state(args, info)
    model, tokenizer = build_model_and_tokenizer(args, resume_state, info)
    if args.grad_checkpointing:
        model.set_grad_checkpointing(True)
    model.to(info.device)
    optimizer = optim_mod.create_optimizer(
        model, args.lr, args.wd, model.config, betas=args.betas, eps=args.eps
    )
    scaler = torch.amp.GradScaler(info.device.type) if args.precision == "fp16" else None
    loader = make_loader(args, model, tokenizer, info)
    step = 0
    if resume_state is not None:
        model.load_state_dict(ckpt_io.strip_ddp_prefix(resume_state["model"]))
        optimizer.load_state_dict(resume_state["optimizer"])
        if scaler is not None and resume_state.get("scaler"):
            scaler.load_state_dict(resume_state["scaler"])
        step = int(resume_state["step"])
        ckpt_io.set_rng_state(resume_state["rng"])
        states = resume_state.get("data") or []
        if len(states) == info.world_size:
            loader.load_state_dict(states[info.rank])
        elif info.is_main:
            print("wit-train: world size changed since the checkpoint; data restarts its epoch")
    from train import ClipLoss

    loss_fn = ClipLoss(
        rank=info.rank, world_size=info.world_size, gather_with_grad=info.distributed
    )
    train_model = model
    if info.distributed:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[info.local_rank] if info.device.type == "cuda" else None
        )
    model.train()
    logger = RunLogger(args.out, args, info, start_step=step)
    global_batch = args.batch_size * info.world_size
    sizes = data_mod.shard_sizes(loader.dataset.shards)
    logger.note_epoch_length(sum(sizes.values()), global_batch, args.samples_per_epoch)
    loss = float("nan")
    try:
        while step < args.steps:
            t0 = time.perf_counter()
            batch = next(loader)
            t_data = time.perf_counter() - t0
            images = batch["images"].to(info.device, non_blocking=True)
            texts = batch["texts"].to(info.device, non_blocking=True)
            optim_mod.set_lr(
                optimizer, optim_mod.lr_at(step, args.lr, args.warmup, args.steps, args.min_lr)
            )
            loss = train_step(
                train_model,
                images,
                texts,
                optimizer,
                loss_fn,
                accum_steps=args.accum_steps,
                precision=args.precision,
                scaler=scaler,
                grad_clip=args.grad_clip,
            )
            step += 1
            logged = logger.step_done(
                step,
                loss,
                optimizer.param_groups[0]["lr"],
                model.logit_scale,
                images.shape[0] * info.world_size,
                t_data,
                batch,
                loader,
            )
            if logged is not None and not math.isfinite(logged):
                raise FloatingPointError(f"loss is {logged} at step {step}")
            paused = time.perf_counter()
            if args.zeroshot_dataset and args.zeroshot_every and step % args.zeroshot_every == 0:
                if info.is_main:
                    logger.zeroshot(step, run_zeroshot(train_model, tokenizer, args, info))
                dist_mod.barrier(info)
            if step % args.save_every == 0 or step == args.steps:
                state = checkpoint_state(
                    train_model, optimizer, scaler, step, tokenizer, loader, args, info
                )
                if info.is_main:
                    ckpt_io.save_checkpoint(args.out, state)
                dist_mod.barrier(info)
            logger.exclude_time(time.perf_counter() - paused)
    finally:
        loader.close()
        summary = logger.close(step, float(loss), dict(loader.bad))
    return summary
