"""Loading checkpoints for evaluation: ours, open_clip training checkpoints, OpenAI state dicts."""

import json

import pytest
import torch

from train.eval.load import LoadError, load_for_eval, text_tower_fingerprint

TINY = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    open_clip = pytest.importorskip("open_clip")
    d = tmp_path_factory.mktemp("load")
    cfg = d / "wit-load-test.json"
    cfg.write_text(json.dumps(TINY))
    open_clip.add_model_config(str(cfg))
    torch.manual_seed(0)
    return open_clip.create_model("wit-load-test").eval(), d, str(cfg)


def test_wrapped_and_openai_style_state_dicts_load(reference):
    ref, d, cfg = reference
    sd = ref.state_dict()
    wrapped = {"epoch": 3, "name": "run", "state_dict": {f"module.{k}": v for k, v in sd.items()}}
    torch.save(wrapped, d / "open_clip_train.pt")
    openai = dict(
        sd,
        input_resolution=torch.tensor(32),
        context_length=torch.tensor(77),
        vocab_size=torch.tensor(49408),
    )
    torch.save(openai, d / "openai_style.pt")
    tokens = torch.randint(1, 49406, (3, 77))
    tokens[:, 10] = 49407
    with torch.no_grad():
        expected = ref.encode_text(tokens)
        for name in ("open_clip_train.pt", "openai_style.pt"):
            loaded = load_for_eval(str(d / name), model_config=cfg)
            assert torch.allclose(loaded.model.encode_text(tokens), expected, atol=1e-5)
            assert not loaded.model.training


def test_our_checkpoint_and_run_folder(reference):
    from train import create_model, get_tokenizer

    _, d, _ = reference
    model = create_model("tiny-vit")
    tok = get_tokenizer("openai")
    run = d / "run" / "checkpoints"
    run.mkdir(parents=True)
    torch.save(
        {"model": model.state_dict(), "config": model.config, "tokenizer": tok.spec(), "step": 5},
        run / "latest.pt",
    )
    loaded = load_for_eval(str(d / "run"))
    assert loaded.source == "wit-train" and loaded.path.endswith("latest.pt")
    assert text_tower_fingerprint(loaded.model) == text_tower_fingerprint(model)
    assert torch.equal(loaded.tokenizer(["a dog"], context_length=77), tok(["a dog"]))


def test_bad_checkpoints_give_one_line_reasons(reference, tmp_path):
    ref, d, cfg = reference
    torch.save(ref.state_dict(), tmp_path / "plain.pt")
    with pytest.raises(LoadError, match="--model CONFIG"):
        load_for_eval(str(tmp_path / "plain.pt"))
    with pytest.raises(LoadError, match="does not fit the model"):
        load_for_eval(str(tmp_path / "plain.pt"), model_config="tiny-vit")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(LoadError, match="unreadable checkpoint"):
        load_for_eval(str(tmp_path / "junk.pt"))
    torch.save({"not": "tensors"}, tmp_path / "dict.pt")
    with pytest.raises(LoadError, match="no state dict"):
        load_for_eval(str(tmp_path / "dict.pt"), model_config=cfg)
    with pytest.raises(LoadError, match="not found"):
        load_for_eval(str(tmp_path / "missing.pt"))
