"""CLIP models against open_clip (random weights, nothing downloaded) and their own behaviour."""

from __future__ import annotations

import json

import pytest
import torch

import train
from train.factory import load_config

open_clip = pytest.importorskip("open_clip")

PAPER = [
    "RN50",
    "RN101",
    "RN50x4",
    "RN50x16",
    "RN50x64",
    "ViT-B-32",
    "ViT-B-16",
    "ViT-L-14",
    "ViT-L-14-336",
]
CAPTIONS = [
    "a photo of a dog.",
    "A child in a pink dress is climbing up a set of stairs in an entry way .",
    "",
]


def open_clip_meta(name: str) -> torch.nn.Module:
    with torch.device("meta"):
        return open_clip.create_model(f"{name}-quickgelu", pretrained=None, device="meta")


def random_state_dict(model: torch.nn.Module, seed: int = 0) -> dict:
    """Every tensor random (BN scales and stats too), so no branch hides behind a zero init."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, value in model.state_dict().items():
        t = torch.empty(value.shape, dtype=value.dtype)
        if not t.is_floating_point():
            t.zero_()
        elif key.endswith("running_var"):
            t.uniform_(0.5, 1.5, generator=g)
        elif key == "logit_scale":
            t.fill_(2.0)
        else:
            t.normal_(0.0, 0.02 if t.dim() > 1 else 0.2, generator=g)
            if key.endswith(
                ("ln_1.weight", "ln_2.weight", "ln_pre.weight", "ln_post.weight", "ln_final.weight")
            ):
                t.add_(1.0)
        sd[key] = t
    return sd


@pytest.mark.parametrize("name", PAPER)
def test_paper_config_matches_open_clip_layout_and_parameter_count(name):
    with torch.device("meta"):
        ours = train.create_model(name)
    ref = open_clip_meta(name)
    ours_shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    ref_shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert ours_shapes == ref_shapes
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())
    inferred = train.config_from_state_dict(ref.state_dict())
    expected = {k: v for k, v in ours.config.items() if k not in ("name", "tokenizer")}
    assert {k: inferred[k] for k in expected} == expected
    ref_cfg = open_clip.get_model_config(f"{name}-quickgelu")
    assert ours.image_size == ref_cfg["vision_cfg"]["image_size"]
    assert ours.config["embed_dim"] == ref_cfg["embed_dim"]


@pytest.mark.parametrize("name", ["RN50", "ViT-B-32"])
def test_open_clip_state_dict_loads_strictly_and_features_agree(name):
    torch.manual_seed(0)
    ref = open_clip_meta(name).to_empty(device="cpu")
    # attn_mask is open_clip's only non-persistent buffer, so to_empty left it unset; this is
    # how open_clip builds it (transformer.py, build_causal_mask).
    ref.attn_mask = torch.full((77, 77), float("-inf")).triu_(1)
    sd = random_state_dict(ref)
    ref.load_state_dict(sd, strict=True)
    ours = train.create_model(name)
    ours.load_state_dict(sd, strict=True)
    ref.eval()
    ours.eval()
    images = torch.randn(1, 3, 224, 224)  # batch 1: RN50 on a shared CPU is slow
    tokens = train.get_tokenizer("openai")(CAPTIONS[:2])
    with torch.no_grad():
        img_ours, img_ref = ours.encode_image(images), ref.encode_image(images)
        txt_ours, txt_ref = ours.encode_text(tokens), ref.encode_text(tokens)
    assert img_ours.shape == img_ref.shape == (1, ours.config["embed_dim"])
    assert img_ours.abs().max() > 1e-2  # a real signal, not zeros on both sides
    assert (img_ours - img_ref).abs().max().item() <= 1e-4
    assert (txt_ours - txt_ref).abs().max().item() <= 1e-4
    assert ours.logit_scale.item() == ref.logit_scale.item()
    # And the other way: our state dict is open_clip's.
    assert set(ours.state_dict()) == set(ref.state_dict())


def test_tiny_configs_forward_normalized_features():
    tok = train.get_tokenizer("openai")
    for name in ("tiny-vit", "tiny-rn"):
        model = train.create_model(name)
        assert model.image_size == 64 and model.context_length == 77 and model.vocab_size == 49408
        img, txt, scale = model(torch.randn(3, 3, 64, 64), tok(CAPTIONS))
        assert img.shape == txt.shape == (3, model.config["embed_dim"])
        torch.testing.assert_close(img.norm(dim=-1), torch.ones(3))
        torch.testing.assert_close(txt.norm(dim=-1), torch.ones(3))
        assert scale.item() == pytest.approx(1 / 0.07, rel=1e-5)
        assert isinstance(model.logit_scale, torch.nn.Parameter)


def test_text_features_come_from_the_end_token_and_ignore_what_follows():
    model = train.create_model("tiny-vit").eval()
    tokens = train.get_tokenizer("openai")(CAPTIONS[:2])
    changed = tokens.clone()
    eot = tokens.argmax(dim=-1)
    for row, pos in enumerate(eot.tolist()):
        changed[row, pos + 1 :] = 7  # anything after end-of-text
    changed_prefix = tokens.clone()
    changed_prefix[:, 1] = 500  # a token before end-of-text does matter
    with torch.no_grad():
        base = model.encode_text(tokens)
        torch.testing.assert_close(model.encode_text(changed), base)
        assert not torch.allclose(model.encode_text(changed_prefix), base)


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-rn"])
def test_grad_checkpointing_gives_the_same_gradients_and_bn_stats(name):
    torch.manual_seed(0)
    # A small vocabulary, context and ResNet width keep this quick on a shared CPU.
    small = {"vision_width": 16} if name == "tiny-rn" else {}
    model = train.create_model(name, vocab_size=1000, context_length=16, **small)
    tokens = torch.randint(1, 998, (3, 16))
    tokens[torch.arange(3), torch.tensor([5, 9, 15])] = 999  # end-of-text: the largest id
    images = torch.randn(3, 3, 64, 64)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    results = []
    for enable in (False, True):
        model.load_state_dict(start)
        model.zero_grad()
        model.set_grad_checkpointing(enable)
        img, txt, scale = model(images, tokens)
        train.ClipLoss()(img, txt, scale).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((grads, {k: v.clone() for k, v in model.state_dict().items()}))
    (g0, s0), (g1, s1) = results
    assert g0.keys() == g1.keys() and len(g0) == len(list(model.parameters()))
    for key in g0:
        torch.testing.assert_close(g1[key], g0[key], atol=1e-6, rtol=1e-5)
    for key in s0:  # BN running stats and counters move exactly once per batch
        torch.testing.assert_close(s1[key], s0[key], atol=1e-6, rtol=1e-5)
    if name == "tiny-rn":
        assert model.visual.bn1.num_batches_tracked.item() == 1


def test_overrides_config_round_trip_and_bad_names():
    model = train.create_model("tiny-vit", vocab_size=1000, context_length=32)
    assert model.vocab_size == 1000 and model.context_length == 32
    assert model.token_embedding.weight.shape == (1000, 128)
    assert model.positional_embedding.shape == (32, 128)
    again = train.create_model(json.loads(json.dumps(model.config)))
    assert again.config == model.config
    assert {k: v.shape for k, v in again.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }
    with pytest.raises(ValueError, match="unknown model override"):
        train.create_model("tiny-vit", vocab=10)
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        train.create_model("nope")
    with pytest.raises(ValueError, match="expected images of 64x64"):
        model.encode_image(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="context is 32"):
        model.encode_text(torch.zeros(1, 77, dtype=torch.long))
    assert set(PAPER + ["tiny-vit", "tiny-rn"]) <= set(train.list_models())


def test_open_clip_json_config_is_accepted(tmp_path):
    import importlib.resources

    for name in ("RN50", "ViT-L-14-336"):
        src = importlib.resources.files("open_clip") / "model_configs" / f"{name}-quickgelu.json"
        path = tmp_path / f"{name}.json"
        path.write_text(src.read_text())
        cfg = load_config(path)
        ours = load_config(name)
        for key in (
            "embed_dim",
            "image_size",
            "vision_layers",
            "vision_width",
            "vision_heads",
            "text_width",
        ):
            assert cfg[key] == ours[key], key


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-rn"])
def test_foreign_checkpoint_wrappers_load_without_naming_a_config(name):
    """open_clip training checkpoints ({"state_dict": {"module.*"}}) and OpenAI's metadata keys."""
    model = train.create_model(name, vocab_size=600).eval()
    wrapped = {"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}
    wrapped["state_dict"].update(input_resolution=torch.tensor(64), vocab_size=torch.tensor(600))
    again = train.create_model_from_state_dict(wrapped).eval()
    assert {k: again.config[k] for k in model.config if k != "name"} == {
        k: model.config[k] for k in model.config if k != "name" and k != "tokenizer"
    } | {"tokenizer": "openai"}
    tokens = torch.randint(1, 598, (2, 77))
    tokens[:, 9] = 599
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(model(images, tokens), again(images, tokens), strict=True):
            torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="not a CLIP model"):
        train.config_from_state_dict({"weight": torch.zeros(2)})


