"""The job on separate worker processes against an S3 endpoint, as on Flink or Spark.

- storage: moto's S3 server on 127.0.0.1 (as s3fs's own tests do); input, query list and
  OUT are all ``s3://`` and reach Beam through ``--s3_endpoint_url`` and friends;
- runner: Beam's PortableRunner against its local job service, SDK workers started by two
  separate worker-pool processes (``--environment_type=EXTERNAL``), every port on
  127.0.0.1 (tests/portable_harness.py);
- result: the status table, the counts and every tar member's bytes equal a default-runner
  run of the same job on a local folder.

Loopback is not a cluster: the processes share this machine, but they share no memory and
no filesystem view of OUT except through the S3 protocol, which is what a cluster needs.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from reliability_helpers import candidates_parquet, child_env, free_port, noise_jpegs

from pipeline import cli
from pipeline.fixtures.web import FixtureWeb

boto3 = pytest.importorskip("boto3", reason="the S3 test needs apache-beam[aws] (boto3)")
pytest.importorskip("moto.server", reason="the S3 test needs moto[server]")

HERE = Path(__file__).resolve().parent
BUCKET = "wit"
FETCH = ["--allow-private-addresses", "--shard-size", "5", "--image-size", "32",
         "--lid", "none", "--rows-per-bucket", "8"]  # fmt: skip
QUERIES = ("circle", "square", "triangle", "star", "red", "blue", "green", "cat", "photo")


def _wait_for_port(port: int, proc: subprocess.Popen, what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {seconds} s")


class Processes:
    """Starts servers as separate processes and stops every one of them by its PID."""

    def __init__(self):
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, what: str, argv: list[str], port: int, env: dict, log=None):
        stdout = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 - the child's
        proc = subprocess.Popen(argv, env=env, stdout=stdout, stderr=subprocess.PIPE,
                                cwd=HERE.parent)  # fmt: skip
        self.procs.append((what, proc))
        _wait_for_port(port, proc, what)
        return proc

    def stop(self) -> None:
        for _what, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for _what, proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """moto S3 + job service + two worker pools, all on 127.0.0.1, each its own process."""
    env = child_env()
    # pools start SDK workers with the first `python` on PATH: this interpreter
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    env.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
               AWS_DEFAULT_REGION="us-east-1")  # fmt: skip
    procs = Processes()
    try:
        s3_port = free_port()
        procs.start("moto S3", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                                "-p", str(s3_port)], s3_port, env)  # fmt: skip
        pools = [free_port(), free_port()]
        for port in pools:
            procs.start(f"worker pool {port}", [sys.executable, str(HERE / "portable_harness.py"),
                                                "pool", str(port)], port, env)  # fmt: skip
        job_port, proxy_port = free_port(), free_port()
        log = tmp_path_factory.mktemp("service") / "service.log"
        procs.start("job service", [sys.executable, str(HERE / "portable_harness.py"), "service",
                                    str(job_port), str(proxy_port), "2", *map(str, pools)],
                    job_port, env, log=log)  # fmt: skip
        endpoint = f"http://127.0.0.1:{s3_port}"
        s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing",
                          aws_secret_access_key="testing", region_name="us-east-1")  # fmt: skip
        s3.create_bucket(Bucket=BUCKET)
        yield {
            "s3": s3,
            "log": log,
            "beam": [
                "--runner=PortableRunner",
                f"--job_endpoint=127.0.0.1:{job_port}",
                "--environment_type=EXTERNAL",
                f"--environment_config=127.0.0.1:{proxy_port}",
                f"--s3_endpoint_url={endpoint}",
                "--s3_access_key_id=testing",
                "--s3_secret_access_key=testing",
                "--s3_region_name=us-east-1",
            ],  # fmt: skip
        }
    finally:
        procs.stop()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Images on the fixture web; candidates with failures and duplicates."""
    root = tmp_path_factory.mktemp("s3job")
    names = noise_jpegs(root / "images", 14, side=40, seed=5)
    with FixtureWeb(image_dir=root / "images") as web:
        urls = [web.url(f"/images/{n}") for n in names]
        urls += [web.url(p) for p in ("/e/404", "/e/noai.jpg", "/e/tiny.jpg", "/private/x.jpg")]
        urls += urls[:3]
        cands = candidates_parquet(root / "cands.parquet", urls)
        extra = root / "extra.tsv"
        extra.write_text("url\tcaption\n" + "".join(
            f"{u}\t{c}\n" for u, c in [(urls[0], "a red circle photo number 0"),
                                       (urls[1], "no query words at all here"),
                                       ("ftp://x/y.jpg", "a red square photo")]),
            encoding="utf-8")  # fmt: skip
        queries = root / "queries.txt"
        queries.write_text("\n".join(QUERIES) + "\n", encoding="utf-8")
        yield root, queries, [cands, extra], len(urls) + 3


