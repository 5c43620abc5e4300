"""The WebDataset loader: shard patterns, sizes.json, shuffling, splitting, bad samples, resume."""

from __future__ import annotations

import io
import json
import tarfile

import pytest
import torch
from test_train_fixtures import make_samples, write_corpus, write_tar

from train import get_tokenizer, image_transform
from train.data import ResumableLoader, ShardBatches, expand_shards, shard_sizes


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    samples = make_samples(60, seed=2, size=40)
    paths = write_corpus(str(d), samples, shard_size=15)  # 4 shards
    return d, paths, samples


@pytest.fixture(scope="module")
def tokenizer():
    return get_tokenizer("openai")


def dataset(paths, tokenizer, **kw):
    args = dict(
        transform=image_transform(32, is_train=True),
        tokenizer=tokenizer,
        batch_size=5,
        context_length=16,
        seed=0,
        shuffle_buffer=10,
    )
    args.update(kw)
    return ShardBatches(paths, **args)


def captions_of(batches, tokenizer=None):
    """Token rows of the batches as tuples: the identity of each sample's caption."""
    return [tuple(row) for b in batches for row in b["texts"].tolist()]


def expected_rows(samples, tokenizer):
    return sorted(map(tuple, tokenizer([s["txt"].decode() for s in samples], 16).tolist()))


def test_expand_shards_brace_glob_and_errors(corpus):
    d, paths, _ = corpus
    assert expand_shards(str(d / "shards" / "{00000..00003}.tar")) == paths
    assert expand_shards(str(d / "shards" / "*.tar")) == paths
    with pytest.raises(ValueError, match="shard not found"):
        expand_shards(str(d / "shards" / "{00000..00009}.tar"))
    with pytest.raises(ValueError, match="no shards match"):
        expand_shards(str(d / "nothing" / "*.tar"))


def test_shard_sizes_from_sizes_json_or_counting(corpus, tmp_path):
    d, paths, _ = corpus
    assert shard_sizes(paths) == {p: 15 for p in paths}
    lone = tmp_path / "x.tar"
    write_tar(str(lone), make_samples(7, seed=9, size=16))
    assert shard_sizes([str(lone)]) == {str(lone): 7}


def test_one_epoch_covers_every_sample_once_in_a_seeded_order(corpus, tokenizer):
    d, paths, samples = corpus
    ds = dataset(paths, tokenizer)
    loader = ResumableLoader(ds, num_workers=0)
    batches = [next(loader) for _ in range(12)]  # 60 samples / 5
    assert loader.epoch == 0
    assert all(b["images"].shape == (5, 3, 32, 32) and b["texts"].shape == (5, 16) for b in batches)
    assert batches[0]["texts"].dtype == torch.long
    assert sorted(captions_of(batches)) == expected_rows(samples, tokenizer)
    next(loader)
    assert loader.epoch == 1  # the 13th batch starts the next epoch

    again = [next(ResumableLoader(dataset(paths, tokenizer), num_workers=0)) for _ in range(1)]
    assert torch.equal(again[0]["images"], batches[0]["images"])
    other = next(ResumableLoader(dataset(paths, tokenizer, seed=1), num_workers=0))
    assert not torch.equal(other["texts"], batches[0]["texts"])


def test_shards_split_by_node_without_overlap(corpus, tokenizer):
    d, paths, samples = corpus
    seen = []
    for rank in (0, 1):
        ds = dataset(paths, tokenizer, rank=rank, world_size=2)
        loader = ResumableLoader(ds, num_workers=0)
        seen.append(captions_of([next(loader) for _ in range(6)], tokenizer))
        assert loader.epoch == 0
        next(loader)
        assert loader.epoch == 1  # each rank holds 2 shards = 6 batches
    assert len(seen[0]) == len(seen[1]) == 30
    assert sorted(seen[0] + seen[1]) == expected_rows(samples, tokenizer)


def test_resampled_epochs_have_the_requested_length(corpus, tokenizer):
    d, paths, _ = corpus
    ds = dataset(paths, tokenizer, samples_per_epoch=25)
    loader = ResumableLoader(ds, num_workers=2)
    for _ in range(5):
        next(loader)
    assert loader.epoch == 0
    next(loader)
    assert loader.epoch == 1


