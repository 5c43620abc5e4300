"""Issue 20, item 10 (and the documented side of item 2): the docs cannot point nowhere.

Every `docs/...` path that code or docs name must exist, and every documented wit-build
command line must pass the unknown-option check that now guards wit-build.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from test_docs import COMMANDS, is_partial

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pipeline", "train", "querylist", "bench", "tests")
#: `docs/` at the start of a path (not inside a URL or a longer path), then the path.
DOCS_PATH = re.compile(r"(?<![\w/.-])docs/[\w.-][\w./-]*")
#: A path right after one of these flags is where a command writes, not a citation.
OUTPUT_FLAG = re.compile(r"--(plot|out|output|results)[ =]\[?$")


def named_doc_paths() -> list[tuple[str, str]]:
    """(file, path) for every docs/... path named in the code, the tests and the docs."""
    files = [ROOT / "README.md", ROOT / "Makefile", ROOT / "pyproject.toml"]
    files += sorted((ROOT / "docs").rglob("*.md"))
    for folder in SOURCES:
        files += sorted((ROOT / folder).rglob("*.py")) + sorted((ROOT / folder).rglob("*.md"))
    found = []
    for file in files:
        if not file.is_file():
            continue
        text = file.read_text(encoding="utf-8", errors="replace")
        for match in DOCS_PATH.finditer(text):
            line_start = text.rfind("\n", 0, match.start()) + 1
            if OUTPUT_FLAG.search(text[line_start : match.start()]):
                continue  # e.g. `--plot docs/img/x.png`: made by the command
            found.append((str(file.relative_to(ROOT)), match.group().rstrip("./")))
    return found


NAMED = named_doc_paths()


def test_docs_paths_are_found():
    assert len(NAMED) > 20
    assert ("pipeline/read.py", "docs/shard-format.md") in NAMED or any(
        path == "docs/shard-format.md" for _, path in NAMED
    )


@pytest.mark.parametrize(("where", "path"), NAMED, ids=[f"{w}:{p}" for w, p in NAMED])
def test_every_named_docs_path_exists(where, path):
    assert (ROOT / path).exists(), f"{where} names {path}, which does not exist"


WIT_BUILD = [(d, c) for d, c in COMMANDS if c.startswith("wit-build ") and not is_partial(c)]


@pytest.mark.parametrize(("doc", "line"), WIT_BUILD, ids=[f"{d}:{c[:60]}" for d, c in WIT_BUILD])
def test_documented_wit_build_lines_pass_the_unknown_option_check(doc, line):
    from pipeline import cli

    argv = shlex.split(line.split(" #", 1)[0])
    if "--retry-failed" in argv:  # the other mode of wit-build, with its own options
        cli.build_retry_parser().parse_args(argv[1:])
        return
    parser = cli.build_parser()
    _args, beam_args = parser.parse_known_args(argv[1:])
    cli.check_beam_args(parser, beam_args)  # exits 2 on a flag neither ours nor Beam's
