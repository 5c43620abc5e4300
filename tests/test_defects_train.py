"""Issue 20, training side: each test failed before its fix.

4. `learn:N` gives the same merges in any process, and under DDP only rank 0 learns;
5. `--resume` skips the consumed samples of an epoch without decoding them, exactly;
8. a DDP rank without shards fails every rank at once, with one line, before training.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import types

import pytest
import torch
from test_train_distributed import torchrun
from test_train_fixtures import make_samples, write_corpus, write_tar
from test_train_resume import MICRO

from train import data as data_mod
from train import get_tokenizer, image_transform
from train import trainer as trainer_mod
from train.data import ResumableLoader, ShardBatches
from train.distributed import DistInfo

ROOT = pathlib.Path(__file__).resolve().parents[1]

# --- 4. deterministic learn:N ------------------------------------------------------------------

LEARN_SCRIPT = """
import hashlib, json, random, sys
from train.tokenizer import learn_tokenizer
rng = random.Random(0)
letters, weights = "etaoinshrdlcumwfgypbvkjxqz", [12, 9, 8, 8, 7, 7, 6, 6, 6, 4, 4, 3, 3] + [2] * 6 + [1] * 7
words = ["".join(rng.choices(letters, weights, k=rng.randint(2, 9))) for _ in range(3000)]
zipf = [1 / (i + 1) for i in range(len(words))]
captions = [" ".join(rng.choices(words, zipf, k=rng.randint(3, 12))) for _ in range(4000)]
tok = learn_tokenizer(captions, vocab_size=int(sys.argv[1]))
print(hashlib.sha256(json.dumps(tok.merges).encode()).hexdigest(), len(tok.merges))
"""


def _merges_digest_in_subprocess(hash_seed: str, vocab: int) -> str:
    env = dict(os.environ, PYTHONHASHSEED=hash_seed)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run(
        [sys.executable, "-c", LEARN_SCRIPT, str(vocab)],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout.strip()


def test_learned_merges_are_the_same_in_every_process():
    """Pseudo-words with Zipf frequencies: many pairs tie, which HF's trainer broke in
    hash order (four processes gave four merge lists)."""
    digests = {_merges_digest_in_subprocess(seed, 1500) for seed in ("1", "2", "3", "random")}
    assert len(digests) == 1, digests


def test_learned_merges_follow_counts_then_the_pair_itself():
    from train.tokenizer import learn_tokenizer

    # "ab" is the most frequent pair; ties are broken by the pair's symbols, not by hashing.
    tok = learn_tokenizer(["ab ab ab cd cd ef ef"] * 3, vocab_size=514 + 3, min_frequency=2)
    assert tok.merges[0] == ("a", "b</w>")
    assert tok.merges[1:] == [("c", "d</w>"), ("e", "f</w>")]


def test_under_ddp_only_rank_0_learns_and_the_others_receive_its_tokenizer(monkeypatch):
    learned = get_tokenizer({"type": "bpe", "merges": ["d o", "do g</w>"], "name": "learned"})
    calls = []

    def fake_learn(captions, vocab, **kw):
        calls.append(vocab)
        return learned

    monkeypatch.setattr("train.tokenizer.learn_tokenizer", fake_learn)
    monkeypatch.setattr(data_mod, "expand_shards", lambda pattern: ["x.tar"])
    monkeypatch.setattr(data_mod, "iter_captions", lambda shards, limit=None: iter(()))
    sent = []

    def fake_gather(obj, info):
        sent.append(obj)
        return [learned.spec()] + [None] * (info.world_size - 1)  # rank 0's answer

    monkeypatch.setattr(trainer_mod.dist_mod, "all_gather_objects", fake_gather)
    args = types.SimpleNamespace(tokenizer="learn:600", shards="x.tar", tokenizer_captions=10)
    rank1 = DistInfo(rank=1, world_size=2)
    tok = trainer_mod.build_tokenizer(args, "openai", rank1)
    assert calls == [] and sent == [None]  # rank 1 learned nothing and sent nothing
    assert tok.merges == learned.merges
    rank0 = DistInfo(rank=0, world_size=2)
    trainer_mod.build_tokenizer(args, "openai", rank0)
    assert calls == [600] and sent[-1] == learned.spec()


# --- 5. resume without decoding -----------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    return get_tokenizer("openai")


@pytest.fixture(scope="module")
def shards_with_bad_samples(tmp_path_factory):
    """3 shards; the first holds unusable samples early, inside the part a resume skips."""
    d = tmp_path_factory.mktemp("resume-skip")
    good = make_samples(45, seed=3, size=32)
    broken = [
        {"key": "badjpeg00000001", "jpg": b"not a jpeg at all", "txt": b"a red circle"},
        {"key": "notext000000002", "jpg": good[0]["jpg"]},
        {"key": "emptytext000003", "jpg": good[1]["jpg"], "txt": b"   "},
    ]
    paths = []
    for i, chunk in enumerate([good[:2] + broken + good[2:15], good[15:30], good[30:]]):
        path = str(d / f"{i:05d}.tar")
        write_tar(path, chunk)
        paths.append(path)
    return paths


def _dataset(paths, tokenizer, **kw):
    args = dict(
        transform=image_transform(32, is_train=True), tokenizer=tokenizer, batch_size=4,
        context_length=16, seed=1, shuffle_buffer=6,
    )  # fmt: skip
    args.update(kw)
    return ShardBatches(paths, **args)


def _same(a, b):
    return torch.equal(a["images"], b["images"]) and torch.equal(a["texts"], b["texts"])


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("consumed", [2, 5, 9])
def test_resume_continues_exactly_past_unusable_samples(
    shards_with_bad_samples, tokenizer, workers, consumed
):
    paths = shards_with_bad_samples
    ref = ResumableLoader(_dataset(paths, tokenizer), num_workers=workers)
    expected = [next(ref) for _ in range(consumed + 8)]
    first = ResumableLoader(_dataset(paths, tokenizer), num_workers=workers)
    for _ in range(consumed):
        next(first)
    state = json.loads(json.dumps(first.state_dict()))
    first.close()
    resumed = ResumableLoader(_dataset(paths, tokenizer), num_workers=workers)
    resumed.load_state_dict(state)
    for want in expected[consumed:]:
        assert _same(next(resumed), want)


def test_resume_does_not_decode_the_consumed_samples(
    shards_with_bad_samples, tokenizer, monkeypatch
):
    paths = shards_with_bad_samples
    first = ResumableLoader(_dataset(paths, tokenizer), num_workers=0)
    for _ in range(7):
        next(first)
    state = first.state_dict()
    first.close()
    decoded = []
    real = data_mod.decode_sample

    def counting(sample):
        decoded.append(sample["__key__"])
        return real(sample)

    monkeypatch.setattr(data_mod, "decode_sample", counting)
    resumed = ResumableLoader(_dataset(paths, tokenizer), num_workers=0)
    resumed.load_state_dict(state)
    batch = next(resumed)
    # Only the next batch's samples (plus any unusable ones among them) are decoded, not
    # the 28 samples of the 7 batches consumed before the checkpoint.
    assert batch["images"].shape[0] == 4
    assert len(decoded) < 4 + 3, decoded


def test_checkpoints_from_before_the_fix_still_resume(shards_with_bad_samples, tokenizer):
    """A loader state without per-worker sample counts falls back to decoding to skip."""
    paths = shards_with_bad_samples
    ref = ResumableLoader(_dataset(paths, tokenizer), num_workers=0)
    expected = [next(ref) for _ in range(8)]
    first = ResumableLoader(_dataset(paths, tokenizer), num_workers=0)
    for _ in range(3):
        next(first)
    state = first.state_dict()
    state.pop("samples", None)
    resumed = ResumableLoader(_dataset(paths, tokenizer), num_workers=0)
    resumed.load_state_dict(state)
    for want in expected[3:]:
        assert _same(next(resumed), want)


# --- 8. DDP ranks without shards -------------------------------------------------------------


def test_too_few_shards_for_the_ranks_is_found_before_training(monkeypatch):
    gathered = []

    def fake_gather(obj, info):  # every rank sees what this one sees
        gathered.append(obj)
        return [obj] * info.world_size

    monkeypatch.setattr(trainer_mod.dist_mod, "all_gather_objects", fake_gather)
    info = DistInfo(rank=0, world_size=4)
    with pytest.raises(trainer_mod.AllRanksError, match="too few shards for 4 ranks"):
        trainer_mod.check_shard_assignment(["a.tar", "b.tar", "c.tar"], info, None)
    trainer_mod.check_shard_assignment(["a.tar"] * 4, info, None)
    trainer_mod.check_shard_assignment(["a.tar"], info, samples_per_epoch=1000)  # resampled
    assert gathered == [3, 4, 1]  # the check is collective: every rank takes part

    monkeypatch.setattr(trainer_mod.dist_mod, "all_gather_objects", lambda obj, i: [4, 4, 3, 4])
    with pytest.raises(trainer_mod.AllRanksError, match="ranks see different shards"):
        trainer_mod.check_shard_assignment(["a.tar"] * 4, info, None)


def test_a_rank_without_shards_fails_every_rank_with_one_line(tmp_path):
    write_corpus(str(tmp_path), make_samples(16, seed=8, size=32), shard_size=16)  # 1 shard
    config = tmp_path / "micro.json"
    config.write_text(json.dumps(MICRO))
    res = torchrun(
        "-m", "train.cli_train",
        "--shards", str(tmp_path / "shards" / "00000.tar"), "--model", str(config),
        "--out", str(tmp_path / "run"), "--steps", "4", "--batch-size", "4", "--workers", "0",
        "--threads", "1", "--tokenizer", "learn:600", "--no-progress", "--no-tensorboard",
        timeout=240,
    )  # fmt: skip
    assert res.returncode != 0
    ours = [line for line in res.stderr.splitlines() if "wit-train: error" in line]
    assert len(ours) == 1, res.stderr[-3000:]
    assert "too few shards for 2 ranks" in ours[0] and "--samples-per-epoch" in ours[0]
    ours_part = res.stderr.split("torch/distributed/elastic")[0]  # then torchrun's report
    assert "Traceback" not in ours_part
    assert not (tmp_path / "run" / "checkpoints").exists()  # failed before any training
