"""Zero-shot: templates, ensembling, caching, and parity with open_clip's classifier."""

import json

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from train.eval import zeroshot
from train.eval.datasets import load_image_folder
from train.eval.load import load_for_eval
from train.eval.zeroshot import (
    class_text_embeddings,
    embedding_ensemble,
    evaluate,
    evaluate_classification,
    load_templates,
    zeroshot_scores,
)

TINY_OPEN_CLIP = {
    "embed_dim": 64,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def test_named_literal_and_file_templates(tmp_path):
    assert load_templates("single") == ["a photo of a {}."]
    assert len(load_templates("cifar10")) == 18
    assert len(load_templates("imagenet")) == 80 and len(set(load_templates("imagenet"))) == 80
    assert load_templates("a drawing of a {}.") == ["a drawing of a {}."]
    f = tmp_path / "t.txt"
    f.write_text("a {}.\n\nthe {}!\n")
    assert load_templates(str(f)) == ["a {}.", "the {}!"]
    with pytest.raises(ValueError, match="placeholder"):
        load_templates("cifar11")
    f.write_text("a {}.\nno placeholder\n")
    with pytest.raises(ValueError, match="placeholder"):
        load_templates(str(f))


def test_probability_ensemble_by_hand():
    img = F.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8]]), dim=-1)
    # 2 classes x 2 templates x 2 dims
    emb = F.normalize(torch.tensor([[[1.0, 0.0], [0.8, 0.6]], [[0.0, 1.0], [0.6, 0.8]]]), dim=-1)
    probs = zeroshot_scores(img, emb, "probability", logit_scale=10.0)
    expected = torch.stack([(10.0 * img @ emb[:, t].T).softmax(-1) for t in range(2)]).mean(0)
    assert torch.allclose(probs, expected)
    assert torch.allclose(probs.sum(-1), torch.ones(2))
    logits = zeroshot_scores(img, emb, "embedding", logit_scale=10.0)
    w = F.normalize(emb.mean(1), dim=-1)
    assert torch.allclose(logits, 10.0 * img @ w.T)
    with pytest.raises(ValueError):
        zeroshot_scores(img, emb, "votes")


def _tiny_open_clip(tmp_path):
    open_clip = pytest.importorskip("open_clip")
    cfg_path = tmp_path / "wit-tiny-test.json"
    cfg_path.write_text(json.dumps(TINY_OPEN_CLIP))
    open_clip.add_model_config(str(cfg_path))
    torch.manual_seed(0)
    ref = open_clip.create_model("wit-tiny-test").eval()
    ckpt = tmp_path / "open_clip_state.pt"
    torch.save(ref.state_dict(), ckpt)
    return open_clip, ref, ckpt, cfg_path


def test_open_clip_state_dict_gives_open_clip_zero_shot_logits(tmp_path):
    open_clip, ref, ckpt, cfg_path = _tiny_open_clip(tmp_path)
    from open_clip.zero_shot_classifier import build_zero_shot_classifier

    loaded = load_for_eval(str(ckpt), model_config=str(cfg_path))
    assert loaded.source == "state_dict"
    classnames = ["airplane", "automobile", "bird", "cat", "deer", "sea lion"]
    templates = load_templates("cifar10")
    ref_tok = open_clip.get_tokenizer("wit-tiny-test")
    ref_w = build_zero_shot_classifier(ref, ref_tok, classnames, templates)  # [D, C]

    texts = [t.format(c) for c in classnames for t in templates]
    assert torch.equal(loaded.tokenizer(texts, context_length=77), ref_tok(texts)), (
        "train.get_tokenizer('openai') gives other ids than open_clip's tokenizer"
    )
    emb = class_text_embeddings(
        loaded.model, loaded.tokenizer, classnames, templates, use_cache=False
    )
    ours_w = embedding_ensemble(emb).T
    assert torch.allclose(ours_w, ref_w, atol=1e-5)

    images = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref_logits = 100.0 * ref.encode_image(images, normalize=True) @ ref_w
        ours_img = F.normalize(loaded.model.encode_image(images), dim=-1)
    ours_logits = zeroshot_scores(ours_img, emb, "embedding")
    assert torch.allclose(ours_logits, ref_logits, atol=1e-3)
    assert torch.equal(ours_logits.argmax(1), ref_logits.argmax(1))


