"""Time `wit-stats` on a generated OUT folder of N status rows (10 million by default).

The folder follows docs/shard-format.md: status parts with a realistic status mix,
Zipf-distributed query matches balanced exactly to the cap, the matching
counts/query_counts.parquet, shard parquet files for the kept rows, sizes.json and
manifest.json. Generation is vectorised numpy/pyarrow and goes to a temporary folder
(removed afterwards unless --keep is given), never into the repository.

    .venv/bin/python bench/bench_stats.py                 # 10M rows
    .venv/bin/python bench/bench_stats.py --rows 200000   # quick run
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.schema import QUERY_COUNTS_SCHEMA, SAMPLE_SCHEMA, STATUS_SCHEMA  # noqa: E402

SHARD_SIZE = 10_000
# Share of all candidates dropped before balancing, and of selected ones after it.
EARLY = {"caption_rejected": 0.08, "duplicate": 0.07, "no_match": 0.50, "language_rejected": 0.05}
LATE = {"fetch_failed": 0.15, "opted_out": 0.02, "blocked_address": 0.01, "image_rejected": 0.03}
REASONS = {
    "caption_rejected": ["empty", "too_short", "too_long", "filename_like", "boilerplate"],
    "language_rejected": ["de", "fr", "es", "ja", "ru", "pt", "it", "zh"],
    "fetch_failed": ["404", "403", "500", "503", "ConnectTimeout", "ReadTimeout", "SSLError"],
    "opted_out": ["robots.txt", "X-Robots-Tag: noai"],
    "blocked_address": ["private", "loopback", "link_local"],
    "image_rejected": ["too_small", "undecodable", "too_elongated"],
}
WORDS = np.array(
    "a the dog cat man woman city street beach tree house car red blue old new young small "
    "large view of on in with at near sunset portrait photo garden river mountain bridge "
    "people children playing walking sitting standing modern vintage wooden stone".split()
)


def hex_strings(rng: np.random.Generator, n: int, width: int = 64) -> pa.Array:
    """n random lowercase hex strings of `width` characters, without a Python loop."""
    digits = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    chars = digits[rng.integers(0, 16, size=(n, width), dtype=np.uint8)]
    flat = pa.py_buffer(np.ascontiguousarray(chars).tobytes())
    offsets = pa.py_buffer(np.arange(0, (n + 1) * width, width, dtype=np.int32).tobytes())
    return pa.Array.from_buffers(pa.string(), n, [None, offsets, flat])


def caption_pool(rng: np.random.Generator, n: int) -> pa.Array:
    lengths = rng.integers(2, 30, size=n)
    words = WORDS[rng.integers(0, len(WORDS), size=int(lengths.sum()))]
    out, start = [], 0
    for k in lengths:
        out.append(" ".join(words[start : start + k]))
        start += k
    return pa.array(out, pa.string())


def list_column(offsets: np.ndarray, values: pa.Array) -> pa.Array:
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), values)


def simulate(rng: np.random.Generator, rows: int, queries: int, cap: int) -> dict:
    """Statuses and query matches for every row, balanced exactly: at most cap per query."""
    names = list(EARLY) + ["matched"]
    probs = list(EARLY.values()) + [1 - sum(EARLY.values())]
    stage = rng.choice(len(names), size=rows, p=probs)
    status = np.array(names, dtype=object)[stage]
    has_match = (stage == names.index("matched")) | (stage == names.index("language_rejected"))
    n_match = np.where(has_match, rng.geometric(0.6, size=rows), 0)
    offsets = np.concatenate([[0], np.cumsum(n_match)])
    occ_row = np.repeat(np.arange(rows), n_match)
    weights = 1.0 / (np.arange(queries) + 10.0) ** 1.1
    occ_query = rng.choice(queries, size=len(occ_row), p=weights / weights.sum())
    eligible = stage[occ_row] == names.index("matched")
    # exact balancing: shuffle each query's eligible matches; its first `cap` select
    e_idx = np.flatnonzero(eligible)
    order = e_idx[np.lexsort((rng.random(len(e_idx)), occ_query[e_idx]))]
    q_sorted = occ_query[order]
    rank = np.arange(len(order)) - np.searchsorted(q_sorted, q_sorted, side="left")
    selected = np.zeros(len(occ_row), dtype=bool)
    selected[order[rank < cap]] = True
    row_selected = np.bincount(occ_row[selected], minlength=rows) > 0
    status[(stage == names.index("matched")) & ~row_selected] = "not_selected"
    late = list(LATE) + ["kept"]
    late_p = list(LATE.values()) + [1 - sum(LATE.values())]
    status[row_selected] = np.array(late, dtype=object)[
        rng.choice(len(late), size=int(row_selected.sum()), p=late_p)
    ]
    kept_row = status == "kept"
    counts = {
        "matched": np.bincount(occ_query[eligible], minlength=queries),
        "selected": np.bincount(occ_query[selected], minlength=queries),
        "kept": np.bincount(occ_query[kept_row[occ_row]], minlength=queries),
    }
    return dict(status=status, offsets=offsets, occ_row=occ_row, occ_query=occ_query, selected=selected,
                counts=counts)  # fmt: skip


def status_part(rng, sim: dict, lo: int, hi: int, kept_before: int, pools: dict) -> pa.Table:
    """Rows lo..hi of the status table, every column filled from the simulation."""
    status, offsets, occ_query = sim["status"][lo:hi], sim["offsets"], sim["occ_query"]
    n = hi - lo
    uid = hex_strings(rng, n)
    reason = pa.nulls(n, pa.string())
    for name, choices in REASONS.items():
        mask = status == name
        if mask.any():
            picked = pa.array(np.array(choices)[rng.integers(0, len(choices), n)])
            reason = pc.if_else(pa.array(mask), picked, reason)
    # a duplicate's reason names the uid of the copy that won
    dup = pa.array(status == "duplicate")
    reason = pc.if_else(dup, uid.take(pa.array(rng.integers(0, n, n))), reason)
    occ = slice(offsets[lo], offsets[hi])
    names = pools["queries"]
    matched = list_column(offsets[lo : hi + 1] - offsets[lo], names.take(pa.array(occ_query[occ])))
    sel_mask = sim["selected"][occ]
    sel_counts = np.bincount(sim["occ_row"][occ][sel_mask] - lo, minlength=n)
    sel_offsets = np.concatenate([[0], np.cumsum(sel_counts)])
    selected_by = list_column(sel_offsets, names.take(pa.array(occ_query[occ][sel_mask])))
    kept = status == "kept"
    shard_no = np.full(n, -1)
    shard_no[kept] = (kept_before + np.arange(int(kept.sum()))) // SHARD_SIZE
    kept_mask, none = pa.array(kept), pa.nulls(n, pa.string())
    shard = pc.if_else(
        kept_mask, pc.utf8_lpad(pc.cast(pa.array(shard_no), pa.string()), 5, "0"), none
    )
    key = pc.if_else(kept_mask, pc.utf8_slice_codeunits(uid, 0, 16), none)
    ids = pc.cast(pa.array(np.arange(lo, hi)), pa.string())
    url = pc.binary_join_element_wise("https://img.example.com/", ids, ".jpg", "")
    caption = pools["captions"].take(pa.array(rng.integers(0, len(pools["captions"]), n)))
    source = pools["sources"].take(pa.array(rng.integers(0, len(pools["sources"]), n)))
    columns = [uid, url, caption, source, pa.array(status.tolist(), pa.string()), reason,
               matched, selected_by, shard, key]  # fmt: skip
    return pa.Table.from_arrays(columns, schema=STATUS_SCHEMA)


def write_samples(out: pathlib.Path, rng, samples: pa.Table) -> dict[str, int]:
    """shards/NNNNN.parquet for the kept rows (sorted by shard); returns sizes.json."""
    m = samples.num_rows
    ow = rng.integers(120, 4000, m).astype(np.int32)
    oh = (ow * rng.uniform(0.5, 1.6, m)).astype(np.int32)
    sizes = {}
    shard_col = samples.column("shard").to_numpy(zero_copy_only=False)
    cuts = np.flatnonzero(np.concatenate([[True], shard_col[1:] != shard_col[:-1], [True]]))
    for a, b in zip(cuts[:-1], cuts[1:], strict=True):
        piece, k = samples.slice(a, b - a), int(b - a)
        side = pa.array(np.full(k, 256, np.int32))
        table = pa.Table.from_arrays(
            [piece["key"], piece["uid"], piece["url"], piece["caption"], side, side,
             pa.array(ow[a:b]), pa.array(oh[a:b]), hex_strings(rng, k),
             piece["matched_queries"], piece["selected_by"]],
            schema=SAMPLE_SCHEMA,
        )  # fmt: skip
        pq.write_table(table, out / f"shards/{shard_col[a]}.parquet")
        sizes[f"{shard_col[a]}.tar"] = k
    return sizes


def write_out(out: pathlib.Path, rows: int, queries: int, cap: int, parts: int, seed: int) -> int:
    """Generate and write the whole OUT folder; returns the number of samples."""
    rng = np.random.default_rng(seed)
    sim = simulate(rng, rows, queries, cap)
    pools = {
        "queries": pc.binary_join_element_wise(
            "q", pc.cast(pa.array(np.arange(queries)), pa.string()), ""
        ),
        "captions": caption_pool(rng, 50000),
        "sources": pa.array([f"s3://bucket/candidates/part-{i:04d}.parquet" for i in range(64)]),
    }
    for sub in ("status", "counts", "shards"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    kept_before, kept_tables = 0, []
    bounds = np.linspace(0, rows, parts + 1).astype(np.int64)
    for part, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        table = status_part(rng, sim, int(lo), int(hi), kept_before, pools)
        pq.write_table(table, out / f"status/part-{part:05d}.parquet")
        kept = table.filter(pc.equal(table["status"], "kept"))
        kept_before += kept.num_rows
        kept_tables.append(
            kept.select(["key", "uid", "url", "caption", "matched_queries", "selected_by", "shard"])
        )
    counts = [pa.array(sim["counts"][k].astype(np.int64)) for k in ("matched", "selected", "kept")]
    pq.write_table(
        pa.Table.from_arrays([pools["queries"], *counts], schema=QUERY_COUNTS_SCHEMA),
        out / "counts/query_counts.parquet",
    )
    sizes = write_samples(out, rng, pa.concat_tables(kept_tables))
    (out / "sizes.json").write_text(json.dumps(sizes))
    values, n = np.unique(sim["status"], return_counts=True)
    manifest = {
        "parameters": {"per_query_cap": cap, "balance": "exact", "seed": seed},
        "totals": {str(k): int(v) for k, v in zip(values, n, strict=True)},
        "shards": [{"name": k, "samples": v} for k, v in sizes.items()],
    }
    (out / "manifest.json").write_text(json.dumps(manifest))
    return sum(sizes.values())


# Runs wit-stats in a fresh interpreter and reports VmHWM, the peak resident memory of
# this process image only (getrusage's maxrss would include the generator's memory that
# the child inherited before exec).
RUNNER = """
import sys
from pipeline.stats.cli import main
code = main(sys.argv[1:])
hwm = [x.split()[1] for x in open('/proc/self/status') if x.startswith('VmHWM')]
print('VmHWM_kB', hwm[0] if hwm else 0, file=sys.stderr)
sys.exit(code)
"""


def timed(cmd: list[str]) -> tuple[float, float, float, int, str]:
    """Wall seconds, CPU seconds, peak RSS (MiB), exit status and last stderr line of one run."""
    with tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-c", RUNNER, *cmd], stdout=subprocess.DEVNULL, stderr=err, cwd=ROOT
        )
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        lines = err.read().strip().splitlines()
    hwm = [int(x.split()[1]) for x in lines if x.startswith("VmHWM_kB")]
    last = [x for x in lines if not x.startswith("VmHWM_kB")][-1:] or [""]
    cpu = usage.ru_utime + usage.ru_stime
    return seconds, cpu, (hwm[0] if hwm else 0) / 1024, proc.returncode, last[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=10_000_000)
    p.add_argument("--queries", type=int, default=500_000)
    p.add_argument("--cap", type=int, default=20_000)
    p.add_argument("--parts", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeat", type=int, default=2, help="runs per case; the best is shown")
    p.add_argument(
        "--keep", default=None, metavar="DIR", help="write the OUT folder here and keep it"
    )
    args = p.parse_args(argv)
    tmp = (
        pathlib.Path(args.keep)
        if args.keep
        else pathlib.Path(tempfile.mkdtemp(prefix="wit-stats-bench-"))
    )
    out = tmp / "OUT"
    try:
        t0 = time.perf_counter()
        if args.keep and (out / "manifest.json").exists():
            what = "reused"  # a kept folder from an earlier run with --keep
            samples = sum(json.loads((out / "sizes.json").read_text()).values())
        else:
            what = "generated"
            samples = write_out(out, args.rows, args.queries, args.cap, args.parts, args.seed)
        gen = time.perf_counter() - t0
        size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 2**20
        print(f"{what} {args.rows:,} status rows, {args.queries:,} queries, {samples:,} samples "
              f"({size:,.0f} MiB parquet) in {gen:.1f}s under {tmp}")  # fmt: skip
        cli = [str(out)]
        cases = [
            ("report (table)", cli),
            ("report (json)", cli + ["--format", "json"]),
            (
                "--sql count by status",
                cli + ["--sql", "SELECT status, count(*) FROM status GROUP BY 1"],
            ),
            ("report + --plots", cli + ["--plots", str(tmp / "plots")]),
        ]
        print(f"\n| case | rows | wall s (best of {args.repeat}) | CPU s | peak RSS MiB | exit |")
        print("|---|---:|---:|---:|---:|---:|")
        for name, cmd in cases:
            runs = [timed(cmd) for _ in range(args.repeat)]
            best = min(runs, key=lambda r: r[0])
            wall, cpu, rss, code, last = best
            print(f"| {name} | {args.rows:,} | {wall:.2f} | {cpu:.2f} | {rss:,.0f} | {code} |")
            if code != 0:
                print(f"  stderr: {last}")
        print(f"\ncpus: {os.cpu_count()}, load average: {os.getloadavg()[0]:.1f}")
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
