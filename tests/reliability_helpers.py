"""Shared helpers for the reliability suites: running wit-build, reading its output back,
checking the status invariant, and making the odd images and archives those suites feed it.

Everything here talks to the job through its public surfaces only (the `wit-build` command
line, OUT/ as documented in docs/shard-format.md), so the suites test what users get.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
from PIL import Image

from pipeline import cli
from pipeline.schema import STATUSES
from pipeline.status_io import read_status

ROOT = Path(__file__).resolve().parents[1]
WIT_BUILD = [sys.executable, "-m", "pipeline.cli"]
#: One process, no worker pool: the cheapest runner, used where the runner is not the subject.
IN_PROCESS = ["--direct_num_workers=1", "--direct_running_mode=in_memory"]
QUERIES = ("circle", "square", "triangle", "star", "red", "blue", "green", "cat", "photo")


def child_env() -> dict[str, str]:
    """The environment for child processes: the project importable, no albumentations ping."""
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def write_queries(folder: Path, queries=QUERIES) -> Path:
    path = Path(folder) / "queries.txt"
    path.write_text("\n".join(queries) + "\n", encoding="utf-8")
    return path


def build(querylist: Path, out: Path, inputs, *extra: str, fetch: bool = False) -> int:
    """Run wit-build in this process (the cheap way); returns its exit code."""
    argv = ["--querylist", str(querylist), "--out", str(out), "--lid", "none"]
    for pattern in inputs:
        argv += ["--input", str(pattern)]
    if not fetch:
        argv.append("--no-fetch")
    return cli.main([*argv, *extra])


def build_command(querylist: Path, out: Path, inputs, *extra: str) -> list[str]:
    """The same run as a separate `wit-build` process (for kills and other runners)."""
    argv = [*WIT_BUILD, "--querylist", str(querylist), "--out", str(out), "--lid", "none"]
    for pattern in inputs:
        argv += ["--input", str(pattern)]
    return [*argv, *extra]


def run_build_process(argv: list[str], timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        argv, env=child_env(), capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


def manifest(out: Path) -> dict:
    return json.loads((Path(out) / "manifest.json").read_text(encoding="utf-8"))


def status_rows(out: Path) -> list[dict]:
    return read_status(str(out)).to_pylist()


def sorted_status(out: Path):
    return read_status(str(out)).sort_by("uid")


def shard_samples(out: Path) -> list[dict]:
    files = sorted((Path(out) / "shards").glob("*.parquet"))
    return [row for f in files for row in pq.read_table(f).to_pylist()]


def assert_status_invariant(out: Path, n_rows: int | None = None) -> list[dict]:
    """The promise of docs/shard-format.md: one row per input candidate, each uid once,
    statuses from the closed set, kept rows exactly the shard samples. Returns the rows."""
    rows = status_rows(out)
    uids = [r["uid"] for r in rows]
    assert len(uids) == len(set(uids)), "a uid appears more than once"
    if n_rows is not None:
        assert len(rows) == n_rows, f"{len(rows)} status rows for {n_rows} input rows"
    assert {r["status"] for r in rows} <= set(STATUSES)
    man = manifest(out)
    assert man["rows"] == len(rows) and sum(man["totals"].values()) == len(rows)
    if (Path(out) / "shards").is_dir():
        kept = sorted(r["uid"] for r in rows if r["status"] == "kept")
        assert sorted(s["uid"] for s in shard_samples(out)) == kept
        members = {name for tar in tar_members(out).values() for name in tar}
        assert members == {f"{r['key']}.{ext}" for r in rows if r["status"] == "kept"
                           for ext in ("jpg", "txt", "json")}  # fmt: skip
    return rows


def tar_members(out: Path) -> dict[str, dict[str, bytes]]:
    """{tar name: {member name: bytes}} for every final-named tar under OUT/shards."""
    found = {}
    for path in sorted((Path(out) / "shards").glob("*.tar")):
        with tarfile.open(path) as tar:
            found[path.name] = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    return found


def tar_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((Path(out) / "shards").glob("*.tar"))}


def temp_files(out: Path) -> list[str]:
    """Files a finished run must not leave: writer temporaries (`.NAME.tmp`)."""
    return sorted(
        os.path.join(d, f) for d, _s, files in os.walk(out) for f in files if f.endswith(".tmp")
    )


def one_line(text: str) -> str:
    """The single line a clean failure prints (asserting there is exactly one)."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got {len(lines)}:\n{text[-3000:]}"
    assert "Traceback" not in text
    return lines[0]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- odd images ------------------------------------------------------------------------------


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def two_tone(width: int = 64, height: int = 32) -> Image.Image:
    """Left half red, right half blue: orientation is visible in the pixels."""
    img = Image.new("RGB", (width, height), (220, 20, 20))
    img.paste((20, 20, 220), (width // 2, 0, width, height))
    return img


def odd_images() -> dict[str, bytes]:
    """File name -> bytes for the image kinds a crawl meets that are easy to get wrong."""
    base = two_tone()
    palette = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    palette.info["transparency"] = 0
    frames = [two_tone(), two_tone().transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    sixteen = Image.new("I;16", (64, 32))
    sixteen.paste(40000, (32, 0, 64, 32))
    return {
        "zero.jpg": b"",
        "one-pixel.png": _encode(Image.new("RGB", (1, 1), (1, 2, 3)), "PNG"),
        "cmyk.jpg": _encode(base.convert("CMYK"), "JPEG", quality=90),
        "sixteen-bit.png": _encode(sixteen, "PNG"),
        "palette.png": _encode(palette, "PNG"),
        "animated.gif": _encode(
            frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0
        ),
        "exif-rotated.jpg": _encode(base, "JPEG", quality=95, exif=exif.tobytes()),
        "grey.jpg": _encode(base.convert("L"), "JPEG", quality=90),
        "rgba.png": _encode(base.convert("RGBA"), "PNG"),
    }


def noise_jpegs(folder: Path, n: int, side: int = 96, seed: int = 0) -> list[str]:
    """n distinct JPEGs of random pixels (they compress badly, which the disk tests want)."""
    import random

    rng = random.Random(seed)
    Path(folder).mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        img = Image.frombytes("RGB", (side, side), rng.randbytes(side * side * 3))
        name = f"noise-{i:04d}.jpg"
        img.save(Path(folder) / name, format="JPEG", quality=90)
        names.append(name)
    return names


def candidates_parquet(path: Path, urls: list[str], caption: str = "a red circle photo") -> Path:
    """A candidate file whose captions all match QUERIES and differ per row."""
    import pyarrow as pa

    captions = [f"{caption} number {i}" for i in range(len(urls))]
    pq.write_table(pa.table({"url": urls, "caption": captions}), path)
    return path