def test_classifier_matches_open_clip_given_the_same_tokens(tmp_path):
    """Our loader + ensembling against open_clip's, with open_clip's tokenizer on both sides."""
    open_clip, ref, ckpt, cfg_path = _tiny_open_clip(tmp_path)
    from open_clip.zero_shot_classifier import build_zero_shot_classifier

    loaded = load_for_eval(str(ckpt), model_config=str(cfg_path), tokenizer="openai")
    ref_tok = open_clip.get_tokenizer("wit-tiny-test")
    classnames, templates = ["dog", "hot dog", "sea lion"], load_templates("imagenet")[:7]
    ref_w = build_zero_shot_classifier(ref, ref_tok, classnames, templates, num_classes_per_batch=2)
    emb = class_text_embeddings(loaded.model, ref_tok, classnames, templates, use_cache=False)
    assert emb.shape == (3, 7, 64)
    assert torch.allclose(embedding_ensemble(emb).T, ref_w, atol=1e-5)


def test_eval_preprocessing_matches_open_clip(tmp_path, shared_data):
    open_clip, ref, _, _ = _tiny_open_clip(tmp_path)
    from train.eval.load import eval_transform

    folder = shared_data("flickr8k-1k", "images")
    img = Image.open(sorted(folder.iterdir())[0])
    ref_pre = open_clip.image_transform(32, is_train=False)
    ours = eval_transform(ref)  # reads model.visual.image_size from an open_clip model
    assert torch.allclose(ours(img), ref_pre(img), atol=2e-2)


def _colour_dataset(tmp_path):
    """Three classes of solid-colour images, named after their colour."""
    colours = {"red": (200, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 200)}
    for name, rgb in colours.items():
        (tmp_path / name).mkdir(parents=True)
        for i in range(4):
            shade = tuple(max(0, c - 10 * i) for c in rgb)
            Image.new("RGB", (16, 16), shade).save(tmp_path / name / f"{i}.png")
    (tmp_path / "blue" / "broken.png").write_bytes(b"not a png")
    return tmp_path


class ColourModel(torch.nn.Module):
    """Image embedding = mean RGB; text embedding = the colour word's RGB direction.

    Lets the test check end to end that labels, class names and scores line up.
    """

    image_size = 16
    context_length = 8
    words = {"red": 0, "green": 1, "blue": 2}

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.text_calls = 0

    def encode_image(self, x):
        return x.mean(dim=(2, 3)) * self.scale

    def encode_text(self, tokens):
        self.text_calls += 1
        return F.one_hot(tokens[:, 0], 3).float() * self.scale


class ColourTokenizer:
    def __call__(self, texts, context_length=8):
        ids = [next(v for k, v in ColourModel.words.items() if k in t) for t in texts]
        return torch.tensor(ids)[:, None].repeat(1, context_length)


def _plain_transform(img):
    import numpy as np

    return torch.from_numpy(np.asarray(img.convert("RGB"), dtype="float32") / 255).permute(2, 0, 1)


def test_labels_and_classnames_line_up_and_cache(tmp_path):
    ds = load_image_folder(str(_colour_dataset(tmp_path / "data")))
    assert ds.classnames == ["blue", "green", "red"]
    model, tok = ColourModel(), ColourTokenizer()
    zeroshot._MEMORY_CACHE.clear()
    for ensemble in ("embedding", "probability"):
        res = evaluate_classification(
            model,
            tok,
            ds,
            "cifar10",
            ensemble,
            transform=_plain_transform,
            cache_dir=str(tmp_path / "cache"),
        )
        assert res["top1"] == 1.0 and res["mean_per_class_recall"] == 1.0 and res["n"] == 12
        assert "top5" not in res  # only three classes
        assert [s["image"].endswith("broken.png") for s in res["skipped"]] == [True]
    assert model.text_calls == 1  # the second run reused the class embeddings
    assert len(list((tmp_path / "cache").glob("classes-*.pt"))) == 1
    zeroshot._MEMORY_CACHE.clear()  # the disk cache serves a fresh process
    class_text_embeddings(
        model, tok, ds.classnames, load_templates("cifar10"), cache_dir=str(tmp_path / "cache")
    )
    assert model.text_calls == 1
    with torch.no_grad():
        model.scale.fill_(2.0)  # changed weights must not reuse stale embeddings
    class_text_embeddings(model, tok, ds.classnames, load_templates("cifar10"))
    assert model.text_calls == 2


@pytest.mark.slow
def test_random_model_on_cifar10_sits_near_chance(shared_data):
    from train import create_model, get_tokenizer

    root = shared_data("cifar10-test")
    torch.manual_seed(0)
    model = create_model("tiny-vit").train()
    res = evaluate(
        model,
        get_tokenizer("openai"),
        str(root),
        templates="cifar10",
        limit_per_class=12,
        batch_size=40,
    )
    assert set(res) == {"top1", "top5", "mean_per_class_recall", "n"}
    assert res["n"] == 120
    assert model.training  # the trainer's model goes back to train mode
    # chance is 10% top-1 and 50% top-5; 120 images leave room for sampling noise
    assert 0.0 <= res["top1"] <= 0.3
    assert 0.2 <= res["top5"] <= 0.8
    assert 0.0 <= res["mean_per_class_recall"] <= 0.3
