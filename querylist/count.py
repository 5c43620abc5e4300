"""`wit-querylist count`: word, word-pair and title counts from MediaWiki XML dumps.

Outputs, in `--out DIR` (the inputs of `wit-querylist build`):

- `unigrams.tsv.gz`: `word<TAB>count`, every word seen at least `--unigram-floor` times;
- `bigrams.tsv.gz`: `w1 w2<TAB>count`, pairs seen at least `--bigram-floor` times;
- `titles.tsv.gz`: `title<TAB>page id`, every article (namespace 0, not a redirect);
- `count.json`: what was read, totals, settings and timings; written last.

Counts go by descending count, then by the word; titles by title. The files depend only
on the input, not on the number of workers or on when they spilled, and are gzip'd with a
zero timestamp, so a rerun writes the same bytes.

Only articles are counted (namespace 0, not redirects). Text is what `wikitext` keeps
and words are what `words` cuts: the matcher's case-folding and word boundaries.

Memory: each worker counts into dictionaries and, once they hold `--spill-keys` distinct
words + pairs + titles, appends them to run files on disk, split into `--partitions`
parts by a hash of the key, and starts afresh. At the end each part is summed on its own
(in parallel), so the largest dictionary anywhere holds one part's distinct keys: about
the vocabulary (distinct pairs dominate) divided by the number of parts. Memory is
bounded by the vocabulary, never by the size of the dump.
"""

from __future__ import annotations

import glob
import gzip
import json
import multiprocessing as mp
import os
import queue
import shutil
import sys
import tempfile
import time
import zlib
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from . import dump
from .count_summary import SUMMARY, input_record, read_summary, same_inputs, summary_lines
from .dump import CompressedDataError, DumpError
from .merge import KINDS, OUTPUTS, merge_all
from .wikitext import visible_text

__all__ = ["SUMMARY", "CountConfig", "count", "read_summary", "same_inputs", "summary_lines"]

DEFAULT_UNIGRAM_FLOOR = 1
DEFAULT_BIGRAM_FLOOR = 20
DEFAULT_SPILL_KEYS = 2_000_000
DEFAULT_CHUNK_MB = 1.0
#: Input bytes per partition when --partitions is not given (a full English dump, 22 GB
#: of bzip2, gets 164 parts of roughly 2-3 million distinct pairs each).
BYTES_PER_PARTITION = 128 << 20


