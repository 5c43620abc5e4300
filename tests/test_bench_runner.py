"""`make bench`'s runner records the command, the output and the peak memory of each bench."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_runner():
    spec = importlib.util.spec_from_file_location("run_all", ROOT / "bench" / "run_all.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_section_names_command_output_and_peak_memory():
    run_all = load_runner()
    section = run_all.run_one("Runner help", ["bench/run_all.py", "--help"], timeout=120)
    assert "Command: `.venv/bin/python bench/run_all.py --help`" in section
    assert "usage:" in section
    assert "Peak resident memory of the largest process:" in section
    assert "__PEAK_RSS_KB__" not in section


def test_missing_script_is_reported_not_fatal():
    section = load_runner().run_one("Nothing", ["bench/no_such_bench.py"], timeout=10)
    assert "does not exist" in section


def test_only_keeps_the_other_generated_sections():
    run_all = load_runner()
    doc = "intro\n<!-- bench:begin -->\n### A\n\nold a\n### B\n\nold b\n<!-- bench:end -->\n"
    old = run_all.previous_sections(doc)
    assert set(old) == {"A", "B"} and "old b" in old["B"]
