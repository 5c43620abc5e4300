"""What wit-train reports while it runs: progress bar, RUN/log.jsonl and TensorBoard.

Only rank 0 writes. Throughput excludes checkpoint and evaluation pauses, so
`samples_per_s` measures training alone.
"""

from __future__ import annotations

import json
import pathlib
import sys
import time

from tqdm import tqdm


class RunLogger:
    def __init__(self, out: str, args, info, start_step: int = 0):
        self.args = args
        self.main = info.is_main
        self.workers = max(1, args.workers)
        self.run = pathlib.Path(out)
        self.file = None
        self.tb = None
        self.bar = None
        self.window_start = time.perf_counter()
        self.run_start = self.window_start
        self.excluded = 0.0
        self.total_excluded = 0.0
        self.window_samples = 0
        self.window_data_s = 0.0
        self.window_produce: list[float] = []
        self.samples = 0
        self.start_step = start_step
        self.last_record: dict = {}
        if not self.main:
            return
        self.run.mkdir(parents=True, exist_ok=True)
        self.file = open(self.run / "log.jsonl", "a")
        if not args.no_tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.run / "tensorboard"))
        self.bar = tqdm(
            total=args.steps,
            initial=start_step,
            desc="wit-train",
            disable=args.no_progress,
            dynamic_ncols=True,
            file=sys.stderr,
        )

    def note_epoch_length(self, samples: int, global_batch: int, samples_per_epoch) -> None:
        """Say how many steps an epoch takes (sizes.json), or the resampled epoch size."""
        if not self.main:
            return
        per_epoch = samples_per_epoch or samples
        steps = per_epoch // max(1, global_batch)
        print(
            f"wit-train: {samples} samples in the shards; an epoch is {per_epoch} samples "
            f"= {steps} steps of {global_batch}",
            file=sys.stderr,
        )

    def exclude_time(self, seconds: float) -> None:
        self.excluded += seconds
        self.total_excluded += seconds

    def step_done(self, step, loss, lr, logit_scale, n_samples, t_data, batch, loader):
        """Count a finished step; on a logging step return the loss as a float.

        `loss` and `logit_scale` are tensors, read only on logging steps so that a GPU
        run does not synchronise every step.
        """
        self.window_samples += n_samples
        self.samples += n_samples
        self.window_data_s += t_data
        if "produce_s" in batch:
            self.window_produce.append(float(batch["produce_s"]))
        if self.bar is not None:
            self.bar.update(1)
        first = step == self.start_step + 1  # shows where a (resumed) run starts from
        if step % self.args.log_every and step != self.args.steps and not first:
            return None
        loss = float(loss)
        if not self.main:
            return loss
        logit_scale = float(logit_scale.detach().exp())
        now = time.perf_counter()
        elapsed = max(1e-9, now - self.window_start - self.excluded)
        record = {
            "step": step,
            "loss": round(loss, 6),
            "lr": lr,
            "logit_scale": round(logit_scale, 4),
            "samples_per_s": round(self.window_samples / elapsed, 2),
            "data_wait_s": round(self.window_data_s, 4),
            "epoch": loader.epoch,
            "bad_samples": int(sum(loader.bad.values())),
        }
        if self.window_produce:
            mean = sum(self.window_produce) / len(self.window_produce)
            batch_size = self.args.batch_size
            record["loader_images_per_s"] = round(self.workers * batch_size / max(mean, 1e-9), 2)
        self.bar.set_postfix(
            loss=f"{loss:.4f}",
            lr=f"{lr:.2e}",
            scale=f"{logit_scale:.2f}",
            sps=f"{record['samples_per_s']:.1f}",
        )
        self.write(record)
        self.window_start, self.excluded = now, 0.0
        self.window_samples, self.window_data_s, self.window_produce = 0, 0.0, []
        return loss

    def write(self, record: dict) -> None:
        self.last_record = record
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.tb.add_scalar(f"train/{key}", value, record["step"])

    def zeroshot(self, step: int, result: dict) -> None:
        record = {"step": step}
        record.update(
            {f"zeroshot_{k}": v for k, v in result.items() if isinstance(v, (int, float))}
        )
        self.write(record)
        if self.bar is not None:
            self.bar.write(f"step {step}: zero-shot top-1 {result.get('top1', float('nan')):.4f}")

    def close(self, step: int, loss: float, bad: dict) -> dict:
        elapsed = max(1e-9, time.perf_counter() - self.run_start - self.total_excluded)
        summary = {
            "steps": step,
            "steps_this_run": step - self.start_step,
            "final_loss": loss,
            "samples_per_s": round(self.samples / elapsed, 2),
            "bad_samples": bad,
            "run": str(self.run),
        }
        if self.main:
            self.bar.close()
            if self.tb is not None:
                self.tb.close()
            self.file.close()
            if summary["steps_this_run"] == 0:  # a --resume of a finished run
                print(f"wit-train: already at step {step}; nothing to train, checkpoints in "
                      f"{self.run / 'checkpoints'}", file=sys.stderr)  # fmt: skip
                return summary
            print(
                f"wit-train: {summary['steps_this_run']} steps (to step {step}), final loss "
                f"{loss:.4f}, {summary['samples_per_s']} samples/s, "
                f"skipped samples {sum(bad.values())} {bad or ''}, checkpoints in "
                f"{self.run / 'checkpoints'}",
                file=sys.stderr,
            )
        return summary
