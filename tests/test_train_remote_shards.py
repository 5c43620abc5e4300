"""wit-train reads shards the way webdataset users pass them: local globs, any fsspec URL
(s3://, gs://, ... here fsspec's in-memory store, which needs no server) and pipe:, with
sizes.json read the same way; and a sizes.json beside the shards is trusted over a glob."""

from __future__ import annotations

import shutil

import fsspec
import pytest
from test_train_data import captions_of, dataset, expected_rows
from test_train_fixtures import make_samples, write_corpus

from train import get_tokenizer
from train.data import ResumableLoader, expand_shards, shard_sizes


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("remote")
    samples = make_samples(30, seed=4, size=32)
    paths = write_corpus(str(d), samples, shard_size=10)  # 3 shards + sizes.json
    return d, paths, samples


@pytest.fixture(scope="module")
def tokenizer():
    return get_tokenizer("openai")


def _one_epoch(urls, tokenizer):
    loader = ResumableLoader(dataset(urls, tokenizer), num_workers=0)
    return captions_of([next(loader) for _ in range(6)])  # 30 samples / 5


def test_fsspec_url_glob_sizes_and_samples(corpus, tokenizer):
    d, paths, samples = corpus
    fs = fsspec.filesystem("memory")
    for p in paths:
        fs.pipe(f"/bucket/run/shards/{p.rsplit('/', 1)[-1]}", open(p, "rb").read())
    fs.pipe("/bucket/run/sizes.json", (d / "sizes.json").read_bytes())
    urls = expand_shards("memory://bucket/run/shards/*.tar")
    assert [u.rsplit("/", 1)[-1] for u in urls] == ["00000.tar", "00001.tar", "00002.tar"]
    assert all(u.startswith("memory://") for u in urls)
    assert sorted(shard_sizes(urls).values()) == [10, 10, 10]
    assert sorted(_one_epoch(urls, tokenizer)) == expected_rows(samples, tokenizer)
    with pytest.raises(ValueError, match="shard not found"):
        expand_shards("memory://bucket/run/shards/00009.tar")


def test_pipe_urls_read_like_webdataset(corpus, tokenizer):
    _d, paths, samples = corpus
    urls = expand_shards([f"pipe:cat {p}" for p in paths])
    assert shard_sizes(urls) == dict.fromkeys(urls, 10)  # counted by streaming the tar
    assert sorted(_one_epoch(urls, tokenizer)) == expected_rows(samples, tokenizer)


def test_unknown_scheme_is_one_line():
    with pytest.raises(ValueError) as err:
        expand_shards("nosuchscheme://b/*.tar")
    assert "\n" not in str(err.value) and "nosuchscheme://b/*.tar" in str(err.value)


def test_sizes_json_is_trusted_over_the_glob(corpus, tmp_path, capsys):
    d, paths, _ = corpus
    shutil.copytree(d, tmp_path / "out")
    shards = tmp_path / "out" / "shards"
    shutil.copy(shards / "00002.tar", shards / "00007.tar")  # an earlier run's leftover
    found = expand_shards(str(shards / "*.tar"))
    assert [p.rsplit("/", 1)[-1] for p in found] == ["00000.tar", "00001.tar", "00002.tar"]
    assert "00007.tar" in capsys.readouterr().out