def test_bad_samples_are_skipped_and_counted(tmp_path, tokenizer):
    good = make_samples(8, seed=4, size=32)
    broken = [
        {"key": "badjpeg00000001", "jpg": b"not a jpeg at all", "txt": b"a red circle"},
        {"key": "notext000000002", "jpg": good[0]["jpg"]},
        {"key": "noimage00000003", "txt": b"a blue square"},
        {"key": "badutf800000004", "jpg": good[1]["jpg"], "txt": b"\xff\xfe\xfa"},
    ]
    path = tmp_path / "00000.tar"
    write_tar(str(path), good[:4] + broken + good[4:])
    truncated = tmp_path / "00001.tar"
    full = io.BytesIO()
    with tarfile.open(fileobj=full, mode="w") as tar:
        for s in make_samples(3, seed=5, size=32):
            for ext in ("jpg", "txt"):
                info = tarfile.TarInfo(f"{s['key']}.{ext}")
                info.size = len(s[ext])
                tar.addfile(info, io.BytesIO(s[ext]))
    truncated.write_bytes(full.getvalue()[:1700])  # cut inside the second member
    ds = dataset([str(path), str(truncated)], tokenizer, batch_size=4, shuffle_buffer=1)
    loader = ResumableLoader(ds, num_workers=0)
    batches = [next(loader) for _ in range(2)]
    assert all(b["images"].shape[0] == 4 for b in batches)
    next(loader)  # runs over the truncated shard into the next epoch without failing
    reasons = dict(loader.bad)
    for reason in ("bad_image:UnidentifiedImageError", "missing_text", "missing_image", "bad_text"):
        assert reasons.get(reason, 0) >= 1, reasons
    # the truncated tar ends inside its first caption: that sample counts as missing_text
    assert reasons["missing_text"] == 2
    assert sum(reasons.values()) >= 5


def test_no_usable_batch_is_a_clear_error(tmp_path, tokenizer):
    path = tmp_path / "00000.tar"
    write_tar(str(path), make_samples(3, seed=4, size=32))
    loader = ResumableLoader(dataset([str(path)], tokenizer, batch_size=8), num_workers=0)
    with pytest.raises(RuntimeError, match="no complete batch"):
        next(loader)


@pytest.mark.parametrize("consumed", [3, 7])
def test_restored_loader_continues_with_the_same_batches(corpus, tokenizer, consumed):
    """Across worker processes, epoch ends and the skip of consumed batches."""
    d, paths, _ = corpus
    paths3 = paths[:3]  # 3 shards on 2 workers: the workers run out at different times
    ref = ResumableLoader(dataset(paths3, tokenizer), num_workers=2)
    expected = [next(ref) for _ in range(12)]
    first = ResumableLoader(dataset(paths3, tokenizer), num_workers=2)
    for _ in range(consumed):
        next(first)
    state = json.loads(json.dumps(first.state_dict()))  # plain values only
    first.close()
    resumed = ResumableLoader(dataset(paths3, tokenizer), num_workers=2)
    resumed.load_state_dict(state)
    for want in expected[consumed:]:
        got = next(resumed)
        assert torch.equal(got["images"], want["images"]) and torch.equal(
            got["texts"], want["texts"]
        )
    assert resumed.epoch == ref.epoch == 1


def test_worker_count_does_not_change_the_augmentation(corpus, tokenizer):
    """The crop of a sample is seeded by (seed, epoch, key), not by the worker's RNG."""
    d, paths, _ = corpus
    one = [
        next(it)
        for it in [ResumableLoader(dataset(paths, tokenizer, shuffle_buffer=1), 0)]
        for _ in range(12)
    ]
    two = [
        next(it)
        for it in [ResumableLoader(dataset(paths, tokenizer, shuffle_buffer=1), 2)]
        for _ in range(12)
    ]

    def by_caption(batches):
        out = {}
        for b in batches:
            for img, cap in zip(
                b["images"], captions_of([{"texts": b["texts"]}], tokenizer), strict=True
            ):
                out.setdefault(cap, []).append(img)
        return out

    a, b = by_caption(one), by_caption(two)
    assert a.keys() == b.keys()
    for cap in a:
        assert sorted(x.sum().item() for x in a[cap]) == pytest.approx(
            sorted(x.sum().item() for x in b[cap])
        )
