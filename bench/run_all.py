"""`make bench`: run every benchmark script and rewrite the generated part of docs/benchmarks.md.

Each script prints its own side-by-side table; this runner records the machine, the exact
command and the output, so that every number in the docs can be reproduced.
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import platform
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"

# (title, script and arguments, what it compares). Order: cheap first.
BENCHES = [
    ("Matcher vs the naive reference", ["bench/bench_match.py"], "issue 4"),
    ("Language ID backends", ["bench/bench_lid.py"], "issue 4"),
    (
        "Text stages at 10k, 100k and 1M candidates",
        ["bench/bench_text_stages.py", "--sizes", "10000", "100000", "1000000"],
        "issue 4",
    ),
    ("Fetch + resize + write vs img2dataset", ["bench/bench_fetch.py"], "issue 5"),
    ("wit-stats report on 10M rows", ["bench/bench_stats.py"], "issue 6"),
    ("Tokenizer vs open_clip", ["bench/bench_tokenizer.py"], "issue 7"),
    (
        "Trainer vs open_clip's trainer",
        ["bench/bench_train.py", "--repeat", "3", "--steps", "48", "--samples", "3200"],
        "issue 8",
    ),
    ("Page crawl, pages/s", ["bench/bench_pages.py"], "issue 13"),
]


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB RAM, Python {platform.python_version()}, no GPU"


#: Runs the bench as a child and reports the peak resident memory of its largest process
#: (getrusage over the waited-for process tree), so every section can name its memory.
_PEAK_WRAPPER = (
    "import resource, subprocess, sys\n"
    "rc = subprocess.call([sys.executable, *sys.argv[1:]])\n"
    "kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
    "print(f'__PEAK_RSS_KB__ {kb}', file=sys.stderr)\n"
    "sys.exit(rc)\n"
)


def _peak_line(stderr: str) -> tuple[str, str]:
    """(stderr without the marker, a sentence naming the peak memory)."""
    kept, peak = [], ""
    for line in stderr.splitlines():
        if line.startswith("__PEAK_RSS_KB__"):
            mib = int(line.split()[1]) / 1024
            peak = f"Peak resident memory of the largest process: {mib:,.0f} MiB."
        else:
            kept.append(line)
    return "\n".join(kept), peak


def run_one(title: str, argv: list[str], timeout: int) -> str:
    cmd = [sys.executable, "-c", _PEAK_WRAPPER, *argv]
    shown = " ".join([".venv/bin/python", *argv])
    script = ROOT / argv[0]
    if not script.exists():
        return f"## {title}\n\nNot run: `{argv[0]}` does not exist yet.\n"
    print(f"== {title}: {shown}", flush=True)
    t0 = time.perf_counter()
    try:
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        out, rc = r.stdout.strip(), r.returncode
        err, peak = _peak_line(r.stderr)
        if rc != 0:
            out += "\n" + "\n".join(err.strip().splitlines()[-5:])
    except subprocess.TimeoutExpired:
        out, rc, peak = f"(timed out after {timeout} s)", 124, ""
    dt = time.perf_counter() - t0
    print(out, flush=True)
    body = out if out.lstrip().startswith("|") else f"```\n{out}\n```"
    status = "" if rc == 0 else f"\n\n**The script exited with code {rc}.**"
    return f"## {title}\n\nCommand: `{shown}` ({dt:.0f} s wall). {peak}\n\n{body}{status}\n"


BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def previous_sections(doc: str) -> dict[str, str]:
    """Generated sections of the current doc by title, so that `--only` keeps the others."""
    if BEGIN not in doc:
        return {}
    region = doc.split(BEGIN, 1)[1].split(END, 1)[0]
    parts = region.split("\n### ")[1:]
    return {p.split("\n", 1)[0].strip(): "### " + p.rstrip() + "\n" for p in parts}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--only", nargs="*", help="substrings of bench titles to run")
    ap.add_argument("--timeout", type=int, default=1800)
    args = ap.parse_args()
    doc = DOC.read_text() if DOC.exists() else "# Benchmarks\n\n" + BEGIN + "\n" + END + "\n"
    old = previous_sections(doc)
    sections = []
    for title, argv, _issue in BENCHES:
        if args.only and not any(s.lower() in title.lower() for s in args.only):
            sections.append(old.get(title, f"### {title}\n\nNot run yet.\n"))
            continue
        sections.append(run_one(title, argv, args.timeout).replace("## ", "### ", 1))
    stamp = datetime.date.today().isoformat()
    region = (
        f"\nMachine: {machine()}. Date: {stamp}. Each section gives the command and its "
        "output as printed.\n\n" + "\n".join(sections)
    )
    before, rest = doc.split(BEGIN, 1) if BEGIN in doc else (doc + "\n", END)
    after = rest.split(END, 1)[1] if END in rest else ""
    DOC.write_text(before + BEGIN + region + END + after)
    print(f"wrote {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