def test_bad_config_file_gives_one_line_error(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="cannot read model config"):
        train.create_model(bad)
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"embed_dim": 64, "image_size": 64}))
    with pytest.raises(ValueError, match="lacks"):
        train.create_model(partial)


def test_eval_and_train_transforms_equal_open_clip_on_real_photos(shared_data):
    from PIL import Image

    paths = sorted(shared_data("flickr8k-1k", "images").glob("*.jpg"))[:4]
    paths += sorted(shared_data("cifar10-test", "cat").glob("*.jpg"))[:2]
    for size in (64, 224):
        for is_train in (False, True):
            ours = train.image_transform(size, is_train)
            ref = open_clip.image_transform(size, is_train=is_train)
            for path in paths:
                with Image.open(path) as im:
                    im.load()
                torch.manual_seed(7)
                a = ours(im)
                torch.manual_seed(7)
                b = ref(im)
                assert a.shape == (3, size, size) and a.dtype == torch.float32
                torch.testing.assert_close(a, b)


def test_transforms_convert_any_mode_to_rgb_and_crop_randomly():
    from PIL import Image

    gray = Image.linear_gradient("L").resize((300, 200))
    for image in (gray, gray.convert("P"), gray.convert("RGBA"), gray.convert("1")):
        out = train.image_transform(64, is_train=False)(image)
        assert out.shape == (3, 64, 64)
        torch.testing.assert_close(
            out[0] * 0.26862954 + 0.48145466, out[1] * 0.26130258 + 0.4578275
        )
    # A square image, so crops of 90-100% of its area with aspect 3/4..4/3 exist.
    noise = Image.effect_noise((256, 256), 60).convert("RGB")
    crop = train.image_transform(64, is_train=True)
    torch.manual_seed(0)
    first = crop(noise)
    assert any(not torch.equal(first, crop(noise)) for _ in range(5))
    with pytest.raises(ValueError, match="image_size must be positive"):
        train.image_transform(0, is_train=False)
