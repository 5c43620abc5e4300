"""wit-build's img2dataset-style fetch flags reach FetchOptions, and bad values fail in one line."""

import subprocess
import sys
from pathlib import Path

from pipeline.cli import _fetch_options, build_parser

BIN = Path(sys.executable).parent


def test_fetch_flags_reach_fetch_options():
    args, _ = build_parser().parse_known_args(
        ["--querylist", "q.txt", "--input", "c.csv", "--out", "o", "--min-image-size", "32",
         "--max-aspect-ratio", "3", "--encode-quality", "80", "--threads", "4",
         "--per-host-connections", "2", "--timeout", "5", "--retries", "0",
         "--user-agent", "my-crawl (me@example.org)"]
    )  # fmt: skip
    opts = _fetch_options(args)
    assert (opts.min_image_size, opts.max_aspect_ratio, opts.encode_quality) == (32, 3.0, 80)
    assert (opts.threads, opts.per_host_connections, opts.read_timeout, opts.retries) == (
        4, 2, 5.0, 0)  # fmt: skip
    assert opts.user_agent == "my-crawl (me@example.org)"


def test_defaults_keep_the_project_user_agent():
    args, _ = build_parser().parse_known_args(["--querylist", "q", "--input", "c", "--out", "o"])
    assert "wit-builder" in _fetch_options(args).user_agent


def test_bad_fetch_flag_is_a_one_line_error(tmp_path):
    (tmp_path / "q.txt").write_text("dog\n")
    (tmp_path / "c.csv").write_text("url,caption\nhttp://127.0.0.1:9/a.jpg,a dog\n")
    r = subprocess.run(
        [str(BIN / "wit-build"), "--querylist", str(tmp_path / "q.txt"), "--input",
         str(tmp_path / "c.csv"), "--out", str(tmp_path / "out"), "--threads", "0"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode != 0
    lines = [line for line in r.stderr.splitlines() if line.startswith("wit-build")]
    assert lines == ["wit-build: threads and per_host_connections must be at least 1"]