@dataclass
class CountConfig:
    dumps: list[str]
    out: str
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    unigram_floor: int = DEFAULT_UNIGRAM_FLOOR
    bigram_floor: int = DEFAULT_BIGRAM_FLOOR
    spill_keys: int = DEFAULT_SPILL_KEYS
    partitions: int | None = None
    chunk_mb: float = DEFAULT_CHUNK_MB
    tmp: str | None = None
    progress: bool = True

    def partition_count(self) -> int:
        if self.partitions:
            return self.partitions
        size = sum(os.path.getsize(p) for p in self.dumps)
        return max(4, min(1024, size // BYTES_PER_PARTITION))

    def floors(self) -> dict[str, int]:
        return {"unigrams": self.unigram_floor, "bigrams": self.bigram_floor, "titles": 1}


# --- per worker ------------------------------------------------------------------------


class Tally:
    """One worker's counts, spilled to partitioned run files when they grow too big."""

    def __init__(self, tmp: str, worker: int, partitions: int, spill_keys: int):
        self.tmp, self.worker, self.partitions, self.spill_keys = (
            tmp,
            worker,
            partitions,
            spill_keys,
        )
        self.unigrams: Counter = Counter()
        self.bigrams: Counter = Counter()
        self.titles: list[tuple[str, int]] = []
        self.stats: Counter = Counter()
        self.skipped: list[str] = []  # the first few articles whose wikitext failed to parse
        from .words import count_into  # imports Beam (pipeline.match): only where counting

        self._count_into = count_into

    def add(self, page: dump.Page) -> None:
        self.stats["pages"] += 1
        if page.ns != 0:
            self.stats["other_namespaces"] += 1
        elif page.redirect:
            self.stats["redirects"] += 1
        else:
            self.titles.append((page.title, page.page_id))  # an article, parsed or not
            try:
                text = visible_text(page.text)
            except Exception as e:  # noqa: BLE001 - one bad page must not stop a dump
                self.stats["skipped_articles"] += 1
                if len(self.skipped) < 10:
                    self.skipped.append(f"{page.title!r} (id {page.page_id}): {e!r}"[:300])
                return
            self.stats["articles"] += 1
            self.stats["wikitext_chars"] += len(page.text)
            self.stats["tokens"] += self._count_into(text, self.unigrams, self.bigrams)

    def maybe_spill(self) -> None:
        if len(self.unigrams) + len(self.bigrams) + len(self.titles) >= self.spill_keys:
            self.spill()

    def spill(self) -> None:
        """Append the counts to the run files, one gzip member per part, and clear them."""
        items: dict[str, Iterable] = {
            "unigrams": self.unigrams.items(),
            "bigrams": self.bigrams.items(),
            "titles": self.titles,
        }
        for kind, pairs in items.items():
            parts: list[list[str]] = [[] for _ in range(self.partitions)]
            for key, value in pairs:
                parts[partition_of(key, self.partitions)].append(f"{key}\t{value}\n")
            for p, lines in enumerate(parts):
                if lines:
                    with gzip.open(run_path(self.tmp, kind, p, self.worker), "ab", 1) as f:
                        f.write("".join(lines).encode())
        self.unigrams, self.bigrams, self.titles = Counter(), Counter(), []
        self.stats["spills"] += 1


def partition_of(key: str, partitions: int) -> int:
    """A stable part number (Python's str hash differs between processes)."""
    return zlib.crc32(key.encode()) % partitions


def run_path(tmp: str, kind: str, part: int, worker: int) -> str:
    return os.path.join(tmp, f"{kind}-{part:04d}-w{worker:03d}.gz")


def _pages(path: str, split: dump.Split) -> Iterator[dump.Page]:
    for xml in split.pages:
        try:
            yield dump.parse_page(xml)
        except Exception as e:  # noqa: BLE001 - ET.ParseError, bad <ns>/<id>
            raise DumpError(
                f"{path}: page {dump.page_ref(xml) or '(no title)'} is not valid XML: {e}"
            ) from None


def _run_task(task: tuple, tally: Tally) -> tuple:
    """Count one task's pages; returns the message for the parent."""
    kind, file_index, path = task[:3]
    if kind == "range":
        start, end = task[3:]
        try:
            data = dump.decompress_range(path, start, end)
        except CompressedDataError as e:
            where = dump.last_page(e.partial)
            reached = f"; the last whole page before it is {where}" if where else ""
            raise DumpError(
                f"{path}: {e.reason}, in the streams of compressed bytes {start:,}-{end:,}{reached}"
            ) from None
        split = _split(path, data)
        before = tally.stats["pages"]
        for page in _pages(path, split):
            tally.add(page)
        return ("range", file_index, task[3], split.lead, split.tail, split.found,
                tally.stats["pages"] - before, end - start)  # fmt: skip
    data, cbytes = task[3:]
    split = _split(path, data)
    if not dump.is_header(split.lead) or (split.tail and not dump.is_footer(split.tail)):
        where = dump.last_page(data) or "the start"
        raise DumpError(f"{path}: unexpected data outside a page, after {where}")
    before = tally.stats["pages"]
    for page in _pages(path, split):
        tally.add(page)
    return ("xml", file_index, tally.stats["pages"] - before, cbytes)


def _split(path: str, data: bytes) -> dump.Split:
    try:
        return dump.split_pages(data)
    except ValueError as e:
        where = dump.last_page(data) or "the start"
        raise DumpError(f"{path}: malformed dump near {where}: {e}") from None


def _worker(worker: int, cfg: dict, tasks, results) -> None:
    tally = Tally(cfg["tmp"], worker, cfg["partitions"], cfg["spill_keys"])
    try:
        while (task := tasks.get()) is not None:
            results.put(_run_task(task, tally))
            tally.maybe_spill()
        tally.spill()
        tally.stats["worker_cpu_s"] = time.process_time()
        results.put(("exit", worker, dict(tally.stats), tally.skipped))
    except DumpError as e:
        results.put(("error", worker, str(e)))
    except BaseException as e:  # noqa: BLE001 - reported to the parent, one line
        results.put(("error", worker, f"worker {worker}: {type(e).__name__}: {e}"))


# --- the parent ------------------------------------------------------------------------


class _Stitcher:
    """Puts a multistream file's ranges back in order: the end of the last page of range
    k (its `tail`) and the start of range k+1 (its `lead`) form whole pages again."""

    def __init__(self, path: str):
        self.path = path
        self.pieces: dict[int, tuple[bytes, bytes, bool]] = {}
        self.starts: list[int] = []
        self.next = 0
        self.carry = b""
        self.planned = False

    def add(self, start: int, lead: bytes, tail: bytes, found: bool) -> list[bytes]:
        """Record range `start` (`found`: a `<page>` tag lies in it); returns the XML
        fragments now complete, to be counted."""
        self.pieces[start] = (lead, tail, found)
        out = []
        while self.next < len(self.starts) and self.starts[self.next] in self.pieces:
            lead, tail, found = self.pieces.pop(self.starts[self.next])
            if not found:  # the whole range lies inside one page, or is the header
                self.carry += lead
            else:
                fragment = self.carry + lead
                if dump.PAGE_OPEN in fragment:
                    out.append(fragment)
                elif not (dump.is_header(fragment) and (self.next == 0 or not fragment.strip())):
                    raise DumpError(
                        f"{self.path}: unexpected data between pages near byte "
                        f"{self.starts[self.next]:,}: {fragment.strip()[:40]!r}"
                    )
                self.carry = tail
            self.next += 1
        return out

    def done(self) -> bool:
        return self.planned and self.next == len(self.starts)

    def finish(self) -> list[bytes]:
        """What is left after the last range: whole pages to count and the footer.

        Raises DumpError when the file ends inside a page or without `</mediawiki>`.
        """
        self.planned = False  # finished: done() is False from now on
        if not self.starts:
            return []
        split = _split(self.path, self.carry)
        if dump.PAGE_OPEN in split.tail:
            raise DumpError(
                f"{self.path}: the XML ends inside page "
                f"{dump.page_ref(split.tail) or '(no title)'} (truncated file?)"
            )
        end = split.tail if split.found else split.lead
        if not dump.is_footer(end):
            where = dump.last_page(self.carry)
            raise DumpError(
                f"{self.path}: the XML does not end with </mediawiki>"
                + (f", after page {where}" if where else "")
                + " (truncated file?)"
            )
        return [self.carry] if split.pages else []


class _Run:
    """The parent side of a count: feeds tasks, collects results, shows progress."""

    def __init__(self, cfg: CountConfig, tmp: str, partitions: int):
        self.cfg = cfg
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        self.tasks = ctx.Queue(maxsize=2 * cfg.workers)
        self.results = ctx.Queue()
        shared = {"tmp": tmp, "partitions": partitions, "spill_keys": cfg.spill_keys}
        self.procs = [
            ctx.Process(target=_worker, args=(w, shared, self.tasks, self.results), daemon=True)
            for w in range(cfg.workers)
        ]
        for p in self.procs:
            p.start()
        self.exited: dict[int, dict] = {}
        self.stitchers: dict[int, _Stitcher] = {}
        self.pending: deque = deque()
        self.skipped: list[str] = []
        self.pages = 0
        self.start = time.monotonic()
        self._shown = 0.0
        from tqdm import tqdm

        self.bar = tqdm(
            total=sum(os.path.getsize(p) for p in cfg.dumps),
            unit="B",
            unit_scale=True,
            desc="wit-querylist count",
            disable=not cfg.progress,
            dynamic_ncols=True,
            file=sys.stderr,
        )

    # messages from workers
    def _handle(self, msg: tuple) -> None:
        kind = msg[0]
        if kind == "error":
            raise DumpError(msg[2])
        if kind == "exit":
            self.exited[msg[1]] = msg[2]
            self.skipped += msg[3]
            return
        if kind == "range":
            _, fi, start, lead, tail, found, pages, cbytes = msg
            self.pending.extend(
                ("xml", fi, self.cfg.dumps[fi], frag, 0)
                for frag in self.stitchers[fi].add(start, lead, tail, found)
            )
        else:
            _, fi, pages, cbytes = msg
        self.pages += pages
        self.bar.update(cbytes)
        now = time.monotonic()
        if now - self._shown > 0.5:
            self._shown = now
            rate = self.pages / max(now - self.start, 1e-9)
            self.bar.set_postfix_str(f"{self.pages:,} pages, {rate:,.0f} pages/s", refresh=False)

    def drain(self, block: bool = False) -> None:
        try:
            msg = self.results.get(timeout=0.2) if block else self.results.get_nowait()
            self._handle(msg)
            while True:
                self._handle(self.results.get_nowait())
        except queue.Empty:
            pass
        self._check_alive()

    def _check_alive(self) -> None:
        for w, p in enumerate(self.procs):
            if not p.is_alive() and w not in self.exited and p.exitcode not in (None, 0):
                self.drain_errors()
                raise DumpError(
                    f"worker {w} died (exit code {p.exitcode}"
                    + (", killed: out of memory? lower --spill-keys)" if p.exitcode < 0 else ")")
                )

    def drain_errors(self) -> None:
        try:
            while True:
                msg = self.results.get(timeout=0.5)
                if msg[0] == "error":
                    raise DumpError(msg[2])
        except queue.Empty:
            pass

    def _put_one(self, task) -> None:
        while True:
            try:
                self.tasks.put(task, timeout=0.2)
                return
            except queue.Full:
                self.drain(block=False)

    def put(self, task) -> None:
        """Queue `task` (waiting while the queue is full), then any stitched fragments."""
        self._put_one(task)
        self.drain(block=False)
        while self.pending:
            self._put_one(self.pending.popleft())

    # feeding
    def feed_multistream(self, fi: int, path: str) -> None:
        st = self.stitchers[fi] = _Stitcher(path)
        for start, end in dump.plan_ranges(path, int(self.cfg.chunk_mb * (1 << 20))):
            st.starts.append(start)
            self.put(("range", fi, path, start, end))
        st.planned = True

    def feed_single(self, fi: int, path: str, kind: str) -> None:
        batch_bytes = int(self.cfg.chunk_mb * (1 << 20))
        buf = bytearray()
        sent_pages, sent_to, last = 0, 0, ""
        try:
            for data, pos in dump.iter_decompressed(path, kind):
                buf += data
                if len(buf) < batch_bytes:
                    continue
                cut = buf.rfind(dump.PAGE_CLOSE)
                if cut < 0:
                    continue
                cut += len(dump.PAGE_CLOSE)
                batch = bytes(buf[:cut])
                del buf[:cut]
                sent_pages += batch.count(dump.PAGE_CLOSE)
                last = dump.last_page(batch) or last
                self.put(("xml", fi, path, batch, pos - sent_to))
                sent_to = pos
        except CompressedDataError as e:
            rest = bytes(buf)
            n = sent_pages + rest.count(dump.PAGE_CLOSE)
            last = dump.last_page(rest) or last
            size = os.path.getsize(path)
            reached = f"after page #{n:,} {last}" if n else "before the first page"
            raise DumpError(
                f"{path}: {e.reason}, near compressed byte {e.offset:,} of {size:,}, {reached}"
            ) from None
        rest = bytes(buf)
        close = rest.rfind(dump.PAGE_CLOSE)
        after = rest[close + len(dump.PAGE_CLOSE) :] if close >= 0 else rest
        n = sent_pages + rest.count(dump.PAGE_CLOSE)
        if dump.PAGE_OPEN in after:
            raise DumpError(
                f"{path}: the XML ends inside page #{n + 1:,} "
                f"{dump.page_ref(after[after.find(dump.PAGE_OPEN) :]) or '(no title yet)'}, "
                f"after page #{n:,} {dump.last_page(rest) or last} (truncated file?)"
            )
        if not (dump.is_footer(after) or (n == 0 and after.rstrip().endswith(dump.FOOTER))):
            last = dump.last_page(rest) or last
            reached = f"after page #{n:,} {last}" if n else "before the first page"
            raise DumpError(
                f"{path}: the XML does not end with </mediawiki>, {reached} (truncated file?)"
            )
        if dump.PAGE_OPEN in rest:
            self.put(("xml", fi, path, rest, os.path.getsize(path) - sent_to))
        else:
            self.bar.update(os.path.getsize(path) - sent_to)

    def finish(self) -> dict:
        """Wait for every range to come back, stop the workers, sum their statistics."""
        waiting = dict(self.stitchers)
        while waiting or self.pending:
            for fi, st in list(waiting.items()):
                if st.done():
                    path = self.cfg.dumps[fi]
                    self.pending.extend(("xml", fi, path, f, 0) for f in st.finish())
                    del waiting[fi]
            while self.pending:
                self._put_one(self.pending.popleft())
            if waiting:
                self.drain(block=True)
        for _ in self.procs:
            self.put(None)
        while len(self.exited) < len(self.procs):
            self.drain(block=True)
        for p in self.procs:
            p.join()
        total: Counter = Counter()
        for stats in self.exited.values():
            total.update(stats)
        self.bar.set_postfix_str(
            f"{self.pages:,} pages, {self.pages / max(time.monotonic() - self.start, 1e-9):,.0f} "
            "pages/s"
        )
        return dict(total)

    def close(self) -> None:
        self.bar.close()
        for p in self.procs:
            if p.is_alive():
                p.terminate()
        for p in self.procs:
            p.join(timeout=5)
        for q in (self.tasks, self.results):
            q.cancel_join_thread()
            q.close()


# --- entry point -----------------------------------------------------------------------


def count(cfg: CountConfig, log: Callable[[str], None] = print) -> dict:
    """Count `cfg.dumps` into `cfg.out`; returns the summary also written to count.json."""
    kinds = [dump.sniff(p) for p in cfg.dumps]  # every input readable before any work
    os.makedirs(cfg.out, exist_ok=True)
    if cfg.tmp:
        os.makedirs(cfg.tmp, exist_ok=True)
    # a fresh folder of our own, removed at the end: never a folder the user named
    tmp = tempfile.mkdtemp(prefix=".count-tmp-", dir=cfg.tmp or cfg.out)
    partitions = cfg.partition_count()
    from . import words  # noqa: F401 - Beam is imported once, here, before the workers fork

    t0, cpu0 = time.monotonic(), time.process_time()
    modes = []
    run = _Run(cfg, tmp, partitions)
    try:
        for fi, (path, kind) in enumerate(zip(cfg.dumps, kinds, strict=True)):
            if kind == "bz2" and dump.is_multistream(path):
                modes.append("multistream")
                run.feed_multistream(fi, path)
            else:
                modes.append(f"single stream ({kind})")
                run.feed_single(fi, path, kind)
        stats = run.finish()
        pages = run.pages
    except BaseException:
        run.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    run.close()
    t1, parent_cpu = time.monotonic(), time.process_time() - cpu0
    spilled = sum(os.path.getsize(f) for f in glob.glob(os.path.join(tmp, "*-w*.gz")))
    try:
        merged = merge_all(cfg, tmp, partitions)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    t2 = time.monotonic()
    count_s = t1 - t0
    worker_cpu = stats.get("worker_cpu_s", 0.0)
    summary = {
        "inputs": [dict(input_record(p), mode=m) for p, m in zip(cfg.dumps, modes, strict=True)],
        "pages": pages,
        "articles": stats.get("articles", 0),
        "redirects": stats.get("redirects", 0),
        "other_namespaces": stats.get("other_namespaces", 0),
        # articles whose wikitext the parser failed on: left out, not fatal
        "skipped_articles": stats.get("skipped_articles", 0),
        "skipped_examples": sorted(run.skipped)[:10],
        "wikitext_chars": stats.get("wikitext_chars", 0),
        "tokens": stats.get("tokens", 0),
        "distinct": {kind: merged[kind].get("distinct", 0) for kind in KINDS},
        "written": {kind: merged[kind].get("written", 0) for kind in KINDS},
        "floors": cfg.floors(),
        "settings": {
            "workers": cfg.workers,
            "partitions": partitions,
            "spill_keys": cfg.spill_keys,
            "chunk_mb": cfg.chunk_mb,
            "spills": stats.get("spills", 0),
            "spilled_bytes": spilled,
        },
        "seconds": {"count": round(count_s, 2), "merge": round(t2 - t1, 2)},
        "pages_per_s": round(pages / count_s, 1) if count_s else None,
        "articles_per_s": round(stats.get("articles", 0) / count_s, 1) if count_s else None,
        # CPU time is what a core is charged whatever else runs on the machine; the parent
        # decompresses single-stream dumps, the workers parse and count.
        "cpu_seconds": {
            "workers": round(worker_cpu, 2),
            "parent": round(parent_cpu, 2),
        },
        "per_worker_cpu_second": {
            "pages": round(pages / worker_cpu, 1) if worker_cpu else None,
            "articles": round(stats.get("articles", 0) / worker_cpu, 1) if worker_cpu else None,
            "wikitext_mb": round(stats.get("wikitext_chars", 0) / 1e6 / worker_cpu, 3)
            if worker_cpu
            else None,
        },
        "outputs": {kind: os.path.join(cfg.out, OUTPUTS[kind]) for kind in KINDS},
        "rules": "articles only (ns 0, no redirects); words and pairs by the matcher's "
        "case-folding and boundaries (querylist/words.py)",
    }
    path = os.path.join(cfg.out, SUMMARY)
    with open(f"{path}.tmp", "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2, ensure_ascii=False)
        f.write("\n")
    os.replace(f"{path}.tmp", path)
    return summary