def _local_run(inputs) -> Path:
    root, queries, files, _n = inputs
    out = root / "local"
    argv = ["--querylist", str(queries), "--out", str(out), *FETCH]
    for f in files:
        argv += ["--input", str(f)]
    assert cli.main(argv) == 0
    return out


def _download(s3, prefix: str, to: Path) -> None:
    """Copy every object under s3://BUCKET/prefix/ to a local folder (for comparing)."""
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix + "/")
    for page in pages:
        for obj in page.get("Contents", []):
            rel = obj["Key"][len(prefix) + 1 :]
            target = to / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(s3.get_object(Bucket=BUCKET, Key=obj["Key"])["Body"].read())


def _status(out: Path) -> pa.Table:
    parts = sorted((out / "status").glob("*.parquet"))
    return pa.concat_tables(pq.read_table(p) for p in parts).sort_by("uid")


def _comparable(status: pa.Table) -> list[tuple]:
    """Status rows without where the input lived: ``source`` is the input's URI, and
    rejected rows' uids hash it; everything else must be equal."""
    rows = []
    for r in status.to_pylist():
        uid = r["uid"] if not r["uid"].startswith("row:") else "row"
        rows.append((r["url"], r["caption"], r["source"].rsplit("/", 1)[-1], uid, r["status"],
                     r["reason"], tuple(r["matched_queries"]), tuple(r["selected_by"]),
                     r["shard"], r["key"]))  # fmt: skip
    return sorted(rows, key=repr)


def _members(out: Path) -> dict[str, bytes]:
    found = {}
    for tar_path in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for m in tar.getmembers():
                found[f"{tar_path.name}/{m.name}"] = tar.extractfile(m).read()
    return found


@pytest.mark.slow
def test_portable_runner_on_worker_pools_with_s3_equals_a_local_run(cluster, inputs, tmp_path):
    root, queries, files, n_rows = inputs
    s3 = cluster["s3"]
    for f in [queries, *files]:
        s3.upload_file(str(f), BUCKET, f"in/{f.name}")
    argv = ["--querylist", f"s3://{BUCKET}/in/{queries.name}", "--out", f"s3://{BUCKET}/out",
            "--input", f"s3://{BUCKET}/in/{files[0].name}",
            "--input", f"s3://{BUCKET}/in/{files[1].name}", *FETCH, *cluster["beam"]]  # fmt: skip
    assert cli.main(argv) == 0
    remote = tmp_path / "remote"
    _download(s3, "out", remote)
    local = _local_run(inputs)

    status = _status(remote)
    assert status.num_rows == n_rows and len(set(status["uid"].to_pylist())) == n_rows
    assert _comparable(status) == _comparable(_status(local))
    counts = "counts/query_counts.parquet"
    assert pq.read_table(remote / counts).equals(pq.read_table(local / counts))
    members = _members(remote)
    assert members == _members(local) and len(members) >= 3 * 10
    assert json.loads((remote / "sizes.json").read_text()) == json.loads(
        (local / "sizes.json").read_text()
    )
    manifest = json.loads((remote / "manifest.json").read_text())
    assert manifest["rows"] == manifest["input_rows"] == n_rows
    assert manifest["parallelism"]["shuffle_buckets"] > 1  # --rows-per-bucket 8
    started = cluster["log"].read_text()
    assert "-> pool 0" in started and "-> pool 1" in started, started  # both pools worked
    # nothing half-written is left behind on the store
    keys = [k for k in _keys(s3, "out")]
    assert not [k for k in keys if k.endswith(".tmp")], keys


def _keys(s3, prefix: str):
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix + "/"):
        for obj in page.get("Contents", []):
            yield obj["Key"]


def test_unknown_scheme_and_unwritable_out_fail_before_any_work(inputs, tmp_path, capsys):
    _root, queries, files, _n = inputs
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    for out, expected in [
        ("zz://bucket/out", "unknown scheme zz://"),
        ("gs://bucket/out", "gs:// needs apache-beam[gcp]"),  # the gcp extra is not installed
        (str(blocked / "out"), "is not writable"),
    ]:
        rc = cli.main(["--querylist", str(queries), "--out", out, "--input", str(files[0]),
                       "--no-fetch"])  # fmt: skip
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and expected in err[0], err
