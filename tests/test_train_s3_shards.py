"""wit-train reads shards from S3 the way open_clip users pass them: ``s3://`` URLs through
fsspec's s3fs, against moto's S3 server on 127.0.0.1 (a real S3 protocol, no internet).

The endpoint reaches s3fs the standard fsspec way: ``FSSPEC_S3_ENDPOINT_URL`` in the
environment of a fresh process, or ``fsspec.config.conf["s3"]`` in this one.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import fsspec
import pytest
from reliability_helpers import child_env, free_port
from test_train_data import captions_of, dataset, expected_rows
from test_train_fixtures import make_samples, write_corpus
from test_train_resume import MICRO

from train import get_tokenizer
from train.data import ResumableLoader, expand_shards, shard_sizes

boto3 = pytest.importorskip("boto3", reason="needs boto3 (apache-beam[aws])")
pytest.importorskip("s3fs", reason="s3:// shards need the s3 extra (pip install s3fs)")
pytest.importorskip("moto.server", reason="needs moto[server]")

BUCKET = "corpus"
KEYS = {"key": "testing", "secret": "testing"}


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3 on 127.0.0.1 holding a 3-shard corpus and its sizes.json."""
    port = free_port()
    env = dict(child_env(), AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        endpoint = f"http://127.0.0.1:{port}"
        client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing",
                              aws_secret_access_key="testing", region_name="us-east-1")  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            try:
                client.create_bucket(Bucket=BUCKET)
                break
            except Exception:  # noqa: BLE001 - not listening yet
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.2)
        local = tmp_path_factory.mktemp("corpus")
        samples = make_samples(30, seed=5, size=32)
        paths = write_corpus(str(local), samples, shard_size=10)
        for p in paths:
            client.upload_file(p, BUCKET, f"run/shards/{p.rsplit('/', 1)[-1]}")
        client.upload_file(str(local / "sizes.json"), BUCKET, "run/sizes.json")
        yield {"endpoint": endpoint, "samples": samples, "local": local}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_s3_glob_sizes_json_and_samples(s3, monkeypatch):
    monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": s3["endpoint"], **KEYS})
    urls = expand_shards(f"s3://{BUCKET}/run/shards/*.tar")
    assert [u.rsplit("/", 1)[-1] for u in urls] == ["00000.tar", "00001.tar", "00002.tar"]
    assert all(u.startswith("s3://") for u in urls)
    assert sorted(shard_sizes(urls).values()) == [10, 10, 10]  # from s3://.../sizes.json
    tokenizer = get_tokenizer("openai")
    loader = ResumableLoader(dataset(urls, tokenizer), num_workers=0)
    rows = captions_of([next(loader) for _ in range(6)])  # 30 samples, batches of 5
    assert sorted(rows) == expected_rows(s3["samples"], tokenizer)
    with pytest.raises(ValueError, match="shard not found"):
        expand_shards(f"s3://{BUCKET}/run/shards/00009.tar")


def test_wit_train_runs_on_s3_shards(s3, tmp_path):
    config = tmp_path / "micro.json"
    config.write_text(json.dumps(MICRO))
    env = dict(child_env(), FSSPEC_S3_ENDPOINT_URL=s3["endpoint"], FSSPEC_S3_KEY="testing",
               FSSPEC_S3_SECRET="testing")  # fmt: skip
    run = tmp_path / "run"
    res = subprocess.run(
        [sys.executable, "-m", "train.cli_train", "--shards",
         f"s3://{BUCKET}/run/shards/{{00000..00002}}.tar", "--model", str(config),
         "--out", str(run), "--steps", "3", "--batch-size", "5", "--workers", "1",
         "--threads", "1", "--tokenizer", "learn:600", "--no-progress", "--no-tensorboard"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    steps = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert steps and steps[-1] == 3
