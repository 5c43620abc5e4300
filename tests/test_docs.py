"""Every command line in the README and docs/ parses with today's flags, so the docs cannot rot.

Commands that need data, a cluster or minutes of compute are not run here; `make demo`
runs the chain end to end. What this test guarantees is that no documented flag, sub-command
or value has been renamed or removed, and that every `.venv/bin/python bench/...` script
the docs name exists.
"""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PARSERS = {
    "wit-querylist": "querylist.cli",
    "wit-build": "pipeline.cli",
    "wit-stats": "pipeline.stats.cli",
    "wit-train": "train.cli_train",
    "wit-eval": "train.cli_eval",
}
FENCE = re.compile(r"```[^\n]*\n(.*?)```", re.S)


def documented_commands() -> list[tuple[str, str]]:
    """(doc name, command line) for each wit-* or bench command in a fenced block or `code`."""
    found = []
    for doc in DOCS:
        text = doc.read_text()
        blocks = FENCE.findall(text) + re.findall(r"(?m)^    (\S.*)$", text)
        for block in blocks:
            joined = re.sub(r"\\\n\s*", " ", block)
            for line in joined.splitlines():
                line = line.strip().removeprefix("$ ")
                if line.split(" ", 1)[0] in PARSERS or "bench/" in line.split(" ")[:2][-1]:
                    found.append((doc.name, line))
        for inline in re.findall(r"`((?:wit-\w+) [^`]+)`", text):
            if inline.split(" ", 1)[0] in PARSERS and "..." not in inline:
                found.append((doc.name, inline))
    return found


COMMANDS = documented_commands()


def test_docs_name_commands():
    names = {c.split(" ", 1)[0] for _, c in COMMANDS}
    assert {"wit-querylist", "wit-build", "wit-stats", "wit-train", "wit-eval"} <= names


BEAM_FLAGS = {"--runner", "--project", "--region", "--parallelism", "--experiments"}


def option_strings(parser) -> set[str]:
    """Every flag of a parser and of its sub-commands."""
    flags = set()
    for action in parser._actions:
        flags.update(action.option_strings)
        if isinstance(action.choices, dict):  # sub-commands
            for sub in action.choices.values():
                flags |= option_strings(sub)
    return flags


def is_partial(line: str) -> bool:
    """A synopsis (`[--flag X]`), an elided line (`...`) or an inline fragment."""
    return any(mark in line for mark in ("...", "[", "<")) or line.count(" ") < 2


@pytest.mark.parametrize("doc,line", COMMANDS, ids=[f"{d}:{c[:60]}" for d, c in COMMANDS])
def test_documented_command_parses(doc, line):
    line = line.split(" #", 1)[0].strip()
    argv = shlex.split(line.replace("[", " ").replace("]", " "))
    if argv[0] not in PARSERS:
        script = next(a for a in argv if a.startswith("bench/"))
        assert (ROOT / script).is_file(), f"{doc} names {script}, which does not exist"
        return
    parser = importlib.import_module(PARSERS[argv[0]]).build_parser()
    if argv[0] == "wit-build" and "--retry-failed" in argv:  # its other mode, own options
        parser = importlib.import_module(PARSERS[argv[0]]).build_retry_parser()
    if is_partial(line):
        known = option_strings(parser)
        for flag in (a.split("=", 1)[0] for a in argv[1:] if a.startswith("--")):
            beam = argv[0] == "wit-build" and ("_" in flag or flag in BEAM_FLAGS)
            assert flag in known or beam, f"{doc}: {argv[0]} has no flag {flag}"
    elif argv[0] == "wit-build" and "--retry-failed" not in argv:  # others: Beam's options
        parser.parse_known_args(argv[1:])
    else:
        parser.parse_args(argv[1:])
