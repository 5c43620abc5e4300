"""What a user sees while `wit-build` runs: one progress bar per phase, and no library noise.

Progress comes from the workers, wherever they run: a worker that finishes a unit of work
publishes an empty marker ``OUT/_progress/PHASE/KEY-ROWS`` (through FileSystems, so it
works with remote workers and object-store OUT). Its name carries the count, so the
launcher sums a listing and reads no file; a retried bundle rewrites the same name.
The launcher polls the listing and draws tqdm bars with a total, a rate and an ETA.

Phases: ``read`` (rows read, out of the planned total: exact for parquet, estimated from
bytes otherwise), ``text`` (rows through the text stages: given a final status, or
selected and handed to fetching), ``fetch`` (selected rows whose shard is written, out of
the planned selection from ``shards/_plan.json``).

Keeping library log lines off the terminal is ``pipeline.terminal``'s job.
"""

from __future__ import annotations

import threading

PROGRESS_DIR = "_progress"
PHASES = (("read", "reading"), ("text", "text stages"), ("fetch", "fetching"))


def record(out_dir: str, phase: str, key: str, rows: int) -> None:
    """Publish one progress marker; never fails the job (progress is informative)."""
    from pipeline import fsio

    try:
        fsio.publish(fsio.join(out_dir, PROGRESS_DIR, phase, f"{key}-{int(rows)}"), b"")
    except Exception:  # noqa: BLE001 - a progress file must not cost a bundle
        pass


def done_rows(out_dir: str, phase: str) -> int:
    from pipeline import fsio

    total = 0
    for path in fsio.list_files(fsio.join(out_dir, PROGRESS_DIR, phase, "*")):
        tail = path.rsplit("-", 1)[-1]
        if tail.isdigit():
            total += int(tail)
    return total


class _Discard:
    """A file that drops what tqdm draws (the bars of a log file are printed as lines)."""

    def write(self, text):
        return len(text)

    def flush(self):
        pass


class ProgressBars:
    """Polls the markers in a thread and draws one tqdm bar per phase on stderr.

    On a terminal the bars redraw in place. Into a log file (stderr not a tty) they would
    leave carriage returns and cursor-up codes, so there each bar is printed as a plain
    line every ``LOG_EVERY`` seconds and once at the end.
    """

    LOG_EVERY = 30.0

    def __init__(self, out_dir: str, totals: dict[str, int | None], stream, interval=None,
                 enabled: bool = True):  # fmt: skip
        from pipeline import fsio

        self.enabled = enabled  # False (--no-progress): draws nothing and polls nothing
        self.out_dir, self.totals, self.stream = out_dir, dict(totals), stream
        self.interval = interval or (1.0 if fsio.is_local(out_dir) else 5.0)
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._logged = None  # monotonic time of the last lines printed into a log
        self.bars = {}

    def __enter__(self):
        import time

        from tqdm import tqdm

        if not self.enabled:
            return self
        for position, (phase, label) in enumerate(PHASES):
            if phase in self.totals:
                self.bars[phase] = tqdm(total=self.totals[phase], desc=f"{label:<11}",
                                        unit=" rows", unit_scale=True, position=position,
                                        file=self.stream if self.tty else _Discard(),
                                        dynamic_ncols=True, leave=True,
                                        mininterval=0.5)  # fmt: skip
        self._logged = time.monotonic()
        self._thread.start()
        return self

    def update(self) -> None:
        from pipeline import fsio

        if "fetch" in self.bars and self.bars["fetch"].total is None:
            plan = fsio.join(self.out_dir, "shards", "_plan.json")
            if fsio.exists(plan):
                self.bars["fetch"].total = fsio.read_json(plan)["candidates"]
        for phase, bar in self.bars.items():
            n = done_rows(self.out_dir, phase)
            if bar.total is not None and n > bar.total:
                bar.total = n  # an estimate from bytes was low
            bar.n = n
            bar.refresh()

    def _log_lines(self, force: bool = False) -> None:
        """Into a log file: every bar as one line, at most every LOG_EVERY seconds."""
        import time

        if self.tty or not (force or time.monotonic() - self._logged >= self.LOG_EVERY):
            return
        self._logged = time.monotonic()
        for bar in self.bars.values():
            self.stream.write(f"{bar}\n")
        self.stream.flush()

    def _run(self) -> None:
        import time

        wait = self.interval
        while not self._stop.wait(wait):
            start = time.monotonic()
            try:
                self.update()
                self._log_lines()
            except Exception:  # noqa: BLE001 - a listing that fails now may work next time
                pass
            # a listing that grows slow (many markers, a slow store) is polled less often,
            # so polling never takes more than ~2% of the launcher's time
            wait = max(self.interval, 50 * (time.monotonic() - start))

    def __exit__(self, *exc):
        if not self.enabled:
            return False
        self._stop.set()
        self._thread.join()
        try:
            self.update()
        except Exception:  # noqa: BLE001
            pass
        self._log_lines(force=True)
        for bar in self.bars.values():
            bar.close()
        return False


class Reporter:
    """A worker-side counter that publishes a marker at most every few seconds (and at the
    end of each bundle), so millions of small units do not make millions of files."""

    EVERY_SECONDS = 5.0

    def __init__(self, out_dir: str | None, phase: str):
        import time
        import uuid

        self.out_dir, self.phase = out_dir, phase
        self._id, self._seq, self._pending = uuid.uuid4().hex[:12], 0, 0
        self._clock = time.monotonic
        self._last = self._clock()

    def add(self, rows: int) -> None:
        self._pending += rows
        if self._clock() - self._last >= self.EVERY_SECONDS:
            self.flush()

    def flush(self) -> None:
        if self._pending and self.out_dir:
            self._seq += 1
            record(self.out_dir, self.phase, f"{self._id}.{self._seq}", self._pending)
        self._pending = 0
        self._last = self._clock()
