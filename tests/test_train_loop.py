"""The training step and loop: accumulation, precision, checkpointing, learning, zero-shot."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from test_train_fixtures import HELD_OUT, SHAPES, make_samples, write_class_folders, write_corpus
from test_train_resume import MICRO

from train import ClipLoss, create_model
from train import checkpoint as ckpt_io
from train.cli_train import main
from train.optim import create_optimizer
from train.trainer import train_step


def micro_model(seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return create_model({**MICRO, "vocab_size": 300, **overrides})


def random_batch(n: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 32, 32, generator=g)
    texts = torch.randint(1, 298, (n, 12), generator=g)
    texts[:, -1] = 299  # the end-of-text token has the largest id
    return images, texts


def grads_after_step(model, images, texts, **kw):
    """Parameters after one plain-SGD step with lr=1 (so params_before - after = grad)."""
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    train_step(model, images, texts, opt, ClipLoss(), **kw)
    return {k: before[k] - v.detach() for k, v in model.named_parameters()}


def test_accumulation_gives_the_full_batch_gradient():
    """Cached-feature accumulation keeps all negatives: same gradient as one big batch.

    A naive accumulation (micro-batches scored only against themselves) would differ.
    """
    images, texts = random_batch(16)
    model = micro_model()
    full = grads_after_step(copy.deepcopy(model), images, texts)
    accum = grads_after_step(copy.deepcopy(model), images, texts, accum_steps=4)
    for key in full:
        torch.testing.assert_close(accum[key], full[key], rtol=1e-4, atol=1e-6, msg=key)
    assert full["logit_scale"].abs() > 0

    naive = copy.deepcopy(model)
    opt = torch.optim.SGD(naive.parameters(), lr=1.0)
    before = {k: v.detach().clone() for k, v in naive.named_parameters()}
    for i, t in zip(images.chunk(4), texts.chunk(4), strict=True):
        train_step(naive, i, t, opt, ClipLoss())
    diff = before["text_projection"] - naive.text_projection.detach()
    assert not torch.allclose(diff, full["text_projection"], rtol=1e-2, atol=1e-5)


def test_grad_checkpointing_does_not_change_the_gradient():
    images, texts = random_batch(8)
    model = micro_model()
    plain = grads_after_step(copy.deepcopy(model), images, texts)
    ckpt_model = copy.deepcopy(model)
    ckpt_model.set_grad_checkpointing(True)
    checkpointed = grads_after_step(ckpt_model, images, texts)
    for key in plain:
        torch.testing.assert_close(checkpointed[key], plain[key], rtol=1e-4, atol=1e-6, msg=key)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_step_stays_close_to_fp32(precision):
    images, texts = random_batch(8)
    model = micro_model()
    loss32 = ClipLoss()(*model(images, texts)).item()
    m = copy.deepcopy(model)
    opt = create_optimizer(m, lr=1e-3, weight_decay=0.1)
    scaler = torch.amp.GradScaler("cpu") if precision == "fp16" else None
    loss = float(train_step(m, images, texts, opt, ClipLoss(), precision=precision, scaler=scaler))
    assert abs(loss - loss32) < 0.05 * loss32
    moved = [k for k, v in m.state_dict().items() if not torch.equal(v, model.state_dict()[k])]
    assert "visual.conv1.weight" in moved and "text_projection" in moved


def test_logit_scale_is_clamped_and_clipping_bounds_the_update():
    images, texts = random_batch(8)
    model = micro_model()
    with torch.no_grad():
        model.logit_scale.fill_(4.7)  # exp = 110 > 100
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    train_step(model, images, texts, opt, ClipLoss())
    assert model.logit_scale.item() == pytest.approx(torch.log(torch.tensor(100.0)).item())

    m = micro_model()
    opt = torch.optim.SGD(m.parameters(), lr=1.0)
    before = torch.cat([p.detach().flatten().clone() for p in m.parameters()])
    train_step(m, images, texts, opt, ClipLoss(), grad_clip=1e-3)
    after = torch.cat([p.detach().flatten() for p in m.parameters()])
    # logit_scale is clamped afterwards, not part of the clipped update's size check
    assert (before - after).norm() <= 1e-3 * 1.01 + 1e-6


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """One short real run of wit-train on the synthetic corpus, with zero-shot evaluation."""
    d = tmp_path_factory.mktemp("loop")
    write_corpus(str(d), make_samples(800, seed=11, size=32), shard_size=200)
    config = d / "micro.json"
    config.write_text(json.dumps({**MICRO, "embed_dim": 64, "vision_width": 64, "text_width": 64}))
    write_class_folders(str(d / "heldout"), per_combo=10, combos=HELD_OUT, by="color")
    templates = d / "templates.txt"
    templates.write_text("".join(f"a {{}} {s}\n" for s in SHAPES))
    run = d / "run"
    argv = [
        "--shards", str(d / "shards" / "*.tar"), "--model", str(config), "--out", str(run),
        "--steps", "100", "--batch-size", "32", "--lr", "3e-3", "--warmup", "10",
        "--workers", "1", "--threads", "1", "--log-every", "10", "--save-every", "50",
        "--tokenizer", "learn:600", "--no-progress",
        "--zeroshot-dataset", str(d / "heldout"), "--zeroshot-every", "100",
        "--zeroshot-templates", str(templates),
    ]  # fmt: skip
    assert main(argv) == 0
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return run, rows


def test_loss_falls_clearly_on_the_synthetic_corpus(trained_run):
    _, rows = trained_run
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 11
    # ln(32) = 3.47 is the loss of a model that has learnt nothing; captions of the same
    # (colour, shape) recur within a batch, so the floor is well above 0 (about 1.5).
    assert losses[0] > 3.0
    assert max(losses[-3:]) < 0.6 * math.log(32)


def test_zero_shot_on_held_out_combinations_is_far_above_chance(trained_run):
    _, rows = trained_run
    zs = [r for r in rows if "zeroshot_top1" in r]
    assert zs and zs[-1]["step"] == 100
    assert zs[-1]["zeroshot_n"] == 60
    assert zs[-1]["zeroshot_top1"] >= 0.6  # chance is 1/6


def test_run_writes_logs_tensorboard_and_loadable_checkpoints(trained_run):
    run, rows = trained_run
    step_rows = [r for r in rows if "loss" in r]
    for key in ("step", "loss", "lr", "logit_scale", "samples_per_s", "loader_images_per_s"):
        assert key in step_rows[-1]
    assert [r["step"] for r in step_rows] == [1, *range(10, 101, 10)]
    assert step_rows[0]["lr"] < step_rows[1]["lr"]  # warmup
    assert step_rows[-1]["lr"] < 1e-5  # the cosine has run out
    assert all(r["samples_per_s"] > 0 for r in step_rows)
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["latest.pt", "step_000050.pt", "step_000100.pt"]

    ckpt = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)
    assert ckpt["step"] == 100 and ckpt["scaler"] is None
    assert set(ckpt) >= {"model", "optimizer", "config", "tokenizer", "rng", "args"}
    model, tokenizer = ckpt_io.load_model(run)
    assert model.vocab_size == tokenizer.vocab_size < 1000
    for key, value in model.state_dict().items():
        assert torch.equal(value, ckpt["model"][key])


def test_bad_arguments_and_inputs_fail_with_one_line(tmp_path, capsys):
    base = ["--model", "tiny-vit", "--out", str(tmp_path / "run")]
    with pytest.raises(SystemExit) as exc:
        main(["--shards", "x.tar", *base, "--batch-size", "10", "--accum-steps", "3"])
    assert exc.value.code == 2
    assert "divisible by --accum-steps" in capsys.readouterr().err
    assert main(["--shards", str(tmp_path / "none" / "*.tar"), *base]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"wit-train: error: no shards match '{tmp_path / 'none' / '*.tar'}'"]
    assert not (tmp_path / "run").exists()
